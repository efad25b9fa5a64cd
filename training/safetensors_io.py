"""Networks as `.safetensors` files: weights and constructor arguments, no code.

`save_networks(path, data)` writes `G`, `D`, `G_ema` (and `augment_pipe` when present) of a loaded network dict:
every parameter and buffer as tensor `<key>.<dotted name>` (e.g. `G_ema.mapping.fc0.weight`), and in the metadata
(`__metadata__["stylegan2-ada"]`, JSON) each network's class (`training.networks.Generator`) with its init args and
kwargs, plus `training_set_kwargs`. `load_networks(f)` rebuilds the networks from this project's classes with those
arguments, checks that the stored tensors match them by name, shape and dtype, and copies them in. Nothing in the
file is executed, and only classes of `training.rebuild.PROJECT_MODULES` can be named.

JSON keeps ints, floats (exactly), strings, bools, None and lists; dicts are tagged `{"__dict__": {...}}` or
`{"__EasyDict__": {...}}` and tuples `{"__tuple__": [...]}`, so the constructor arguments come back with their types.
"""

import importlib
import json

import numpy as np
import safetensors.torch
import torch

import dnnlib
from dnnlib.atomic import atomic_write_bytes
from torch_utils import misc, persistence
from training import rebuild
from training.pickles import (
    SAFETENSORS_HEADER_LENGTH_BYTES,
    NetworkMismatchError,
    UnsupportedNetworkError,
    UnsupportedPickleError,
)

METADATA_KEY = "stylegan2-ada"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
# The networks a file may hold, in the order of a snapshot; augment_pipe is optional.
NETWORK_KEYS = ("G", "D", "G_ema", "augment_pipe")
_TAGS = {"__dict__": dict, "__EasyDict__": dnnlib.EasyDict}


class _MetadataError(ValueError):
    pass


def _encode(value, where):
    """`value` as tagged JSON data (module docstring)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, list):
        return [_encode(item, where) for item in value]
    if type(value) is tuple:
        return {"__tuple__": [_encode(item, where) for item in value]}
    if type(value) in (dict, dnnlib.EasyDict) and all(type(key) is str for key in value):
        tag = "__EasyDict__" if type(value) is dnnlib.EasyDict else "__dict__"
        return {tag: {key: _encode(item, f"{where}.{key}") for key, item in value.items()}}
    raise _MetadataError(f"{where} is a {type(value).__name__}, which .safetensors metadata cannot hold")


def _decode(value, where):
    if isinstance(value, list):
        return [_decode(item, where) for item in value]
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in (*_TAGS, "__tuple__"):
            raise _MetadataError(f"{where}: untagged JSON object {sorted(value)}")
        tag, content = next(iter(value.items()))
        if tag == "__tuple__" and isinstance(content, list):
            return tuple(_decode(item, where) for item in content)
        if tag in _TAGS and isinstance(content, dict):
            return _TAGS[tag]((key, _decode(item, f"{where}.{key}")) for key, item in content.items())
        raise _MetadataError(f"{where}: malformed {tag} entry")
    return value


# ----------------------------------------------------------------------------
# Writing


def _network_record(key, net):
    """{class, init_args, init_kwargs} of a persistent network (ours, or one whose embedded code ran)."""
    if not persistence.is_persistent(net):
        raise _MetadataError(f"{key} is a {type(net).__name__}, not a network that records its constructor arguments")
    module_name, _cls = rebuild.identify(type(net)._persistent_module_src, type(net).__name__)
    return {
        "class": f"{module_name}.{type(net).__name__}",
        "init_args": _encode(tuple(net.init_args), f"{key}.init_args"),
        "init_kwargs": _encode(dict(net.init_kwargs), f"{key}.init_kwargs"),
    }


def to_bytes(data: dict) -> bytes:
    """The `.safetensors` bytes of a loaded network dict (module docstring); ValueError if it cannot be stored."""
    tensors, networks = {}, {}
    for key in NETWORK_KEYS:
        net = data.get(key)
        if net is None:
            continue
        networks[key] = _network_record(key, net)
        for name, tensor in misc.named_params_and_buffers(net):
            tensors[f"{key}.{name}"] = tensor.detach().cpu().contiguous()
    training_set_kwargs = data.get("training_set_kwargs")
    meta = {
        "version": FORMAT_VERSION,
        "networks": networks,
        "training_set_kwargs": _encode(training_set_kwargs, "training_set_kwargs"),
    }
    return safetensors.torch.save(tensors, metadata={METADATA_KEY: json.dumps(meta)})


def save_networks(path: str, data: dict) -> None:
    """Write `data`'s networks to `path` atomically (an existing file stays whole until the new one is complete)."""
    payload = to_bytes(data)  # Fails before anything is written.
    atomic_write_bytes(path, payload)


