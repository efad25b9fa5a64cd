"""The CPU fast path: one process-wide switch, and the modulated convolution it uses.

With the switch off (the default) every op runs its reference path, whose rounding is the reference's bit for bit
(docs/compatibility.md, "Ops"). With it on, float32 CPU tensors take plain `torch.nn.functional` arrangements of
the same mathematics instead: FIR filtering as one depthwise (transposed / strided) convolution without the
zero-stuffing and padding copies, channels-last inputs for the resampling convolutions (the layout the CPU's
transposed, strided and depthwise kernels prefer), NNPACK's Winograd kernels for 3x3 convolutions of at least 32x32
pixels, bias + activation in place when no gradient is recorded, and a modulated convolution without per-sample
kernels for batches (for one sample the style is folded into the kernel). Results agree with the reference path
within 1e-5 relative (about 3e-6 measured on generator outputs and training gradients: float32 rounding in another
order); gradients of every order come from autograd, so training works on either path. CUDA tensors and
other dtypes are never affected.

    from torch_utils.ops import fast_path
    fast_path.set_cpu_fast_path(True)          # process-wide
    with fast_path.cpu_fast_path():            # or for a block (restores the previous state)
        img = G(z, c)
    fast_path.cpu_fast_path_enabled()          # query

The environment variable `STYLEGAN_CPU_FAST=1` turns it on at import (any script, e.g. generate.py); `0` or unset
keeps it off. train.py's `--cpu-fast=1` turns it on for a training run.
"""

import contextlib
import functools
import os

import torch

ENV_VAR = "STYLEGAN_CPU_FAST"
_ENV_VALUES = {"1": True, "0": False, "": False}


def _enabled_from_environment():
    value = os.environ.get(ENV_VAR, "").strip()
    if value not in _ENV_VALUES:
        raise ValueError(f"{ENV_VAR}: expected 0 or 1, found {value!r}")
    return _ENV_VALUES[value]


_enabled = _enabled_from_environment()

# Whether 3x3 convolutions take NNPACK's Winograd kernels when PyTorch has them (tests and bench/cpu_speed.py turn it
# off to measure the rest of the fast path alone).
use_nnpack = True
_NNPACK_MIN_PIXELS = 32 * 32


def set_cpu_fast_path(enabled: bool) -> None:
    """Turn the CPU fast path on or off for the whole process."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"set_cpu_fast_path: expected a bool, found {type(enabled).__name__}")
    _enabled = enabled


def cpu_fast_path_enabled() -> bool:
    """Whether the CPU fast path is on."""
    return _enabled


@contextlib.contextmanager
def cpu_fast_path(enabled: bool = True):
    """Turn the CPU fast path on (or off, `enabled=False`) inside the block; the previous state comes back after."""
    previous = _enabled
    set_cpu_fast_path(enabled)
    try:
        yield
    finally:
        set_cpu_fast_path(previous)


def applies(x) -> bool:
    """Whether `x` takes the fast path: the switch is on and `x` is a float32 CPU tensor."""
    return _enabled and isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dtype == torch.float32


def needs_grad(*tensors) -> bool:
    """Whether autograd records an op on `tensors` (then in-place shortcuts are not allowed)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def channels_last(x):
    """4-D `x` in channels-last layout (no copy when it already is)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


@functools.cache
def _nnpack_available():
    """PyTorch's NNPACK, initialised (its convolution fails until `_nnpack_available` has run once)."""
    probe = getattr(torch, "_nnpack_available", None)
    return bool(probe is not None and probe() and hasattr(torch, "_nnpack_spatial_convolution"))


def takes_conv3x3(x, w, up, down, padding, groups):
    """Whether `conv2d_resample` hands this convolution to `conv3x3`: a 3x3 kernel, no resampling, padding 1 on
    every side, one group, and NNPACK present."""
    if not (use_nnpack and up == 1 and down == 1 and groups == 1 and tuple(padding) == (1, 1, 1, 1)):
        return False
    # Below about 32x32 pixels the kernel transform outweighs the savings.
    large = x.shape[2] * x.shape[3] >= _NNPACK_MIN_PIXELS
    return large and tuple(w.shape[2:]) == (3, 3) and _nnpack_available()


def conv3x3(x, w):
    """Cross-correlation of x [N, I, H, W] with w [O, I, 3, 3], padding 1 -> [N, O, H, W], by NNPACK.

    NNPACK runs 3x3 kernels as Winograd F(6x6, 3x3) transforms: about a third of the arithmetic of a direct
    convolution, with float32 results within about 2e-5 relative of it (per layer, relative to the largest output).
    Differentiable to any order (autograd uses PyTorch's convolution backward for it).
    """
    return torch._nnpack_spatial_convolution(x.contiguous(), w.contiguous(), None, [1, 1], [1, 1])


def modulated_conv2d(x, weight, styles, noise, demodulate, resample_kwargs):
    """Modulated convolution as in `training.networks.modulated_conv2d`, arranged for the CPU.

    x: [N, I, H, W] float32; weight: [O, I, kh, kw]; styles: [N, I]; noise broadcastable to [N, O, H', W'] or None.
    The demodulation factor sum_i,k (w[o,i,k] s[n,i])^2 is one matrix product of the squared styles with the
    squared kernel summed over its taps. A single sample whose kernel is smaller than its activations gets the
    style and demodulation folded into the kernel (one small tensor scaled instead of two large ones); otherwise
    the style scales the activations and the demodulation the output, so no per-sample kernel is built.
    """
    from torch_utils.ops import conv2d_resample  # conv2d_resample imports upfirdn2d, which imports this module

    weight = weight.to(x.dtype)
    styles = styles.to(x.dtype)
    demod = None
    if demodulate:
        demod = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]
    if x.shape[0] == 1 and weight.numel() < x[0].numel():
        w = weight * styles.reshape(1, -1, 1, 1)
        if demod is not None:
            w = w * demod.reshape(-1, 1, 1, 1)
        y = conv2d_resample.conv2d_resample(x=x, w=w, **resample_kwargs)
        return y if noise is None else _add(y, noise.to(y.dtype))
    y = conv2d_resample.conv2d_resample(x=x * styles[:, :, None, None], w=weight, **resample_kwargs)
    if demod is not None:
        y = _mul(y, demod[:, :, None, None])
    return y if noise is None else _add(y, noise.to(y.dtype))


def _mul(y, factor):
    """`y * factor`, in place (keeping y's layout) when no gradient is recorded; `y` is a fresh result."""
    return y.mul_(factor) if not needs_grad(y, factor) else y * factor


def _add(y, other):
    """`y + other`, in place (keeping y's layout) when no gradient is recorded; `y` is a fresh result."""
    return y.add_(other) if not needs_grad(y, other) else y + other
