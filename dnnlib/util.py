"""Miscellaneous utilities: attribute dicts, console logging, cache paths, name lookup, file and URL helpers."""

import ctypes
import fnmatch
import glob
import hashlib
import html
import importlib
import inspect
import io
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import urllib.parse

import numpy as np
import requests

from dnnlib import atomic

# ----------------------------------------------------------------------------
# EasyDict


class EasyDict(dict):
    """A `dict` whose items are also reachable as attributes (`d.key`); otherwise exactly a dict.

    Lookup falls back to the items only when normal attribute lookup fails (`__getattr__`), so methods and
    anything in the instance `__dict__` win; a missing key raises `AttributeError` so `hasattr`/`copy`/`pickle`
    probes behave.
    """

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]


# ----------------------------------------------------------------------------
# Logger


class Logger:
    """Tee everything written to stdout and stderr into an optional file; stderr text goes to the real stdout.

    Installs itself as `sys.stdout` and `sys.stderr` on construction; `close()` restores whatever was installed
    before, but only where this logger is still the installed stream (so nested loggers may close in any order).
    """

    def __init__(self, file_name=None, file_mode="w", should_flush=True):
        self.file = None
        if file_name is not None:
            self.file = open(file_name, file_mode)
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        sys.stdout = self
        sys.stderr = self

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.close()

    def write(self, text):
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if len(text) == 0:
            return
        if self.file is not None:
            self.file.write(text)
        self.stdout.write(text)
        if self.should_flush:
            self.flush()

    def flush(self):
        if self.file is not None:
            self.file.flush()
        self.stdout.flush()

    def close(self):
        self.flush()
        if sys.stdout is self:
            sys.stdout = self.stdout
        if sys.stderr is self:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None

    def __getattr__(self, name):
        # Stream attributes this class does not define (isatty, encoding, fileno, ...) come from the console.
        stdout = self.__dict__.get("stdout", None)
        if stdout is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(stdout, name)


# ----------------------------------------------------------------------------
# Cache directory

_dnnlib_cache_dir = None

_CACHE_SUBDIR = (".cache", "dnnlib")


def set_cache_dir(path):
    """Override the cache root used by `make_cache_dir_path` (None restores the environment-based default)."""
    global _dnnlib_cache_dir
    _dnnlib_cache_dir = path


def make_cache_dir_path(*paths):
    """Path inside the cache root (nothing is created).

    Root, first applicable: `set_cache_dir` value, `$DNNLIB_CACHE_DIR`, `$HOME/.cache/dnnlib`,
    `%USERPROFILE%/.cache/dnnlib`, `<tempdir>/.cache/dnnlib`.
    """
    if _dnnlib_cache_dir is not None:
        return os.path.join(_dnnlib_cache_dir, *paths)
    if "DNNLIB_CACHE_DIR" in os.environ:
        return os.path.join(os.environ["DNNLIB_CACHE_DIR"], *paths)
    if "HOME" in os.environ:
        return os.path.join(os.environ["HOME"], *_CACHE_SUBDIR, *paths)
    if "USERPROFILE" in os.environ:
        return os.path.join(os.environ["USERPROFILE"], *_CACHE_SUBDIR, *paths)
    return os.path.join(tempfile.gettempdir(), *_CACHE_SUBDIR, *paths)


# ----------------------------------------------------------------------------
# Small helpers


def format_time(seconds):
    """Human-readable duration, e.g. `1m 01s`, `1h 00m 00s`, `1d 01h 01m` (seconds rounded half to even)."""
    s = int(np.rint(seconds))
    if s < 60:
        return f"{s}s"
    if s < 60 * 60:
        return f"{s // 60}m {s % 60:02}s"
    if s < 24 * 60 * 60:
        return f"{s // (60 * 60)}h {(s // 60) % 60:02}m {s % 60:02}s"
    return f"{s // (24 * 60 * 60)}d {(s // (60 * 60)) % 24:02}h {(s // 60) % 60:02}m"


def format_time_brief(seconds):
    """Like `format_time` but coarser: hours drop seconds (`1h 05m`), days drop minutes (`2d 03h`)."""
    s = int(np.rint(seconds))
    if s < 60:
        return f"{s}s"
    if s < 60 * 60:
        return f"{s // 60}m {s % 60:02}s"
    if s < 24 * 60 * 60:
        return f"{s // (60 * 60)}h {(s // 60) % 60:02}m"
    return f"{s // (24 * 60 * 60)}d {(s // (60 * 60)) % 24:02}h"


