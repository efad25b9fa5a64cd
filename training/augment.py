"""Adaptive discriminator augmentation (ADA) pipeline: `AugmentPipe` and the `train.py` presets.

The pipe applies a random, per-sample chain of geometric, colour, filtering and corruption transforms to a batch of
images. Every step is differentiable with respect to the images (the R1 penalty differentiates through it twice).
Seeded calls reproduce the reference exactly because the random draws are made with the same functions, shapes and
order (docs/compatibility.md, "Augmentation"); see `AugmentPipe.forward` for the stage order.
"""

import fractions
import math

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import misc, persistence
from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix, upfirdn2d

# ----------------------------------------------------------------------------
# Wavelet low-pass filters (float64 source values). sym6 drives the geometric resampling, sym2 the filter bank.

SYM6 = [
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
]
SYM2 = [-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025]

FBANK_LEVELS = 3  # Dyadic levels of the image-space filter bank -> 4 bands of 43 taps.
FBANK_EXPECTED_POWER = [10, 1, 1, 1]  # Assumed power spectrum of natural images per band (normalised by 13).

# Names of the probability multipliers, in the canonical order used by presets and training_options.json.
TRANSFORM_NAMES = [
    "xflip",
    "rotate90",
    "xint",
    "scale",
    "rotate",
    "aniso",
    "xfrac",
    "brightness",
    "contrast",
    "lumaflip",
    "hue",
    "saturation",
    "imgfilter",
    "noise",
    "cutout",
]

_PRESET_GROUPS = {
    "blit": ["xflip", "rotate90", "xint"],
    "geom": ["scale", "rotate", "aniso", "xfrac"],
    "color": ["brightness", "contrast", "lumaflip", "hue", "saturation"],
    "filter": ["imgfilter"],
    "noise": ["noise"],
    "cutout": ["cutout"],
}
_PRESET_RECIPES = {
    "blit": ["blit"],
    "geom": ["geom"],
    "color": ["color"],
    "filter": ["filter"],
    "noise": ["noise"],
    "cutout": ["cutout"],
    "bg": ["blit", "geom"],
    "bgc": ["blit", "geom", "color"],
    "bgcf": ["blit", "geom", "color", "filter"],
    "bgcfn": ["blit", "geom", "color", "filter", "noise"],
    "bgcfnc": ["blit", "geom", "color", "filter", "noise", "cutout"],
}


def _preset_kwargs(groups: list[str]) -> dict:
    enabled = {name for group in groups for name in _PRESET_GROUPS[group]}
    return {name: 1 for name in TRANSFORM_NAMES if name in enabled}


# `--augpipe` presets of train.py (docs/compatibility.md, "Augmentation"): constructor kwargs, keys in canonical
# order.
AUGPIPE_SPECS = {name: _preset_kwargs(groups) for name, groups in _PRESET_RECIPES.items()}

# ----------------------------------------------------------------------------
# Filter construction.


def _fma(a: float, b: float, c: float) -> float:
    """a * b + c rounded once (a fused multiply-add), exactly, on any CPU and Python version."""
    return float(fractions.Fraction(a) * fractions.Fraction(b) + fractions.Fraction(c))


