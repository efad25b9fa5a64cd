"""Crash-safe file writes: the content goes to a temporary file in the same folder, which is then renamed into place.

A run killed at any moment therefore leaves either the previous file or the complete new one, never half of one.
"""

import os
import pickle
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str, write_fn: Callable[[BinaryIO], None]) -> None:
    """Create or replace `path` with what `write_fn(file)` writes: same-directory temp file, fsync, os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, _default_mode())  # mkstemp creates 0600; give the file the usual permissions.
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_pickle(path: str, obj) -> None:
    """Pickle `obj` (default protocol, as the reference) to `path` atomically."""
    atomic_write(path, lambda f: pickle.dump(obj, f))
