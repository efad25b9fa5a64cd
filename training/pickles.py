"""Loading network pickles: training snapshots (ours and the reference's) and TensorFlow-era pickles.

`load_network_pkl(f)` returns a dict with `G`, `D`, `G_ema`, `training_set_kwargs` and `augment_pipe`; TensorFlow-era
pickles are converted by `training.tf_conversion`. `load_network_from(name, path or URL)` opens the file first (a
name of `NAMED_NETWORKS` stands for its URL); every error it raises is a `NetworkPickleError` whose message names the
file or URL, which the command-line tools print as one line. `legacy.py` re-exports the public names for users'
scripts. What a pickle holds and which defaults the loader fills in: docs/compatibility.md, "Pickles".

Safe by default: the file is read with the allow-listing unpickler of `torch_utils.safe_pickle`, and persistent
objects are rebuilt from this project's classes (`training.rebuild`) instead of running the source they embed.
`allow_code=True` restores the reference's behaviour (standard unpickling, embedded source executed) for files the
user trusts. `.safetensors` files (weights and constructor arguments, no code) load through
`training.safetensors_io`.
"""

import copy
import os
import pickle
import sys

import torch

import dnnlib
from torch_utils import misc, persistence, safe_pickle

# Keys every loaded pickle provides; the optional ones default to None when the pickle lacks them.
_NETWORK_KEYS = ("G", "D", "G_ema")
_OPTIONAL_KEYS = ("training_set_kwargs", "augment_pipe")

# Pretrained networks known by name (`--network=ffhq256`, `--resume=ffhq256`): the reference's transfer-learning
# sources, downloaded and cached by `dnnlib.util.open_url`.
_PRETRAINED_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets"
NAMED_NETWORKS = {
    "ffhq256": f"{_PRETRAINED_URL}/ffhq-res256-mirror-paper256-noaug.pkl",
    "ffhq512": f"{_PRETRAINED_URL}/ffhq-res512-mirror-stylegan2-noaug.pkl",
    "ffhq1024": f"{_PRETRAINED_URL}/ffhq-res1024-mirror-stylegan2-noaug.pkl",
    "celebahq256": f"{_PRETRAINED_URL}/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl",
    "lsundog256": f"{_PRETRAINED_URL}/lsundog-res256-paper256-kimg100000-noaug.pkl",
}

# A .safetensors file starts with the length of its JSON header (8 bytes, little-endian), then the header itself.
SAFETENSORS_HEADER_LENGTH_BYTES = 8
_MAX_SAFETENSORS_HEADER_BYTES = 100 << 20  # a few kB per network; larger is something else

# What the notes about rebuilt networks advise (the command-line flag and the library argument).
_TRUST_HINT = "--trust-pickle (allow_code=True)"

# Settings applied by force_fp16: the 4 highest resolutions in fp16, activations clamped to +-256.
_FORCED_NUM_FP16_RES = 4
_FORCED_CONV_CLAMP = 256


class NetworkPickleError(Exception):
    """A network pickle could not be loaded; the message names the file or URL and says why."""


class UnsupportedPickleError(NetworkPickleError, RuntimeError):
    """The file is not a network pickle this project can load (empty, truncated, not a pickle, wrong contents)."""


class NetworkPickleReadError(NetworkPickleError, OSError):
    """The file or URL of a network pickle could not be read (missing, a folder, no permission, download failed)."""


class UnsafePickleError(UnsupportedPickleError):
    """Safe mode refused the file: it asks for a global, a call or a state change that network pickles never need."""


class UnsupportedNetworkError(UnsupportedPickleError):
    """The file holds networks whose code this project lacks (StyleGAN3, other projects' classes)."""


class NetworkMismatchError(UnsupportedPickleError):
    """A network rebuilt from this project's class does not match the stored one (parameter names, shapes, ...)."""


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


class _EmbeddedCodeImportError(ImportError):
    """The source embedded in a trusted pickle imports something this project lacks (`meta` is the object's)."""

    def __init__(self, meta, exc):
        super().__init__(str(exc))
        self.meta = meta


def _reconstruct_trusted(meta):
    """`_reconstruct_persistent_obj`, with an import failure of the embedded source made recognisable."""
    try:
        return persistence._reconstruct_persistent_obj(meta)
    except ImportError as exc:
        raise _EmbeddedCodeImportError(meta, exc) from exc


class _LegacyUnpickler(pickle.Unpickler):
    """Standard unpickler (runs the pickle's code: trusted files only), except that TensorFlow network objects are
    rebuilt as `TFNetworkStub`."""

    def find_class(self, module, name):
        if module == "dnnlib.tflib.network" and name == "Network":
            return TFNetworkStub
        if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return _reconstruct_trusted
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError) as exc:
            raise _MissingGlobalError(f"it needs {module}.{name}, which cannot be imported: {exc}") from exc


