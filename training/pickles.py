"""Loading network pickles: training snapshots (ours and the reference's) and TensorFlow-era pickles.

`load_network_pkl(f)` returns a dict with `G`, `D`, `G_ema`, `training_set_kwargs` and `augment_pipe`; TensorFlow-era
pickles are converted by `training.tf_conversion`. `load_network_from(path or URL)` opens the file or URL first; every
error it raises is a `NetworkPickleError` whose message names the file or URL, which the command-line tools print as
one line. `legacy.py` re-exports the public names for users' scripts. What a pickle holds and which defaults the
loader fills in: docs/compatibility.md, "Pickles".
"""

import copy
import pickle

import torch

import dnnlib
from torch_utils import misc

# Keys every loaded pickle provides; the optional ones default to None when the pickle lacks them.
_NETWORK_KEYS = ("G", "D", "G_ema")
_OPTIONAL_KEYS = ("training_set_kwargs", "augment_pipe")

# Settings applied by force_fp16: the 4 highest resolutions in fp16, activations clamped to +-256.
_FORCED_NUM_FP16_RES = 4
_FORCED_CONV_CLAMP = 256


class NetworkPickleError(Exception):
    """A network pickle could not be loaded; the message names the file or URL and says why."""


class UnsupportedPickleError(NetworkPickleError, RuntimeError):
    """The file is not a network pickle this project can load (empty, truncated, not a pickle, wrong contents)."""


class NetworkPickleReadError(NetworkPickleError, OSError):
    """The file or URL of a network pickle could not be read (missing, a folder, no permission, download failed)."""


class TFNetworkStub(dnnlib.EasyDict):
    """Stand-in for TensorFlow-era `dnnlib.tflib.network.Network` objects.

    It defines no `__setstate__`, so unpickling stores the pickled state dict in the instance `__dict__`: the
    fields (`version`, `static_kwargs`, `components`, `variables`, ...) become attributes, not items.
    """


def _is_tf_pickle(data) -> bool:
    """Whether unpickled `data` is a TensorFlow-era `(G, D, Gs)` tuple."""
    return isinstance(data, tuple) and len(data) == 3 and all(isinstance(net, TFNetworkStub) for net in data)


class _MissingGlobalError(ImportError):
    """A class or function named by the pickle cannot be imported."""


class _LegacyUnpickler(pickle.Unpickler):
    """Standard unpickler, except that TensorFlow network objects are rebuilt as `TFNetworkStub`."""

    def find_class(self, module, name):
        if module == "dnnlib.tflib.network" and name == "Network":
            return TFNetworkStub
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError) as exc:
            raise _MissingGlobalError(f"it needs {module}.{name}, which cannot be imported: {exc}") from exc


def _force_fp16_network(key, net):
    """`net` rebuilt with fp16 settings forced into its constructor kwargs (or `net` itself if nothing changes)."""
    kwargs = copy.deepcopy(net.init_kwargs)
    if key.startswith("G"):
        kwargs.synthesis_kwargs = dnnlib.EasyDict(kwargs.get("synthesis_kwargs", {}))
        kwargs.synthesis_kwargs.num_fp16_res = _FORCED_NUM_FP16_RES
        kwargs.synthesis_kwargs.conv_clamp = _FORCED_CONV_CLAMP
    if key.startswith("D"):
        kwargs.num_fp16_res = _FORCED_NUM_FP16_RES
        kwargs.conv_clamp = _FORCED_CONV_CLAMP
    if kwargs == net.init_kwargs:
        return net
    new = type(net)(**kwargs).eval().requires_grad_(False)
    misc.copy_params_and_buffers(net, new, require_all=True)
    return new


def _tell(f):
    """Current position of `f`, or None for streams that cannot tell."""
    try:
        return f.tell()
    except (AttributeError, OSError, ValueError):
        return None


def _not_a_network_pickle(f, reason):
    """The one-line error for `f` (named when the file object knows its name)."""
    name = getattr(f, "name", None)
    prefix = f"{name}: " if name is not None else ""
    reason = " ".join(reason.split())  # some unpickler messages span lines
    return UnsupportedPickleError(f"{prefix}not a network pickle ({reason})")


