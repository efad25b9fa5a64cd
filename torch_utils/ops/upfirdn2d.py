"""FIR filtering of 2-D images with integer up- and down-sampling (upfirdn2d) and its convenience wrappers.

Per image and channel: insert zeros to upsample, pad (or crop, for negative padding), convolve with a FIR filter
keeping only the "valid" part, then keep every `down`-th sample. The pure-PyTorch path (`impl='ref'`) is the
normative definition (docs/compatibility.md, "Ops"); the optional native CUDA plugin must agree with it up to rounding.

Native plugin contract (the CUDA sources `upfirdn2d.cpp/.cu/.h` next to this file build `upfirdn2d_plugin`):
`plugin.upfirdn2d(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain) -> Tensor`, where `x` is
`[N, C, H, W]`, `f` a float32 `[fh, fw]` filter (not pre-scaled), all other arguments Python ints / bool / float, and
`gain` multiplies the accumulated sum. The output has `x`'s dtype.
"""

import functools
from typing import NamedTuple

import torch

from torch_utils import custom_ops, misc
from torch_utils.ops import conv2d_gradfix, fast_path

# ----------------------------------------------------------------------------
# Optional native plugin. CPU tensors never trigger a build; a failed or impossible build warns once and the
# reference path is used for the rest of the process.


