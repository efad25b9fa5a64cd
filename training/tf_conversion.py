"""Conversion of TensorFlow-era network pickles into this project's PyTorch networks, without TensorFlow.

A TensorFlow StyleGAN2 / StyleGAN2-ADA pickle is a tuple `(G, D, Gs)` of `dnnlib.tflib.network.Network` objects.
Unpickling turns each into a `training.pickles.TFNetworkStub`; the converters here read the stub's
`static_kwargs` and `variables` and build `training.networks.Generator` / `Discriminator` modules with the same
weights. The variable-name mapping is described in docs/compatibility.md, "Pickles".
"""

import re

import numpy as np
import torch

import dnnlib
from torch_utils import misc
from training import networks

# Oldest TensorFlow network format the converters understand (4 = StyleGAN2, 5 = StyleGAN2-ADA).
_TF_MIN_VERSION = 4
# TF static kwargs that are accepted but have no PyTorch counterpart (run-time options / progressive growing).
_TF_G_IGNORED_KWARGS = ("truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure")
_TF_D_IGNORED_KWARGS = ("structure",)


def convert_tf_networks(tf_G, tf_D, tf_Gs) -> dict:
    """Convert TensorFlow-era `(G, D, Gs)` stubs into a dict with PyTorch `G`, `D`, `G_ema` networks."""
    G = convert_tf_generator(tf_G)
    D = convert_tf_discriminator(tf_D)
    G_ema = convert_tf_generator(tf_Gs)
    return dict(G=G, D=D, G_ema=G_ema)


# ----------------------------------------------------------------------------
# TensorFlow-era conversion helpers


def _check_tf_version(tf_net):
    if tf_net.version < _TF_MIN_VERSION:
        raise ValueError("TensorFlow pickle version too low")


class _TFKwargs:
    """Reads a TF network's `static_kwargs`, remembering which names were consulted."""

    def __init__(self, tf_net):
        self.static_kwargs = tf_net.static_kwargs
        self.known = set()

    def __call__(self, tf_name, default=None, none=None):
        """`static_kwargs[tf_name]` (`default` if absent); an explicit or defaulted None becomes `none`."""
        self.known.add(tf_name)
        value = self.static_kwargs.get(tf_name, default)
        return value if value is not None else none

    def check_all_known(self, ignored):
        """Raise for any static kwarg that the converter neither read nor deliberately ignores."""
        self.known.update(ignored)
        for name in self.static_kwargs:
            if name not in self.known:
                raise ValueError("Unknown TensorFlow kwarg", name)


def _collect_tf_params(tf_net):
    """{full variable name: numpy value} over `tf_net` and its components (names prefixed `component/...`)."""
    params = {}

    def visit(prefix, net):
        for name, value in net.variables:
            params[prefix + name] = value
        for comp_name, comp in net.components.items():
            visit(prefix + comp_name + "/", comp)

    visit("", tf_net)
    return params


def _tf_conv(value):
    """TF conv weight [kh, kw, I, O] -> PyTorch [O, I, kh, kw]."""
    return value.transpose(3, 2, 0, 1)


def _tf_conv_flipped(value):
    """TF conv weight applied as cross-correlation by TF but as true convolution by PyTorch (`up=2` layers)."""
    return _tf_conv(value[::-1, ::-1])


def _populate_module_params(module, rules):
    """Fill every parameter and buffer of `module` from `rules` = [(name regex, fetch or None)].

    The first rule whose regex fully matches a name decides; `fetch(*regex_groups)` returns the value (NumPy) to
    copy in, and a `None` fetch leaves the tensor at its constructed value.
    """
    compiled = [(re.compile(pattern), fetch) for pattern, fetch in rules]
    with torch.no_grad():
        for name, tensor in misc.named_params_and_buffers(module):
            try:
                found = next(((m, fetch) for regex, fetch in compiled if (m := regex.fullmatch(name))), None)
                assert found is not None, f"TensorFlow conversion: no rule for {name}"
                match, fetch = found
                if fetch is not None:
                    # A fresh contiguous array: reversed/transposed views must be materialised before copying.
                    value = np.array(fetch(*match.groups()))
                    tensor.copy_(torch.from_numpy(value))
            except Exception:
                print(name, list(tensor.shape))
                raise