# Classic truth strings (the old distutils rule), keyed by their lower-case spelling.
_TRUTH_VALUES = {
    **dict.fromkeys(("y", "yes", "t", "true", "on", "1"), 1),
    **dict.fromkeys(("n", "no", "f", "false", "off", "0"), 0),
}


def strtobool(text):
    """Classic truth-string parsing: 1 for y/yes/t/true/on/1, 0 for n/no/f/false/off/0 (case-insensitive)."""
    key = text.lower()
    if key not in _TRUTH_VALUES:
        raise ValueError(f"invalid truth value {key!r}")
    return _TRUTH_VALUES[key]


def ask_yes_no(question):
    """Ask `question [y/n]` on the console until the answer parses; return 1 or 0."""
    prompt = f"{question} [y/n]"
    verdict = None
    while verdict is None:
        print(prompt)
        verdict = _TRUTH_VALUES.get(input().lower())
    return verdict


def tuple_product(t):
    """Product of the elements of `t` (1 for an empty tuple)."""
    return math.prod(t, start=1)


# Every supported element type by numpy name, with the ctypes type of the same width and kind.
_CTYPE_BY_NAME = {
    "uint8": ctypes.c_ubyte,
    "uint16": ctypes.c_uint16,
    "uint32": ctypes.c_uint32,
    "uint64": ctypes.c_uint64,
    "int8": ctypes.c_byte,
    "int16": ctypes.c_int16,
    "int32": ctypes.c_int32,
    "int64": ctypes.c_int64,
    "float32": ctypes.c_float,
    "float64": ctypes.c_double,
}


def _type_name(type_obj):
    """Name of a type given as a string, a class (`__name__`) or a numpy dtype (`name`)."""
    if isinstance(type_obj, str):
        return type_obj
    for attribute in ("__name__", "name"):
        if hasattr(type_obj, attribute):
            return getattr(type_obj, attribute)
    raise RuntimeError("Cannot infer type name from input")


def get_dtype_and_ctype(type_obj):
    """`(numpy.dtype, ctypes type)` for a type given by name string, or by an object with `__name__` or `name`."""
    name = _type_name(type_obj)
    assert name in _CTYPE_BY_NAME, f"unsupported type name {name!r}; expected one of {list(_CTYPE_BY_NAME)}"
    numpy_type, c_type = np.dtype(name), _CTYPE_BY_NAME[name]
    assert numpy_type.itemsize == ctypes.sizeof(c_type), f"{name}: numpy and ctypes sizes differ"
    return numpy_type, c_type


def is_pickleable(obj):
    """True iff `obj` can be pickled."""
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------
# Looking up objects by dotted name


# Leading abbreviations; the dot is deliberately a regex wildcard (`np` plus any one character).
_NAME_SHORTHANDS = (("^np.", "numpy."), ("^tf.", "tensorflow."))


def _walk_attributes(obj, dotted_name):
    for part in dotted_name.split("."):
        obj = getattr(obj, part)
    return obj


def _expand_shorthands(obj_name):
    for pattern, replacement in _NAME_SHORTHANDS:
        obj_name = re.sub(pattern, replacement, obj_name)
    return obj_name


def _module_splits(obj_name):
    """Every `(module prefix, local remainder)` split of `obj_name`, longest module prefix first."""
    splits = [(obj_name, "")]
    for depth in range(1, obj_name.count(".") + 1):
        module_name, *local_parts = obj_name.rsplit(".", depth)
        splits.append((module_name, ".".join(local_parts)))
    return splits


def _resolve_split(module_name, local_name):
    """The module if `module_name` imports and contains `local_name`, else None."""
    try:
        module = importlib.import_module(module_name)
        get_obj_from_module(module, local_name)
    except Exception:
        return None
    return module


def _raise_lookup_error(obj_name, splits):
    """Raise the most telling error for a name that no split resolves."""
    # A module that exists but fails to import is the real problem; "No module named '<prefix>'" only says
    # that this split guessed the module boundary wrong.
    importable = []
    for module_name, local_name in splits:
        try:
            importable.append((importlib.import_module(module_name), local_name))
        except ImportError as exc:
            if not str(exc).startswith(f"No module named '{module_name}'"):
                raise
    # Next best: the AttributeError of an existing module that lacks the requested object.
    for module, local_name in importable:
        get_obj_from_module(module, local_name)
    raise ImportError(obj_name)


def get_module_from_obj_name(obj_name):
    """Split `obj_name` into `(module, local dotted name)`, preferring the longest importable module prefix."""
    obj_name = _expand_shorthands(obj_name)
    splits = _module_splits(obj_name)
    for module_name, local_name in splits:
        module = _resolve_split(module_name, local_name)
        if module is not None:
            return module, local_name
    _raise_lookup_error(obj_name, splits)