def _unpickle(f):
    """Unpickle `f` with the legacy unpickler; malformed or foreign data becomes `UnsupportedPickleError`."""
    start = _tell(f)
    try:
        return _LegacyUnpickler(f).load()
    except EOFError as exc:
        end = _tell(f)
        if start is None or end is None:
            reason = "file is empty or truncated"
        else:
            reason = "file is empty" if end == start else "truncated"
        raise _not_a_network_pickle(f, reason) from exc
    except pickle.UnpicklingError as exc:
        reason = "truncated" if "truncated" in str(exc) else f"not a pickle: {exc}"
        raise _not_a_network_pickle(f, reason) from exc
    except _MissingGlobalError as exc:
        raise _not_a_network_pickle(f, str(exc)) from exc.__cause__
    except (ValueError, TypeError, OverflowError, MemoryError, IndexError) as exc:
        # Only errors raised by the unpickler itself (no deeper Python frame) mean malformed bytes; errors from
        # code the pickle runs (embedded network source, tensor rebuilding) keep their own type and traceback.
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is not None:
            raise
        raise _not_a_network_pickle(f, f"corrupt pickle data: {type(exc).__name__}: {exc}") from exc


def _check_network_dict(f, data):
    """Raise `UnsupportedPickleError` unless `data` has the keys and value types of a network pickle."""
    if not isinstance(data, dict):
        raise _not_a_network_pickle(
            f, f"a {type(data).__name__}, not a dict with G, D, G_ema or a TensorFlow-era (G, D, Gs) tuple"
        )
    for key in _NETWORK_KEYS:
        if key not in data:
            raise _not_a_network_pickle(f, f"a dict without the key {key!r}")
        if not isinstance(data[key], torch.nn.Module):
            raise _not_a_network_pickle(f, f"{key} is a {type(data[key]).__name__}, not a torch.nn.Module")
    if not isinstance(data["training_set_kwargs"], (dict, type(None))):
        kind = type(data["training_set_kwargs"]).__name__
        raise _not_a_network_pickle(f, f"training_set_kwargs is a {kind}, not a dict or None")
    if not isinstance(data["augment_pipe"], (torch.nn.Module, type(None))):
        kind = type(data["augment_pipe"]).__name__
        raise _not_a_network_pickle(f, f"augment_pipe is a {kind}, not a torch.nn.Module or None")


def load_network_pkl(f, force_fp16=False, allow_code=False):
    """Load a network pickle from the open binary file `f`.

    Returns a dict with (at least) `G`, `D`, `G_ema` (`torch.nn.Module`), `training_set_kwargs` (dict or None) and
    `augment_pipe` (`torch.nn.Module` or None). TensorFlow-era `(G, D, Gs)` pickles are converted (`Gs` becomes
    `G_ema`). With `force_fp16`, the networks are rebuilt from their constructor kwargs with
    `num_fp16_res=4, conv_clamp=256` and their parameters/buffers copied over by name.

    A file that is empty, truncated, not a pickle, or not a network pickle (missing keys, values of the wrong
    type) raises `UnsupportedPickleError` with a one-line message naming the file (when `f` has a `name`).
    """
    data = _unpickle(f)

    if _is_tf_pickle(data):
        # Imported only here: a snapshot that carries its own code must load where only dnnlib and torch_utils
        # exist (as in the reference), and only the conversion needs this project's network classes.
        from training import tf_conversion

        data = tf_conversion.convert_tf_networks(*data)
    if isinstance(data, dict):
        for key in _OPTIONAL_KEYS:
            data.setdefault(key, None)
    _check_network_dict(f, data)

    if force_fp16:
        for key in _NETWORK_KEYS:
            data[key] = _force_fp16_network(key, data[key])
    return data


def load_network_from(url: str, force_fp16: bool = False, verbose: bool = True, allow_code: bool = False) -> dict:
    """`load_network_pkl` of a local path, `file://` URL or http(s) URL (downloaded and cached by `open_url`).

    Raises `NetworkPickleReadError` when the file or URL cannot be read and `UnsupportedPickleError` when it is not
    a network pickle; both messages name `url`. `verbose` prints the download progress.
    """
    try:
        with dnnlib.util.open_url(url, verbose=verbose) as f:
            try:
                return load_network_pkl(f, force_fp16=force_fp16, allow_code=allow_code)
            except UnsupportedPickleError as exc:
                if getattr(f, "name", None) is not None:
                    raise  # The message already names the file.
                # Downloads are read from memory, a stream without a name: name the URL instead.
                raise UnsupportedPickleError(f"{url}: {exc}") from exc
    except OSError as exc:
        raise NetworkPickleReadError(f"Cannot read network pickle {url}: {exc}") from exc