# ----------------------------------------------------------------------------
# Generator


def convert_tf_generator(tf_G):
    """TensorFlow-era generator stub -> `training.networks.Generator` (eval mode, no gradients)."""
    _check_tf_version(tf_G)
    kwargs = _tf_generator_kwargs(tf_G)
    # Progressive-growing generators are not supported: they name their outputs `ToRGB_lod<n>`, so the rules
    # miss `synthesis/<r>x<r>/ToRGB/...` and fail with a KeyError naming it. (The discriminator's `FromRGB_lod<n>`
    # inputs, by contrast, are renamed: they occur in real 'orig' networks.)
    p = _collect_tf_params(tf_G)
    G = networks.Generator(**kwargs).eval().requires_grad_(False)
    _populate_module_params(G, _tf_generator_rules(p))
    return G


def _tf_generator_kwargs(tf_G) -> dnnlib.EasyDict:
    """The Generator kwargs a TF-era generator's static kwargs stand for (unknown kwargs are an error)."""
    kwarg = _TFKwargs(tf_G)
    kwargs = dnnlib.EasyDict(
        z_dim=kwarg("latent_size", 512),
        c_dim=kwarg("label_size", 0),
        w_dim=kwarg("dlatent_size", 512),
        img_resolution=kwarg("resolution", 1024),
        img_channels=kwarg("num_channels", 3),
        mapping_kwargs=dnnlib.EasyDict(
            num_layers=kwarg("mapping_layers", 8),
            embed_features=kwarg("label_fmaps", None),
            layer_features=kwarg("mapping_fmaps", None),
            activation=kwarg("mapping_nonlinearity", "lrelu"),
            lr_multiplier=kwarg("mapping_lrmul", 0.01),
            w_avg_beta=kwarg("w_avg_beta", 0.995, none=1),
        ),
        synthesis_kwargs=dnnlib.EasyDict(
            channel_base=kwarg("fmap_base", 16384) * 2,
            channel_max=kwarg("fmap_max", 512),
            num_fp16_res=kwarg("num_fp16_res", 0),
            conv_clamp=kwarg("conv_clamp", None),
            architecture=kwarg("architecture", "skip"),
            resample_filter=kwarg("resample_kernel", [1, 3, 3, 1]),
            use_noise=kwarg("use_noise", True),
            activation=kwarg("nonlinearity", "lrelu"),
        ),
    )
    kwarg.check_all_known(_TF_G_IGNORED_KWARGS)
    return kwargs