# ----------------------------------------------------------------------------
# Reading


def _read_metadata(payload: bytes) -> dict:
    length = int.from_bytes(payload[:SAFETENSORS_HEADER_LENGTH_BYTES], "little")
    try:
        header = json.loads(payload[SAFETENSORS_HEADER_LENGTH_BYTES : SAFETENSORS_HEADER_LENGTH_BYTES + length])
        meta = json.loads(header["__metadata__"][METADATA_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise _MetadataError(f"no {METADATA_KEY} metadata ({type(exc).__name__}: {exc})") from exc
    if (
        not isinstance(meta, dict)
        or meta.get("version") != FORMAT_VERSION
        or not isinstance(meta.get("networks"), dict)
    ):
        raise _MetadataError(f"{METADATA_KEY} metadata of an unknown version")
    return meta


def _project_class(class_path, key):
    """Our persistent class named `class_path` (`training.networks.Generator`); anything else is refused."""
    module_name, _, class_name = str(class_path).rpartition(".")
    if module_name in rebuild.PROJECT_MODULES:
        cls = getattr(importlib.import_module(module_name), class_name, None)
        if cls is not None and cls in rebuild.project_classes()[module_name].values():
            return cls
    raise UnsupportedNetworkError(
        f"{key} is a {class_path}, not a class of this project's {', '.join(rebuild.PROJECT_MODULES)}; not supported"
    )


def _build_network(key, record, tensors):
    """Construct network `key` from its metadata `record` and copy in its tensors (checked by name and shape)."""
    if not isinstance(record, dict):
        raise _MetadataError(f"the record of {key} is not a JSON object")
    cls = _project_class(record.get("class"), key)
    args = _decode(record.get("init_args", {"__tuple__": []}), f"{key}.init_args")
    kwargs = _decode(record.get("init_kwargs", {"__dict__": {}}), f"{key}.init_kwargs")
    net = rebuild.construct(cls, args, kwargs, key)
    prefix = f"{key}."
    stored = {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}
    ours = dict(misc.named_params_and_buffers(net))
    if set(stored) != set(ours):
        missing, extra = sorted(set(ours) - set(stored)), sorted(set(stored) - set(ours))
        raise NetworkMismatchError(f"{key}: the file lacks tensors {missing} and has extra tensors {extra}")
    with torch.no_grad():
        for name, tensor in ours.items():
            value = stored[name]
            if value.shape != tensor.shape or value.dtype != tensor.dtype:
                raise NetworkMismatchError(
                    f"{key}.{name}: the file has {list(value.shape)} {value.dtype}, this project's code "
                    f"{list(tensor.shape)} {tensor.dtype}"
                )
            tensor.copy_(value)
    return net.eval().requires_grad_(False)


def load_networks(f, name: str = "") -> dict:
    """The network dict stored in the `.safetensors` file `f` (an open binary file); errors name `name`."""
    prefix = f"{name}: " if name else ""
    payload = f.read()
    try:
        meta = _read_metadata(payload)
        tensors = safetensors.torch.load(payload)
        data = {"training_set_kwargs": _decode(meta.get("training_set_kwargs"), "training_set_kwargs")}
        for key in NETWORK_KEYS:
            record = meta["networks"].get(key)
            data[key] = None if record is None else _build_network(key, record, tensors)
    except (_MetadataError, safetensors.SafetensorError) as exc:
        reason = " ".join(str(exc).split())
        raise UnsupportedPickleError(f"{prefix}not a .safetensors file of networks ({reason})") from exc
    except UnsupportedPickleError as exc:
        raise type(exc)(f"{prefix}{exc}") from exc
    unknown = sorted(set(meta["networks"]) - set(NETWORK_KEYS))
    if unknown:
        raise UnsupportedPickleError(f"{prefix}not a .safetensors file of networks (unknown networks {unknown})")
    return data
