"""An allow-listing unpickler: loading a file never runs code that the file chooses.

Standard unpickling calls whatever global a pickle names (`os.system` in a crafted `__reduce__`, or any class whose
state setter does something). `SafeUnpickler` resolves only the globals of a `Policy` and checks every step that
would call something or set an object's state:

- GLOBAL / STACK_GLOBAL / INST / EXT: the name must be in `policy.globals` (refused before anything is imported);
- REDUCE / NEWOBJ / NEWOBJ_EX / INST / OBJ: the callee must be in `policy.callables`;
- BUILD (state setting): only for the exact types in `policy.builders`, each with its own validating setter;
- persistent ids and out-of-band buffers are refused.

Anything else raises `RefusedPickleError`, whose message (one line, without the file name) names what was refused.
The building blocks below cover what network pickles and statistics caches hold: NumPy arrays and scalars of plain
numeric dtypes (no object arrays: they would smuggle in arbitrary objects, and a NumPy dtype's pickled state can
turn a number type into an object type), PyTorch tensors and parameters (the storage bytes are read with
`torch.load(weights_only=True)`), `collections.OrderedDict`, `dnnlib.EasyDict` and a few builtin containers.

It subclasses the pure-Python `pickle._Unpickler`, the only one whose steps can be overridden one by one; for
network pickles (large tensors stored as single byte strings) it is as fast as the C unpickler.
"""

import _compat_pickle
import codecs
import collections
import dataclasses
import io
import pickle
import struct
import sys
from collections.abc import Mapping

import numpy as np
import torch

import dnnlib

try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import scalar as _np_scalar


