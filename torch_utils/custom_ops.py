"""Just-in-time building and loading of native PyTorch extensions ("plugins").

Native kernels are an optional accelerator: `get_plugin` raises on any build or import failure, and its callers
(the ops modules) catch that, warn once and use their pure-PyTorch reference path instead.

Builds go through `torch.utils.cpp_extension.load` (ninja). When all sources and headers live in one directory,
they are first copied into a cache directory named after an MD5 of their contents and the local GPU model, so
identical sources on the same GPU model reuse one build and edited sources always get a fresh one (ninja does not
track header dependencies of .cu files).
"""

import glob
import hashlib
import os
import re
import shutil
import sys
import traceback
import uuid
import warnings

import torch
import torch.utils.cpp_extension

# One of 'none', 'brief', 'full'. The training launcher sets 'none' on every rank but 0.
verbosity = "brief"

_VERBOSITY_LEVELS = ("none", "brief", "full")

# nvcc flags of the upfirdn2d and bias_act plugins. The second lets nvcc accept a host compiler newer than the
# ones it was released with, which is common on current distributions and otherwise fails every build.
OPS_CUDA_CFLAGS = ["--use_fast_math", "--allow-unsupported-compiler"]

# Loaded extension modules, keyed by module name.
_cached_plugins = dict()

# ----------------------------------------------------------------------------
# Windows: locate the MSVC host compiler when it is not on PATH.

_MSVC_PATTERNS = (
    "C:/Program Files*/Microsoft Visual Studio/*/Professional/VC/Tools/MSVC/*/bin/Hostx64/x64",
    "C:/Program Files*/Microsoft Visual Studio/*/BuildTools/VC/Tools/MSVC/*/bin/Hostx64/x64",
    "C:/Program Files*/Microsoft Visual Studio/*/Community/VC/Tools/MSVC/*/bin/Hostx64/x64",
    "C:/Program Files*/Microsoft Visual Studio */vc/bin",
)


def _find_compiler_bindir():
    """Newest MSVC host-compiler directory matching the first pattern that matches anything, else None."""
    for pattern in _MSVC_PATTERNS:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[-1]
    return None


def _ensure_windows_compiler_on_path():
    if os.system("where cl.exe >nul 2>nul") == 0:
        return
    compiler_bindir = _find_compiler_bindir()
    if compiler_bindir is None:
        raise RuntimeError(
            "Could not find MSVC/GCC/CLANG installation on this computer. "
            f'Check _find_compiler_bindir() in "{__file__}".'
        )
    os.environ["PATH"] += ";" + compiler_bindir


# ----------------------------------------------------------------------------
# Source-hash build cache.


def _get_mangled_gpu_name():
    """Local GPU model as a directory-name-safe string ('cpu' without CUDA)."""
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    return re.sub(r"[^a-z0-9_-]", "-", name)


def _get_build_directory(module_name):
    """PyTorch's extension build directory for `module_name` (created if missing)."""
    get_dir = getattr(torch.utils.cpp_extension, "_get_build_directory", None)
    if get_dir is not None:
        return get_dir(module_name, verbose=False)
    # Fallback for PyTorch versions without the private helper: same root, without the python/cuda tag.
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or torch.utils.cpp_extension.get_default_build_root()
    build_dir = os.path.join(root, module_name)
    os.makedirs(build_dir, exist_ok=True)
    return build_dir


def _source_digest(all_files):
    """MD5 over the contents of `all_files`, in sorted path order."""
    md5 = hashlib.md5()
    for path in sorted(all_files):
        with open(path, "rb") as f:
            md5.update(f.read())
    return md5.hexdigest()


def _materialize_cached_sources(module_name, all_files):
    """Copy `all_files` into `<build dir>/<md5>-<gpu>` (once) and return that directory.

    The copy is staged in a private temporary directory and renamed into place, so concurrent processes never see
    a half-written directory; a process that loses the race discards its copy.
    """
    build_dir = _get_build_directory(module_name)
    cached_dir = os.path.join(build_dir, f"{_source_digest(all_files)}-{_get_mangled_gpu_name()}")
    if not os.path.isdir(cached_dir):
        tmp_dir = os.path.join(build_dir, f"srctmp-{uuid.uuid4().hex}")
        os.makedirs(tmp_dir)
        for path in all_files:
            shutil.copyfile(path, os.path.join(tmp_dir, os.path.basename(path)))
        try:
            os.replace(tmp_dir, cached_dir)
        except OSError:
            # Another process created it first; its copy has identical contents.
            shutil.rmtree(tmp_dir, ignore_errors=True)
            if not os.path.isdir(cached_dir):
                raise
    return cached_dir


