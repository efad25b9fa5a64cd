"""Rebuilding pickled persistent objects from this project's own classes, without running the code they carry.

A persistent object pickles as `_reconstruct_persistent_obj(meta)` (docs/compatibility.md, "Pickles"), `meta`
holding the source of its defining module, the class name and the instance state. In safe mode the unpickler turns
each such call into a `PendingObject(meta)`; `rebuild_pending(data)` then replaces every pending object in the
loaded containers by an instance of this project's class of that name:

1. The embedded source is parsed (never executed) to see which module it is: the one of `PROJECT_MODULES` whose
   persistent classes it all defines. StyleGAN3 code and anything else is `UnsupportedNetworkError`.
2. The class is constructed with the recorded `_init_args` / `_init_kwargs` (outside the global RNG stream).
3. Its module tree is matched with the pickled one: at every level the same submodule names and classes, the same
   parameter and buffer names, shapes and dtypes (else `NetworkMismatchError`). The pickled tensors (with their
   `requires_grad` flags) and `training` flags then replace the constructed ones, so the object has exactly the
   pickled state.
Every module whose embedded source differs from this project's own is reported in the returned notes.
"""

import ast
import importlib

import torch

import dnnlib
from torch_utils import persistence
from training.pickles import NetworkMismatchError, UnsupportedNetworkError, UnsupportedPickleError

# The modules whose persistent classes snapshots hold (networks with their layers, the augmentation pipeline).
PROJECT_MODULES = ("training.networks", "training.augment")
# What marks StyleGAN3 code (training/networks_stylegan3.py): its Fourier-feature input layer and custom op.
_STYLEGAN3_CLASS = "SynthesisInput"
_STYLEGAN3_OP = "filtered_lrelu"
_MAX_LISTED_CLASSES = 6
# Deeper containers than any snapshot has (a crafted file could otherwise exhaust the recursion limit).
_MAX_NESTING = 64


class PendingObject:
    """A persistent object as unpickled in safe mode: its `meta`, waiting for `rebuild_pending`."""

    __slots__ = ("meta",)

    def __init__(self, meta):
        self.meta = meta


# ----------------------------------------------------------------------------
# Which of our modules an embedded source is.


def project_classes() -> dict:
    """{module name: {class name: persistent class}} for `PROJECT_MODULES` (imported on first use)."""
    found = {}
    for name in PROJECT_MODULES:
        module = importlib.import_module(name)
        found[name] = {key: cls for key, cls in vars(module).items() if persistence.is_persistent(cls)}
    return found


# Parsed sources (a snapshot has one or two distinct ones; a few are kept for processes that load many files).
_source_class_cache = {}
_SOURCE_CACHE_SIZE = 8


def source_classes(module_src: str) -> frozenset:
    """Names of the classes defined at the top level of `module_src` (parsed with `ast`, not run)."""
    if module_src not in _source_class_cache:
        if len(_source_class_cache) >= _SOURCE_CACHE_SIZE:
            _source_class_cache.clear()
        try:
            tree = ast.parse(module_src)
            names = frozenset(node.name for node in tree.body if isinstance(node, ast.ClassDef))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            names = frozenset()
        _source_class_cache[module_src] = names
    return _source_class_cache[module_src]


def own_source(module_name: str) -> str:
    """The source text of one of our modules, as its persistent classes embed it."""
    return persistence._module_to_src(importlib.import_module(module_name))


def identify(module_src, class_name, what="the network") -> tuple:
    """(module name, our class) for a persistent object `what` of `class_name` whose module source is `module_src`."""
    if not isinstance(module_src, str) or not isinstance(class_name, str):
        raise UnsupportedNetworkError(f"{what} is a persistent object without module source or class name")
    defined = source_classes(module_src)
    for module_name, classes in project_classes().items():
        if class_name in classes and (module_src == own_source(module_name) or set(classes) <= defined):
            return module_name, classes[class_name]
    if _STYLEGAN3_CLASS in defined or _STYLEGAN3_OP in module_src:
        raise UnsupportedNetworkError(
            f"{what} is a StyleGAN3 network (class {class_name} of training/networks_stylegan3.py), which this "
            "project does not support (it implements StyleGAN2-ADA)"
        )
    listed = ", ".join(sorted(defined)[:_MAX_LISTED_CLASSES]) + (", ..." if len(defined) > _MAX_LISTED_CLASSES else "")
    raise UnsupportedNetworkError(
        f"{what} is a {class_name} from code that is not one of this project's modules "
        f"({', '.join(PROJECT_MODULES)}; that code defines {listed or 'no classes'}); not supported"
    )


# ----------------------------------------------------------------------------
# Construction and adoption of the pickled state.


def construct(cls, args, kwargs, what):
    """`cls(*args, **kwargs)` without drawing from the global RNGs; a failure is `NetworkMismatchError`."""
    if not isinstance(args, tuple) or not isinstance(kwargs, dict) or not all(type(k) is str for k in kwargs):
        raise NetworkMismatchError(f"{what}: the recorded constructor arguments are not a tuple and a dict")
    try:
        with torch.random.fork_rng(devices=[]):
            return cls(*args, **kwargs)
    except Exception as exc:
        message = " ".join(str(exc).split())
        raise NetworkMismatchError(
            f"{what}: this project's {cls.__name__} cannot be built with the recorded arguments "
            f"({type(exc).__name__}: {message})"
        ) from exc


def _describe_tensors(tensors: dict) -> str:
    return ", ".join(f"{k} {list(v.shape)}" if v is not None else f"{k} None" for k, v in tensors.items()) or "none"