def _safe_policy(pending_class):
    """What a network pickle may contain in safe mode; persistent objects become `pending_class(meta)`."""
    own = safe_pickle.Policy(
        globals={
            ("torch_utils.persistence", "_reconstruct_persistent_obj"): pending_class,
            ("dnnlib.tflib.network", "Network"): TFNetworkStub,
        },
        callables=frozenset([pending_class, TFNetworkStub]),
        builders={TFNetworkStub: safe_pickle.builder_for_dict_state},
    )
    return safe_pickle.NUMPY | safe_pickle.BUILTINS | safe_pickle.TORCH | safe_pickle.EASYDICT | own


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


def _is_safetensors(f) -> bool:
    """Whether the open file `f` starts like a .safetensors file (it is left where it was)."""
    start = _tell(f)
    if start is None or not hasattr(f, "seek"):
        return str(getattr(f, "name", "")).endswith(".safetensors")
    head = f.read(SAFETENSORS_HEADER_LENGTH_BYTES + 1)
    f.seek(start)
    if len(head) <= SAFETENSORS_HEADER_LENGTH_BYTES or head[-1:] != b"{":
        return False
    return 0 < int.from_bytes(head[:SAFETENSORS_HEADER_LENGTH_BYTES], "little") <= _MAX_SAFETENSORS_HEADER_BYTES


def _tell(f):
    """Current position of `f`, or None for streams that cannot tell."""
    try:
        return f.tell()
    except (AttributeError, OSError, ValueError):
        return None


def _prefix(f):
    name = getattr(f, "name", None)
    return f"{name}: " if name is not None else ""


def _not_a_network_pickle(f, reason, error_class=None):
    """The one-line error for `f` (named when the file object knows its name)."""
    reason = " ".join(reason.split())  # some unpickler messages span lines
    return (error_class or UnsupportedPickleError)(f"{_prefix(f)}not a network pickle ({reason})")


def _eof_reason(f, start):
    end = _tell(f)
    if start is None or end is None:
        return "file is empty or truncated"
    return "file is empty" if end == start else "truncated"


def _unpickle_trusted(f):
    """Unpickle `f` with the legacy unpickler; malformed or foreign data becomes `UnsupportedPickleError`."""
    start = _tell(f)
    try:
        return _LegacyUnpickler(f).load()
    except EOFError as exc:
        raise _not_a_network_pickle(f, _eof_reason(f, start)) from exc
    except pickle.UnpicklingError as exc:
        reason = "truncated" if "truncated" in str(exc) else f"not a pickle: {exc}"
        raise _not_a_network_pickle(f, reason) from exc
    except _MissingGlobalError as exc:
        raise _not_a_network_pickle(f, str(exc)) from exc.__cause__
    except _EmbeddedCodeImportError as exc:
        raise _embedded_import_error(f, exc) from exc.__cause__
    except (ValueError, TypeError, OverflowError, MemoryError, IndexError) as exc:
        # Only errors raised by the unpickler itself (no deeper Python frame) mean malformed bytes; errors from
        # code the pickle runs (embedded network source, tensor rebuilding) keep their own type and traceback.
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is not None:
            raise
        raise _not_a_network_pickle(f, f"corrupt pickle data: {type(exc).__name__}: {exc}") from exc


def _embedded_import_error(f, exc):
    """`UnsupportedNetworkError` for a trusted pickle whose code needs a module or name this project lacks."""
    meta = exc.meta if isinstance(exc.meta, dict) else {}
    what = "the network's code is not this project's"
    try:
        from training import rebuild

        rebuild.identify(meta.get("module_src"), meta.get("class_name"))
    except UnsupportedNetworkError as unsupported:
        what = str(unsupported)
    except ImportError:  # loading where only the pickle's own code is meant to run
        pass
    return UnsupportedNetworkError(
        f"{_prefix(f)}cannot run the code embedded in the file: it needs something this project lacks "
        f"({' '.join(str(exc).split())}); {what}"
    )


def _unpickle_safe(f):
    """Unpickle `f` with the allow-listing unpickler; persistent objects come back as `rebuild.PendingObject`s."""
    from training import rebuild

    start = _tell(f)
    unpickler = safe_pickle.SafeUnpickler(f, _safe_policy(rebuild.PendingObject))
    try:
        return unpickler.load()
    except safe_pickle.RefusedPickleError as exc:
        raise UnsafePickleError(
            f"{_prefix(f)}refused to load the file: {exc}, and loading it could run code the file chooses "
            f"(use {_TRUST_HINT} only for files you trust)"
        ) from exc
    except EOFError as exc:
        raise _not_a_network_pickle(f, _eof_reason(f, start)) from exc
    except NetworkPickleError:
        raise
    except pickle.UnpicklingError as exc:
        truncated = unpickler.truncated or "truncated" in str(exc)
        raise _not_a_network_pickle(f, "truncated" if truncated else f"not a pickle: {exc}") from exc
    except Exception as exc:  # Nothing but the allow-listed rebuilders runs: any failure means bad data.
        if unpickler.truncated:
            raise _not_a_network_pickle(f, "truncated") from exc
        raise _not_a_network_pickle(f, f"corrupt pickle data: {type(exc).__name__}: {exc}") from exc


