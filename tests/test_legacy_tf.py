"""Conversion of TensorFlow-era StyleGAN2 / StyleGAN2-ADA pickles, without TensorFlow.

The name mapping is summarised in docs/compatibility.md, "Pickles". The test pickles are written here from the
reference's variable table: tuples `(G, D, Gs)` of objects whose class is the
global `dnnlib.tflib.network.Network`, holding random NumPy variables in the TF layouts. Converted parameters are
checked against the source variables after the reference's transforms, and converted networks are checked against an
independent NumPy forward pass written with the TF-era formulas (TF weight layouts, TF's own up/down-sampling
convolution recipe, the style bias `+1` applied at run time), which exercises every transform including the
`Conv0_up` spatial flip.
"""

import contextlib
import io
import pickle
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO_ROOT, assert_close

import dnnlib
import legacy
from training import networks, pickles

IMG_CHANNELS = 3
LATENT = 16  # z_dim == w_dim, as in every published network
FMAP_BASE = 64  # channels: 16 at 4x4 and 8x8, 8 at 16x16, 4 at 32x32
FMAP_MAX = 16
MAPPING_LAYERS = 2
MAPPING_LRMUL = 0.01
BATCH = 4
FIR_TAPS = np.array([1.0, 3.0, 3.0, 1.0])
FIR_2D = np.outer(FIR_TAPS, FIR_TAPS) / np.outer(FIR_TAPS, FIR_TAPS).sum()
# Float32 network vs float64 NumPy reference, relative to the output magnitude.
FORWARD_TOL = 1e-4


