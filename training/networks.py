"""Generator and discriminator networks of StyleGAN2-ADA.

Every class is a persistent class (`torch_utils.persistence`): pickles carry this module's source, so snapshots keep
working when the file changes. State-dict names, registration order and the order of the random initial draws are
part of the contract with existing snapshots and must not change.
"""

import numpy as np
import torch

from torch_utils import misc, persistence
from torch_utils.ops import bias_act, conv2d_resample, fast_path, fma, upfirdn2d

# Low-pass FIR filter used for every up/down-sampling step (made 2-D by `setup_filter`). A list, as in the
# reference, because the blocks record it in their init_kwargs; never modified.
DEFAULT_RESAMPLE_FILTER = [1, 3, 3, 1]
# Gain applied to both branches of a residual block so that their sum keeps unit variance.
RESIDUAL_GAIN = np.sqrt(0.5)
ARCHITECTURES = ("orig", "skip", "resnet")
NOISE_MODES = ("random", "const", "none")
# fp16 is never used below this resolution, whatever `num_fp16_res` asks for.
_LOWEST_FP16_RESOLUTION = 8
# Non-square images: the longer side may be at most this many times the shorter one.
MAX_ASPECT = 4

# ----------------------------------------------------------------------------------------------------------------------
# Construction and format helpers shared by several classes (plain functions: pickles reference only the classes).


