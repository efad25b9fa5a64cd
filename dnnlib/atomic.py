"""Crash-safe file writes: the content goes to a temporary file in the same folder, which is then renamed into place.

A run killed at any moment therefore leaves either the previous file or the complete new one, never half of one.
"""

import contextlib
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path` for a writer that needs a file name (ffmpeg); on success, rename it.

    The temporary name keeps the extension of `path` (`<name>.<random>.tmp<ext>`), which tools such as ffmpeg read
    the output format from. If the block raises, the temporary file is removed and `path` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(
        prefix=os.path.basename(path) + ".", suffix=".tmp" + os.path.splitext(path)[1], dir=folder
    )
    os.close(fd)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _default_mode())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