def _nf(res):
    """TF channel count at resolution `res` (`nf(log2(res) - 1)`)."""
    return min(2 * FMAP_BASE // res, FMAP_MAX)


def _log2(res):
    return int(np.log2(res))


# ----------------------------------------------------------------------------
# Writing TF-era pickles


def _tf_net(name, static_kwargs, variables, components=None, version=5):
    """State dict of a TF `Network` as pickled by the TensorFlow code (`variables`: {local name: array})."""
    state = dict(
        version=version,
        name=name,
        static_kwargs=dict(static_kwargs),
        components=dict(components or {}),
        build_module_src="# TF network-building source (unused by the converter)\n",
        build_func_name=f"{name}_main",
        variables=list(variables.items()),
    )
    if version >= 5:
        state.update(input_shapes=[[None, LATENT]], output_shapes=[[None, 3]], input_names=["x"], output_names=["y"])
    return state


@contextlib.contextmanager
def _tf_network_class():
    """Make `dnnlib.tflib.network.Network` importable while pickles are written (TF itself is not needed)."""
    tflib = types.ModuleType("dnnlib.tflib")
    module = types.ModuleType("dnnlib.tflib.network")

    class Network:
        pass

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    module.Network = Network
    tflib.network = module
    sys.modules["dnnlib.tflib"], sys.modules["dnnlib.tflib.network"] = tflib, module
    try:
        yield Network
    finally:
        del sys.modules["dnnlib.tflib.network"], sys.modules["dnnlib.tflib"]


def _tf_pickle_bytes(*states):
    """Pickle bytes of the TF network described by one state (see `_tf_net`), or of the tuple of several."""
    with _tf_network_class() as network_class:

        def instantiate(state):
            net = network_class.__new__(network_class)
            net.__dict__.update(state, components={k: instantiate(v) for k, v in state["components"].items()})
            return net

        obj = instantiate(states[0]) if len(states) == 1 else tuple(instantiate(state) for state in states)
        return pickle.dumps(obj, protocol=3)


def _load(data, **kwargs):
    return legacy.load_network_pkl(io.BytesIO(data), **kwargs)


# ----------------------------------------------------------------------------
# Synthetic TF variables. Each builder returns the TF variables and `expected`: PyTorch name -> expected value
# (the source variable after the reference's transform), written from the TF side of the reference's tables.


def _conv_to_torch(v):
    return v.transpose(3, 2, 0, 1)


def _flipped_conv_to_torch(v):
    return v[::-1, ::-1].transpose(3, 2, 0, 1)


class _Vars:
    def __init__(self, seed):
        self.rng = np.random.RandomState(seed)
        self.tf = {}
        self.expected = {}

    def add(self, tf_name, shape, torch_name=None, transform=None, scale=1.0):
        value = np.asarray(self.rng.randn(*shape) * scale, dtype=np.float32)
        self.tf[tf_name] = value
        if torch_name is not None:
            self.expected[torch_name] = transform(value) if transform is not None else value
        return value


def _tf_generator(seed, res=32, c_dim=0, architecture="skip", use_noise=True, version=5, extra_kwargs=None):
    """TF `(G, expected)`: G has components `mapping` and `synthesis` and its own `dlatent_avg`."""
    v = _Vars(seed)
    T = np.transpose
    static_kwargs = dict(
        latent_size=LATENT,
        dlatent_size=LATENT,
        label_size=c_dim,
        resolution=res,
        num_channels=IMG_CHANNELS,
        mapping_layers=MAPPING_LAYERS,
        fmap_base=FMAP_BASE,
        fmap_max=FMAP_MAX,
        architecture=architecture,
        use_noise=use_noise,
        truncation_psi=0.5,
        truncation_cutoff=None,
        style_mixing_prob=0.9,
        structure="auto",
    )
    static_kwargs.update(extra_kwargs or {})

    v.add("dlatent_avg", [LATENT], "mapping.w_avg")
    own = dict(v.tf)

    v.tf = {}
    in_features = LATENT
    if c_dim:
        v.add("LabelEmbed/weight", [c_dim, LATENT], "mapping.embed.weight", T)
        v.add("LabelEmbed/bias", [LATENT], "mapping.embed.bias")
        in_features += LATENT
    for i in range(MAPPING_LAYERS):
        # Stored like TF initialises them: N(0, 1/lrmul), so that the run-time gain lrmul/sqrt(fan_in) matters.
        v.add(f"Dense{i}/weight", [in_features, LATENT], f"mapping.fc{i}.weight", T, scale=1 / MAPPING_LRMUL)
        v.add(f"Dense{i}/bias", [LATENT], f"mapping.fc{i}.bias", scale=1 / MAPPING_LRMUL)
        in_features = LATENT
    mapping = _tf_net("G_mapping", {}, v.tf, version=version)

    v.tf = {}
    for j in range(2 * _log2(res) - 3):
        r = 2 ** ((j + 5) // 2)  # noise0 -> b4.conv1, noise1 -> b8.conv0, noise2 -> b8.conv1, ...
        torch_name = f"synthesis.b{r}.{'conv0' if j % 2 == 1 else 'conv1'}.noise_const"
        v.add(f"noise{j}", [1, 1, r, r], torch_name if use_noise else None, lambda a: a[0, 0])

    def layer(r, tf_layer, torch_layer, cin, cout, kernel, transform, noise):
        p, t = f"{r}x{r}/{tf_layer}", f"synthesis.b{r}.{torch_layer}"
        v.add(f"{p}/weight", [kernel, kernel, cin, cout], f"{t}.weight", transform)
        v.add(f"{p}/bias", [cout], f"{t}.bias")
        if noise:
            v.add(f"{p}/noise_strength", [], f"{t}.noise_strength" if use_noise else None)
        v.add(f"{p}/mod_weight", [LATENT, cin], f"{t}.affine.weight", T)
        v.add(f"{p}/mod_bias", [cin], f"{t}.affine.bias", lambda a: a + 1, scale=0.2)

    v.add("4x4/Const/const", [1, _nf(4), 4, 4], "synthesis.b4.const", lambda a: a[0])
    layer(4, "Conv", "conv1", _nf(4), _nf(4), 3, _conv_to_torch, True)
    for r in [2**i for i in range(2, _log2(res) + 1)]:
        if r > 4:
            layer(r, "Conv0_up", "conv0", _nf(r // 2), _nf(r), 3, _flipped_conv_to_torch, True)
            layer(r, "Conv1", "conv1", _nf(r), _nf(r), 3, _conv_to_torch, True)
            if architecture == "resnet":
                v.add(
                    f"{r}x{r}/Skip/weight", [1, 1, _nf(r // 2), _nf(r)], f"synthesis.b{r}.skip.weight", _conv_to_torch
                )
        if architecture == "skip" or r == res:
            layer(r, "ToRGB", "torgb", _nf(r), IMG_CHANNELS, 1, _conv_to_torch, False)
    v.add("unused/extra", [2])  # variables no rule refers to are ignored
    synthesis = _tf_net("G_synthesis", {}, dict(v.tf), version=version)

    G = _tf_net("G", static_kwargs, own, components=dict(mapping=mapping, synthesis=synthesis), version=version)
    return G, v.expected


def _tf_discriminator(seed, res=32, c_dim=0, architecture="resnet", version=5, lod_names=False, extra_kwargs=None):
    """TF `(D, expected)`; `lod_names` names the input layer `FromRGB_lod0` like progressive-era 'orig' networks."""
    v = _Vars(seed)
    T = np.transpose
    static_kwargs = dict(
        label_size=c_dim,
        resolution=res,
        num_channels=IMG_CHANNELS,
        fmap_base=FMAP_BASE,
        fmap_max=FMAP_MAX,
        mbstd_group_size=2,
        structure="auto",
    )
    if not lod_names:
        static_kwargs["architecture"] = architecture
    static_kwargs.update(extra_kwargs or {})

    for r in [2**i for i in range(_log2(res), 2, -1)]:
        if r == res or architecture == "skip":
            tf_prefix = "FromRGB_lod0" if lod_names else f"{r}x{r}/FromRGB"
            v.add(f"{tf_prefix}/weight", [1, 1, IMG_CHANNELS, _nf(r)], f"b{r}.fromrgb.weight", _conv_to_torch)
            v.add(f"{tf_prefix}/bias", [_nf(r)], f"b{r}.fromrgb.bias")
        v.add(f"{r}x{r}/Conv0/weight", [3, 3, _nf(r), _nf(r)], f"b{r}.conv0.weight", _conv_to_torch)
        v.add(f"{r}x{r}/Conv0/bias", [_nf(r)], f"b{r}.conv0.bias")
        v.add(f"{r}x{r}/Conv1_down/weight", [3, 3, _nf(r), _nf(r // 2)], f"b{r}.conv1.weight", _conv_to_torch)
        v.add(f"{r}x{r}/Conv1_down/bias", [_nf(r // 2)], f"b{r}.conv1.bias")
        if architecture == "resnet":
            v.add(f"{r}x{r}/Skip/weight", [1, 1, _nf(r), _nf(r // 2)], f"b{r}.skip.weight", _conv_to_torch)
    c4 = _nf(4)
    if architecture == "skip":
        v.add("4x4/FromRGB/weight", [1, 1, IMG_CHANNELS, c4], "b4.fromrgb.weight", _conv_to_torch)
        v.add("4x4/FromRGB/bias", [c4], "b4.fromrgb.bias")
    v.add("4x4/Conv/weight", [3, 3, c4 + 1, c4], "b4.conv.weight", _conv_to_torch)
    v.add("4x4/Conv/bias", [c4], "b4.conv.bias")
    v.add("4x4/Dense0/weight", [c4 * 16, c4], "b4.fc.weight", T)
    v.add("4x4/Dense0/bias", [c4], "b4.fc.bias")
    cmap_dim = static_kwargs.get("mapping_fmaps", c4) if c_dim else 0
    v.add("Output/weight", [c4, cmap_dim or 1], "b4.out.weight", T)
    v.add("Output/bias", [cmap_dim or 1], "b4.out.bias")
    if c_dim:
        v.add("LabelEmbed/weight", [c_dim, cmap_dim], "mapping.embed.weight", T)
        v.add("LabelEmbed/bias", [cmap_dim], "mapping.embed.bias")
    return _tf_net("D", static_kwargs, v.tf, version=version), v.expected


def _tf_networks(seed=0, g_kwargs=None, d_kwargs=None):
    """`(G, D, Gs)` states and the expected converted parameters of each."""
    G, g_expected = _tf_generator(seed, **(g_kwargs or {}))
    D, d_expected = _tf_discriminator(seed + 1, **(d_kwargs or {}))
    Gs, gs_expected = _tf_generator(seed + 2, **(g_kwargs or {}))
    return (G, D, Gs), (g_expected, d_expected, gs_expected)


def _tf_variables(state, prefix=""):
    """All variables of a `_tf_net` state, named like the converter collects them."""
    out = {prefix + name: value for name, value in state["variables"]}
    for comp_name, comp in state["components"].items():
        out.update(_tf_variables(comp, prefix + comp_name + "/"))
    return out


# ----------------------------------------------------------------------------
# Independent NumPy forward passes with the TF-era formulas (float64, NCHW activations, TF weight layouts)


def _lrelu(x):
    return np.where(x >= 0, x, 0.2 * x) * np.sqrt(2)


def _normalize(x):
    return x / np.sqrt(np.mean(np.square(x), axis=1, keepdims=True) + 1e-8)


def _dense(x, weight, bias, lrmul=1.0):
    """TF dense layer: weight [in, out] stored unscaled, run-time gain lrmul/sqrt(in)."""
    return x @ (weight * (lrmul / np.sqrt(weight.shape[0]))) + bias * lrmul


def _correlate(x, weight, pad=0, stride=1):
    """Cross-correlation of x [N, I, H, W] with TF-layout weights [kh, kw, I, O] or per-sample [N, kh, kw, I, O]."""
    n = x.shape[0]
    weight = np.broadcast_to(weight, (n,) + weight.shape[-4:])
    kh, kw = weight.shape[1:3]
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    out = 0
    for u in range(kh):
        for v in range(kw):
            patch = x[:, :, u : u + stride * (ho - 1) + 1 : stride, v : v + stride * (wo - 1) + 1 : stride]
            out = out + np.einsum("nihw,nio->nohw", patch, weight[:, u, v])
    return out


def _fir(x, pad0, pad1, gain=1.0):
    """Per-channel filtering with the [1,3,3,1] low-pass filter after padding (pad0 before, pad1 after)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad0, pad1), (pad0, pad1)))
    ho, wo = x.shape[2] - 3, x.shape[3] - 3
    out = 0
    for u in range(4):
        for v in range(4):
            out = out + x[:, :, u : u + ho, v : v + wo] * (FIR_2D[u, v] * gain)
    return out


def _zero_insert(x, size):
    z = np.zeros(x.shape[:2] + (size, size))
    z[:, :, ::2, ::2] = x
    return z


def _upsample_conv(x, weight):
    """TF upsample_conv_2d: stride-2 transposed convolution of the spatially flipped kernel, then the FIR filter.

    The transposed convolution with the flipped kernel equals zero insertion followed by a full cross-correlation
    with the stored kernel.
    """
    k = weight.shape[-4]
    p = (4 - 2) - (k - 1)
    y = _correlate(_zero_insert(x, 2 * x.shape[2] - 1), weight, pad=k - 1)
    return _fir(y, (p + 1) // 2 + 1, p // 2 + 1, gain=4)


def _downsample_conv(x, weight):
    """TF conv_downsample_2d: FIR filter, then a stride-2 cross-correlation."""
    p = (4 - 2) + (weight.shape[-4] - 1)
    return _correlate(_fir(x, (p + 1) // 2, p // 2), weight, stride=2)


def _upsample_img(img):
    return _fir(_zero_insert(img, 2 * img.shape[2]), 2, 1, gain=4)


def _downsample_img(img):
    return _fir(img, 1, 1)[:, :, ::2, ::2]


def _np_mapping(tf, z, c, num_ws, truncation_psi=1.0):
    x = _normalize(z)
    if c is not None:
        y = _normalize(_dense(c, tf["mapping/LabelEmbed/weight"], tf["mapping/LabelEmbed/bias"]))
        x = np.concatenate([x, y], axis=1)
    for i in range(MAPPING_LAYERS):
        x = _lrelu(_dense(x, tf[f"mapping/Dense{i}/weight"], tf[f"mapping/Dense{i}/bias"], MAPPING_LRMUL))
    ws = np.repeat(x[:, None], num_ws, axis=1)
    return tf["dlatent_avg"] + truncation_psi * (ws - tf["dlatent_avg"])


def _np_modulated(tf, prefix, x, w, up=False, demodulate=True, noise=None):
    """TF modulated conv layer (weights from `synthesis/<prefix>/...`); no activation for toRGB."""
    p = f"synthesis/{prefix}"
    styles = _dense(w, tf[f"{p}/mod_weight"], tf[f"{p}/mod_bias"]) + 1  # TF adds the 1 at run time
    weight = tf[f"{p}/weight"].astype(np.float64)
    weight = weight / np.sqrt(np.prod(weight.shape[:3]))
    weight = weight[None] * styles[:, None, None, :, None]  # [N, kh, kw, I, O]
    if demodulate:
        weight = weight / np.sqrt(np.sum(np.square(weight), axis=(1, 2, 3), keepdims=True) + 1e-8)
    k = weight.shape[1]
    x = _upsample_conv(x, weight) if up else _correlate(x, weight, pad=k // 2)
    if noise is not None:
        x = x + tf[f"synthesis/{noise}"][0, 0] * tf[f"{p}/noise_strength"]
    x = x + tf[f"{p}/bias"][None, :, None, None]
    return _lrelu(x) if demodulate else x


def _np_synthesis(tf, ws, res, architecture, use_noise=True):
    def noise(j):
        return f"noise{j}" if use_noise else None

    n = ws.shape[0]
    x = np.repeat(tf["synthesis/4x4/Const/const"], n, axis=0).astype(np.float64)
    x = _np_modulated(tf, "4x4/Conv", x, ws[:, 0], noise=noise(0))
    img = _np_modulated(tf, "4x4/ToRGB", x, ws[:, 1], demodulate=False) if architecture == "skip" else None
    for r in [2**i for i in range(3, _log2(res) + 1)]:
        j = 2 * _log2(r) - 5  # TF layer index of Conv0_up; Conv1 and ToRGB follow
        y = x
        x = _np_modulated(tf, f"{r}x{r}/Conv0_up", x, ws[:, j], up=True, noise=noise(j))
        x = _np_modulated(tf, f"{r}x{r}/Conv1", x, ws[:, j + 1], noise=noise(j + 1))
        if architecture == "resnet":
            skip_weight = tf[f"synthesis/{r}x{r}/Skip/weight"] / np.sqrt(y.shape[1])
            x = (x + _upsample_conv(y, skip_weight)) / np.sqrt(2)
        if architecture == "skip":
            img = _upsample_img(img) + _np_modulated(tf, f"{r}x{r}/ToRGB", x, ws[:, j + 2], demodulate=False)
        elif r == res:
            img = _np_modulated(tf, f"{r}x{r}/ToRGB", x, ws[:, j + 2], demodulate=False)
    return img


def _np_conv_layer(tf, prefix, x, pad=True):
    weight = tf[f"{prefix}/weight"] / np.sqrt(np.prod(tf[f"{prefix}/weight"].shape[:3]))
    return _lrelu(_correlate(x, weight, pad=weight.shape[0] // 2) + tf[f"{prefix}/bias"][None, :, None, None])


def _np_discriminator(tf, img, c, res, architecture, group_size, cmap_dim, from_rgb_name=None):
    x = None
    for r in [2**i for i in range(_log2(res), 2, -1)]:
        if r == res or architecture == "skip":
            y = _np_conv_layer(tf, from_rgb_name or f"{r}x{r}/FromRGB", img)
            x = y if x is None else x + y
            img = _downsample_img(img) if architecture == "skip" else None
        t = x
        x = _np_conv_layer(tf, f"{r}x{r}/Conv0", x)
        w1 = tf[f"{r}x{r}/Conv1_down/weight"]
        x = _lrelu(
            _downsample_conv(x, w1 / np.sqrt(np.prod(w1.shape[:3]))) + tf[f"{r}x{r}/Conv1_down/bias"][:, None, None]
        )
        if architecture == "resnet":
            skip_weight = tf[f"{r}x{r}/Skip/weight"] / np.sqrt(t.shape[1])
            x = (x + _downsample_conv(t, skip_weight)) / np.sqrt(2)
    if architecture == "skip":
        x = x + _np_conv_layer(tf, "4x4/FromRGB", img)

    # Minibatch standard deviation over groups of samples s, s + N/G, s + 2N/G, ...
    n, ch, h, w = x.shape
    g = min(group_size, n)
    y = x.reshape(g, -1, 1, ch, h, w)
    y = np.sqrt(np.mean(np.square(y - y.mean(axis=0)), axis=0) + 1e-8).mean(axis=(2, 3, 4))
    x = np.concatenate([x, np.tile(y.reshape(-1, 1, 1, 1), (g, 1, h, w))], axis=1)

    x = _np_conv_layer(tf, "4x4/Conv", x)
    x = _lrelu(_dense(x.reshape(n, -1), tf["4x4/Dense0/weight"], tf["4x4/Dense0/bias"]))
    x = _dense(x, tf["Output/weight"], tf["Output/bias"])
    if c is not None:
        cmap = _normalize(_dense(c, tf["LabelEmbed/weight"], tf["LabelEmbed/bias"]))
        x = np.sum(x * cmap, axis=1, keepdims=True) / np.sqrt(cmap_dim)
    return x


# ----------------------------------------------------------------------------
# Helpers for the checks


def _state(net):
    return {name: t.detach().numpy() for name, t in list(net.named_parameters()) + list(net.named_buffers())}


def _check_params(net, expected):
    """Every parameter/buffer equals its expected source value; exactly the resample filters are not converted."""
    state = _state(net)
    for name, value in expected.items():
        assert name in state, f"{name} expected in the converted network"
        assert state[name].shape == value.shape, f"{name}: shape {state[name].shape} != {value.shape}"
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    unconverted = sorted(set(state) - set(expected))
    assert all(name.endswith(".resample_filter") for name in unconverted), unconverted


def _inputs(seed, res, c_dim):
    rng = np.random.RandomState(seed)
    z = rng.randn(BATCH, LATENT)
    c = np.eye(c_dim)[rng.randint(c_dim, size=BATCH)] if c_dim else None
    img = rng.randn(BATCH, IMG_CHANNELS, res, res)
    return z, c, img


def _torch(x, n=BATCH):
    return torch.zeros([n, 0]) if x is None else torch.as_tensor(x, dtype=torch.float32)


# ----------------------------------------------------------------------------
# Tests


GENERATOR_VARIANTS = [
    dict(architecture="skip", c_dim=0),
    dict(architecture="resnet", c_dim=3),
    dict(architecture="orig", c_dim=0, use_noise=False),
]


@pytest.mark.parametrize("g_kwargs", GENERATOR_VARIANTS, ids=lambda k: f"{k['architecture']}-c{k['c_dim']}")
def test_generator_conversion_matches_tf_formulas(g_kwargs):
    tf_G, expected = _tf_generator(10, **g_kwargs)
    G = legacy.convert_tf_generator(_load_stub(tf_G))
    assert isinstance(G, networks.Generator) and not G.training
    assert all(not p.requires_grad for p in G.parameters())
    _check_params(G, expected)

    tf = _tf_variables(tf_G)
    z, c, _img = _inputs(1, 32, g_kwargs["c_dim"])
    with torch.no_grad():
        ws = G.mapping(_torch(z), _torch(c), truncation_psi=0.7)
        img = G(_torch(z), _torch(c), truncation_psi=0.7, noise_mode="const")
    ws_ref = _np_mapping(tf, z, c, G.num_ws, truncation_psi=0.7)
    assert_close(ws, ws_ref, FORWARD_TOL, "mapping")
    img_ref = _np_synthesis(tf, ws_ref, 32, g_kwargs["architecture"], g_kwargs.get("use_noise", True))
    assert_close(img, img_ref, FORWARD_TOL, "image")
    assert float(np.abs(img_ref).max()) > 0.1  # not a trivially small image


def test_single_layers_match_tf_formulas():
    """Layer-level checks (dense, 1x1 toRGB, flipped up-sampling conv) with random inputs at each layer."""
    tf_G, _ = _tf_generator(20, architecture="skip")
    G = legacy.convert_tf_generator(_load_stub(tf_G))
    tf = _tf_variables(tf_G)
    rng = np.random.RandomState(2)
    w = rng.randn(BATCH, LATENT)
    with torch.no_grad():
        fc = G.mapping.fc1(_torch(w))
        assert_close(fc, _lrelu(_dense(w, tf["mapping/Dense1/weight"], tf["mapping/Dense1/bias"], MAPPING_LRMUL)), 1e-5)

        x16 = rng.randn(BATCH, _nf(16), 16, 16)
        rgb = G.synthesis.b16.torgb(_torch(x16), _torch(w))
        assert_close(rgb, _np_modulated(tf, "16x16/ToRGB", x16, w, demodulate=False), 1e-5, "toRGB")

        x8 = rng.randn(BATCH, _nf(8), 8, 8)
        up = G.synthesis.b16.conv0(_torch(x8), _torch(w), noise_mode="const")
        assert_close(up, _np_modulated(tf, "16x16/Conv0_up", x8, w, up=True, noise="noise3"), 1e-5, "Conv0_up")
        # Without the flip the up-sampling layer computes something else (the check above is sensitive to it).
        G.synthesis.b16.conv0.weight.copy_(G.synthesis.b16.conv0.weight.flip([2, 3]))
        unflipped = G.synthesis.b16.conv0(_torch(x8), _torch(w), noise_mode="const")
        assert float((unflipped - up).abs().max()) > 1e-2


DISCRIMINATOR_VARIANTS = [
    dict(architecture="resnet", c_dim=0),
    dict(architecture="skip", c_dim=2, extra_kwargs=dict(mapping_fmaps=8)),
    dict(architecture="orig", c_dim=0, lod_names=True),
]


@pytest.mark.parametrize("d_kwargs", DISCRIMINATOR_VARIANTS, ids=lambda k: f"{k['architecture']}-c{k['c_dim']}")
def test_discriminator_conversion_matches_tf_formulas(d_kwargs):
    tf_D, expected = _tf_discriminator(30, **d_kwargs)
    D = legacy.convert_tf_discriminator(_load_stub(tf_D))
    assert isinstance(D, networks.Discriminator) and not D.training
    assert all(not p.requires_grad for p in D.parameters())
    assert D.init_kwargs.architecture == d_kwargs["architecture"]
    _check_params(D, expected)

    c_dim = d_kwargs["c_dim"]
    cmap_dim = (d_kwargs.get("extra_kwargs") or {}).get("mapping_fmaps", _nf(4))
    _z, c, img = _inputs(3, 32, c_dim)
    with torch.no_grad():
        logits = D(_torch(img), _torch(c))
    from_rgb_name = "FromRGB_lod0" if d_kwargs.get("lod_names") else None
    ref = _np_discriminator(_tf_variables(tf_D), img, c, 32, d_kwargs["architecture"], 2, cmap_dim, from_rgb_name)
    assert_close(logits, ref, FORWARD_TOL, "logits")


def _load_stub(state):
    """A single TF network state, written as a pickle and read back with the legacy unpickler."""
    stub = pickles._LegacyUnpickler(io.BytesIO(_tf_pickle_bytes(state))).load()
    assert isinstance(stub, pickles.TFNetworkStub)
    return stub


def test_load_network_pkl_converts_tf_pickle():
    states, expected = _tf_networks(40, g_kwargs=dict(c_dim=3), d_kwargs=dict(c_dim=3))
    result = _load(_tf_pickle_bytes(*states))
    assert list(result) == ["G", "D", "G_ema", "training_set_kwargs", "augment_pipe"]
    assert result["training_set_kwargs"] is None and result["augment_pipe"] is None
    for key, exp in zip(["G", "D", "G_ema"], expected):
        _check_params(result[key], exp)
    z, c, img = _inputs(4, 32, 3)
    with torch.no_grad():
        out = result["G_ema"](_torch(z), _torch(c), noise_mode="const")
        logits = result["D"](out, _torch(c))
    assert out.shape == (BATCH, IMG_CHANNELS, 32, 32) and logits.shape == (BATCH, 1)
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(logits).all())


def test_converted_kwargs():
    tf_G, _ = _tf_generator(0, c_dim=3, version=4, extra_kwargs=dict(w_avg_beta=None, conv_clamp=256))
    G = legacy.convert_tf_generator(_load_stub(tf_G))
    assert isinstance(G.init_kwargs, dnnlib.EasyDict)
    assert list(G.init_kwargs.items()) == [
        ("z_dim", LATENT),
        ("c_dim", 3),
        ("w_dim", LATENT),
        ("img_resolution", 32),
        ("img_channels", IMG_CHANNELS),
        (
            "mapping_kwargs",
            dict(
                num_layers=MAPPING_LAYERS,
                embed_features=None,
                layer_features=None,
                activation="lrelu",
                lr_multiplier=0.01,
                w_avg_beta=1,  # explicit None becomes 1
            ),
        ),
        (
            "synthesis_kwargs",
            dict(
                channel_base=2 * FMAP_BASE,
                channel_max=FMAP_MAX,
                num_fp16_res=0,
                conv_clamp=256,
                architecture="skip",
                resample_filter=[1, 3, 3, 1],
                use_noise=True,
                activation="lrelu",
            ),
        ),
    ]
    assert list(G.init_kwargs.synthesis_kwargs)[-1] == "activation"

    tf_D, _ = _tf_discriminator(0, c_dim=2, extra_kwargs=dict(mbstd_group_size=None, mapping_fmaps=8))
    D = legacy.convert_tf_discriminator(_load_stub(tf_D))
    assert list(D.init_kwargs.items()) == [
        ("c_dim", 2),
        ("img_resolution", 32),
        ("img_channels", IMG_CHANNELS),
        ("architecture", "resnet"),
        ("channel_base", 2 * FMAP_BASE),
        ("channel_max", FMAP_MAX),
        ("num_fp16_res", 0),
        ("conv_clamp", None),
        ("cmap_dim", 8),
        ("block_kwargs", dict(activation="lrelu", resample_filter=[1, 3, 3, 1], freeze_layers=0)),
        (
            "mapping_kwargs",
            dict(num_layers=0, embed_features=8, layer_features=8, activation="lrelu", lr_multiplier=0.1),
        ),
        ("epilogue_kwargs", dict(mbstd_group_size=None, mbstd_num_channels=1, activation="lrelu")),
    ]
    assert D.b4.mbstd.group_size is None and D.mapping.num_layers == 0


def test_fp16_settings_and_frozen_layers_are_converted():
    g_kwargs = dict(extra_kwargs=dict(num_fp16_res=2, conv_clamp=256))
    d_kwargs = dict(extra_kwargs=dict(num_fp16_res=2, conv_clamp=256, freeze_layers=2))
    states, expected = _tf_networks(50, g_kwargs=g_kwargs, d_kwargs=d_kwargs)
    result = _load(_tf_pickle_bytes(*states))
    G, D = result["G"], result["D"]
    assert G.synthesis.b32.use_fp16 and not G.synthesis.b8.use_fp16 and G.synthesis.b32.conv1.conv_clamp == 256
    assert D.b32.use_fp16 and D.b32.conv0.conv_clamp == 256
    assert "b32.fromrgb.weight" in dict(D.named_buffers())  # frozen layers are buffers, populated by name too
    for net, exp in zip([G, D, result["G_ema"]], expected):
        _check_params(net, exp)

    forced = _load(_tf_pickle_bytes(*_tf_networks(50)[0]), force_fp16=True)
    assert forced["G_ema"].init_kwargs.synthesis_kwargs.num_fp16_res == 4 and forced["D"].init_kwargs.conv_clamp == 256
    _check_params(forced["G_ema"], _tf_networks(50)[1][2])


def test_version_too_low():
    states, _ = _tf_networks(0)
    for index in range(3):
        old = list(states)
        old[index] = dict(old[index], version=3)
        with pytest.raises(ValueError, match="TensorFlow pickle version too low"):
            _load(_tf_pickle_bytes(*old))


@pytest.mark.parametrize(
    "kwarg",
    ["fmap_decay", "fmap_min", "dtype", "randomize_noise", "fused_modconv", "dlatent_avg_beta", "truncation_psi_val"],
)
def test_unknown_generator_kwargs_are_rejected(kwarg):
    tf_G, _ = _tf_generator(0, extra_kwargs={kwarg: 1})
    with pytest.raises(ValueError) as info:
        legacy.convert_tf_generator(_load_stub(tf_G))
    assert info.value.args == ("Unknown TensorFlow kwarg", kwarg)


@pytest.mark.parametrize("kwarg", ["use_pagan", "score_size", "use_spectral_norm", "adaptive_dropout", "fmap_min"])
def test_unknown_discriminator_kwargs_are_rejected(kwarg):
    """StyleGAN2-ADA comparison methods (PA-GAN, auxrot, spectral norm, adaptive dropout) are not supported."""
    tf_D, _ = _tf_discriminator(0, extra_kwargs={kwarg: 1})
    with pytest.raises(ValueError) as info:
        legacy.convert_tf_discriminator(_load_stub(tf_D))
    assert info.value.args == ("Unknown TensorFlow kwarg", kwarg)


def test_generator_errors_surface_first():
    G, D, Gs = _tf_networks(0)[0]
    G = dict(G, static_kwargs=dict(G["static_kwargs"], fmap_decay=1.0))
    D = dict(D, static_kwargs=dict(D["static_kwargs"], use_pagan=True))
    with pytest.raises(ValueError) as info:
        _load(_tf_pickle_bytes(G, D, Gs))
    assert info.value.args[1] == "fmap_decay"


def test_missing_or_misshaped_variable_names_the_parameter(capsys):
    tf_G, _ = _tf_generator(0)
    synthesis = tf_G["components"]["synthesis"]
    missing = dict(synthesis, variables=[(k, v) for k, v in synthesis["variables"] if k != "16x16/Conv1/weight"])
    with pytest.raises(KeyError, match="synthesis/16x16/Conv1/weight"):
        legacy.convert_tf_generator(_load_stub(dict(tf_G, components=dict(tf_G["components"], synthesis=missing))))
    assert f"synthesis.b16.conv1.weight [{_nf(16)}, {_nf(16)}, 3, 3]" in capsys.readouterr().out

    bad = [(k, v[:, :, :, :2] if k == "16x16/Conv1/weight" else v) for k, v in synthesis["variables"]]
    with pytest.raises(RuntimeError):
        legacy.convert_tf_generator(
            _load_stub(dict(tf_G, components=dict(tf_G["components"], synthesis=dict(synthesis, variables=bad))))
        )
    assert "synthesis.b16.conv1.weight" in capsys.readouterr().out


def test_progressive_growing_generator_is_not_supported():
    """A generator with only `ToRGB_lod<n>` outputs (progressive-growing era) fails with a missing-name error."""
    tf_G, _ = _tf_generator(0, architecture="orig")
    synthesis = tf_G["components"]["synthesis"]
    renamed = [(re.sub(r"^32x32/ToRGB/", "ToRGB_lod0/", k), v) for k, v in synthesis["variables"]]
    tf_G = dict(tf_G, components=dict(tf_G["components"], synthesis=dict(synthesis, variables=renamed)))
    with pytest.raises(KeyError, match="synthesis/32x32/ToRGB"):
        legacy.convert_tf_generator(_load_stub(tf_G))


def test_generator_renames_no_lod_variables():
    """Only the discriminator renames `*_lod<n>` variables: a `ToRGB_lod0/...` variable of the generator itself is
    ignored like any other variable no rule reads (it neither aliases `32x32/ToRGB` nor switches to 'orig')."""
    tf_G, expected = _tf_generator(0, architecture="skip")
    extra = [("ToRGB_lod0/weight", np.ones([1, 1, _nf(32), IMG_CHANNELS], np.float32))]
    G = legacy.convert_tf_generator(_load_stub(dict(tf_G, variables=tf_G["variables"] + extra)))
    assert G.init_kwargs.synthesis_kwargs.architecture == "skip"
    _check_params(G, expected)


def test_cli_writes_native_pickle(tmp_path):
    states, expected = _tf_networks(60, g_kwargs=dict(architecture="resnet"))
    source, dest = tmp_path / "tf.pkl", tmp_path / "converted.pkl"
    source.write_bytes(_tf_pickle_bytes(*states))
    proc = subprocess.run(
        [sys.executable, "legacy.py", f"--source={source}", f"--dest={dest}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f'Loading "{source}"...', f'Saving "{dest}"...', "Done."]

    with open(dest, "rb") as f:
        raw = pickle.Unpickler(f)
        assert set(raw.load()) == {"G", "D", "G_ema", "training_set_kwargs", "augment_pipe"}
    with open(dest, "rb") as f:
        reloaded = legacy.load_network_pkl(f)
    assert reloaded["training_set_kwargs"] is None and reloaded["augment_pipe"] is None
    for key, exp in zip(["G", "D", "G_ema"], expected):
        assert type(reloaded[key]).__name__ == ("Discriminator" if key == "D" else "Generator")
        _check_params(reloaded[key], exp)
    assert reloaded["G"].init_kwargs.synthesis_kwargs.architecture == "resnet"


def test_cli_force_fp16_and_file_url(tmp_path):
    source, dest = tmp_path / "tf.pkl", tmp_path / "converted16.pkl"
    states, expected = _tf_networks(70)
    source.write_bytes(_tf_pickle_bytes(*states))
    result = CliRunner().invoke(
        legacy.convert_network_pickle, [f"--source=file://{source}", f"--dest={dest}", "--force-fp16=yes"]
    )
    assert result.exit_code == 0, result.output
    with open(dest, "rb") as f:
        reloaded = legacy.load_network_pkl(f)
    assert reloaded["G_ema"].init_kwargs.synthesis_kwargs.num_fp16_res == 4
    assert reloaded["D"].init_kwargs.num_fp16_res == 4 and reloaded["D"].init_kwargs.conv_clamp == 256
    _check_params(reloaded["G_ema"], expected[2])

    help_text = CliRunner().invoke(legacy.convert_network_pickle, ["--help"]).output
    assert "--force-fp16 BOOLEAN" in help_text and "[default: False]" in help_text
    assert "StyleGAN2-ADA" in help_text


def test_pickle_written_under_numpy_1_loads():
    """TF-era pickles reference `numpy.core.multiarray` (NumPy 1.x) for their arrays and scalars."""
    states, expected = _tf_networks(80)
    data = _tf_pickle_bytes(*states)
    assert b"numpy._core.multiarray" in data  # protocol 3: globals are newline-terminated text, safe to rewrite
    result = _load(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    for key, exp in zip(["G", "D", "G_ema"], expected):
        _check_params(result[key], exp)


def test_truncated_tf_pickle_is_unsupported_pickle_error(tmp_path):
    states, _expected = _tf_networks(90)
    data = _tf_pickle_bytes(*states)
    path = tmp_path / "tf.pkl"
    for cut in [1, len(data) // 2, len(data) - 1]:
        path.write_bytes(data[:cut])
        with open(path, "rb") as f, pytest.raises(legacy.UnsupportedPickleError) as info:
            legacy.load_network_pkl(f)
        assert str(info.value) == f"{path}: not a network pickle (truncated)"