class RefusedPickleError(pickle.UnpicklingError):
    """The pickle asks for something outside the policy; the message (one line) says what."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """What a `SafeUnpickler` accepts.

    globals: (module, name) -> the object pushed for that global (often a checking wrapper of the real one).
    callables: objects that REDUCE / NEWOBJ / INST / OBJ may call.
    builders: exact type -> `fn(obj, state)` applied by BUILD (it must validate `state`).
    """

    globals: Mapping = dataclasses.field(default_factory=dict)
    callables: frozenset = frozenset()
    builders: Mapping = dataclasses.field(default_factory=dict)

    def __or__(self, other: "Policy") -> "Policy":
        return Policy(
            globals={**self.globals, **other.globals},
            callables=self.callables | other.callables,
            builders={**self.builders, **other.builders},
        )


def _describe(obj) -> str:
    """How a refusal names `obj`: `module.qualname` for classes and functions, else its type."""
    if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    return f"a {type(obj).__name__} object"


# ----------------------------------------------------------------------------
# NumPy: arrays and scalars of plain numeric dtypes only.

# Kinds allowed: bool, signed and unsigned integers, floats, complex. Their native-order dtypes are immutable
# singletons (BUILD cannot change them), unlike object, string, structured and byte-swapped dtypes.
_NUMERIC_KINDS = "biufc"
_NUMERIC_TYPE_CODES = "?bBhHiIlLqQefdgFDG"
_NUMERIC_DTYPE_TYPES = frozenset(type(np.dtype(code)) for code in _NUMERIC_TYPE_CODES)


def _is_numeric_dtype(dtype) -> bool:
    return (
        isinstance(dtype, np.dtype)
        and dtype.kind in _NUMERIC_KINDS
        and not dtype.hasobject
        and dtype.fields is None
        and dtype.subdtype is None
        and dtype is np.dtype(dtype.str)  # the shared singleton, not a modifiable copy
    )


def _refuse_dtype(what) -> RefusedPickleError:
    return RefusedPickleError(
        f"it holds a NumPy array or scalar of dtype {what}; only plain numeric dtypes (bool, int, float, complex) "
        "are accepted"
    )


def _numeric_dtype(spec, align=False, copy=False):
    """`numpy.dtype(spec, align, copy)` for a plain numeric type name; always the shared singleton (never a copy)."""
    if type(spec) is not str:
        raise _refuse_dtype(_describe(spec))
    try:
        dtype = np.dtype(spec)
    except TypeError as exc:
        raise _refuse_dtype(repr(spec)) from exc
    if not _is_numeric_dtype(dtype):
        raise _refuse_dtype(repr(spec))
    return dtype


_NATIVE_ORDERS = ("=", "|", "<" if sys.byteorder == "little" else ">")


def _build_dtype(dtype, state):
    """BUILD of a singleton numeric dtype. NumPy ignores the state of its shared dtypes, so a state that would change
    the dtype (another byte order, fields, flags) is refused instead of being dropped silently."""
    plain = isinstance(state, tuple) and len(state) >= 8 and state[1] in _NATIVE_ORDERS
    if not (plain and state[2] is None and state[3] is None and state[4] is None and state[7] == dtype.flags):
        raise _refuse_dtype(f"{dtype!r} with the state {state!r}")


def _new_array(subtype, _shape=None, _dtype=None):
    """`numpy.core.multiarray._reconstruct`: an empty plain ndarray, which the following BUILD fills."""
    if subtype is not np.ndarray:
        raise RefusedPickleError(f"it rebuilds a NumPy array of type {_describe(subtype)}; only numpy.ndarray is")
    return np.empty((0,), dtype=np.uint8)


def _build_array(array, state):
    """BUILD of an ndarray: `(version, shape, dtype, is_fortran, raw bytes)` with a plain numeric dtype."""
    fields = state[1:] if isinstance(state, tuple) and len(state) == 5 else state
    if not (isinstance(fields, tuple) and len(fields) == 4):
        raise RefusedPickleError(f"it sets a NumPy array's state to {_describe(state)}")
    shape, dtype, _is_fortran, data = fields
    if not _is_numeric_dtype(dtype):
        raise _refuse_dtype(repr(dtype) if isinstance(dtype, np.dtype) else _describe(dtype))
    if type(data) not in (bytes, bytearray) or not isinstance(shape, tuple):
        raise RefusedPickleError("it sets a NumPy array's data to something other than bytes")
    array.__setstate__(state)


def _numeric_scalar(dtype, data=None):
    """`numpy.core.multiarray.scalar` for a plain numeric dtype and its raw bytes."""
    if not _is_numeric_dtype(dtype):
        raise _refuse_dtype(repr(dtype) if isinstance(dtype, np.dtype) else _describe(dtype))
    if type(data) is not bytes or len(data) != dtype.itemsize:
        raise RefusedPickleError(f"it holds a NumPy scalar whose data is not {dtype.itemsize} bytes")
    return _np_scalar(dtype, data)


def _array_from_buffer(buf, dtype, shape, order):
    """`numpy.core.numeric._frombuffer` (protocol 5): a plain numeric array from in-band bytes."""
    if not _is_numeric_dtype(dtype):
        raise _refuse_dtype(repr(dtype) if isinstance(dtype, np.dtype) else _describe(dtype))
    if type(buf) not in (bytes, bytearray) or not isinstance(shape, tuple) or order not in ("C", "F"):
        raise RefusedPickleError("it rebuilds a NumPy array from something other than bytes")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


NUMPY = Policy(
    globals={
        **{(module, "_frombuffer"): _array_from_buffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
        **{(module, "_reconstruct"): _new_array for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
        **{(module, "scalar"): _numeric_scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
        ("numpy", "ndarray"): np.ndarray,  # an argument of _reconstruct, never called
        ("numpy", "dtype"): _numeric_dtype,
    },
    callables=frozenset([_new_array, _numeric_scalar, _numeric_dtype, _array_from_buffer]),
    builders={np.ndarray: _build_array, **{dtype_type: _build_dtype for dtype_type in _NUMERIC_DTYPE_TYPES}},
)

# ----------------------------------------------------------------------------
# Builtin containers and the byte-string helpers of protocols 0-2.


def _empty_bytes(*args):
    """`bytes()`, as protocol 2 writes an empty byte string; any argument (e.g. a huge size) is refused."""
    if args:
        raise RefusedPickleError("it calls builtins.bytes with arguments")
    return b""


def _bytearray_of(data=b""):
    """`bytearray(data)` for a byte string (protocols < 5); a size argument would allocate that much."""
    if type(data) is not bytes:
        raise RefusedPickleError(f"it calls builtins.bytearray with {_describe(data)}")
    return bytearray(data)


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode(text, 'latin1')`: how protocols 0-2 store byte strings. Other codecs are refused."""
    if type(text) is not str or codecs.lookup(encoding).name != "iso8859-1":
        raise RefusedPickleError(f"it calls _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


BUILTINS = Policy(
    globals={
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "bytes"): _empty_bytes,
        ("builtins", "bytearray"): _bytearray_of,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    },
    callables=frozenset(
        [set, frozenset, complex, _empty_bytes, _bytearray_of, _latin1_encode, collections.OrderedDict]
    ),
)

EASYDICT = Policy(
    globals={("dnnlib.util", "EasyDict"): dnnlib.EasyDict, ("dnnlib", "EasyDict"): dnnlib.EasyDict},
    callables=frozenset([dnnlib.EasyDict]),
)

# ----------------------------------------------------------------------------
# PyTorch tensors and parameters, as `pickle.dump` writes them.


def _load_storage(data):
    """`torch.storage._load_from_bytes`, but through PyTorch's own weights-only unpickler (the bytes are a
    `torch.save` file, which the original reads with full unpickling)."""
    if type(data) is not bytes:
        raise RefusedPickleError(f"it rebuilds a tensor storage from {_describe(data)}")
    try:
        storage = torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported" in line), lines[0] if lines else type(exc).__name__)
        raise RefusedPickleError(f"its tensor storage bytes hold more than a storage ({reason})") from exc
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise RefusedPickleError(f"its tensor storage bytes hold {_describe(storage)}")
    return storage