def _full_convolution(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """`np.convolve(x, h)` (float64, 'full' mode) with a fixed order of operations.

    Every output tap is accumulated from the lowest index of the longer input upwards with fused multiply-adds,
    which is what the BLAS kernel behind the reference's `np.convolve` computed. NumPy's own result depends on
    which BLAS kernel the CPU selects (AVX-512 and AVX2 kernels differ in the last bits of the filter bank's
    residues), so it cannot be relied upon for a bit-exact buffer.
    """
    long, short = (x, h) if x.size >= h.size else (h, x)
    long, short = [float(v) for v in long], [float(v) for v in short]
    out = np.zeros(len(long) + len(short) - 1, dtype=np.float64)
    for k in range(out.size):
        acc = 0.0
        for i in range(max(0, k - len(short) + 1), min(len(long), k + 1)):
            acc = _fma(long[i], short[k - i], acc)
        out[k] = acc
    return out


def build_filter_bank() -> np.ndarray:
    """Build the image-space filter bank `Hz_fbank` as float32 [4, 43] (docs/compatibility.md, "Augmentation").

    Row 0 is a low-pass filter, rows 1-3 are band-pass filters of decreasing frequency; the float64 construction is
    kept (rather than a table of values), with a convolution of fixed rounding, so that the tiny residues match the
    reference bit for bit.
    """
    h_lo = np.asarray(SYM2, dtype=np.float64)
    h_hi = h_lo * ((-1.0) ** np.arange(h_lo.size))
    a_lo = _full_convolution(h_lo, h_lo[::-1]) / 2
    a_hi = _full_convolution(h_hi, h_hi[::-1]) / 2
    bank = np.zeros([FBANK_LEVELS + 1, 1], dtype=np.float64)
    bank[0, 0] = 1
    for level in range(1, FBANK_LEVELS + 1):
        stuffed = np.zeros([bank.shape[0], bank.shape[1] * 2 - 1], dtype=np.float64)
        stuffed[:, ::2] = bank
        bank = np.stack([_full_convolution(row, a_lo) for row in stuffed])
        start = (bank.shape[1] - a_hi.size) // 2
        bank[level, start : start + a_hi.size] += a_hi
    return bank.astype(np.float32)


# ----------------------------------------------------------------------------
# Homogeneous matrix helpers. Entries are Python numbers or tensors of one common shape S; the result has shape
# S + [rows, cols] and is float32.


def _matrix(*rows, device=None) -> torch.Tensor:
    entries = [entry for row in rows for entry in row]
    tensors = [entry for entry in entries if isinstance(entry, torch.Tensor)]
    if not tensors:
        return misc.constant(np.asarray(rows), device=device)
    shape = tensors[0].shape
    assert all(t.shape == shape for t in tensors), "augment._matrix: tensor entries must share one shape"
    entries = [
        entry if isinstance(entry, torch.Tensor) else misc.constant(entry, shape=shape, device=tensors[0].device)
        for entry in entries
    ]
    return torch.stack(entries, dim=-1).reshape(shape + (len(rows), -1))


def translate2d(tx, ty, device=None) -> torch.Tensor:
    return _matrix([1, 0, tx], [0, 1, ty], [0, 0, 1], device=device)


def scale2d(sx, sy, device=None) -> torch.Tensor:
    return _matrix([sx, 0, 0], [0, sy, 0], [0, 0, 1], device=device)


def rotate2d(theta, device=None) -> torch.Tensor:
    return _matrix(
        [torch.cos(theta), torch.sin(-theta), 0],
        [torch.sin(theta), torch.cos(theta), 0],
        [0, 0, 1],
        device=device,
    )


def translate2d_inv(tx, ty, device=None) -> torch.Tensor:
    return translate2d(-tx, -ty, device=device)


def scale2d_inv(sx, sy, device=None) -> torch.Tensor:
    return scale2d(1 / sx, 1 / sy, device=device)


def rotate2d_inv(theta, device=None) -> torch.Tensor:
    return rotate2d(-theta, device=device)


def translate3d(tx, ty, tz, device=None) -> torch.Tensor:
    return _matrix([1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1], device=device)


def scale3d(sx, sy, sz, device=None) -> torch.Tensor:
    return _matrix([sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1], device=device)


def rotate3d(v, theta, device=None) -> torch.Tensor:
    """Rotation by `theta` about the unit axis `v` ([4] or [3] tensor; only the first three entries are used)."""
    vx, vy, vz = v[..., 0], v[..., 1], v[..., 2]
    s = torch.sin(theta)
    c = torch.cos(theta)
    cc = 1 - c
    return _matrix(
        [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
        [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
        [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
        [0, 0, 0, 1],
        device=device,
    )


# ----------------------------------------------------------------------------


def _reflect_padding(G_inv: torch.Tensor, width: int, height: int, guard: int) -> list[int]:
    """Reflection padding [left, top, right, bottom] shared by the whole batch, as the reference computes it.

    Every sample's transformed image corners, widened by `guard` pixels for the resampling filter, must fall
    inside the padded image; one side never gets more padding than the reflection can supply (size - 1).
    G_inv: [N, 3, 3] maps output to input pixel coordinates, origin at the image centre.
    """
    half_w = (width - 1) / 2
    half_h = (height - 1) / 2
    corners = _matrix(
        [-half_w, -half_h, 1], [half_w, -half_h, 1], [half_w, half_h, 1], [-half_w, half_h, 1], device=G_inv.device
    )
    corner_xy = (G_inv @ corners.t())[:, :2, :].transpose(0, 1).reshape(2, -1)  # [2, N * 4]
    # How far the corners reach left, up, right and down; the half size is what the image already covers.
    reach = torch.cat([-corner_xy, corner_xy]).amax(dim=1)
    needed = reach + misc.constant([guard - half_w, guard - half_h] * 2, device=G_inv.device)
    limits = [width - 1, height - 1] * 2
    # Python's min/max/ceil are exact on the float32 values, so this matches clamping on the device.
    return [math.ceil(min(max(value, 0), limit)) for value, limit in zip(needed.tolist(), limits)]


def _forced(like: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`like`-shaped tensor filled with the 0-d `value` (debug_percentile override)."""
    return value.to(like.dtype).expand(like.shape).clone()


def _gate(value: torch.Tensor, keep: torch.Tensor, neutral: float) -> torch.Tensor:
    """Keep `value` where `keep` is true, else the transform's neutral value."""
    return torch.where(keep, value, torch.full_like(value, neutral))


# Maps from a base sample (u ~ U[0, 1) or n ~ N(0, 1)) to a transform parameter. The arithmetic is written out in the
# reference's order of operations: a different association of the factors would round differently.


def _integer_below(count):
    """u -> floor(u * count): an integer 0 .. count - 1."""
    return lambda u: torch.floor(u * count)


def _symmetric(*factors):
    """u -> (2u - 1) * factor_1 * factor_2 ...: uniform on (-product, product), multiplied in the given order."""

    def to_value(u):
        value = u * 2 - 1
        for factor in factors:
            value = value * factor
        return value

    return to_value


def _log2_normal(std):
    """n -> 2^(n * std): a multiplicative factor around 1."""
    return lambda n: torch.exp2(n * std)


def _scaled(std):
    """n -> n * std."""
    return lambda n: n * std


class _ParameterSampler:
    """Draws the per-sample parameters of one `AugmentPipe.forward` call.

    A parameter is `to_value(base)` for a base sample of shape [N, *shape] (`torch.rand` for uniform, `torch.randn`
    for normal and, as its absolute value, half-normal). A second draw, `torch.rand` of shape [N, 1, ...], decides
    per sample whether the transform applies (with probability `probability`); samples it skips get `neutral`. The
    draws happen in this order and in the order the stages ask for parameters, which is what makes seeded runs
    reproduce the reference (docs/compatibility.md, "Augmentation").

    With a debug percentile d every sample gets `to_value` of the base sample's d-th "percentile" instead: d itself
    (uniform), erfinv(2d - 1) (normal) or erfinv(d) (half-normal), or `neutral` where the caller says so. The draws
    are still made, so the generator advances as without d.
    """

    def __init__(self, batch_size: int, device: torch.device, debug_percentile):
        self.batch_size = batch_size
        self.device = device
        self.debug_percentile = debug_percentile  # None, or a float32 0-d tensor on `device`

    def uniform(self, shape, to_value, probability, neutral, debug_neutral=False) -> torch.Tensor:
        base = torch.rand([self.batch_size, *shape], device=self.device)
        return self._finish(to_value, base, lambda d: d, probability, neutral, debug_neutral)

    def normal(self, shape, to_value, probability, neutral, debug_neutral=False) -> torch.Tensor:
        base = torch.randn([self.batch_size, *shape], device=self.device)
        return self._finish(to_value, base, lambda d: torch.erfinv(d * 2 - 1), probability, neutral, debug_neutral)

    def half_normal(self, shape, to_value, probability, neutral) -> torch.Tensor:
        base = torch.randn([self.batch_size, *shape], device=self.device).abs()
        return self._finish(to_value, base, torch.erfinv, probability, neutral, debug_neutral=False)

    def keep(self, ndim: int, probability) -> torch.Tensor:
        """Bool [N, 1, ...] (`ndim` axes): which samples the transform applies to."""
        return torch.rand([self.batch_size] + [1] * (ndim - 1), device=self.device) < probability

    def _finish(self, to_value, base, base_at_percentile, probability, neutral, debug_neutral):
        value = to_value(base)
        value = _gate(value, self.keep(value.ndim, probability), neutral)
        if self.debug_percentile is None:
            return value
        if debug_neutral:
            return torch.full_like(value, neutral)
        return _forced(value, to_value(base_at_percentile(self.debug_percentile)))


@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    """ADA augmentation pipeline.

    Each `<transform>` argument is a probability multiplier (the per-sample probability is multiplier * p, and the
    transform is enabled when it is > 0); the remaining arguments set the transforms' strengths. By group:

        xflip, rotate90, xint; xint_max                 mirror, quarter turns, whole-pixel shifts
        scale, rotate, aniso, xfrac; scale_std,         zoom, free rotation, stretch, sub-pixel shift
            rotate_max, aniso_std, xfrac_std
        brightness, contrast, lumaflip, hue,            colour matrix terms
            saturation; brightness_std, contrast_std,
            hue_max, saturation_std
        imgfilter; imgfilter_bands, imgfilter_std       random gain per frequency band (4 band multipliers)
        noise, cutout; noise_std, cutout_size           additive Gaussian noise, a zeroed rectangle

    `*_std` are standard deviations (of the base-2 logarithm for factors), `*_max` ranges where 1 is a full turn,
    shifts and sizes are fractions of the image size. Names, defaults and their order are a compatibility contract
    (docs/compatibility.md, "Augmentation").
    """

    def __init__(
        self,
        xflip=0,
        rotate90=0,
        xint=0,
        xint_max=0.125,
        scale=0,
        rotate=0,
        aniso=0,
        xfrac=0,
        scale_std=0.2,
        rotate_max=1,
        aniso_std=0.2,
        xfrac_std=0.125,
        brightness=0,
        contrast=0,
        lumaflip=0,
        hue=0,
        saturation=0,
        brightness_std=0.2,
        contrast_std=0.5,
        hue_max=1,
        saturation_std=1,
        imgfilter=0,
        imgfilter_bands=(1, 1, 1, 1),
        imgfilter_std=1,
        noise=0,
        cutout=0,
        noise_std=0.1,
        cutout_size=0.5,
    ):
        super().__init__()
        self.register_buffer("p", torch.ones([]))  # Overall augmentation probability, adjusted by ADA.

        # Lossless moves: mirror, quarter turns, whole-pixel shifts.
        self.xflip = float(xflip)
        self.rotate90 = float(rotate90)
        self.xint = float(xint)
        self.xint_max = float(xint_max)

        # Resampled warps: zoom, free rotation, stretch, sub-pixel shift.
        self.scale = float(scale)
        self.rotate = float(rotate)
        self.aniso = float(aniso)
        self.xfrac = float(xfrac)
        self.scale_std = float(scale_std)
        self.rotate_max = float(rotate_max)
        self.aniso_std = float(aniso_std)
        self.xfrac_std = float(xfrac_std)

        # Per-image 4x4 colour matrix terms.
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)
        self.hue_max = float(hue_max)
        self.saturation_std = float(saturation_std)

        # Random per-band equalisation.
        self.imgfilter = float(imgfilter)
        self.imgfilter_bands = list(imgfilter_bands)
        self.imgfilter_std = float(imgfilter_std)

        # Additive Gaussian noise and a zeroed rectangle.
        self.noise = float(noise)
        self.cutout = float(cutout)
        self.noise_std = float(noise_std)
        self.cutout_size = float(cutout_size)

        self.register_buffer("Hz_geom", upfirdn2d.setup_filter(SYM6))
        self.register_buffer("Hz_fbank", torch.as_tensor(build_filter_bank()))
        if len(self.imgfilter_bands) != self.Hz_fbank.shape[0]:
            raise ValueError(
                f"AugmentPipe: imgfilter_bands must have {self.Hz_fbank.shape[0]} entries, "
                f"got {len(self.imgfilter_bands)}"
            )

    def forward(self, images: torch.Tensor, debug_percentile=None) -> torch.Tensor:
        """Augment a batch.

        images: [N, C, H, W] float tensor, values nominally in [-1, 1]; returns a tensor of the same shape. C is 1
        (grayscale), 3 (RGB) or 4 (RGBA: the colour transforms leave alpha alone, every other transform moves,
        filters, noises and cuts it like a colour channel). H and W may differ (non-square images).
        debug_percentile: optional number in [0, 1] that replaces every sampled parameter by a deterministic value
        (random numbers are still drawn so the generator advances exactly as without it).
        """
        assert isinstance(images, torch.Tensor) and images.ndim == 4, (
            f"AugmentPipe: expected a 4-D [N, C, H, W] tensor, got {getattr(images, 'shape', type(images))}"
        )
        device = images.device
        if debug_percentile is not None:
            debug_percentile = torch.as_tensor(debug_percentile, dtype=torch.float32, device=device)
        draws = _ParameterSampler(images.shape[0], device, debug_percentile)

        images = self._geometric(images, draws)
        images = self._colour(images, draws)
        if self.imgfilter > 0:
            images = self._image_filter(images, draws)
        if self.noise > 0:
            images = self._additive_noise(images, draws)
        if self.cutout > 0:
            images = self._cutout(images, draws)
        return images

    # ------------------------------------------------------------------------
    # Geometric transforms (docs/compatibility.md, "Augmentation").

    def _geometric(self, images: torch.Tensor, draws: _ParameterSampler) -> torch.Tensor:
        """Compose the enabled geometric transforms into one matrix per sample and resample the images once."""
        height, width = images.shape[2:]
        p = self.p
        # G_inv maps output pixel coordinates to input pixel coordinates, so each transform contributes its inverse.
        identity = torch.eye(3, device=images.device)
        G_inv = identity

        if self.xflip > 0:
            flip = draws.uniform([], _integer_below(2), self.xflip * p, 0)
            G_inv = G_inv @ scale2d_inv(1 - 2 * flip, 1)
        if self.rotate90 > 0:
            quarter_turns = draws.uniform([], _integer_below(4), self.rotate90 * p, 0)
            G_inv = G_inv @ rotate2d_inv(-np.pi / 2 * quarter_turns)
        if self.xint > 0:
            shift = draws.uniform([2], _symmetric(self.xint_max), self.xint * p, 0)
            G_inv = G_inv @ translate2d_inv(torch.round(shift[:, 0] * width), torch.round(shift[:, 1] * height))
        if self.scale > 0:
            zoom = draws.normal([], _log2_normal(self.scale_std), self.scale * p, 1)
            G_inv = G_inv @ scale2d_inv(zoom, zoom)

        # The rotation probability is split between a rotation before and one after the anisotropic scaling, so
        # that P(either) = rotate * p. Under a debug percentile only the first one turns.
        p_rot = 1 - torch.sqrt((1 - self.rotate * p).clamp(0, 1))
        if self.rotate > 0:
            theta = draws.uniform([], _symmetric(np.pi, self.rotate_max), p_rot, 0)
            G_inv = G_inv @ rotate2d_inv(-theta)
        if self.aniso > 0:
            stretch = draws.normal([], _log2_normal(self.aniso_std), self.aniso * p, 1)
            G_inv = G_inv @ scale2d_inv(stretch, 1 / stretch)
        if self.rotate > 0:
            theta = draws.uniform([], _symmetric(np.pi, self.rotate_max), p_rot, 0, debug_neutral=True)
            G_inv = G_inv @ rotate2d_inv(-theta)

        if self.xfrac > 0:
            shift = draws.normal([2], _scaled(self.xfrac_std), self.xfrac * p, 0)
            G_inv = G_inv @ translate2d_inv(shift[:, 0] * width, shift[:, 1] * height)

        # Execute whenever a geometric transform is enabled, even if every sample was gated off.
        if G_inv is identity:
            return images
        return self._resample(images, G_inv)

    def _resample(self, images: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
        """Apply the per-sample inverse matrix G_inv [N, 3, 3] at 2x oversampling with reflection padding."""
        batch_size, num_channels, height, width = images.shape
        device = images.device
        # Taps the 2x filter reaches beyond a pixel, counted in input pixels.
        filter_reach = self.Hz_geom.shape[0] // 4

        left, top, right, bottom = _reflect_padding(G_inv, width, height, guard=filter_reach * 2)
        images = F.pad(input=images, pad=[left, right, top, bottom], mode="reflect")
        # Re-centre: the transforms act about the image centre, which moves when the padding is asymmetric.
        G_inv = translate2d((left - right) / 2, (top - bottom) / 2, device=device) @ G_inv

        # Upsample 2x; pixel centres move, hence the half-pixel translation around the scaling.
        images = upfirdn2d.upsample2d(x=images, f=self.Hz_geom, up=2)
        G_inv = scale2d(2, 2, device=device) @ G_inv @ scale2d_inv(2, 2, device=device)
        G_inv = translate2d(-0.5, -0.5, device=device) @ G_inv @ translate2d_inv(-0.5, -0.5, device=device)

        # Sample a 2x output that keeps filter_reach extra input pixels per side for the downsampling filter, in
        # the normalised [-1, 1] coordinates of affine_grid / grid_sample.
        out_height = (height + filter_reach * 2) * 2
        out_width = (width + filter_reach * 2) * 2
        in_height, in_width = images.shape[2:]
        to_normalised = scale2d(2 / in_width, 2 / in_height, device=device)
        from_normalised = scale2d_inv(2 / out_width, 2 / out_height, device=device)
        G_inv = to_normalised @ G_inv @ from_normalised
        grid = F.affine_grid(
            theta=G_inv[:, :2, :].to(images.dtype),
            size=[batch_size, num_channels, out_height, out_width],
            align_corners=False,
        )
        images = grid_sample_gradfix.grid_sample(images, grid)

        return upfirdn2d.downsample2d(x=images, f=self.Hz_geom, down=2, padding=-filter_reach * 2, flip_filter=True)

    # ------------------------------------------------------------------------
    # Colour transforms (docs/compatibility.md, "Augmentation").

    def _colour(self, images: torch.Tensor, draws: _ParameterSampler) -> torch.Tensor:
        """Compose the enabled colour transforms into one 4x4 matrix per sample (RGB + offset) and apply it."""
        num_channels = images.shape[1]
        p = self.p
        identity = torch.eye(4, device=images.device)
        C = identity

        if self.brightness > 0:
            offset = draws.normal([], _scaled(self.brightness_std), self.brightness * p, 0)
            C = translate3d(offset, offset, offset) @ C
        if self.contrast > 0:
            gain = draws.normal([], _log2_normal(self.contrast_std), self.contrast * p, 1)
            C = scale3d(gain, gain, gain) @ C

        v = misc.constant(np.asarray([1, 1, 1, 0]) / np.sqrt(3), device=images.device)  # Luma axis.
        vv = torch.outer(v, v)
        if self.lumaflip > 0:
            flip = draws.uniform([1, 1], _integer_below(2), self.lumaflip * p, 0)
            C = (identity - 2 * vv * flip) @ C  # Householder reflection about the luma plane.
        if self.hue > 0 and num_channels > 1:
            theta = draws.uniform([], _symmetric(np.pi, self.hue_max), self.hue * p, 0)
            C = rotate3d(v, theta) @ C  # Rotate around the luma axis.
        if self.saturation > 0 and num_channels > 1:
            saturation = draws.normal([1, 1], _log2_normal(self.saturation_std), self.saturation * p, 1)
            C = (vv + (identity - vv) * saturation) @ C

        if C is identity:
            return images
        return _apply_colour_matrix(images, C)

    # ------------------------------------------------------------------------
    # Image-space filtering (docs/compatibility.md, "Augmentation").

    def _image_filter(self, images: torch.Tensor, draws: _ParameterSampler) -> torch.Tensor:
        batch_size, num_channels, height, width = images.shape
        device = images.device
        num_bands = self.Hz_fbank.shape[0]
        band_power = misc.constant(np.asarray(FBANK_EXPECTED_POWER) / np.sum(FBANK_EXPECTED_POWER), device=device)

        # Per-band amplitude gains; each band's draw is renormalised so that the expected image power is unchanged.
        # A band with multiplier 0 is never scaled, not even under a debug percentile, but its draws are made.
        band_gains = torch.ones([batch_size, num_bands], device=device)
        for band, band_strength in enumerate(self.imgfilter_bands):
            amplitude = draws.normal(
                [],
                _log2_normal(self.imgfilter_std),
                self.imgfilter * self.p * band_strength,
                1,
                debug_neutral=not band_strength > 0,
            )
            step = torch.ones([batch_size, num_bands], device=device)
            step[:, band] = amplitude
            step = step / (band_power * step.square()).sum(dim=-1, keepdim=True).sqrt()
            band_gains = band_gains * step

        # One symmetric kernel per sample, shared by its channels: [N * C, 1, taps].
        kernels = (band_gains @ self.Hz_fbank).repeat_interleave(num_channels, dim=0).unsqueeze(1).to(images.dtype)
        planes = batch_size * num_channels
        half_taps = self.Hz_fbank.shape[1] // 2

        images = images.reshape([1, planes, height, width])
        images = F.pad(input=images, pad=[half_taps] * 4, mode="reflect")
        images = conv2d_gradfix.conv2d(input=images, weight=kernels.unsqueeze(2), groups=planes)  # along width
        images = conv2d_gradfix.conv2d(input=images, weight=kernels.unsqueeze(3), groups=planes)  # along height
        return images.reshape([batch_size, num_channels, height, width])

    # ------------------------------------------------------------------------
    # Corruptions (docs/compatibility.md, "Augmentation").

    def _additive_noise(self, images: torch.Tensor, draws: _ParameterSampler) -> torch.Tensor:
        sigma = draws.half_normal([1, 1, 1], _scaled(self.noise_std), self.noise * self.p, 0)
        noise = torch.randn(list(images.shape), device=images.device) * sigma
        return images + noise.to(images.dtype)

    def _cutout(self, images: torch.Tensor, draws: _ParameterSampler) -> torch.Tensor:
        batch_size, _, height, width = images.shape
        device = images.device
        # [N, 2 (x, y), 1, 1, 1]: broadcastable against the [1, 1, H, W]-shaped coordinate grids below.
        size = torch.full([batch_size, 2, 1, 1, 1], self.cutout_size, device=device)
        size = _gate(size, draws.keep(size.ndim, self.cutout * self.p), 0)
        center = torch.rand([batch_size, 2, 1, 1, 1], device=device)
        if draws.debug_percentile is not None:
            size = torch.full_like(size, self.cutout_size)
            center = _forced(center, draws.debug_percentile)
        coord_x = torch.arange(width, device=device).reshape([1, 1, 1, -1])
        coord_y = torch.arange(height, device=device).reshape([1, 1, -1, 1])
        mask_x = ((coord_x + 0.5) / width - center[:, 0]).abs() >= size[:, 0] / 2
        mask_y = ((coord_y + 0.5) / height - center[:, 1]).abs() >= size[:, 1] / 2
        mask = torch.logical_or(mask_x, mask_y).to(images.dtype)
        return images * mask


def _apply_colour_matrix(images: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """images [N, C, H, W] with C = 3 (RGB), 4 (RGBA) or 1 (luma), C: [N, 4, 4] acting on (r, g, b, 1) -> same shape.

    A one-channel image stands for a gray RGB pixel: it gets the mean of the matrix's three output rows. Alpha is no
    colour: an RGBA image's RGB channels are transformed as an RGB image's, its alpha channel is left as it is.
    """
    batch_size, num_channels, height, width = images.shape
    C = C.to(images.dtype)
    pixels = images.reshape([batch_size, num_channels, height * width])
    if num_channels in (3, 4):
        rgb = C[:, :3, :3] @ pixels[:, :3] + C[:, :3, 3:]
        pixels = rgb if num_channels == 3 else torch.cat([rgb, pixels[:, 3:]], dim=1)
    elif num_channels == 1:
        C = C[:, :3, :].mean(dim=1, keepdim=True)
        pixels = pixels * C[:, :, :3].sum(dim=2, keepdim=True) + C[:, :, 3:]
    else:
        raise ValueError("Image must be RGB (3 channels), RGBA (4 channels) or L (1 channel)")
    return pixels.reshape([batch_size, num_channels, height, width])