def _tf_generator_rules(p: dict) -> list:
    """(regex of a Generator parameter name, function of the regex groups -> its value from TF params `p`)."""

    def s(r, layer, var):
        return p[f"synthesis/{r}x{r}/{layer}/{var}"]

    def noise(r, offset):
        # TF numbers the noise inputs over all layers: 2 per block from 8x8 on, after the single 4x4 one.
        return p[f"synthesis/noise{2 * int(np.log2(int(r))) + offset}"][0, 0]

    # fmt: off
    rules = [
        (r"mapping\.w_avg",                           lambda: p["dlatent_avg"]),
        (r"mapping\.embed\.weight",                   lambda: p["mapping/LabelEmbed/weight"].transpose()),
        (r"mapping\.embed\.bias",                     lambda: p["mapping/LabelEmbed/bias"]),
        (r"mapping\.fc(\d+)\.weight",                 lambda i: p[f"mapping/Dense{i}/weight"].transpose()),
        (r"mapping\.fc(\d+)\.bias",                   lambda i: p[f"mapping/Dense{i}/bias"]),
        (r"synthesis\.b4\.const",                     lambda: p["synthesis/4x4/Const/const"][0]),
        (r"synthesis\.b4\.conv1\.weight",             lambda: _tf_conv(s(4, "Conv", "weight"))),
        (r"synthesis\.b4\.conv1\.bias",               lambda: s(4, "Conv", "bias")),
        (r"synthesis\.b4\.conv1\.noise_const",        lambda: p["synthesis/noise0"][0, 0]),
        (r"synthesis\.b4\.conv1\.noise_strength",     lambda: s(4, "Conv", "noise_strength")),
        (r"synthesis\.b4\.conv1\.affine\.weight",     lambda: s(4, "Conv", "mod_weight").transpose()),
        # TF adds the 1 to the style bias at run time; PyTorch stores it in the bias.
        (r"synthesis\.b4\.conv1\.affine\.bias",       lambda: s(4, "Conv", "mod_bias") + 1),
        (r"synthesis\.b(\d+)\.conv0\.weight",         lambda r: _tf_conv_flipped(s(r, "Conv0_up", "weight"))),
        (r"synthesis\.b(\d+)\.conv0\.bias",           lambda r: s(r, "Conv0_up", "bias")),
        (r"synthesis\.b(\d+)\.conv0\.noise_const",    lambda r: noise(r, -5)),
        (r"synthesis\.b(\d+)\.conv0\.noise_strength", lambda r: s(r, "Conv0_up", "noise_strength")),
        (r"synthesis\.b(\d+)\.conv0\.affine\.weight", lambda r: s(r, "Conv0_up", "mod_weight").transpose()),
        (r"synthesis\.b(\d+)\.conv0\.affine\.bias",   lambda r: s(r, "Conv0_up", "mod_bias") + 1),
        (r"synthesis\.b(\d+)\.conv1\.weight",         lambda r: _tf_conv(s(r, "Conv1", "weight"))),
        (r"synthesis\.b(\d+)\.conv1\.bias",           lambda r: s(r, "Conv1", "bias")),
        (r"synthesis\.b(\d+)\.conv1\.noise_const",    lambda r: noise(r, -4)),
        (r"synthesis\.b(\d+)\.conv1\.noise_strength", lambda r: s(r, "Conv1", "noise_strength")),
        (r"synthesis\.b(\d+)\.conv1\.affine\.weight", lambda r: s(r, "Conv1", "mod_weight").transpose()),
        (r"synthesis\.b(\d+)\.conv1\.affine\.bias",   lambda r: s(r, "Conv1", "mod_bias") + 1),
        (r"synthesis\.b(\d+)\.torgb\.weight",         lambda r: _tf_conv(s(r, "ToRGB", "weight"))),
        (r"synthesis\.b(\d+)\.torgb\.bias",           lambda r: s(r, "ToRGB", "bias")),
        (r"synthesis\.b(\d+)\.torgb\.affine\.weight", lambda r: s(r, "ToRGB", "mod_weight").transpose()),
        (r"synthesis\.b(\d+)\.torgb\.affine\.bias",   lambda r: s(r, "ToRGB", "mod_bias") + 1),
        (r"synthesis\.b(\d+)\.skip\.weight",          lambda r: _tf_conv_flipped(s(r, "Skip", "weight"))),
        (r".*\.resample_filter",                      None),
    ]
    # fmt: on
    return rules


# ----------------------------------------------------------------------------
# Discriminator


def convert_tf_discriminator(tf_D):
    """TensorFlow-era discriminator stub -> `training.networks.Discriminator` (eval mode, no gradients)."""
    _check_tf_version(tf_D)
    kwargs = _tf_discriminator_kwargs(tf_D)
    tf_params = _collect_tf_params(tf_D)
    # Networks with the 'orig' architecture name their input layers per level of detail (FromRGB_lod<n>).
    for name, value in list(tf_params.items()):
        match = re.fullmatch(r"FromRGB_lod(\d+)/(.*)", name)
        if match:
            r = kwargs.img_resolution // (2 ** int(match.group(1)))
            tf_params[f"{r}x{r}/FromRGB/{match.group(2)}"] = value
            kwargs.architecture = "orig"
    D = networks.Discriminator(**kwargs).eval().requires_grad_(False)
    _populate_module_params(D, _tf_discriminator_rules(tf_params))
    return D


