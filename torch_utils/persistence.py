"""Persistent classes: instances pickle together with the source code of the module that defines their class.

Unpickling executes that source in a private module (once per distinct source text per process) and rebuilds the
object from the class found there, so network snapshots keep working when the project's code changes or is
absent. The pickled form is fixed (docs/compatibility.md, "Foundation") and must stay compatible with reference
snapshots: a single call `torch_utils.persistence._reconstruct_persistent_obj(meta)` with
`meta = {'type': 'class', 'version': 6, 'module_src': str, 'class_name': str, 'state': dict}`.
"""

import copy
import functools
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
    home = sys.modules[orig_class.__module__]
    # Captured now: the source must describe the class as it was defined, whatever happens to the file later.
    source = _module_to_src(home)
    class_name = orig_class.__name__

    class Persistent(orig_class):
        _persistent_module_src = source
        _persistent_class_name = class_name

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)
            assert class_name in vars(home), f"persistent class {class_name} is not a global of {home.__name__}"
            _check_pickleable(self.__reduce__())  # fail now rather than when a snapshot is written

        init_args = property(_copy_of_init_args)
        init_kwargs = property(_copy_of_init_kwargs)

        def __reduce__(self):
            return _persistent_reduction(self, super().__reduce__())

    Persistent.__name__ = class_name
    _decorators.add(Persistent)
    return Persistent


def _copy_of_init_args(obj):
    """`init_args` of a persistent object: a deep copy of its positional constructor arguments (a tuple)."""
    return copy.deepcopy(obj._init_args)


def _copy_of_init_kwargs(obj):
    """`init_kwargs` of a persistent object: a deep copy of its keyword constructor arguments, as an `EasyDict`
    (loaders read them by attribute and rebuild the object with `type(obj)(**obj.init_kwargs)`)."""
    return dnnlib.EasyDict(copy.deepcopy(obj._init_kwargs))


def _persistent_reduction(obj, default):
    """Turn the default `__reduce__` result of a persistent object into the fixed pickled form (module docstring).

    The object's state moves into the meta record, so pickle sees one call `_reconstruct_persistent_obj(meta)`
    with nothing left to apply afterwards.
    """
    parts = list(default)
    parts.extend([None] * (3 - len(parts)))  # the state slot may be missing
    constructor, _, state = parts[:3]
    # A persistent subclass of a persistent class: the parent's reduction already did the work (and used this
    # class's name and source through `obj`).
    if constructor is _reconstruct_persistent_obj:
        return tuple(parts)
    meta = {  # key order is part of the format
        "type": "class",
        "version": _version,
        "module_src": obj._persistent_module_src,
        "class_name": obj._persistent_class_name,
        "state": state,
    }
    return (_reconstruct_persistent_obj, (meta,), None, *parts[3:])


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
    namespace = vars(_src_to_module(meta.module_src))
    assert meta.type == "class", f"persistent object has type {meta.type!r}, expected 'class'"
    assert meta.class_name in namespace, f"embedded source does not define class {meta.class_name!r}"
    cls = persistent_class(namespace[meta.class_name])
    obj = cls.__new__(cls)  # the constructor must not run: the state is restored instead
    _restore_state(obj, meta.state)
    return obj


def _restore_state(obj, state):
    """Apply unpickled `state` to `obj` as pickle's BUILD step would (without its slot-state form).

    `torch.nn.Module.__setstate__` matters here: it also adds hook dictionaries missing from pickles written by
    older PyTorch.
    """
    restore = getattr(obj, "__setstate__", None)
    if callable(restore):
        restore(state)
    elif state:
        obj.__dict__.update(state)


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
        try:
            exec(compile(src, filename, "exec"), module.__dict__)
        except BaseException:
            # A half-executed module must not be found by the next load of the same source.
            del sys.modules[module_name], _module_to_src_dict[module], _src_to_module_dict[src]
            raise
    return module


# ----------------------------------------------------------------------------


def _check_pickleable(obj):
    """Pickle `obj` into a throw-away buffer, skipping values known to be picklable (cheap); errors propagate."""
    with io.BytesIO() as sink:
        pickle.dump(_without_known_pickleables(obj), sink)


@functools.singledispatch
def _without_known_pickleables(value):
    """Copy of `value` in which everything known to pickle fine is `None` (containers become nested lists).

    Only what is left can make pickling fail, so test-pickling the copy is cheap even for large networks.
    """
    type_name = f"{type(value).__module__}.{type(value).__name__}"
    if type_name in _PICKLEABLE_TYPE_NAMES or is_persistent(value):
        return None
    return value


@_without_known_pickleables.register(list)
@_without_known_pickleables.register(tuple)
@_without_known_pickleables.register(set)
def _(value):
    return [_without_known_pickleables(item) for item in value]


@_without_known_pickleables.register(dict)
def _(value):
    return [[_without_known_pickleables(key), _without_known_pickleables(item)] for key, item in value.items()]


@_without_known_pickleables.register(str)
@_without_known_pickleables.register(int)  # also covers bool
@_without_known_pickleables.register(float)  # also covers NumPy float64 scalars
@_without_known_pickleables.register(bytes)
@_without_known_pickleables.register(bytearray)
def _(_value):
    return None