def _check_no_hooks(hooks):
    if not (isinstance(hooks, dict) and len(hooks) == 0):
        raise RefusedPickleError("it attaches backward hooks to a tensor")


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """`torch._utils._rebuild_tensor_v2` for a storage rebuilt by `_load_storage` and no hooks."""
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise RefusedPickleError(f"it rebuilds a tensor from {_describe(storage)}")
    _check_no_hooks(backward_hooks)
    args = (storage, storage_offset, size, stride, requires_grad, backward_hooks)
    return torch._utils._rebuild_tensor_v2(*args, *([metadata] if metadata is not None else []))


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """`torch._utils._rebuild_parameter` for a tensor and no hooks."""
    if not isinstance(data, torch.Tensor):
        raise RefusedPickleError(f"it rebuilds a parameter from {_describe(data)}")
    _check_no_hooks(backward_hooks)
    return torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)


TORCH = Policy(
    globals={
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_storage,
    },
    callables=frozenset([_rebuild_tensor, _rebuild_parameter, _load_storage]),
)

# ----------------------------------------------------------------------------
# The unpickler.


def _invalid_load_key(key):
    """The C unpickler's message for an unknown opcode byte."""
    shown = chr(key) if 0x20 <= key <= 0x7E and chr(key) not in "'\\" else f"\\x{key:02x}"
    return pickle.UnpicklingError(f"invalid load key, '{shown}'.")


class _Dispatch(dict):
    """Opcode table whose unknown keys give the C unpickler's error (the pure-Python one raises a bare KeyError)."""

    def __missing__(self, key):
        raise _invalid_load_key(key)


class _Reader:
    """File wrapper that notices short reads: after a failure, `short` tells truncated data from corrupt data."""

    def __init__(self, file):
        self.file = file
        self.short = False

    def read(self, size=-1):
        data = self.file.read(size)
        self.short |= size is not None and size >= 0 and len(data) < size
        return data

    def readline(self):
        line = self.file.readline()
        self.short |= not line.endswith(b"\n")
        return line


class SafeUnpickler(pickle._Unpickler):
    """Unpickler that accepts only what `policy` allows (module docstring).

    After `load()` failed, `truncated` tells whether the data ended early (rather than being malformed).
    """

    dispatch = _Dispatch(pickle._Unpickler.dispatch)

    def __init__(self, file, policy: Policy):
        self._reader = _Reader(file)
        super().__init__(self._reader)
        self.policy = policy

    @property
    def truncated(self) -> bool:
        return self._reader.short

    def find_class(self, module, name):
        if self.proto < 3 and self.fix_imports:  # names written by Python 2, as the standard unpickler maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return self.policy.globals[(module, name)]
        except (KeyError, TypeError):
            raise RefusedPickleError(f"it refers to {module}.{name}, which is not on the allow-list") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(
            "A load persistent id instruction was encountered, but no persistent_load function was specified."
        )

    def _check_callable(self, func):
        try:
            allowed = func in self.policy.callables
        except TypeError:  # unhashable
            allowed = False
        if not allowed:
            raise RefusedPickleError(f"it calls {_describe(func)}, which is not on the allow-list")

    def _instantiate(self, klass, args):  # INST and OBJ (protocols 0 and 1)
        self._check_callable(klass)
        self.append(klass(*args))

    def load_reduce(self):
        args = self.stack.pop()
        self._check_callable(self.stack[-1])
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError("REDUCE argument is not a tuple")
        self.stack[-1] = self.stack[-1](*args)

    def _check_class(self, cls):
        self._check_callable(cls)
        if not isinstance(cls, type):
            raise pickle.UnpicklingError("NEWOBJ class argument isn't a type object")

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls)
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls)
        self.append(cls.__new__(cls, *args, **kwargs))

    def load_build(self):
        state = self.stack.pop()
        obj = self.stack[-1]
        builder = self.policy.builders.get(type(obj))
        if builder is None:
            raise RefusedPickleError(f"it sets the state of {_describe(obj)}, which is not on the allow-list")
        builder(obj, state)

    def load_frame(self):
        (frame_size,) = struct.unpack("<Q", self.read(8))
        if frame_size > sys.maxsize:  # the C unpickler's error, so both kinds report corrupt files alike
            raise OverflowError(f"FRAME length exceeds system's maximum of {sys.maxsize} bytes")
        self._unframer.load_frame(frame_size)

    def load_next_buffer(self):
        raise RefusedPickleError("it uses out-of-band buffers")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.FRAME[0]] = load_frame
    dispatch[pickle.NEXT_BUFFER[0]] = load_next_buffer


def load(file, policy: Policy):
    """Unpickle one object from the binary file `file` under `policy`; refusals raise `RefusedPickleError`."""
    return SafeUnpickler(file, policy).load()


def builder_for_dict_state(obj, state):
    """A BUILD setter for plain-attribute objects: a dict state is stored in the instance `__dict__`."""
    if not isinstance(state, dict) or not all(type(key) is str for key in state):
        raise RefusedPickleError(f"it sets the state of {_describe(obj)} to {_describe(state)}")
    vars(obj).update(state)


__all__ = [
    "BUILTINS",
    "EASYDICT",
    "NUMPY",
    "TORCH",
    "Policy",
    "RefusedPickleError",
    "SafeUnpickler",
    "builder_for_dict_state",
    "load",
]