def _self_check():
    """Compare the installed plugin with the reference path on the resampling cases the networks use.

    Uses a private generator so that the global RNG streams of a training run are not touched.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([2, 3, 9, 8], generator=gen).cuda()
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    filters = [taps / 8, torch.outer(taps, torch.tensor([1.0, 2.0, 1.0])) / 32]
    cases = [dict(up=2, padding=[2, 1]), dict(down=2, padding=1), dict(padding=[1, 2, 0, 1], flip_filter=True, gain=3)]
    for f in filters:
        f = f.cuda()
        for case in cases:
            ref = _upfirdn2d_ref(x, f, **case)
            out = _upfirdn2d_cuda(**case).apply(x, f)
            worst = float((out - ref).abs().max()) if out.shape == ref.shape else float("inf")
            if worst > 1e-5 * max(1.0, float(ref.abs().max())):
                return f"filter {list(f.shape)}, {case}: max |y - ref| = {worst:g}"
    return None


_plugin = custom_ops.op_plugin("upfirdn2d", __file__, self_check=_self_check)


# ----------------------------------------------------------------------------
# Argument parsing (shared with conv2d_resample).


def _parse_scaling(scaling):
    """Up/down factor: int `s` or `[sx, sy]` -> `(sx, sy)`, both >= 1."""
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    assert isinstance(scaling, (list, tuple)), f"upfirdn2d: scaling factor must be an int or [sx, sy], got {scaling!r}"
    assert all(isinstance(s, int) for s in scaling), f"upfirdn2d: scaling factors must be Python ints, got {scaling!r}"
    assert len(scaling) == 2, f"upfirdn2d: expected 2 scaling factors [sx, sy], got {scaling!r}"
    sx, sy = scaling
    assert sx >= 1 and sy >= 1, f"upfirdn2d: scaling factors must be >= 1, got {scaling!r}"
    return sx, sy


def _parse_padding(padding):
    """Padding: int `p`, `[px, py]` or `[px0, px1, py0, py1]` -> `(px0, px1, py0, py1)`; negative values crop."""
    if isinstance(padding, int):
        padding = [padding, padding]
    assert isinstance(padding, (list, tuple)), f"upfirdn2d: padding must be an int or a list, got {padding!r}"
    assert all(isinstance(p, int) for p in padding), f"upfirdn2d: padding values must be Python ints, got {padding!r}"
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    assert len(padding) == 4, f"upfirdn2d: padding must have 1, 2 or 4 values, got {padding!r}"
    px0, px1, py0, py1 = padding
    return px0, px1, py0, py1


def _get_filter_size(f):
    """Filter taps `(fw, fh)`; `None` counts as 1x1 and a 1-D (separable) filter has `fw == fh == taps`."""
    if f is None:
        return 1, 1
    assert isinstance(f, torch.Tensor) and f.ndim in [1, 2], "upfirdn2d: filter must be None or a 1-D/2-D tensor"
    fw = f.shape[-1]
    fh = f.shape[0]
    with misc.suppress_tracer_warnings():
        fw = int(fw)
        fh = int(fh)
    misc.assert_shape(f, [fh, fw][: f.ndim])
    assert fw >= 1 and fh >= 1, f"upfirdn2d: filter must have at least one tap, got shape {list(f.shape)}"
    return fw, fh


# ----------------------------------------------------------------------------
# Filter preparation.

_CPU = torch.device("cpu")


def setup_filter(f, device=_CPU, normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn a list / array / tensor / scalar / None into a float32 FIR filter for `upfirdn2d`.

    Returns a 1-D `[taps]` tensor when separable (default: 1-D input with >= 8 taps), else a 2-D `[fh, fw]` tensor
    (a short 1-D input becomes the outer product with itself). `gain` is the total gain over both axes.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    assert f.ndim in [0, 1, 2], f"setup_filter: expected a scalar, 1-D or 2-D filter, got {f.ndim} dims"
    assert f.numel() > 0, "setup_filter: the filter is empty"
    if f.ndim == 0:
        f = f.reshape(1)

    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    assert f.ndim == (1 if separable else 2), f"setup_filter: separable={separable} does not fit a {f.ndim}-D filter"

    # Out of place: torch.as_tensor returns the caller's tensor unchanged when it is already float32.
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


# ----------------------------------------------------------------------------
# The operation.


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """Upsample, pad, FIR-filter and downsample a batch of images.

    Args:
        x: `[N, C, H, W]` images (float16/32/64).
        f: float32 filter `[fh, fw]`, separable `[taps]`, or None (identity).
        up, down: int or `[x, y]` integer factors.
        padding: int, `[px, py]` or `[px0, px1, py0, py1]`, relative to the upsampled image; negative crops.
        flip_filter: False = true convolution, True = correlation.
        gain: overall scaling of the output.
        impl: 'cuda' (native kernels for CUDA tensors when available, the CPU fast path for float32 CPU tensors when
            `fast_path` is on, else the reference) or 'ref' (always the reference).

    Returns:
        `[N, C, (H*upy + py0 + py1 - fh + downy) // downy, (W*upx + px0 + px1 - fw + downx) // downx]`.
    """
    assert isinstance(x, torch.Tensor), f"upfirdn2d: x must be a tensor, got {type(x).__name__}"
    assert impl in ["ref", "cuda"], f"upfirdn2d: impl must be 'ref' or 'cuda', got {impl!r}"
    if impl == "cuda" and x.device.type == "cuda" and _plugin.available():
        return _upfirdn2d_cuda(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain).apply(x, f)
    if impl == "cuda" and fast_path.applies(x):
        return _upfirdn2d_fast(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    return _upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


@misc.profiled_function
def _upfirdn2d_ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Pure-PyTorch upfirdn2d; gradients come from autograd."""
    assert isinstance(x, torch.Tensor) and x.ndim == 4, f"upfirdn2d: expected x of shape [N, C, H, W], got {x.ndim}-D"
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    assert isinstance(f, torch.Tensor) and f.ndim in [1, 2], "upfirdn2d: filter must be None or a 1-D/2-D tensor"
    assert f.dtype == torch.float32, f"upfirdn2d: filter must be float32, got {f.dtype}"
    assert not f.requires_grad, "upfirdn2d: the filter must not require gradients"
    batch_size, num_channels, in_height, in_width = x.shape
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)

    # Zero-stuff: every sample is followed by (up - 1) zeros along each axis.
    x = x.reshape([batch_size, num_channels, in_height, 1, in_width, 1])
    x = torch.nn.functional.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape([batch_size, num_channels, in_height * upy, in_width * upx])

    # Pad with the positive parts, then crop the negative ones.
    x = torch.nn.functional.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    x = x[:, :, max(-pady0, 0) : x.shape[2] - max(-pady1, 0), max(-padx0, 0) : x.shape[3] - max(-padx1, 0)]
    assert x.shape[2] >= fh and x.shape[3] >= fw, (
        f"upfirdn2d: padded image {list(x.shape[2:])} is smaller than the filter [{fh}, {fw}]"
    )

    # Scale in float32 before the cast so the rounding matches the reference; conv2d correlates, so a true
    # convolution needs the flipped filter.
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))

    # Depthwise convolution, one copy of the filter per channel; a separable filter runs along x, then y.
    f = f.reshape([1, 1, *f.shape]).repeat([num_channels, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = conv2d_gradfix.conv2d(input=x, weight=f, groups=num_channels)
    else:
        x = conv2d_gradfix.conv2d(input=x, weight=f.unsqueeze(2), groups=num_channels)
        x = conv2d_gradfix.conv2d(input=x, weight=f.unsqueeze(3), groups=num_channels)

    return x[:, :, ::downy, ::downx]


def _crop_or_pad(x, start_y, end_y, start_x, end_x):
    """Remove `start_*` / `end_*` rows and columns from each side of `x` [N, C, H, W]; negative amounts add zeros."""
    pad = [max(-start_x, 0), max(-end_x, 0), max(-start_y, 0), max(-end_y, 0)]
    if any(pad):
        x = torch.nn.functional.pad(x, pad)
    start_y, end_y, start_x, end_x = (max(v, 0) for v in (start_y, end_y, start_x, end_x))
    if start_y or end_y or start_x or end_x:
        x = x[:, :, start_y : x.shape[2] - end_y, start_x : x.shape[3] - end_x]
    return x


@misc.profiled_function
def _upfirdn2d_fast(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """upfirdn2d as one depthwise convolution (`fast_path`): transposed with stride `up` when upsampling (no
    zero-stuffed copy), strided by `down` otherwise, with symmetric padding done by the convolution itself.

    A 1-D (separable) filter runs as its 2-D outer product. Upsampling and downsampling at once takes the reference
    path. Same output as `_upfirdn2d_ref` up to float32 rounding.
    """
    assert isinstance(x, torch.Tensor) and x.ndim == 4, f"upfirdn2d: expected x of shape [N, C, H, W], got {x.ndim}-D"
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    if (upx > 1 or upy > 1) and (downx > 1 or downy > 1):
        return _upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    assert f.dtype == torch.float32 and not f.requires_grad, "upfirdn2d: filter must be float32 without gradients"
    f = f * (gain ** (f.ndim / 2))
    if f.ndim == 1:
        f = torch.outer(f, f)
    fw, fh = _get_filter_size(f)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    num_channels = x.shape[1]

    if upx > 1 or upy > 1:
        # Transposed convolution = zero-stuffing + true convolution (its full output); crop it to the window the
        # reference keeps, which starts fh - 1 - pady0 rows in.
        w = (f if not flip_filter else f.flip([0, 1])).to(x.dtype)
        w = w.reshape(1, 1, fh, fw).repeat(num_channels, 1, 1, 1)
        crops = [fh - 1 - pady0, fh - upy - pady1, fw - 1 - padx0, fw - upx - padx1]
        inner_y, inner_x = max(min(crops[0], crops[1]), 0), max(min(crops[2], crops[3]), 0)
        x = torch.nn.functional.conv_transpose2d(
            x, w, stride=[upy, upx], padding=[inner_y, inner_x], groups=num_channels
        )
        return _crop_or_pad(x, crops[0] - inner_y, crops[1] - inner_y, crops[2] - inner_x, crops[3] - inner_x)

    # conv2d correlates: a true convolution needs the flipped filter.
    w = (f.flip([0, 1]) if not flip_filter else f).to(x.dtype)
    w = w.reshape(1, 1, fh, fw).repeat(num_channels, 1, 1, 1)
    inner_y = max(min(pady0, pady1), 0)
    inner_x = max(min(padx0, padx1), 0)
    x = _crop_or_pad(x, inner_y - pady0, inner_y - pady1, inner_x - padx0, inner_x - padx1)
    return torch.nn.functional.conv2d(x, w, stride=[downy, downx], padding=[inner_y, inner_x], groups=num_channels)


class _Resampling(NamedTuple):
    """One parsed upfirdn2d configuration, in the order of the plugin's arguments after `x` and `f`.

    It also keys the cache of native autograd functions.
    """

    upx: int
    upy: int
    downx: int
    downy: int
    padx0: int
    padx1: int
    pady0: int
    pady1: int
    flip_filter: bool
    gain: float

    def run_native(self, kernels, x, f):
        """`kernels.upfirdn2d` with a 2-D filter; a 1-D filter runs as an x pass, then a y pass, each with the
        square root of the gain."""
        if f.ndim == 2:
            return kernels.upfirdn2d(x, f, *self)
        axis_gain = float(self.gain) ** 0.5
        along_x = self._replace(upy=1, downy=1, pady0=0, pady1=0, gain=axis_gain)
        along_y = self._replace(upx=1, downx=1, padx0=0, padx1=0, gain=axis_gain)
        x = kernels.upfirdn2d(x, f.unsqueeze(0), *along_x)
        return kernels.upfirdn2d(x, f.unsqueeze(1), *along_y)

    def adjoint(self, in_shape, out_shape, f):
        """The configuration of the adjoint op (swapped factors, flipped filter), which maps a gradient shaped like
        this op's output `out_shape` back to its input's `in_shape`."""
        in_height, in_width = in_shape[2:]
        out_height, out_width = out_shape[2:]
        fw, fh = _get_filter_size(f)
        return _Resampling(
            upx=self.downx,
            upy=self.downy,
            downx=self.upx,
            downy=self.upy,
            padx0=fw - self.padx0 - 1,
            padx1=in_width * self.upx - out_width * self.downx + self.padx0 - self.upx + 1,
            pady0=fh - self.pady0 - 1,
            pady1=in_height * self.upy - out_height * self.downy + self.pady0 - self.upy + 1,
            flip_filter=not self.flip_filter,
            gain=self.gain,
        )


def _upfirdn2d_cuda(up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Autograd function (cached per configuration) running the native plugin; backward uses the adjoint op."""
    scaling = _parse_scaling(up) + _parse_scaling(down)
    return _native_function(_Resampling(*scaling, *_parse_padding(padding), flip_filter, gain))


@functools.cache
def _native_function(resampling):
    class Upfirdn2dCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, f):
            assert isinstance(x, torch.Tensor) and x.ndim == 4, "upfirdn2d: expected x of shape [N, C, H, W]"
            if f is None:
                f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
            assert isinstance(f, torch.Tensor) and f.ndim in [1, 2], "upfirdn2d: filter must be 1-D or 2-D"
            ctx.save_for_backward(f)
            ctx.x_shape = x.shape
            return resampling.run_native(_plugin.module, x, f)

        @staticmethod
        def backward(ctx, dy):
            (f,) = ctx.saved_tensors
            assert not ctx.needs_input_grad[1], "upfirdn2d: gradients with respect to the filter are not supported"
            if not ctx.needs_input_grad[0]:
                return None, None
            adjoint = _native_function(resampling.adjoint(ctx.x_shape, dy.shape, f))
            return adjoint.apply(dy, f), None

    return Upfirdn2dCuda


# ----------------------------------------------------------------------------
# Convenience wrappers that add the padding keeping the image aligned with the filter's centre.


def _upsampling_margins(taps, up):
    """Padding `(before, after)` along one axis that centres a `taps`-tap filter on a grid upsampled by `up`.

    With `up == 1` this is plain "same" filtering, whose margins are also `_downsampling_margins(taps, 1)`.
    """
    return (taps + up - 1) // 2, (taps - up) // 2


def _downsampling_margins(taps, down):
    """Padding `(before, after)` along one axis that centres a `taps`-tap filter on a grid decimated by `down`."""
    return (taps - down + 1) // 2, (taps - down) // 2


def _with_margins(padding, f, margins, factor_x, factor_y):
    """`padding` `[px0, px1, py0, py1]` widened by `margins(taps, factor)` along x (filter width) and y (height)."""
    fw, fh = _get_filter_size(f)
    x0, x1 = margins(fw, factor_x)
    y0, y1 = margins(fh, factor_y)
    px0, px1, py0, py1 = padding
    return [px0 + x0, px1 + x1, py0 + y0, py1 + y1]


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """FIR-filter `x` `[N, C, H, W]`; with zero `padding` the output keeps the input size."""
    p = _with_margins(_parse_padding(padding), f, _upsampling_margins, 1, 1)
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """Upsample `x` `[N, C, H, W]` by `up` and filter; `padding` is relative to the output."""
    upx, upy = _parse_scaling(up)
    p = _with_margins(_parse_padding(padding), f, _upsampling_margins, upx, upy)
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """Filter and downsample `x` `[N, C, H, W]` by `down`; `padding` is relative to the input."""
    downx, downy = _parse_scaling(down)
    p = _with_margins(_parse_padding(padding), f, _downsampling_margins, downx, downy)
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
