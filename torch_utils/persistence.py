"""Persistent classes: instances pickle together with the source code of the module that defines their class.

Unpickling executes that source in a private module (once per distinct source text per process) and rebuilds the
object from the class found there, so network snapshots keep working when the project's code changes or is
absent. The pickled form is fixed by foundation spec §2.4 and must stay compatible with reference snapshots:
a single call `torch_utils.persistence._reconstruct_persistent_obj(meta)` with
`meta = {'type': 'class', 'version': 6, 'module_src': str, 'class_name': str, 'state': dict}`.
"""

import copy
import inspect
import io
import linecache
import pickle
import sys
import types
import uuid

import dnnlib

# Format version written into every pickle; reference snapshots carry 6.
_version = 6

# Every class produced by persistent_class().
_decorators = set()

# Functions applied, in order, to the meta of every object being reconstructed.
_import_hooks = []

# Source registry, covering both real modules and modules created from pickled source.
_module_to_src_dict = dict()
_src_to_module_dict = dict()

_MODULE_NAME_PREFIX = "_imported_module_"

# Types whose instances pickle without trouble and need not be test-pickled (fully-qualified type names).
_PICKLEABLE_TYPE_NAMES = ("numpy.ndarray", "torch.Tensor", "torch.nn.parameter.Parameter")

# ----------------------------------------------------------------------------


def persistent_class(orig_class):
    """Class decorator: make instances of `orig_class` pickle with the source of its defining module.

    The returned class subclasses `orig_class`, keeps its name, records deep copies of the constructor arguments
    (`init_args`, `init_kwargs`) and checks at construction time that the instance can be pickled. It may also be
    applied just-in-time to an already-defined class. Applying it to a persistent class is a no-op.
    """
    assert isinstance(orig_class, type), f"persistent_class expects a class, got {type(orig_class).__name__}"
    if is_persistent(orig_class):
        return orig_class

    assert orig_class.__module__ in sys.modules, f"module {orig_class.__module__!r} of {orig_class} is not loaded"
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src(orig_module)
    orig_class_name = orig_class.__name__

    class PersistentWrapper(orig_class):
        _persistent_module_src = orig_module_src
        _persistent_class_name = orig_class_name

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)
            assert orig_class_name in orig_module.__dict__, (
                f"persistent class {orig_class_name} must be reachable by name in module {orig_module.__name__}"
            )
            # Fail now, not later when a snapshot is written.
            _check_pickleable(self.__reduce__())

        @property
        def init_args(self):
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            # A persistent subclass of a persistent class: the parent's __reduce__ already did the work (and used
            # this class's name and source through `self`).
            if fields[0] is _reconstruct_persistent_obj:
                return tuple(fields)
            meta = dict(
                type="class",
                version=_version,
                module_src=self._persistent_module_src,
                class_name=self._persistent_class_name,
                state=fields[2],
            )
            fields[0] = _reconstruct_persistent_obj
            fields[1] = (meta,)
            fields[2] = None
            return tuple(fields)

    PersistentWrapper.__name__ = orig_class_name
    _decorators.add(PersistentWrapper)
    return PersistentWrapper


def is_persistent(obj):
    """True if `obj` is a persistent class, or an instance of exactly such a class."""
    try:
        if obj in _decorators:
            return True
    except TypeError:
        pass
    return type(obj) in _decorators


def import_hook(hook):
    """Register `hook(meta) -> meta`, applied to every persistent object being unpickled (e.g. to patch old source).

    `meta` is an `EasyDict` with `type`, `version`, `module_src`, `class_name` and `state`.
    """
    assert callable(hook), f"import_hook expects a callable, got {type(hook).__name__}"
    _import_hooks.append(hook)


# ----------------------------------------------------------------------------


def _reconstruct_persistent_obj(meta):
    """Rebuild a persistent object from its pickled meta (the unpickling side of `__reduce__`)."""
    meta = dnnlib.EasyDict(meta)
    if meta.state is not None:
        meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        assert meta is not None, f"import hook {hook!r} returned None instead of the meta"

    assert meta.version == _version, f"persistent object has format version {meta.version}, expected {_version}"
    module = _src_to_module(meta.module_src)

    assert meta.type == "class", f"persistent object has type {meta.type!r}, expected 'class'"
    assert meta.class_name in module.__dict__, f"embedded source does not define class {meta.class_name!r}"
    orig_class = module.__dict__[meta.class_name]
    decorator_class = persistent_class(orig_class)
    obj = decorator_class.__new__(decorator_class)

    # nn.Module.__setstate__ also adds hook dictionaries missing from pickles written by older PyTorch.
    setstate = getattr(obj, "__setstate__", None)
    if callable(setstate):
        setstate(meta.state)
    elif meta.state is not None:
        obj.__dict__.update(meta.state)
    return obj


# ----------------------------------------------------------------------------


def _module_to_src(module):
    """Source text of `module`, cached in both registry directions."""
    src = _module_to_src_dict.get(module, None)
    if src is None:
        src = inspect.getsource(module)
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
    return src


def _src_to_module(src):
    """Module for source text `src`, executing it in a fresh module the first time this exact text is seen."""
    module = _src_to_module_dict.get(src, None)
    if module is None:
        module_name = _MODULE_NAME_PREFIX + uuid.uuid4().hex
        module = types.ModuleType(module_name)
        # Registered before execution: decorators inside the source look up their module and its source.
        sys.modules[module_name] = module
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
        # Make tracebacks from embedded code show its lines.
        filename = f"<{module_name}>"
        linecache.cache[filename] = (len(src), None, src.splitlines(keepends=True), filename)
        exec(compile(src, filename, "exec"), module.__dict__)
    return module


# ----------------------------------------------------------------------------


def _check_pickleable(obj):
    """Pickle `obj` into a throw-away buffer, skipping values known to be picklable (cheap); errors propagate."""

    def strip_known(value):
        if isinstance(value, (list, tuple, set)):
            return [strip_known(x) for x in value]
        if isinstance(value, dict):
            return [[strip_known(k), strip_known(v)] for k, v in value.items()]
        if isinstance(value, (str, int, float, bool, bytes, bytearray)):
            return None
        if f"{type(value).__module__}.{type(value).__name__}" in _PICKLEABLE_TYPE_NAMES:
            return None
        if is_persistent(value):
            return None
        return value

    with io.BytesIO() as f:
        pickle.dump(strip_known(obj), f)