def _adopt_tensors(kind, ours: dict, stored, what, tensor_type):
    """Replace the constructed tensors `ours` (a module's `_parameters` or `_buffers`) by the pickled ones."""
    if not isinstance(stored, dict) or set(stored) != set(ours):
        found = _describe_tensors(stored) if isinstance(stored, dict) else type(stored).__name__
        raise NetworkMismatchError(
            f"{what}: the file has {kind} {found}, this project's code {_describe_tensors(ours)}"
        )
    for name, mine in ours.items():
        theirs = stored[name]
        if mine is None and theirs is None:
            continue
        if (
            mine is None
            or not isinstance(theirs, tensor_type)
            or theirs.shape != mine.shape
            or theirs.dtype != mine.dtype
        ):
            found = (
                f"{list(theirs.shape)} {theirs.dtype}" if isinstance(theirs, torch.Tensor) else type(theirs).__name__
            )
            expected = f"{list(mine.shape)} {mine.dtype}" if mine is not None else "None"
            raise NetworkMismatchError(f"{what}.{name}: the file has {found}, this project's code {expected}")
        ours[name] = theirs


def _check_child(child, pending, what):
    if not isinstance(pending, PendingObject):
        found = "nothing" if pending is None else f"a {type(pending).__name__}"
        raise NetworkMismatchError(f"{what}: the file has {found}, this project's code a {type(child).__name__}")
    meta = pending.meta
    _module_name, cls = identify(meta.get("module_src"), meta.get("class_name"), what)
    if cls is not type(child):
        raise NetworkMismatchError(
            f"{what}: the file has a {meta.get('class_name')}, this project's code a {type(child).__name__}"
        )


def adopt(module: torch.nn.Module, state, what: str) -> None:
    """Give the constructed `module` (and its submodules) the pickled `state`, after checking that it matches."""
    if not isinstance(state, dict) or not all(k in state for k in ("_parameters", "_buffers", "_modules")):
        raise NetworkMismatchError(f"{what}: the pickled state is not that of a torch.nn.Module")
    _adopt_tensors("parameters", module._parameters, state["_parameters"], what, torch.nn.Parameter)
    _adopt_tensors("buffers", module._buffers, state["_buffers"], what, torch.Tensor)
    stored = state["_modules"]
    if not isinstance(stored, dict) or set(stored) != set(module._modules):
        found = ", ".join(stored) if isinstance(stored, dict) else type(stored).__name__
        ours = ", ".join(module._modules)
        raise NetworkMismatchError(
            f"{what}: the file has submodules {found or 'none'}, this project's code {ours or 'none'}"
        )
    for name, child in module._modules.items():
        if child is None and stored[name] is None:
            continue
        _check_child(child, stored[name], f"{what}.{name}")
        adopt(child, _meta_state(stored[name].meta, f"{what}.{name}"), f"{what}.{name}")
    module.training = bool(state.get("training", module.training))


def _meta_state(meta, what):
    state = meta.get("state") if isinstance(meta, dict) else None
    if not isinstance(state, dict):
        raise NetworkMismatchError(f"{what}: the pickled object has no state dict")
    return state


def _prepared_meta(meta, what):
    """`meta` as `_reconstruct_persistent_obj` sees it (EasyDicts, import hooks applied), checked."""
    if not isinstance(meta, dict):
        raise UnsupportedNetworkError(f"{what}: the persistent object's record is a {type(meta).__name__}, not a dict")
    meta = dnnlib.EasyDict(meta)
    for hook in persistence._import_hooks:
        meta = hook(meta)
        assert meta is not None, f"import hook {hook!r} returned None instead of the meta"
    if meta.get("type") != "class" or meta.get("version") != persistence._version:
        raise UnsupportedNetworkError(
            f"{what}: persistent object of type {meta.get('type')!r}, format version {meta.get('version')!r}; "
            f"expected 'class', version {persistence._version}"
        )
    return meta


def rebuild(pending: PendingObject, what: str, notes: set):
    """Our object for one pending persistent object; adds to `notes` the modules whose embedded source differs."""
    meta = _prepared_meta(pending.meta, what)
    module_name, cls = identify(meta.module_src, meta.class_name, what)
    if not issubclass(cls, torch.nn.Module):
        raise UnsupportedNetworkError(f"{what}: {meta.class_name} is not a torch.nn.Module")
    state = _meta_state(meta, what)
    obj = construct(cls, state.get("_init_args", ()), state.get("_init_kwargs", {}), what)
    adopt(obj, state, what)
    if meta.module_src != own_source(module_name):
        notes.add(module_name)
    return obj


def rebuild_pending(data, notes: set, what: str = "", _memo=None, _depth=0):
    """`data` with every `PendingObject` inside dicts, lists and tuples replaced by its rebuilt object."""
    memo = {} if _memo is None else _memo
    if _depth > _MAX_NESTING:
        where = what.split("[")[0] or "the data"
        raise UnsupportedPickleError(f"not a network pickle ({where}: containers nested more than {_MAX_NESTING} deep)")
    depth = _depth + 1
    if isinstance(data, PendingObject):
        if id(data) not in memo:
            memo[id(data)] = rebuild(data, what or "the network", notes)
        return memo[id(data)]
    if isinstance(data, dict):
        for key, value in data.items():
            data[key] = rebuild_pending(value, notes, str(key) if not what else f"{what}[{key!r}]", memo, depth)
        return data
    if isinstance(data, list):
        data[:] = [rebuild_pending(value, notes, f"{what}[{i}]", memo, depth) for i, value in enumerate(data)]
        return data
    if type(data) is tuple:
        return tuple(rebuild_pending(value, notes, f"{what}[{i}]", memo, depth) for i, value in enumerate(data))
    return data


def module_file(module_name: str) -> str:
    """Repository-relative file name of one of our modules, e.g. `training/networks.py` (for messages)."""
    return module_name.replace(".", "/") + ".py"