def get_obj_from_module(module, obj_name):
    """Object at dotted path `obj_name` inside `module` (the module itself for an empty name)."""
    if obj_name == "":
        return module
    return _walk_attributes(module, obj_name)


def get_obj_by_name(name):
    """Object for a fully-qualified dotted name such as `torch.optim.Adam`."""
    module, obj_name = get_module_from_obj_name(name)
    return get_obj_from_module(module, obj_name)


def call_func_by_name(*args, func_name=None, **kwargs):
    """Resolve `func_name` and call it with the remaining arguments."""
    assert func_name is not None, "call_func_by_name: func_name is required"
    func_obj = get_obj_by_name(func_name)
    assert callable(func_obj), f"call_func_by_name: {func_name} is not callable"
    return func_obj(*args, **kwargs)


def construct_class_by_name(*args, class_name=None, **kwargs):
    """Resolve `class_name` and instantiate it with the remaining arguments (`class_name` is not passed on)."""
    return call_func_by_name(*args, func_name=class_name, **kwargs)


def get_module_dir_by_obj_name(obj_name):
    """Directory of the source file of the module that defines `obj_name`."""
    module, _obj_name = get_module_from_obj_name(obj_name)
    return os.path.dirname(inspect.getfile(module))


def is_top_level_function(obj):
    """True iff `obj` is callable and defined at the top level of its module."""
    return callable(obj) and obj.__name__ in sys.modules[obj.__module__].__dict__


def get_top_level_function_name(obj):
    """`<module>.<name>` of a top-level function; `__main__` is replaced by the main script's base name."""
    assert is_top_level_function(obj), f"{obj!r} is not a top-level function"
    module = obj.__module__
    if module == "__main__":
        module = os.path.splitext(os.path.basename(sys.modules[module].__file__))[0]
    return module + "." + obj.__name__


# ----------------------------------------------------------------------------
# File-system helpers


def _matches_any(name, patterns):
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def list_dir_recursively_with_ignore(dir_path, ignores=None, add_base_to_relative=False):
    """`(absolute-ish path, relative path)` of every file under `dir_path`, skipping `fnmatch` patterns in
    `ignores` (matching directories are not descended into)."""
    assert os.path.isdir(dir_path), f"not a directory: {dir_path}"
    patterns = () if ignores is None else tuple(ignores)
    base_name = os.path.basename(os.path.normpath(dir_path))

    def relative(path):
        rel = os.path.relpath(path, dir_path)
        return os.path.join(base_name, rel) if add_base_to_relative else rel

    listing = []
    for walk_root, subdirs, file_names in os.walk(dir_path, topdown=True):
        # os.walk descends into whatever is left in `subdirs`, so pruning must edit that very list.
        subdirs[:] = [name for name in subdirs if not _matches_any(name, patterns)]
        kept = (os.path.join(walk_root, name) for name in file_names if not _matches_any(name, patterns))
        listing.extend((path, relative(path)) for path in kept)
    return listing


def copy_files_and_create_dirs(files):
    """Copy each `(src, dst)` pair, creating missing parent directories of `dst`."""
    for src, dst in files:
        parent = os.path.dirname(dst)
        if parent:
            os.makedirs(parent, exist_ok=True)
        shutil.copyfile(src, dst)


# ----------------------------------------------------------------------------
# URLs

# Bodies shorter than this may be a Google Drive HTML page rather than the requested file.
_SMALL_BODY_BYTES = 8192


class DownloadError(IOError):
    """A URL could not be fetched; the message says where to place a manually downloaded copy."""


def is_url(obj, allow_file_urls=False):
    """True iff `obj` is a string that looks like a network URL (`file://` counts only if allowed)."""
    if not isinstance(obj, str) or "://" not in obj:
        return False
    if allow_file_urls and obj.startswith("file://"):
        return True
    try:
        res = urllib.parse.urlparse(obj)
        if not res.scheme or not res.netloc or "." not in res.netloc:
            return False
        res = urllib.parse.urlparse(urllib.parse.urljoin(obj, "/"))
        if not res.scheme or not res.netloc or "." not in res.netloc:
            return False
    except Exception:
        return False
    return True


def _file_url_to_path(url):
    """Local file name of a `file://` URL (host dropped, no percent-decoding, `/C:/...` → `C:/...`)."""
    filename = urllib.parse.urlparse(url).path
    if re.match(r"^/[a-zA-Z]:", filename):
        filename = filename[1:]
    return filename