def _tf_discriminator_kwargs(tf_D) -> dnnlib.EasyDict:
    """The Discriminator kwargs a TF-era discriminator's static kwargs stand for (unknown kwargs are an error)."""
    kwarg = _TFKwargs(tf_D)
    kwargs = dnnlib.EasyDict(
        c_dim=kwarg("label_size", 0),
        img_resolution=kwarg("resolution", 1024),
        img_channels=kwarg("num_channels", 3),
        architecture=kwarg("architecture", "resnet"),
        channel_base=kwarg("fmap_base", 16384) * 2,
        channel_max=kwarg("fmap_max", 512),
        num_fp16_res=kwarg("num_fp16_res", 0),
        conv_clamp=kwarg("conv_clamp", None),
        cmap_dim=kwarg("mapping_fmaps", None),
        block_kwargs=dnnlib.EasyDict(
            activation=kwarg("nonlinearity", "lrelu"),
            resample_filter=kwarg("resample_kernel", [1, 3, 3, 1]),
            freeze_layers=kwarg("freeze_layers", 0),
        ),
        mapping_kwargs=dnnlib.EasyDict(
            num_layers=kwarg("mapping_layers", 0),
            embed_features=kwarg("mapping_fmaps", None),
            layer_features=kwarg("mapping_fmaps", None),
            activation=kwarg("nonlinearity", "lrelu"),
            lr_multiplier=kwarg("mapping_lrmul", 0.1),
        ),
        epilogue_kwargs=dnnlib.EasyDict(
            mbstd_group_size=kwarg("mbstd_group_size", None),
            mbstd_num_channels=kwarg("mbstd_num_features", 1),
            activation=kwarg("nonlinearity", "lrelu"),
        ),
    )
    kwarg.check_all_known(_TF_D_IGNORED_KWARGS)
    return kwargs


def _tf_discriminator_rules(p: dict) -> list:
    """(regex of a Discriminator parameter name, function of the regex groups -> its value from TF params `p`)."""
    # fmt: off
    rules = [
        (r"b(\d+)\.fromrgb\.weight",    lambda r: _tf_conv(p[f"{r}x{r}/FromRGB/weight"])),
        (r"b(\d+)\.fromrgb\.bias",      lambda r: p[f"{r}x{r}/FromRGB/bias"]),
        # Down-sampling convolutions are cross-correlations on both sides: no flip.
        (r"b(\d+)\.conv(\d)\.weight",   lambda r, i: _tf_conv(p[f"{r}x{r}/Conv{i}{['', '_down'][int(i)]}/weight"])),
        (r"b(\d+)\.conv(\d)\.bias",     lambda r, i: p[f"{r}x{r}/Conv{i}{['', '_down'][int(i)]}/bias"]),
        (r"b(\d+)\.skip\.weight",       lambda r: _tf_conv(p[f"{r}x{r}/Skip/weight"])),
        (r"mapping\.embed\.weight",     lambda: p["LabelEmbed/weight"].transpose()),
        (r"mapping\.embed\.bias",       lambda: p["LabelEmbed/bias"]),
        (r"mapping\.fc(\d+)\.weight",   lambda i: p[f"Mapping{i}/weight"].transpose()),
        (r"mapping\.fc(\d+)\.bias",     lambda i: p[f"Mapping{i}/bias"]),
        (r"b4\.conv\.weight",           lambda: _tf_conv(p["4x4/Conv/weight"])),
        (r"b4\.conv\.bias",             lambda: p["4x4/Conv/bias"]),
        # TF flattens NCHW activations in the same C, H, W order as PyTorch: a plain transpose suffices.
        (r"b4\.fc\.weight",             lambda: p["4x4/Dense0/weight"].transpose()),
        (r"b4\.fc\.bias",               lambda: p["4x4/Dense0/bias"]),
        (r"b4\.out\.weight",            lambda: p["Output/weight"].transpose()),
        (r"b4\.out\.bias",              lambda: p["Output/bias"]),
        (r".*\.resample_filter",        None),
    ]
    # fmt: on
    return rules
