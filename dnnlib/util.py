"""The `dnnlib.util` API that network pickles, the project and users' scripts rely on.

Attribute dicts, console logging, the cache directory, duration formatting, construction by dotted class name and
URL opening. Each section says who needs it; helpers of the reference's `dnnlib.util` that nothing here or in a
pickle calls were left out (docs/compatibility.md, "Foundation" lists what is kept and why).
"""

import glob
import hashlib
import html
import importlib
import io
import os
import re
import sys
import tempfile
import urllib.parse

import numpy as np
import requests

from dnnlib import atomic

# ----------------------------------------------------------------------------
# EasyDict: pickles refer to it by name (`dnnlib.util.EasyDict` holds the networks' `init_kwargs`, the snapshots'
# `training_set_kwargs` and TensorFlow-era stubs); torch_utils and the training code build their kwargs with it.


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
# Logger: train.py and calc_metrics.py tee their console output (log.txt of a training run).


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
# Cache directory: downloads (`open_url`), detector files and dataset statistics (metrics) live under this root,
# documented to users as $DNNLIB_CACHE_DIR (default ~/.cache/dnnlib).

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
# Durations: the training status line and the metric results' `total_time_str`.


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


# ----------------------------------------------------------------------------
# Looking up objects by dotted name: the kwargs dicts of a run (and `training_set_kwargs` stored in snapshots) name
# their class as `class_name`; `construct_class_by_name` builds datasets, networks, losses and optimisers from them.


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


# ----------------------------------------------------------------------------
# URLs: `open_url` reads network pickles and detector files (users' scripts call `dnnlib.util.open_url` with
# `legacy.load_network_pkl`); `DownloadError` says where a manual download goes.

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


def _reject_google_drive_page(text, headers, url):
    """Raise OSError if `text`, a short response body, is a Google Drive page served instead of the file.

    The virus-scan warning page links to a confirmation URL; the error carries it as `retry_url`, and the next
    attempt fetches that instead.
    """
    if "download_warning" in headers.get("Set-Cookie", ""):
        confirm_links = [html.unescape(piece) for piece in text.split('"') if "export=download" in piece]
        if len(confirm_links) == 1:
            nag = OSError("Google Drive virus checker nag")
            nag.retry_url = urllib.parse.urljoin(url, confirm_links[0])
            raise nag
    if "Google Drive - Quota exceeded" in text:
        raise OSError("Google Drive download quota exceeded -- please try again later")


def _download_once(session, url):
    """GET `url`: `(stored file name, body bytes)`, or an exception when the body is not the file."""
    with session.get(url) as response:
        response.raise_for_status()
        body, headers = response.content, response.headers
    if not body:
        raise OSError("No data received")
    if len(body) < _SMALL_BODY_BYTES:
        _reject_google_drive_page(body.decode("utf-8"), headers, url)
    disposition = re.search(r'filename="([^"]*)"', headers.get("Content-Disposition", ""))
    return (disposition[1] if disposition else url), body


def _fetch_url(url, num_attempts, verbose):
    """Download `url` with up to `num_attempts` immediate tries; returns `(stored file name, body bytes)`.

    The last try's exception propagates. Progress goes to stdout when `verbose`: the URL, a dot per failed try,
    then `done` or `failed`.
    """

    def progress(text):
        if verbose:
            print(text, end="", flush=True)

    progress(f"Downloading {url} ...")
    with requests.Session() as session:
        for attempt in range(1, num_attempts + 1):
            try:
                name_and_body = _download_once(session, url)
            except Exception as exc:  # Any failure is retried; KeyboardInterrupt is no Exception and stops at once.
                if attempt == num_attempts:
                    progress(" failed\n")
                    raise
                url = getattr(exc, "retry_url", url)
                progress(".")
            else:
                progress(" done\n")
                return name_and_body


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
