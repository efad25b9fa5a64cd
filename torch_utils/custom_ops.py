"""Just-in-time building and loading of native PyTorch extensions ("plugins"), and the ops' optional plugins.

`get_plugin` builds and imports one extension and raises on any failure. `OptionalPlugin` wraps it for an op that
has a pure-PyTorch reference path: build on first use, check the result against that path once, and otherwise warn
once and leave the op on its reference path (docs/compatibility.md, "Ops").

Builds go through `torch.utils.cpp_extension.load` (ninja). When all sources and headers live in one directory,
they are first copied into a cache directory named after an MD5 of their contents and the local GPU model, so
identical sources on the same GPU model reuse one build and edited sources always get a fresh one (ninja does not
track header dependencies of .cu files).
"""

import contextlib
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

# One of 'none', 'brief', 'full'. The training launcher sets 'none' on every rank but 0.
verbosity = "brief"

_VERBOSITY_LEVELS = ("none", "brief", "full")

# nvcc flags of the upfirdn2d and bias_act plugins. The second lets nvcc accept a host compiler newer than the
# ones it was released with, which is common on current distributions and otherwise fails every build.
OPS_CUDA_CFLAGS = ["--use_fast_math", "--allow-unsupported-compiler"]

# Header that every plugin of torch_utils/ops includes besides its own.
OPS_SHARED_HEADERS = ["fast_divisor.h"]

# Loaded extension modules, keyed by module name.
_cached_plugins = dict()


def _cpp_extension():
    """`torch.utils.cpp_extension`, imported on first use: it pulls in setuptools (about half a second), which
    processes that never build a plugin (every CPU-only one) should not pay for."""
    import torch.utils.cpp_extension

    return torch.utils.cpp_extension


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
    cpp_extension = _cpp_extension()
    get_dir = getattr(cpp_extension, "_get_build_directory", None)
    if get_dir is not None:
        return get_dir(module_name, verbose=False)
    # Fallback for PyTorch versions without the private helper: same root, without the python/cuda tag.
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
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


def _under(directory, names):
    """`names` as a list of paths, joined onto `directory` unless it is None."""
    return [name if directory is None else os.path.join(directory, name) for name in names]


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
    module = _cached_plugins.get(module_name)
    if module is not None:
        return module
    sources = _under(source_dir, sources)
    headers = _under(source_dir, headers or ())

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
            module = _cpp_extension().load(
                name=module_name,
                sources=cached_sources,
                build_directory=cached_dir,
                verbose=verbose_build,
                **build_kwargs,
            )
        else:
            module = _cpp_extension().load(name=module_name, sources=sources, verbose=verbose_build, **build_kwargs)
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


class OptionalPlugin:
    """The native kernels of one op, used only where they build and agree with the op's reference path.

    The op asks `available()` before running a CUDA tensor through its kernels. The first call builds the extension
    (`get_plugin`) and runs `self_check()` with the new module installed as `module`; if anything fails, exactly one
    warning says why, `module` stays None and the op keeps to its reference path for the rest of the process.
    Later calls only read the outcome. The op's autograd functions call the kernels through `module`.
    """

    def __init__(self, op_name, module_name, sources, headers, source_dir, self_check=None, **build_kwargs):
        """`sources`/`headers` are file names in `source_dir`; `self_check()` returns None when the installed
        module agrees with the reference path, else a description of the disagreement. `build_kwargs` go to
        `torch.utils.cpp_extension.load`."""
        self.op_name = op_name
        self.module_name = module_name
        self.sources = list(sources)
        self.headers = list(headers)
        self.source_dir = source_dir
        self.self_check = self_check
        self.build_kwargs = build_kwargs
        self.module = None  # the extension module, once it has passed its self-check
        self.attempted = False

    def available(self):
        """True iff the kernels are usable; the first call tries to make them so (never raises)."""
        if not self.attempted:
            self.attempted = True
            self.module = self._load()
        return self.module is not None

    def build(self):
        """Build (or reuse) and import the extension as the op does, without the self-check; raises on failure."""
        return get_plugin(
            module_name=self.module_name,
            sources=self.sources,
            headers=self.headers,
            source_dir=self.source_dir,
            **self.build_kwargs,
        )

    def reset(self):
        """Forget the outcome, so the next `available()` tries again."""
        self.module = None
        self.attempted = False

    @contextlib.contextmanager
    def installed(self, candidate):
        """Let the op's kernels call `candidate` inside the block; the previous module is back afterwards."""
        previous, self.module = self.module, candidate
        try:
            yield candidate
        finally:
            self.module = previous

    def _load(self):
        """The checked extension module, or None after one warning."""
        names = self.sources + self.headers
        missing = [name for name in names if not os.path.isfile(os.path.join(self.source_dir, name))]
        if missing:
            return self._fall_back(f"native sources not found in {self.source_dir}: {', '.join(missing)}")
        try:
            candidate = self.build()
        except Exception:
            return self._fall_back(traceback.format_exc())
        problem = self._disagreement(candidate)
        if problem is not None:
            # Attributed to the op's caller: above it are the op's function, available() and this method.
            warnings.warn(
                f"The CUDA kernels for {self.op_name} built but disagree with the reference implementation on a "
                f"self-check; using the reference implementation. Details: {problem}",
                stacklevel=4,
            )
            return None
        return candidate

    def _disagreement(self, candidate):
        if self.self_check is None:
            return None
        try:
            with self.installed(candidate):
                return self.self_check()
        except Exception:
            return traceback.format_exc()

    def _fall_back(self, details):
        # The reference's wording. Attributed to the op's caller (above it: the op, available(), _load(), here).
        warnings.warn(
            f"Failed to build CUDA kernels for {self.op_name}. Falling back to slow reference implementation. "
            f"Details:\n\n{details}",
            stacklevel=5,
        )
        return None


def op_plugin(op_name, op_file, self_check):
    """The `OptionalPlugin` of the op module `op_file` (its `__file__`) in torch_utils/ops.

    By convention the extension is `<op_name>_plugin`, built from `<op_name>.cpp`, `<op_name>.cu`, `<op_name>.h` and
    the shared headers, all next to `op_file`, with `OPS_CUDA_CFLAGS`.
    """
    return OptionalPlugin(
        op_name=op_name,
        module_name=f"{op_name}_plugin",
        sources=[f"{op_name}.cpp", f"{op_name}.cu"],
        headers=[f"{op_name}.h", *OPS_SHARED_HEADERS],
        source_dir=os.path.dirname(os.path.abspath(op_file)),
        self_check=self_check,
        extra_cuda_cflags=OPS_CUDA_CFLAGS,
    )