def _memory_format(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def _store(module, **settings):
    """Keep constructor settings as plain attributes under their argument names.

    They are part of a module's pickled state and user scripts read them (`G.z_dim`, `G.num_ws`, ...), so the
    names belong to the compatibility contract (docs/compatibility.md, "Parameter and buffer names").
    """
    for name, value in settings.items():
        setattr(module, name, value)


def _activation_format(use_fp16, channels_last, force_fp32):
    """(dtype, memory format) of a block's activations; `force_fp32` overrides both fp16 settings."""
    if force_fp32:
        return torch.float32, torch.contiguous_format
    return (torch.float16 if use_fp16 else torch.float32), _memory_format(channels_last)


def _block_input(x, channels, shape, dtype, memory_format):
    """Check that `x` is [N, channels, H, W] with (H, W) = `shape` and convert it to the block's dtype and format."""
    misc.assert_shape(x, [None, channels, *shape])
    return x.to(dtype=dtype, memory_format=memory_format)


def _channels_per_resolution(resolutions, channel_base, channel_max, stretch=1):
    """Feature maps of the blocks at each resolution: channel_base / (longer side of the stage), capped at
    channel_max. `stretch` is how many times longer than `res` the stage's longer side is (1 when square)."""
    return {res: min(channel_base // (res * stretch), channel_max) for res in resolutions}


# ----------------------------------------------------------------------------------------------------------------------
# Non-square images. A network for H x W images is the square network at the shorter side, min(H, W), with every
# stage stretched along the longer axis by the aspect factor: its blocks are named and counted by their shorter side
# (b4 is the 4 x 4*a stage), so num_ws and the block layout follow the shorter side. Square networks record and
# store nothing new (their pickles stay what they were); only non-square ones get `img_height`/`img_width` (top
# level) and `stage_shape` (blocks and layers).


def _is_power_of_two(value):
    return isinstance(value, (int, np.integer)) and value >= 1 and (value & (value - 1)) == 0


def _image_shape(owner, img_resolution, img_height, img_width):
    """(height, width) of the images; a side left None is img_resolution. Raises ValueError (one line) unless both
    sides are powers of two >= 4, the larger one is img_resolution and it is at most MAX_ASPECT times the smaller."""
    if img_height is None and img_width is None:
        return img_resolution, img_resolution  # Square: checked as it always was, by the classes themselves.
    height = img_resolution if img_height is None else img_height
    width = img_resolution if img_width is None else img_width
    if not (_is_power_of_two(height) and _is_power_of_two(width)):
        valid = False
    else:
        short, long = sorted((height, width))
        valid = short >= 4 and long == img_resolution and long <= MAX_ASPECT * short
    if not valid:
        raise ValueError(
            f"{owner}: img_width x img_height must be powers of two >= 4 with the larger equal to img_resolution "
            f"({img_resolution}) and an aspect ratio between 1:{MAX_ASPECT} and {MAX_ASPECT}:1, got {width}x{height}"
        )
    return height, width


def _stage_shapes(resolutions, image_shape):
    """(H, W) of the stage at each resolution (= its shorter side): the images' aspect ratio at every scale."""
    height, width = image_shape
    short = min(height, width)
    return {res: (res * height // short, res * width // short) for res in resolutions}


def _stage_plan(image_shape, channel_base, channel_max, num_fp16_res):
    """Stages of a network for `image_shape` (H, W): their resolutions 4, 8, ..., min(H, W) (shorter sides), and per
    resolution the channel count and the (H, W) of the stage, plus the lowest resolution that runs in fp16."""
    short = min(image_shape)
    short_log2 = int(np.log2(short))
    resolutions = [2**i for i in range(2, short_log2 + 1)]
    channels = _channels_per_resolution(resolutions, channel_base, channel_max, max(image_shape) // short)
    return resolutions, channels, _stage_shapes(resolutions, image_shape), _fp16_threshold(short_log2, num_fp16_res)


def _stage_shape_kwargs(shape):
    """The `stage_shape` kwarg for a block or layer: only for a non-square stage, so square ones record nothing."""
    return {} if shape[0] == shape[1] else dict(stage_shape=tuple(shape))


def _set_stage_shape(module, resolution, stage_shape):
    """Store a non-square stage's (H, W); square modules keep the class default None (nothing in their state)."""
    if stage_shape is None:
        return
    stage_shape = tuple(int(side) for side in stage_shape)
    assert len(stage_shape) == 2 and min(stage_shape) == resolution, (
        f"{type(module).__name__}: stage_shape must be (H, W) with shorter side {resolution}, got {stage_shape}"
    )
    module.stage_shape = stage_shape


def _hw(module):
    """(H, W) of the stage a block or layer works at: its `stage_shape`, or resolution x resolution."""
    return module.stage_shape if module.stage_shape is not None else (module.resolution, module.resolution)


def _store_image_shape(net, image_shape):
    """img_height and img_width of a non-square network (square ones store nothing: their pickles stay as they were)."""
    if image_shape[0] != image_shape[1]:
        _store(net, img_height=image_shape[0], img_width=image_shape[1])


def _image_shape_kwargs(net):
    """img_height/img_width to hand on to a sub-network: only for a non-square network."""
    height, width = image_size(net)
    return {} if height == width else dict(img_height=height, img_width=width)


def _halved(shape):
    return tuple(side // 2 for side in shape)


def image_size(net):
    """(height, width) of the images a Generator or SynthesisNetwork makes or a Discriminator takes.

    Square networks, including those of older pickles, have no img_height/img_width: both sides are img_resolution.
    """
    return getattr(net, "img_height", net.img_resolution), getattr(net, "img_width", net.img_resolution)


def _fp16_threshold(img_resolution_log2, num_fp16_res):
    """Lowest resolution whose blocks run in fp16: the `num_fp16_res` highest resolutions do."""
    return max(2 ** (img_resolution_log2 + 1 - num_fp16_res), _LOWEST_FP16_RESOLUTION)


# ----------------------------------------------------------------------------------------------------------------------
# Functional helpers


@misc.profiled_function
def normalize_2nd_moment(x, dim=1, eps=1e-8):
    """Scale `x` so that the mean of its squares along `dim` is 1 (x: [N, F] -> [N, F])."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _as_python_int(size):
    """Sizes read while tracing are tensors; arguments such as conv `groups` need a plain int."""
    with misc.suppress_tracer_warnings():
        return int(size)


def _fp16_prenormalize(weight, styles):
    """Rescale float32 `weight` [O, I, kh, kw] and `styles` [N, I] so that fp16 activations stay in range.

    Demodulation divides these factors out again; only rounding and the weight of the 1e-8 epsilon change.
    """
    fan_in = weight.shape[1:].numel()
    per_output_peak = weight.abs().amax(dim=[1, 2, 3], keepdim=True)  # [O, 1, 1, 1]
    weight = weight * (1 / np.sqrt(fan_in) / per_output_peak)
    styles = styles / styles.abs().amax(dim=1, keepdim=True)  # [N, I] / [N, 1]
    return weight, styles


@misc.profiled_function
def modulated_conv2d(
    x,
    weight,
    styles,
    noise=None,
    up=1,
    down=1,
    padding=0,
    resample_filter=None,
    demodulate=True,
    flip_weight=True,
    fused_modconv=True,
):
    """Style-modulated (and optionally demodulated) convolution.

    x: [N, I, H, W]; weight: [O, I, kh, kw]; styles: [N, I]; noise broadcastable to the output [N, O, H', W'].
    The fused path runs one grouped convolution with per-sample weights; the non-fused path scales activations
    instead. Both are mathematically identical.
    """
    assert weight.ndim == 4, f"modulated_conv2d: weight must be [O, I, kh, kw], got shape {list(weight.shape)}"
    num_samples = x.shape[0]
    in_channels = weight.shape[1]
    misc.assert_shape(x, [num_samples, in_channels, None, None])
    misc.assert_shape(styles, [num_samples, in_channels])

    resample_kwargs = dict(f=resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight)
    if fast_path.applies(x):
        return fast_path.modulated_conv2d(x, weight, styles, noise, demodulate, resample_kwargs)
    if demodulate and x.dtype == torch.float16:
        weight, styles = _fp16_prenormalize(weight, styles)

    # Per-sample kernels [N, O, I, kh, kw]; the non-fused, non-demodulated path never needs them.
    sample_weights = None
    if fused_modconv or demodulate:
        sample_weights = weight.unsqueeze(0) * styles[:, None, :, None, None]
    demod = None
    if demodulate:
        demod = (sample_weights.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]

    if fused_modconv:
        if demod is not None:
            sample_weights = sample_weights * demod[:, :, None, None, None]
        return _fused_modconv(x, sample_weights, noise, resample_kwargs)
    return _activation_modconv(x, weight, styles, demod, noise, resample_kwargs)


def _fused_modconv(x, sample_weights, noise, resample_kwargs):
    """Convolve every sample with its own kernel as one grouped convolution over the batch folded into channels.

    x: [N, I, H, W]; sample_weights: [N, O, I, kh, kw] float32 -> [N, O, H', W'].
    """
    groups = _as_python_int(x.shape[0])
    kernels = sample_weights.flatten(0, 1).to(x.dtype)  # [N * O, I, kh, kw]
    y = conv2d_resample.conv2d_resample(x=x.flatten(0, 1).unsqueeze(0), w=kernels, groups=groups, **resample_kwargs)
    y = y.reshape(groups, -1, *y.shape[2:])
    if noise is not None:
        y.add_(noise)  # In place and uncast: with fp16 activations the sum is rounded to fp16.
    return y


def _activation_modconv(x, weight, styles, demod, noise, resample_kwargs):
    """Shared-kernel convolution with the style applied to the input and demodulation to the output.

    x: [N, I, H, W]; weight: [O, I, kh, kw]; styles: [N, I]; demod: [N, O] or None -> [N, O, H', W'].
    """
    y = x * styles.to(x.dtype)[:, :, None, None]
    y = conv2d_resample.conv2d_resample(x=y, w=weight.to(x.dtype), **resample_kwargs)
    if noise is not None:
        noise = noise.to(y.dtype)
    if demod is None:
        return y if noise is None else y + noise
    demod = demod.to(y.dtype)[:, :, None, None]
    return y * demod if noise is None else fma.fma(y, demod, noise)


# ----------------------------------------------------------------------------------------------------------------------
# Layers


def _conv_weight(out_channels, in_channels, kernel_size, channels_last):
    """A freshly drawn kernel [out_channels, in_channels, k, k] (one `torch.randn` call) in the wanted memory format."""
    weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
    return weight.to(memory_format=_memory_format(channels_last))


def _setup_conv_output(layer, kernel_size, activation, resample_filter, conv_clamp):
    """Settings shared by Conv2dLayer and SynthesisLayer: 'same' padding, the activation with its default gain, the
    clamp, and the FIR filter buffer (registered even when the layer never resamples: it is in the state dict)."""
    layer.activation = activation
    layer.conv_clamp = conv_clamp
    layer.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
    layer.padding = kernel_size // 2
    layer.act_gain = bias_act.activation_funcs[activation].def_gain


def _conv_bias_act(layer, x, bias, gain):
    """Bias and activation of a conv layer; the caller's `gain` scales both the activation gain and the clamp."""
    clamp = None if layer.conv_clamp is None else layer.conv_clamp * gain
    return bias_act.bias_act(x, bias, act=layer.activation, gain=layer.act_gain * gain, clamp=clamp)


@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalised learning rate: [N, in_features] -> [N, out_features]."""

    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1, bias_init=0):
        super().__init__()
        self.activation = activation
        # Equalised learning rate: the stored tensors are scaled by 1/lr_multiplier against their effective values
        # (the weight also by sqrt(fan-in)), so optimiser steps on them act lr_multiplier times smaller; these
        # run-time gains undo the scaling.
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None

    def _effective_bias(self, dtype):
        """The bias in `dtype` times bias_gain (a gain of 1 is skipped: no extra rounding), or None."""
        if self.bias is None:
            return None
        bias = self.bias.to(dtype)
        return bias if self.bias_gain == 1 else bias * self.bias_gain

    def forward(self, x):
        weight_t = (self.weight.to(x.dtype) * self.weight_gain).t()  # [in_features, out_features]
        bias = self._effective_bias(x.dtype)
        if bias is not None and self.activation == "linear":
            return torch.addmm(bias.unsqueeze(0), x, weight_t)  # bias + x @ W^T in one fused call
        return bias_act.bias_act(x.matmul(weight_t), bias, act=self.activation)

    def extra_repr(self):
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, activation={self.activation}"


@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    """Convolution with equalised learning rate, optional FIR up/down-sampling, bias, activation and clamp.

    [N, in_channels, H, W] -> [N, out_channels, H*up/down, W*up/down].
    `trainable=False` keeps `weight`/`bias` as buffers under the same names (Freeze-D).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        bias=True,
        activation="linear",
        up=1,
        down=1,
        resample_filter=DEFAULT_RESAMPLE_FILTER,
        conv_clamp=None,
        channels_last=False,
        trainable=True,
    ):
        super().__init__()
        _store(self, up=up, down=down)
        _setup_conv_output(self, kernel_size, activation, resample_filter, conv_clamp)
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size**2))

        weight = _conv_weight(out_channels, in_channels, kernel_size, channels_last)
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias) if bias is not None else None
        else:
            self.register_buffer("weight", weight)
            if bias is not None:
                self.register_buffer("bias", bias)
            else:
                self.bias = None

    def forward(self, x, gain=1):
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        # Cross-correlation when not upsampling, true convolution (via transposed conv) when upsampling: this is
        # how existing weights were trained, so it is part of the format.
        x = conv2d_resample.conv2d_resample(
            x=x,
            w=w.to(x.dtype),
            f=self.resample_filter,
            up=self.up,
            down=self.down,
            padding=self.padding,
            flip_weight=(self.up == 1),
        )
        return _conv_bias_act(self, x, b, gain)


# ----------------------------------------------------------------------------------------------------------------------
# Generator


def _mapping_layer_sizes(input_features, hidden_features, w_dim, num_layers):
    """(in_features, out_features) of fc0 ... fc{num_layers - 1}: input -> hidden -> ... -> hidden -> w_dim."""
    sizes = [input_features] + [hidden_features] * (num_layers - 1) + [w_dim]
    return [(sizes[idx], sizes[idx + 1]) for idx in range(num_layers)]


@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    """Maps latents z [N, z_dim] and labels c [N, c_dim] to W: [N, num_ws, w_dim] (or [N, w_dim] if num_ws is None).

    Tracks the running mean of W in the `w_avg` buffer (training mode only) for the truncation trick.
    """

    def __init__(
        self,
        z_dim,
        c_dim,
        w_dim,
        num_ws,
        num_layers=8,
        embed_features=None,
        layer_features=None,
        activation="lrelu",
        lr_multiplier=0.01,
        w_avg_beta=0.995,
    ):
        super().__init__()
        _store(self, z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers, w_avg_beta=w_avg_beta)
        # Without labels there is no embedding, whatever embed_features says.
        embed_width = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        hidden_width = w_dim if layer_features is None else layer_features

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_width)
        layer_sizes = _mapping_layer_sizes(z_dim + embed_width, hidden_width, w_dim, num_layers)
        for idx, (in_features, out_features) in enumerate(layer_sizes):
            layer = FullyConnectedLayer(in_features, out_features, activation=activation, lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)

        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False):
        x = None
        if self.z_dim > 0:
            misc.assert_shape(z, [None, self.z_dim])
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            misc.assert_shape(c, [None, self.c_dim])
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y

        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            assert self.w_avg_beta is not None, "MappingNetwork: truncation needs w_avg tracking (w_avg_beta is None)"
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution with per-pixel noise, bias and activation.

    x: [N, in_channels, H/up, W/up], w: [N, w_dim] -> [N, out_channels, H, W], where (H, W) is `stage_shape`, or
    resolution x resolution when that is None (square).
    """

    stage_shape = None  # Class default: square layers store nothing.

    def __init__(
        self,
        in_channels,
        out_channels,
        w_dim,
        resolution,
        kernel_size=3,
        up=1,
        use_noise=True,
        activation="lrelu",
        resample_filter=DEFAULT_RESAMPLE_FILTER,
        conv_clamp=None,
        channels_last=False,
        stage_shape=None,
    ):
        super().__init__()
        _store(self, resolution=resolution, up=up, use_noise=use_noise)
        _set_stage_shape(self, resolution, stage_shape)
        _setup_conv_output(self, kernel_size, activation, resample_filter, conv_clamp)

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(_conv_weight(out_channels, in_channels, kernel_size, channels_last))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(list(_hw(self))))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="random", fused_modconv=True, gain=1):
        assert noise_mode in NOISE_MODES, f"SynthesisLayer: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}"
        height, width = _hw(self)
        misc.assert_shape(x, [None, self.weight.shape[1], height // self.up, width // self.up])
        styles = self.affine(w)

        noise = None
        if self.use_noise and noise_mode == "random":
            noise_shape = [x.shape[0], 1, height, width]
            noise = torch.randn(noise_shape, device=x.device) * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength

        x = modulated_conv2d(
            x=x,
            weight=self.weight,
            styles=styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=(self.up == 1),
            fused_modconv=fused_modconv,
        )
        return _conv_bias_act(self, x, self.bias.to(x.dtype), gain)


@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 convolution without demodulation: [N, in_channels, H, W] -> [N, out_channels, H, W]."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(_conv_weight(out_channels, in_channels, kernel_size, channels_last))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size**2))

    def forward(self, x, w, fused_modconv=True):
        # Without demodulation the equalised-learning-rate gain has to be applied explicitly (to the styles).
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    """One resolution level of the synthesis network.

    forward(x [N, in_channels, H/2, W/2] or None, img [N, img_channels, H/2, W/2] or None,
    ws [N, num_conv + num_torgb, w_dim]) -> (x [N, out_channels, H, W], img [N, img_channels, H, W] float32 or None),
    where (H, W) is `stage_shape`, or R x R (R = resolution) when that is None (square).
    """

    stage_shape = None  # Class default: square blocks store nothing.

    def __init__(
        self,
        in_channels,
        out_channels,
        w_dim,
        resolution,
        img_channels,
        is_last,
        architecture="skip",
        resample_filter=DEFAULT_RESAMPLE_FILTER,
        conv_clamp=None,
        use_fp16=False,
        fp16_channels_last=False,
        stage_shape=None,
        **layer_kwargs,
    ):
        assert architecture in ARCHITECTURES, f"SynthesisBlock: architecture must be one of {ARCHITECTURES}"
        super().__init__()
        _store(self, in_channels=in_channels, w_dim=w_dim, resolution=resolution, img_channels=img_channels)
        _store(self, is_last=is_last, architecture=architecture, use_fp16=use_fp16)
        _set_stage_shape(self, resolution, stage_shape)
        self.channels_last = use_fp16 and fp16_channels_last
        # How many ws the block consumes: conv1 always, conv0 except in the first block (which starts from `const`),
        # and torgb in the last block or throughout the 'skip' architecture.
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1 if is_last or architecture == "skip" else 0
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))

        def synthesis_layer(layer_in_channels, **resampling):
            return SynthesisLayer(
                layer_in_channels,
                out_channels,
                w_dim=w_dim,
                resolution=resolution,
                **resampling,
                conv_clamp=conv_clamp,
                channels_last=self.channels_last,
                **_stage_shape_kwargs(_hw(self)),
                **layer_kwargs,
            )

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, *_hw(self)]))
        else:
            self.conv0 = synthesis_layer(in_channels, up=2, resample_filter=resample_filter)
        # conv1 deliberately keeps the default filter (it never resamples, but the buffer is part of the format).
        self.conv1 = synthesis_layer(out_channels)

        if self.num_torgb:
            self.torgb = ToRGBLayer(
                out_channels,
                img_channels,
                w_dim=w_dim,
                conv_clamp=conv_clamp,
                channels_last=self.channels_last,
            )

        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(
                in_channels,
                out_channels,
                kernel_size=1,
                bias=False,
                up=2,
                resample_filter=resample_filter,
                channels_last=self.channels_last,
            )

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, **layer_kwargs):
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        # One w per layer, in forward order: the conv layers first, then torgb.
        layer_ws = ws.unbind(dim=1)
        conv_ws, torgb_ws = layer_ws[: self.num_conv], layer_ws[self.num_conv :]
        dtype, memory_format = _activation_format(self.use_fp16, self.channels_last, force_fp32)
        if fused_modconv is None:
            fused_modconv = self._fuse_by_default(x, dtype)
        conv_kwargs = dict(layer_kwargs, fused_modconv=fused_modconv)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, conv_ws[0], **conv_kwargs)
        else:
            x = _block_input(x, self.in_channels, _halved(_hw(self)), dtype, memory_format)
            x = self._conv_pair(x, conv_ws, conv_kwargs)

        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, *_halved(_hw(self))])
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if torgb_ws:
            rgb = self.torgb(x, torgb_ws[0], fused_modconv=fused_modconv)
            rgb = rgb.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = rgb if img is None else img + rgb

        if x.dtype != dtype or (img is not None and img.dtype != torch.float32):
            raise RuntimeError(
                f"SynthesisBlock {self.resolution}: expected x {dtype} and img float32, got {x.dtype} and "
                f"{None if img is None else img.dtype}"
            )
        return x, img

    def _fuse_by_default(self, x, dtype):
        """Fused modconv only in eval mode, and for fp16 only with a single sample.

        `x` is consulted last: the first block gets x = None, but it always runs in fp32.
        """
        if self.training:
            return False
        if dtype == torch.float32:
            return True
        return _as_python_int(x.shape[0]) == 1

    def _conv_pair(self, x, conv_ws, conv_kwargs):
        """conv0 (upsampling) then conv1; the resnet variant adds a 1x1 upsampled skip, both halves scaled by
        RESIDUAL_GAIN."""
        if self.architecture != "resnet":
            x = self.conv0(x, conv_ws[0], **conv_kwargs)
            return self.conv1(x, conv_ws[1], **conv_kwargs)
        shortcut = self.skip(x, gain=RESIDUAL_GAIN)
        x = self.conv0(x, conv_ws[0], **conv_kwargs)
        x = self.conv1(x, conv_ws[1], gain=RESIDUAL_GAIN, **conv_kwargs)
        return shortcut + x


@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    """Maps ws [N, num_ws, w_dim] to images [N, img_channels, H, W] (float32).

    H = img_height and W = img_width, each img_resolution when not given (square). Non-square: see "Non-square
    images" above; `block_resolutions` are the stages' shorter sides.
    """

    def __init__(
        self,
        w_dim,
        img_resolution,
        img_channels,
        channel_base=32768,
        channel_max=512,
        num_fp16_res=0,
        img_height=None,
        img_width=None,
        **block_kwargs,
    ):
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0, (
            f"SynthesisNetwork: img_resolution must be a power of two >= 4, got {img_resolution}"
        )
        image_shape = _image_shape("SynthesisNetwork", img_resolution, img_height, img_width)
        super().__init__()
        log2 = int(np.log2(img_resolution))
        _store(self, w_dim=w_dim, img_resolution=img_resolution, img_resolution_log2=log2, img_channels=img_channels)
        _store_image_shape(self, image_shape)
        resolutions, channels, stage_shapes, fp16_resolution = _stage_plan(
            image_shape, channel_base, channel_max, num_fp16_res
        )
        self.block_resolutions = resolutions  # 4, 8, ..., shorter side

        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == self.block_resolutions[-1]
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0,
                channels[res],
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                is_last=is_last,
                use_fp16=(res >= fp16_resolution),
                **_stage_shape_kwargs(stage_shapes[res]),
                **block_kwargs,
            )
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def forward(self, ws, **block_kwargs):
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32)
        # Consecutive blocks overlap by one w: a block's torgb shares its w with the next block's conv0.
        block_ws = []
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv

        x = img = None
        for res, cur_ws in zip(self.block_resolutions, block_ws):
            x, img = getattr(self, f"b{res}")(x, img, cur_ws, **block_kwargs)
        return img


@persistence.persistent_class
class Generator(torch.nn.Module):
    """z [N, z_dim], c [N, c_dim] -> images [N, img_channels, H, W] (H = img_height, W = img_width, each
    img_resolution when not given)."""

    def __init__(
        self,
        z_dim,
        c_dim,
        w_dim,
        img_resolution,
        img_channels,
        mapping_kwargs=None,
        synthesis_kwargs=None,
        img_height=None,
        img_width=None,
    ):
        image_shape = _image_shape("Generator", img_resolution, img_height, img_width)
        super().__init__()
        _store(self, z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels)
        _store_image_shape(self, image_shape)
        # The synthesis network is built first: this fixes both the state-dict order and the RNG consumption order.
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            **_image_shape_kwargs(self),
            **(synthesis_kwargs or {}),
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            num_ws=self.num_ws,
            **(mapping_kwargs or {}),
        )

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Discriminator


@persistence.persistent_class
class DiscriminatorBlock(torch.nn.Module):
    """One resolution level of the discriminator.

    forward(x [N, in_channels, H, W] or None, img [N, img_channels, H, W] or None)
    -> (x [N, out_channels, H/2, W/2], img [N, img_channels, H/2, W/2] for 'skip', else None),
    where (H, W) is `stage_shape`, or R x R (R = resolution) when that is None (square).
    """

    stage_shape = None  # Class default: square blocks store nothing.

    def __init__(
        self,
        in_channels,
        tmp_channels,
        out_channels,
        resolution,
        img_channels,
        first_layer_idx,
        architecture="resnet",
        activation="lrelu",
        resample_filter=DEFAULT_RESAMPLE_FILTER,
        conv_clamp=None,
        use_fp16=False,
        fp16_channels_last=False,
        freeze_layers=0,
        stage_shape=None,
    ):
        assert in_channels in (0, tmp_channels), (
            f"DiscriminatorBlock: in_channels must be 0 or tmp_channels ({tmp_channels}), got {in_channels}"
        )
        assert architecture in ARCHITECTURES, f"DiscriminatorBlock: architecture must be one of {ARCHITECTURES}"
        super().__init__()
        _store(self, in_channels=in_channels, resolution=resolution, img_channels=img_channels)
        _store(self, first_layer_idx=first_layer_idx, architecture=architecture, use_fp16=use_fp16)
        _set_stage_shape(self, resolution, stage_shape)
        self.channels_last = use_fp16 and fp16_channels_last
        self.num_layers = 0
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))

        def conv_layer(layer_in_channels, layer_out_channels, kernel_size, **options):
            # Freeze-D: layers are numbered across the whole discriminator from the highest resolution, in creation
            # order, and the first `freeze_layers` of them keep their weights as buffers.
            trainable = self.first_layer_idx + self.num_layers >= freeze_layers
            self.num_layers += 1
            return Conv2dLayer(
                layer_in_channels,
                layer_out_channels,
                kernel_size=kernel_size,
                **options,
                channels_last=self.channels_last,
                trainable=trainable,
            )

        if in_channels == 0 or architecture == "skip":
            self.fromrgb = conv_layer(img_channels, tmp_channels, 1, activation=activation, conv_clamp=conv_clamp)
        self.conv0 = conv_layer(tmp_channels, tmp_channels, 3, activation=activation, conv_clamp=conv_clamp)
        self.conv1 = conv_layer(
            tmp_channels,
            out_channels,
            3,
            activation=activation,
            down=2,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        if architecture == "resnet":
            self.skip = conv_layer(tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)

    def forward(self, x, img, force_fp32=False):
        dtype, memory_format = _activation_format(self.use_fp16, self.channels_last, force_fp32)
        if x is not None:
            x = _block_input(x, self.in_channels, _hw(self), dtype, memory_format)

        if self.in_channels == 0 or self.architecture == "skip":
            img = _block_input(img, self.img_channels, _hw(self), dtype, memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == "skip" else None

        if self.architecture == "resnet":
            shortcut = self.skip(x, gain=RESIDUAL_GAIN)
            x = shortcut + self.conv1(self.conv0(x), gain=RESIDUAL_GAIN)
        else:
            x = self.conv1(self.conv0(x))

        assert x.dtype == dtype
        return x, img


@persistence.persistent_class
class MinibatchStdLayer(torch.nn.Module):
    """Appends per-group feature standard deviations: [N, C, H, W] -> [N, C + num_channels, H, W].

    Sample s belongs to group s mod (N / G), i.e. groups are formed with stride N / G.
    """

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        with misc.suppress_tracer_warnings():
            g = min(self.group_size, int(n)) if self.group_size is not None else int(n)
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, n/G, F, C/F, H, W]
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)  # biased variance over the group
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])  # [n/G, F]
        y = y.reshape(-1, f, 1, 1)
        y = y.repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self):
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


@persistence.persistent_class
class DiscriminatorEpilogue(torch.nn.Module):
    """Final 4x4 stage: x [N, in_channels, H, W] (+ img for 'skip', cmap [N, cmap_dim]) -> logits [N, 1] float32.

    (H, W) is `stage_shape` (4 x 4*a or 4*a x 4 for non-square images), or R x R when that is None.
    """

    stage_shape = None  # Class default: a square epilogue stores nothing.

    def __init__(
        self,
        in_channels,
        cmap_dim,
        resolution,
        img_channels,
        architecture="resnet",
        mbstd_group_size=4,
        mbstd_num_channels=1,
        activation="lrelu",
        conv_clamp=None,
        stage_shape=None,
    ):
        assert architecture in ARCHITECTURES, f"DiscriminatorEpilogue: architecture must be one of {ARCHITECTURES}"
        super().__init__()
        _store(self, in_channels=in_channels, cmap_dim=cmap_dim, resolution=resolution, img_channels=img_channels)
        _set_stage_shape(self, resolution, stage_shape)
        self.architecture = architecture

        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = (
            MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels)
            if mbstd_num_channels > 0
            else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels,
            in_channels,
            kernel_size=3,
            activation=activation,
            conv_clamp=conv_clamp,
        )
        height, width = _hw(self)
        self.fc = FullyConnectedLayer(in_channels * height * width, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        # The epilogue always runs in float32; `force_fp32` is accepted for a signature like the blocks'.
        io_format = dict(dtype=torch.float32, memory_format=torch.contiguous_format)
        x = _block_input(x, self.in_channels, _hw(self), **io_format)
        if self.architecture == "skip":
            x = x + self.fromrgb(_block_input(img, self.img_channels, _hw(self), **io_format))

        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)

        # Conditioning: project the output onto the label embedding.
        if self.cmap_dim > 0:
            misc.assert_shape(cmap, [None, self.cmap_dim])
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))

        assert x.dtype == torch.float32
        return x


@persistence.persistent_class
class Discriminator(torch.nn.Module):
    """img [N, img_channels, H, W], c [N, c_dim] -> logits [N, 1] float32.

    H = img_height and W = img_width, each img_resolution when not given (square). Non-square: see "Non-square
    images" above; `block_resolutions` are the stages' shorter sides and the epilogue `b4` is the 4 x 4*a stage.
    """

    def __init__(
        self,
        c_dim,
        img_resolution,
        img_channels,
        architecture="resnet",
        channel_base=32768,
        channel_max=512,
        num_fp16_res=0,
        conv_clamp=None,
        cmap_dim=None,
        block_kwargs=None,
        mapping_kwargs=None,
        epilogue_kwargs=None,
        img_height=None,
        img_width=None,
    ):
        image_shape = _image_shape("Discriminator", img_resolution, img_height, img_width)
        super().__init__()
        log2 = int(np.log2(img_resolution))
        _store(self, c_dim=c_dim, img_resolution=img_resolution, img_resolution_log2=log2, img_channels=img_channels)
        _store_image_shape(self, image_shape)
        resolutions, channels, stage_shapes, fp16_resolution = _stage_plan(
            image_shape, channel_base, channel_max, num_fp16_res
        )
        self.block_resolutions = resolutions[:0:-1]  # shorter side, ..., 8; 4 is the epilogue
        # Width of the label embedding the output is projected onto; none without labels.
        cmap_dim = 0 if c_dim == 0 else (channels[4] if cmap_dim is None else cmap_dim)

        common_kwargs = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        cur_layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                channels[res] if res < self.block_resolutions[0] else 0,
                channels[res],
                channels[res // 2],
                resolution=res,
                first_layer_idx=cur_layer_idx,
                use_fp16=(res >= fp16_resolution),
                **_stage_shape_kwargs(stage_shapes[res]),
                **(block_kwargs or {}),
                **common_kwargs,
            )
            setattr(self, f"b{res}", block)
            cur_layer_idx += block.num_layers

        if c_dim > 0:
            label_mapping = dict(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None)
            self.mapping = MappingNetwork(**label_mapping, **(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(
            channels[4],
            cmap_dim=cmap_dim,
            resolution=4,
            **_stage_shape_kwargs(stage_shapes[4]),
            **(epilogue_kwargs or {}),
            **common_kwargs,
        )

    def forward(self, img, c, **block_kwargs):
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, **block_kwargs)

        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)