# ----------------------------------------------------------------------------


def _status(full_text, brief_text, end="\n"):
    if verbosity == "full":
        print(full_text)
    elif verbosity == "brief":
        print(brief_text, end=end, flush=True)


def get_plugin(module_name, sources, headers=None, source_dir=None, **build_kwargs):
    """Build (if needed) and import the native extension `module_name`; return the module.

    `sources`/`headers` are file names, joined onto `source_dir` when it is given. Extra keyword arguments go to
    `torch.utils.cpp_extension.load` (e.g. `extra_cuda_cflags=['--use_fast_math']`). The result is cached per
    process. Raises on failure; callers are expected to catch that and fall back to their reference path.
    """
    assert verbosity in _VERBOSITY_LEVELS, f"custom_ops.verbosity must be one of {_VERBOSITY_LEVELS}, got {verbosity!r}"
    if headers is None:
        headers = []
    if source_dir is not None:
        sources = [os.path.join(source_dir, fname) for fname in sources]
        headers = [os.path.join(source_dir, fname) for fname in headers]

    if module_name in _cached_plugins:
        return _cached_plugins[module_name]

    setup_text = f'Setting up PyTorch plugin "{module_name}"...'
    _status(setup_text, setup_text + " ", end="")
    verbose_build = verbosity == "full"
    try:
        if os.name == "nt":
            _ensure_windows_compiler_on_path()

        # Target only the local GPU; the build cache key below includes the GPU model for the same reason.
        os.environ["TORCH_CUDA_ARCH_LIST"] = ""

        all_files = list(sources) + list(headers)
        all_dirs = {os.path.dirname(os.path.abspath(path)) for path in all_files}
        if len(all_dirs) == 1:
            cached_dir = _materialize_cached_sources(module_name, all_files)
            cached_sources = [os.path.join(cached_dir, os.path.basename(path)) for path in sources]
            module = torch.utils.cpp_extension.load(
                name=module_name,
                sources=cached_sources,
                build_directory=cached_dir,
                verbose=verbose_build,
                **build_kwargs,
            )
        else:
            module = torch.utils.cpp_extension.load(
                name=module_name, sources=sources, verbose=verbose_build, **build_kwargs
            )
        # load() normally registers the module; make sure later imports by name find it.
        sys.modules.setdefault(module_name, module)
    except BaseException:
        if verbosity == "brief":
            print("Failed!", flush=True)
        raise

    _status(f'Done setting up PyTorch plugin "{module_name}".', "Done.")
    _cached_plugins[module_name] = module
    return module


# ----------------------------------------------------------------------------


def load_optional_plugin(op_name, module_name, sources, headers, source_dir, self_check=None, **build_kwargs):
    """The native plugin of op `op_name`, or None after exactly one warning saying why; never raises.

    Missing sources and build errors give the reference's "Failed to build CUDA kernels for ..." warning with the
    details. `self_check(plugin)` (optional) runs the plugin once on a small input against the op's reference path
    and returns None when they agree, or a description of the disagreement; a plugin that disagrees is not used.
    """
    fallback = f"Failed to build CUDA kernels for {op_name}. Falling back to slow reference implementation."
    missing = [name for name in list(sources) + list(headers) if not os.path.isfile(os.path.join(source_dir, name))]
    if missing:
        details = f"native sources not found in {source_dir}: {', '.join(missing)}"
        warnings.warn(f"{fallback} Details:\n\n{details}", stacklevel=3)
        return None
    try:
        plugin = get_plugin(
            module_name=module_name, sources=sources, headers=headers, source_dir=source_dir, **build_kwargs
        )
    except Exception:
        warnings.warn(f"{fallback} Details:\n\n{traceback.format_exc()}", stacklevel=3)
        return None
    if self_check is not None:
        try:
            problem = self_check(plugin)
        except Exception:
            problem = traceback.format_exc()
        if problem is not None:
            warnings.warn(
                f"The CUDA kernels for {op_name} built but disagree with the reference implementation on a "
                f"self-check; using the reference implementation. Details: {problem}",
                stacklevel=3,
            )
            return None
    return plugin
