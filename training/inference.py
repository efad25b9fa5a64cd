"""What the tools that run a trained generator share: loading it for a device (float32 off CUDA), class labels.

Used by generate.py, style_mixing.py, projector.py, calc_metrics.py, gen_video.py and sefa.py.
The functions take plain values and raise typed errors whose message is one line; the scripts turn them into
`Error: ...` lines or usage errors. Imports: torch and training.pickles.
"""

import torch

from training import pickles

# The most class names a message lists before it only says how many there are (ImageNet has 1000).
MAX_LISTED_CLASS_NAMES = 50


class ClassLabelError(ValueError):
    """A `--class` value that names no class of the network; the message is one line."""


# ----------------------------------------------------------------------------------------------------------------------
# Devices


def run_float32_off_cuda(G: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Off CUDA, switch every half-precision block of `G` (in place) to float32 and the default memory format.

    fp16 layers exist for speed on CUDA; on the CPU or MPS they are slow or unsupported and round differently, so
    the tools run them as `force_fp32=True` would. The network's parameters, kwargs and CUDA behaviour are not
    touched; blocks read these attributes at every call (ours and those of the reference's embedded source).
    Returns `G`.
    """
    if device.type == "cuda":
        return G
    for module in G.modules():
        if getattr(module, "use_fp16", False):
            module.use_fp16 = False
            if hasattr(module, "channels_last"):
                module.channels_last = False
    return G


def load_generator(network_pkl: str, device: torch.device, allow_code: bool = False) -> tuple[dict, torch.nn.Module]:
    """(the snapshot dict, its G_ema on `device`, float32 off CUDA) of a network pickle, file, URL or name.

    Raises `pickles.NetworkPickleError` (one line naming the file). `allow_code` lets the pickle run its own code.
    """
    print(f'Loading networks from "{network_pkl}"...')
    snapshot = pickles.load_network_from(network_pkl, allow_code=allow_code)
    return snapshot, run_float32_off_cuda(snapshot["G_ema"].to(device), device)


# ----------------------------------------------------------------------------------------------------------------------
# Class labels


def class_names_of(snapshot: dict) -> list[str] | None:
    """The class names a snapshot recorded (index i names class i), or None.

    Looked up as `snapshot["class_names"]`, then `snapshot["training_set_kwargs"]["class_names"]` (where the dataset
    recorded them, e.g. from `dataset_tool.py --subfolders-as-labels`). Anything but a list of strings is ignored.
    """
    kwargs = snapshot.get("training_set_kwargs")
    for names in (snapshot.get("class_names"), kwargs.get("class_names") if isinstance(kwargs, dict) else None):
        if isinstance(names, list | tuple) and names and all(isinstance(name, str) for name in names):
            return list(names)
    return None


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED_CLASS_NAMES])
    if len(names) > MAX_LISTED_CLASS_NAMES:
        shown += f", ... ({len(names)} classes)"
    return shown


def class_index(value: str, c_dim: int, names: list[str] | None = None, option: str = "--class") -> int:
    """The class index `value` selects: an integer 0..c_dim-1, or one of `names` (index i for `names[i]`).

    An integer literal is always an index (as in the reference), even where a class is named like a number.
    Raises ClassLabelError naming `option` when the value is out of range or names no class.
    """
    text = value.strip()
    if text.lstrip("+-").isdigit():
        index = int(text)
        if not 0 <= index < c_dim:
            raise ClassLabelError(f"{option}={index} is out of range for a network with {c_dim} classes")
        return index
    if names is None:
        raise ClassLabelError(
            f"{option}={value}: this network recorded no class names; give a class index 0..{c_dim - 1}"
        )
    if len(names) != c_dim:
        raise ClassLabelError(
            f"{option}={value}: the network recorded {len(names)} class names for {c_dim} classes; give an index"
        )
    if text not in names:
        raise ClassLabelError(f"{option}={value} is not a class of this network; its classes are: {_listed(names)}")
    return names.index(text)


def class_label(c_dim: int, value: str | None, names: list[str] | None, device: torch.device) -> torch.Tensor:
    """`--class` -> one-hot label [1, c_dim] on `device`; prints a `warn:` line where the value is doubtful.

    Unconditional networks (c_dim 0) get an empty label, with a warning when a class was given anyway. Conditional
    networks need a value: an index, or a name of `names` (see `class_index`). Raises ClassLabelError.
    """
    label = torch.zeros([1, c_dim], device=device)
    if c_dim == 0:
        if value is not None:
            print("warn: --class=lbl ignored when running on an unconditional network")
        return label
    if value is None:
        raise ClassLabelError("Must specify class label with --class when using a conditional network")
    index = class_index(value, c_dim, names)
    if names is not None and value in names and names.index(value) != index:
        print(
            f"warn: --class={value} is taken as a class index ({names[index]!r}); "
            f"the class named {value!r} has index {names.index(value)}"
        )
    label[:, index] = 1
    return label