def _rebuild_networks(f, data):
    """Replace the pending persistent objects of a safely unpickled `data` by this project's objects."""
    from training import rebuild

    notes = set()
    try:
        data = rebuild.rebuild_pending(data, notes)
    except UnsupportedPickleError as exc:
        raise type(exc)(f"{_prefix(f)}{exc}") from exc
    for module_name in sorted(notes):
        print(
            f"Warning: {_prefix(f)}the code embedded in the file was not run; this project's "
            f"{rebuild.module_file(module_name)} is used instead ({_TRUST_HINT} runs the file's own code).",
            file=sys.stderr,
        )
    return data


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
    """Load a network pickle (or `.safetensors` file) from the open binary file `f`.

    Returns a dict with (at least) `G`, `D`, `G_ema` (`torch.nn.Module`), `training_set_kwargs` (dict or None) and
    `augment_pipe` (`torch.nn.Module` or None). TensorFlow-era `(G, D, Gs)` pickles are converted (`Gs` becomes
    `G_ema`). With `force_fp16`, the networks are rebuilt from their constructor kwargs with
    `num_fp16_res=4, conv_clamp=256` and their parameters/buffers copied over by name.

    By default nothing in the file is run: only tensors, NumPy arrays, plain containers and the records of
    persistent objects are accepted, and those objects are rebuilt from this project's classes (a note on stderr
    says so when the file embeds other code than ours). `allow_code=True` unpickles as the reference does and runs
    the code embedded in the file: only for files you trust.

    A file that is empty, truncated, not a pickle, or not a network pickle (missing keys, values of the wrong
    type) raises `UnsupportedPickleError` with a one-line message naming the file (when `f` has a `name`); so do
    its subclasses `UnsafePickleError` (safe mode refused something), `UnsupportedNetworkError` (code this project
    lacks, e.g. StyleGAN3) and `NetworkMismatchError` (stored tensors that do not fit our classes).
    """
    if _is_safetensors(f):
        from training import safetensors_io

        data = safetensors_io.load_networks(f, getattr(f, "name", ""))
    elif allow_code:
        data = _unpickle_trusted(f)
    else:
        data = _unpickle_safe(f)
        if not _is_tf_pickle(data):
            data = _rebuild_networks(f, data)

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


def resolve_network_name(name: str) -> str:
    """The URL of a name of `NAMED_NETWORKS` (e.g. `ffhq256`); anything else is returned unchanged."""
    return NAMED_NETWORKS.get(name, name)


def _read_error(url: str, exc: OSError) -> NetworkPickleReadError:
    """One line for a file or URL that could not be read; for a named network, where to put a manual download."""
    url_of_name = NAMED_NETWORKS.get(url)
    reason = " ".join(str(exc).split())
    if url_of_name is not None:
        cause = exc.__cause__ or exc
        return NetworkPickleReadError(
            f"Cannot download the network {url} ({url_of_name}): {type(cause).__name__}: {' '.join(str(cause).split())}"
            f"; offline, save the file as {dnnlib.util.url_cache_path(url_of_name)} or pass its local path"
        )
    if not dnnlib.util.is_url(url, allow_file_urls=True) and not os.path.exists(url) and os.sep not in url:
        names = ", ".join(NAMED_NETWORKS)
        return NetworkPickleReadError(
            f"Cannot read network pickle {url}: {reason} (nor is it a named network: {names})"
        )
    return NetworkPickleReadError(f"Cannot read network pickle {url}: {reason}")


def load_network_from(url: str, force_fp16: bool = False, verbose: bool = True, allow_code: bool = False) -> dict:
    """`load_network_pkl` of a local path, `file://` URL, http(s) URL (downloaded and cached by `open_url`) or a
    name of `NAMED_NETWORKS`; `.safetensors` files too. `allow_code` as in `load_network_pkl`.

    Raises `NetworkPickleReadError` when the file or URL cannot be read and `UnsupportedPickleError` (or a subclass)
    when it is not a network pickle this project loads; both messages name `url`, in one line. `verbose` prints the
    download progress.
    """
    try:
        with dnnlib.util.open_url(resolve_network_name(url), verbose=verbose) as f:
            try:
                return load_network_pkl(f, force_fp16=force_fp16, allow_code=allow_code)
            except UnsupportedPickleError as exc:
                if getattr(f, "name", None) is not None:
                    raise  # The message already names the file.
                # Downloads are read from memory, a stream without a name: name the URL instead.
                raise type(exc)(f"{url}: {exc}") from exc
    except OSError as exc:
        raise _read_error(url, exc) from exc