def _safe_file_name(name):
    return re.sub(r"[^0-9a-zA-Z._-]", "_", name)


def url_cache_path(url, cache_dir=None):
    """Where `open_url` looks for (and stores) the cached copy of `url`.

    Any file named `<md5 of url>_<anything>` in the cache directory is accepted; this returns the name derived
    from the URL itself, which is what a manual download should be saved as.
    """
    if cache_dir is None:
        cache_dir = make_cache_dir_path("downloads")
    url_md5 = hashlib.md5(url.encode("utf-8")).hexdigest()
    return os.path.join(cache_dir, url_md5 + "_" + _safe_file_name(url))


def _download_error_message(url, cache_dir, cache, exc):
    lines = [f"Could not download {url} ({type(exc).__name__}: {exc})."]
    if cache:
        lines.append(
            f"Download it manually and save it as {url_cache_path(url, cache_dir)} "
            "(any file named '<md5 of the URL>_*' in that directory is used); the next call will find it there."
        )
    else:
        lines.append("Download it manually and pass the local file path instead of the URL.")
    return "\n".join(lines)


def _fetch_url(url, num_attempts, verbose):
    """Download `url`, retrying; returns `(stored file name, body bytes)`."""
    url_name = None
    url_data = None
    with requests.Session() as session:
        if verbose:
            print("Downloading %s ..." % url, end="", flush=True)
        for attempts_left in reversed(range(num_attempts)):
            try:
                with session.get(url) as res:
                    res.raise_for_status()
                    if len(res.content) == 0:
                        raise OSError("No data received")

                    if len(res.content) < _SMALL_BODY_BYTES:
                        content_str = res.content.decode("utf-8")
                        if "download_warning" in res.headers.get("Set-Cookie", ""):
                            pieces = content_str.split('"')
                            links = [html.unescape(link) for link in pieces if "export=download" in link]
                            if len(links) == 1:
                                url = urllib.parse.urljoin(url, links[0])
                                raise OSError("Google Drive virus checker nag")
                        if "Google Drive - Quota exceeded" in content_str:
                            raise OSError("Google Drive download quota exceeded -- please try again later")

                    match = re.search(r'filename="([^"]*)"', res.headers.get("Content-Disposition", ""))
                    url_name = match[1] if match else url
                    url_data = res.content
                    if verbose:
                        print(" done")
                    break
            except KeyboardInterrupt:
                raise
            except Exception:
                if not attempts_left:
                    if verbose:
                        print(" failed")
                    raise
                if verbose:
                    print(".", end="", flush=True)
    return url_name, url_data


def open_url(url, cache_dir=None, num_attempts=10, verbose=True, return_filename=False, cache=True):
    """Open a local path, `file://` URL or network URL as a binary stream (or return a file name).

    Network downloads are cached as `<cache_dir>/<md5 of url>_<name>`, `cache_dir` defaulting to
    `make_cache_dir_path('downloads')`. When the download fails, a `DownloadError` names the URL and the exact
    cache path at which a manually downloaded copy will be picked up.
    """
    assert num_attempts >= 1, f"num_attempts must be >= 1, got {num_attempts}"
    assert not (return_filename and (not cache)), "return_filename=True requires cache=True"

    if not re.match("^[a-z]+://", url):
        return url if return_filename else open(url, "rb")

    if url.startswith("file://"):
        filename = _file_url_to_path(url)
        return filename if return_filename else open(filename, "rb")

    assert is_url(url), f"not a valid URL: {url}"

    if cache_dir is None:
        cache_dir = make_cache_dir_path("downloads")
    url_md5 = hashlib.md5(url.encode("utf-8")).hexdigest()
    if cache:
        # A download in progress elsewhere is a `.tmp` file next to the finished ones; it never counts.
        cache_files = [
            name
            for name in glob.glob(os.path.join(glob.escape(cache_dir), url_md5 + "_*"))
            if not name.endswith(".tmp")
        ]
        if len(cache_files) == 1:
            filename = cache_files[0]
            return filename if return_filename else open(filename, "rb")

    try:
        url_name, url_data = _fetch_url(url, num_attempts, verbose)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise DownloadError(_download_error_message(url, cache_dir, cache, exc)) from exc

    if cache:
        safe_name = _safe_file_name(url_name)
        cache_file = os.path.join(cache_dir, url_md5 + "_" + safe_name)
        os.makedirs(cache_dir, exist_ok=True)
        atomic.atomic_write_bytes(cache_file, url_data)
        if return_filename:
            return cache_file

    return io.BytesIO(url_data)
