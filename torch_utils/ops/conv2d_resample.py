"""2-D convolution fused with FIR up/down-sampling (docs/compatibility.md, "Ops").

Mathematically: zero-stuff by `up` and pad, FIR-filter with `f` (gain up²), convolve with `w`, then FIR-filter and
decimate by `down`. The implementation picks the cheapest equivalent arrangement (transposed convolution for
upsampling, strided convolution for downsampling, 1x1 kernels applied at the lower resolution); every branch equals
the mathematical definition up to rounding, and the branch order decides the exact rounding.
"""

import torch

from torch_utils import misc
from torch_utils.ops import conv2d_gradfix, fast_path, upfirdn2d
from torch_utils.ops.upfirdn2d import _downsampling_margins, _parse_padding, _upsampling_margins, _with_margins


def _weight_shape(w):
    """`(out_channels, in_channels_per_group, kh, kw)` as Python ints; while tracing they are baked in as
    constants, and the assertion records that the traced weight still has them."""
    with misc.suppress_tracer_warnings():
        dims = tuple(int(size) for size in w.shape)
    misc.assert_shape(w, list(dims))
    return dims


def _convolve(x, w, flip_weight, transpose=False, **conv_kwargs):
    """One `conv2d_gradfix` convolution (transposed if asked); `conv_kwargs` are its stride, padding and groups.

    `flip_weight=True` applies `w` as `torch.nn.functional.conv2d` does (cross-correlation); False rotates it by
    180 degrees first (true convolution), which a 1x1 kernel does not need.
    """
    kh, kw = _weight_shape(w)[2:]
    if not flip_weight and kh * kw > 1:
        w = w.flip([2, 3])
    if fast_path.applies(x) and x.is_contiguous(memory_format=torch.channels_last):
        w = fast_path.channels_last(w)  # a transposed convolution needs both operands channels-last to be fast
    conv = conv2d_gradfix.conv_transpose2d if transpose else conv2d_gradfix.conv2d
    return conv(x, w, **conv_kwargs)


@misc.profiled_function
def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """Convolve `x` with `w`, optionally upsampling before / downsampling after with the FIR filter `f`.

    Args:
        x: `[N, C_in, H, W]`.
        w: `[C_out, C_in // groups, kh, kw]`, same dtype as `x`.
        f: None or a float32 1-D/2-D filter from `upfirdn2d.setup_filter` (needed when up > 1 or down > 1).
        up, down: integer factors >= 1.
        padding: int, `[px, py]` or `[px0, px1, py0, py1]`, relative to the upsampled image.
        groups: number of convolution groups.
        flip_weight: True = cross-correlation (as torch.nn.functional.conv2d), False = true convolution.
        flip_filter: passed to every upfirdn2d call.

    Returns:
        `[N, C_out, H', W']`.
    """
    assert isinstance(x, torch.Tensor) and x.ndim == 4, "conv2d_resample: expected x of shape [N, C, H, W]"
    assert isinstance(w, torch.Tensor) and w.ndim == 4, "conv2d_resample: expected w of shape [O, I/groups, kh, kw]"
    assert w.dtype == x.dtype, f"conv2d_resample: w has dtype {w.dtype} but x has {x.dtype}"
    assert f is None or (isinstance(f, torch.Tensor) and f.ndim in [1, 2] and f.dtype == torch.float32), (
        "conv2d_resample: f must be None or a float32 1-D/2-D filter"
    )
    assert isinstance(up, int) and up >= 1, f"conv2d_resample: up must be an int >= 1, got {up!r}"
    assert isinstance(down, int) and down >= 1, f"conv2d_resample: down must be an int >= 1, got {down!r}"
    assert isinstance(groups, int) and groups >= 1, f"conv2d_resample: groups must be an int >= 1, got {groups!r}"
    out_channels, in_channels_per_group, kh, kw = _weight_shape(w)
    misc.assert_shape(x, [None, in_channels_per_group * groups, None, None])

    # Widen the padding so that the filter stays centred on the upsampled grid, then on the downsampled one.
    adjusted = list(_parse_padding(padding))
    if up > 1:
        adjusted = _with_margins(adjusted, f, _upsampling_margins, up, up)
    if down > 1:
        adjusted = _with_margins(adjusted, f, _downsampling_margins, down, down)
    px0, px1, py0, py1 = adjusted
    fast = fast_path.applies(x)
    if fast and (up > 1 or down > 1):
        x = fast_path.channels_last(x)  # the CPU's transposed, strided and depthwise kernels run fastest on it

    # 1x1 kernel with downsampling: filter and decimate first, then convolve the smaller image.
    if kw == 1 and kh == 1 and (down > 1 and up == 1):
        x = upfirdn2d.upfirdn2d(x=x, f=f, down=down, padding=adjusted, flip_filter=flip_filter)
        return _convolve(x, w, flip_weight, groups=groups)

    # 1x1 kernel with upsampling: convolve the smaller image first, then upsample and filter.
    if kw == 1 and kh == 1 and (up > 1 and down == 1):
        x = _convolve(x, w, flip_weight, groups=groups)
        return upfirdn2d.upfirdn2d(x=x, f=f, up=up, padding=adjusted, gain=up**2, flip_filter=flip_filter)

    # Downsampling only: filter, then a strided convolution does the decimation.
    if down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x=x, f=f, padding=adjusted, flip_filter=flip_filter)
        return _convolve(x, w, flip_weight, stride=down, groups=groups)

    # Upsampling (possibly followed by downsampling): a strided transposed convolution does the zero-stuffing.
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_channels_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_channels_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        # The symmetric part of any cropping is absorbed by the transposed convolution's own padding.
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        # Transposed convolution = zero-stuffing + true convolution, hence the inverted flip.
        x = _convolve(x, w, not flip_weight, transpose=True, stride=up, padding=[pyt, pxt], groups=groups)
        x = upfirdn2d.upfirdn2d(
            x=x, f=f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up**2, flip_filter=flip_filter
        )
        if down > 1:
            x = upfirdn2d.upfirdn2d(x=x, f=f, down=down, flip_filter=flip_filter)
        return x

    # No resampling, symmetric non-negative padding: the convolution pads by itself.
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        if fast and fast_path.takes_conv3x3(x, w, up, down, adjusted, groups):
            return fast_path.conv3x3(x, w if flip_weight else w.flip([2, 3]))
        return _convolve(x, w, flip_weight, padding=[py0, px0], groups=groups)

    # Remaining case (asymmetric or negative padding without resampling): the generic definition.
    x = upfirdn2d.upfirdn2d(
        x=x, f=(f if up > 1 else None), up=up, padding=adjusted, gain=up**2, flip_filter=flip_filter
    )
    x = _convolve(x, w, flip_weight, groups=groups)
    if down > 1:
        x = upfirdn2d.upfirdn2d(x=x, f=f, down=down, flip_filter=flip_filter)
    return x
