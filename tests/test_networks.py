"""Parity of training/networks.py with the reference generator and discriminator vectors (tests/data/net_*.npz)."""

import copy

import numpy as np
import pytest
import torch
from conftest import assert_close, cuda_only, json_value, load_vectors

from training import networks

NET_TOL = 1e-4  # outputs, input gradients, traces (vectors README)
PARAM_GRAD_TOL = 1e-3  # parameter gradients, per tensor
CLAMP_FRACTION = 1e-3  # share of elements allowed to flip at a conv_clamp boundary

G_CASES = ["uncond32_skip", "cond16_orig", "cond16_resnet", "fp16clamp32_skip"]
D_CASES = [
    "resnet32_uncond_mb4",
    "skip32_uncond_mb4",
    "skip32_cond_mb2",
    "orig32_cond_mb4",
    "orig32_uncond_mbAll",
    "resnet32_cond_fp16clamp_mb2x2",
    "resnet16_cond_mb4",
]


def _t(array):
    return torch.from_numpy(np.array(array))


def _build(cls, name):
    """Construct `cls` from the vector kwargs, check the state-dict layout against the stored file, load it."""
    io = load_vectors(f"net_{name}_io.npz")
    state = load_vectors(f"net_{name}_state.npz")
    net = cls(**json_value(io["kwargs"]))
    ours = net.state_dict()
    assert list(ours.keys()) == list(state.keys()), "state-dict keys or their order differ from the reference"
    for key, value in state.items():
        assert tuple(ours[key].shape) == value.shape, f"{key}: shape {tuple(ours[key].shape)} != {value.shape}"
    net.load_state_dict({key: _t(value) for key, value in state.items()})
    return net.eval(), io


def _tolerance_kwargs(kwargs):
    has_clamp = kwargs.get("conv_clamp") or kwargs.get("synthesis_kwargs", {}).get("conv_clamp")
    return dict(allowed_fraction=CLAMP_FRACTION) if has_clamp else {}


def _record_traces(net, prefix):
    """Forward hooks storing every submodule output as the vectors' `trace.*` keys (tuples as .out0/.out1)."""
    traces, handles = {}, []
    for mod_name, module in net.named_modules():
        if mod_name == "":
            continue

        def hook(_module, _inputs, output, key=f"{prefix}{mod_name}"):
            if isinstance(output, tuple):
                for idx, item in enumerate(output):
                    if item is not None:
                        traces[f"{key}.out{idx}"] = item.detach().clone()
            else:
                traces[key] = output.detach().clone()

        handles.append(module.register_forward_hook(hook))
    return traces, handles


def _compare_traces(traces, io, tol_kwargs):
    order = json_value(io["trace.order"])
    for key in order:
        assert key in traces, f"no submodule produced trace {key}"
        assert_close(traces[key], io[key], NET_TOL, key, **tol_kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Generator


def _build_generator_case(case):
    """(G, vectors, tolerance kwargs, synthesis kwargs): fp16 cases are compared in their float32 evaluation."""
    G, io = _build(networks.Generator, f"G_{case}")
    kwargs = json_value(io["kwargs"])
    extra = dict(force_fp32=True) if kwargs["synthesis_kwargs"].get("num_fp16_res") else {}
    return G, io, _tolerance_kwargs(kwargs), extra


@pytest.mark.parametrize("case", G_CASES)
def test_generator_mapping(case):
    G, io = _build(networks.Generator, f"G_{case}")
    tol = _tolerance_kwargs(json_value(io["kwargs"]))
    z, c = _t(io["z"]), _t(io["c"])
    w_avg = G.mapping.w_avg.clone()
    with torch.no_grad():
        assert_close(G.mapping(z, c), io["mapping_psi1"], NET_TOL, "mapping_psi1", **tol)
        assert_close(G.mapping(z, c, truncation_psi=0.7), io["mapping_psi07"], NET_TOL, "mapping_psi07", **tol)
        out = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=2)
        assert_close(out, io["mapping_psi07_cut2"], NET_TOL, "mapping_psi07_cut2", **tol)
    assert torch.equal(G.mapping.w_avg, w_avg), "w_avg must not change in eval mode"

    G_train = copy.deepcopy(G).train()
    with torch.no_grad():
        G_train.mapping(z, c, skip_w_avg_update=True)
        assert torch.equal(G_train.mapping.w_avg, w_avg), "skip_w_avg_update=True must leave w_avg unchanged"
        ws = G_train.mapping(z, c)
    assert_close(ws, io["mapping_train_ws"], NET_TOL, "mapping_train_ws", **tol)
    assert_close(G_train.mapping.w_avg, io["mapping_train_w_avg_after"], NET_TOL, "mapping_train_w_avg_after")


@pytest.mark.parametrize("case", G_CASES)
def test_generator_synthesis_and_full(case):
    G, io, tol, extra = _build_generator_case(case)
    ws, z, c = _t(io["ws"]), _t(io["z"]), _t(io["c"])
    with torch.no_grad():
        for noise_mode in ["const", "none"]:
            out = G.synthesis(ws, noise_mode=noise_mode, **extra)
            assert out.dtype == torch.float32 and out.is_contiguous()
            assert_close(out, io[f"synthesis_{noise_mode}"], NET_TOL, f"synthesis_{noise_mode}", **tol)
        for fused in [True, False]:
            key = "synthesis_const_fused" if fused else "synthesis_const_unfused"
            out = G.synthesis(ws, noise_mode="const", fused_modconv=fused, **extra)
            assert_close(out, io[key], NET_TOL, key, **tol)
        assert_close(G(z, c, noise_mode="const", **extra), io["G_psi1_const"], NET_TOL, "G_psi1_const", **tol)
        assert_close(G(z, c, noise_mode="none", **extra), io["G_psi1_none"], NET_TOL, "G_psi1_none", **tol)
        out = G(z, c, truncation_psi=0.7, truncation_cutoff=2, noise_mode="const", **extra)
        assert_close(out, io["G_psi07_cut2_const"], NET_TOL, "G_psi07_cut2_const", **tol)

        # Training mode resolves fused_modconv=None to the non-fused path.
        G.synthesis.train()
        out = G.synthesis(ws, noise_mode="const", **extra)
        assert_close(out, io["synthesis_const_unfused"], NET_TOL, "train-mode synthesis", **tol)


@pytest.mark.parametrize("case", G_CASES)
def test_generator_gradients(case):
    G, io, tol, extra = _build_generator_case(case)
    ws = _t(io["ws"]).requires_grad_(True)
    out = G.synthesis(ws, noise_mode="const", **extra)
    (out * _t(io["synthesis_r"])).sum().backward()
    assert_close(ws.grad, io["synthesis_ws_grad"], NET_TOL, "synthesis_ws_grad", **tol)

    param_keys = [key for key in io if key.startswith("param_grad.")]
    params = dict(G.named_parameters())
    for key in param_keys:
        name = key[len("param_grad.") :]
        assert params[name].grad is not None, f"{name} received no gradient"
        assert_close(params[name].grad, io[key], PARAM_GRAD_TOL, key)


def test_generator_traces():
    G, io = _build(networks.Generator, "G_uncond32_skip")
    traces, handles = _record_traces(G, "trace.")
    with torch.no_grad():
        out = G(_t(io["z"]), _t(io["c"]), noise_mode="const")
    for handle in handles:
        handle.remove()
    traces["trace.synthesis"] = out
    _compare_traces(traces, io, {})


# ----------------------------------------------------------------------------------------------------------------------
# Discriminator


def _d_logits_and_grad(D, img, c, **kwargs):
    img = _t(img).requires_grad_(True)
    logits = D(img, _t(c), **kwargs)
    (grad,) = torch.autograd.grad(logits.sum(), [img])
    return logits, grad


@pytest.mark.parametrize("case", D_CASES)
def test_discriminator(case):
    D, io = _build(networks.Discriminator, f"D_{case}")
    kwargs = json_value(io["kwargs"])
    tol = _tolerance_kwargs(kwargs)
    extra = dict(force_fp32=True) if kwargs.get("num_fp16_res") else {}
    for suffix in ["", "_b2", "_b8"]:
        if f"logits{suffix}" not in io:
            continue
        logits, grad = _d_logits_and_grad(D, io[f"img{suffix}"], io[f"c{suffix}"], **extra)
        assert logits.dtype == torch.float32
        assert_close(logits, io[f"logits{suffix}"], NET_TOL, f"logits{suffix}", **tol)
        assert_close(grad, io[f"img_grad{suffix}"], NET_TOL, f"img_grad{suffix}", **tol)


def test_discriminator_param_grads_and_traces():
    D, io = _build(networks.Discriminator, "D_resnet32_uncond_mb4")
    D(_t(io["img"]), _t(io["c"])).sum().backward()
    params = dict(D.named_parameters())
    param_keys = [key for key in io if key.startswith("param_grad.")]
    assert {key[len("param_grad.") :] for key in param_keys} == set(params)
    for key in param_keys:
        assert_close(params[key[len("param_grad.") :]].grad, io[key], PARAM_GRAD_TOL, key)

    traces, handles = _record_traces(D, "trace.")
    with torch.no_grad():
        traces["trace.b4"] = D(_t(io["trace_img"]), _t(io["trace_c"]))
    for handle in handles:
        handle.remove()
    _compare_traces(traces, io, {})


# ----------------------------------------------------------------------------------------------------------------------
# Initialisation


def _replay_generator_init(G):
    """Expected initial randn draws of a Generator in the documented order (docs/compatibility.md, "Parameter and
    buffer names"), from the current RNG state."""
    expected = {}

    def draw(name, shape, scale=1.0):
        expected[name] = torch.randn(shape) / scale

    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f"b{res}")
        prefix = f"synthesis.b{res}"
        if block.in_channels == 0:
            draw(f"{prefix}.const", block.const.shape)
        for layer in ["conv0", "conv1"]:
            if hasattr(block, layer):
                mod = getattr(block, layer)
                draw(f"{prefix}.{layer}.affine.weight", mod.affine.weight.shape)
                draw(f"{prefix}.{layer}.weight", mod.weight.shape)
                if mod.use_noise:
                    draw(f"{prefix}.{layer}.noise_const", mod.noise_const.shape)
        if hasattr(block, "torgb"):
            draw(f"{prefix}.torgb.affine.weight", block.torgb.affine.weight.shape)
            draw(f"{prefix}.torgb.weight", block.torgb.weight.shape)
        if hasattr(block, "skip"):
            draw(f"{prefix}.skip.weight", block.skip.weight.shape)
    mapping = G.mapping
    if mapping.c_dim > 0:
        draw("mapping.embed.weight", mapping.embed.weight.shape)
    for idx in range(mapping.num_layers):
        fc = getattr(mapping, f"fc{idx}")
        draw(f"mapping.fc{idx}.weight", fc.weight.shape, scale=0.01)
    return expected


def _replay_discriminator_init(D):
    expected = {}

    def draw(name, shape, scale=1.0):
        expected[name] = torch.randn(shape) / scale

    for res in D.block_resolutions:
        block = getattr(D, f"b{res}")
        for layer in ["fromrgb", "conv0", "conv1", "skip"]:
            if hasattr(block, layer):
                draw(f"b{res}.{layer}.weight", getattr(block, layer).weight.shape)
    if D.c_dim > 0:
        draw("mapping.embed.weight", D.mapping.embed.weight.shape)
        for idx in range(D.mapping.num_layers):
            draw(f"mapping.fc{idx}.weight", getattr(D.mapping, f"fc{idx}").weight.shape, scale=0.01)
    for layer in ["fromrgb", "conv", "fc", "out"]:
        if hasattr(D.b4, layer):
            draw(f"b4.{layer}.weight", getattr(D.b4, layer).weight.shape)
    return expected


def _check_deterministic_init(net, expected):
    state = net.state_dict()
    for name, value in expected.items():
        assert torch.equal(state[name], value), f"{name}: initial value is not the expected draw in documented order"
    for name, value in state.items():
        if name in expected or name.endswith("resample_filter"):
            continue
        if name.endswith("affine.bias"):
            assert torch.equal(value, torch.ones_like(value)), f"{name} must start at 1"
        else:
            assert torch.equal(value, torch.zeros_like(value)), f"{name} must start at 0"


# Network class, replay of its documented draws, and the seed used for it.
_INIT_REPLAYS = {
    "G": (networks.Generator, _replay_generator_init, 123),
    "D": (networks.Discriminator, _replay_discriminator_init, 321),
}


@pytest.mark.parametrize("name", [f"G_{case}" for case in G_CASES] + [f"D_{case}" for case in D_CASES])
def test_init_order_and_values(name):
    cls, replay, seed = _INIT_REPLAYS[name[0]]
    kwargs = json_value(load_vectors(f"net_{name}_io.npz")["kwargs"])
    torch.manual_seed(seed)
    net = cls(**kwargs)
    torch.manual_seed(seed)
    _check_deterministic_init(net, replay(net))


@pytest.mark.parametrize("name", [f"G_{case}" for case in G_CASES] + [f"D_{case}" for case in D_CASES])
def test_stored_weights_match_init_conventions(name):
    """The stored weights are a seeded init plus documented perturbations: check scales, not values."""
    state = load_vectors(f"net_{name}_state.npz")
    fresh = (networks.Generator if name.startswith("G_") else networks.Discriminator)(
        **json_value(load_vectors(f"net_{name}_io.npz")["kwargs"])
    ).state_dict()
    for key, stored in state.items():
        if key.endswith("resample_filter"):
            assert np.array_equal(stored, fresh[key].numpy()), key
        elif key.endswith(("weight", "const")) and stored.size >= 64:
            # Unperturbed draws: same standard deviation as ours (1, or 1/lr_multiplier for mapping layers).
            ratio = stored.std() / fresh[key].numpy().std()
            assert 0.7 < ratio < 1.4, f"{key}: stored std / fresh std = {ratio:.3f}"
        elif key.endswith("affine.bias"):
            assert abs(stored.mean() - 1) < 0.1, f"{key}: affine biases start at 1"


# ----------------------------------------------------------------------------------------------------------------------
# Behaviour not covered by the vectors


def test_random_noise_draw_order():
    """noise_mode='random' draws one [N,1,R,R] map per SynthesisLayer in forward order."""
    G, io = _build(networks.Generator, "G_uncond32_skip")
    ws = _t(io["ws"])[:1]
    torch.manual_seed(5)
    with torch.no_grad():
        random_out = G.synthesis(ws, noise_mode="random")
    torch.manual_seed(5)
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f"b{res}")
        for layer in ["conv0", "conv1"]:
            if hasattr(block, layer):
                getattr(block, layer).noise_const.copy_(torch.randn([1, 1, res, res])[0, 0])
    with torch.no_grad():
        const_out = G.synthesis(ws, noise_mode="const")
    assert_close(random_out, const_out.numpy(), 1e-6, "random noise replayed as const")


def test_persistent_attributes_and_rebuild():
    kwargs = json_value(load_vectors("net_G_cond16_resnet_io.npz")["kwargs"])
    G = networks.Generator(**kwargs)
    assert G.init_args == () and dict(G.init_kwargs) == kwargs
    assert G.synthesis.b8.conv0.init_args == (48, 48)
    assert type(G).__name__ == "Generator"
    rebuilt = type(G)(**G.init_kwargs)
    assert list(rebuilt.state_dict().keys()) == list(G.state_dict().keys())
    assert (G.z_dim, G.c_dim, G.w_dim, G.num_ws, G.img_resolution, G.img_channels) == (32, 4, 32, 6, 16, 3)


def test_freeze_layers_become_buffers():
    D = networks.Discriminator(
        c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=16, block_kwargs=dict(freeze_layers=5)
    )
    buffers = {name for name, _ in D.named_buffers()}
    params = {name for name, _ in D.named_parameters()}
    # b16: fromrgb(0) conv0(1) conv1(2) skip(3); b8: conv0(4) conv1(5) skip(6).
    for frozen in ["b16.fromrgb.weight", "b16.conv1.bias", "b16.skip.weight", "b8.conv0.weight", "b8.conv0.bias"]:
        assert frozen in buffers and frozen not in params
    for trainable in ["b8.conv1.weight", "b8.skip.weight", "b4.conv.weight"]:
        assert trainable in params
    keys = list(D.state_dict().keys())
    assert keys.index("b8.conv0.resample_filter") < keys.index("b8.conv0.weight")


def test_minibatch_std_grouping():
    x = torch.randn([6, 4, 2, 2])
    y = networks.MinibatchStdLayer(group_size=2, num_channels=2)(x)
    assert y.shape == (6, 6, 2, 2)
    # Sample s is in group s mod 3 together with s + 3.
    group = torch.stack([x[1], x[4]])
    expected = (group.var(dim=0, unbiased=False) + 1e-8).sqrt().reshape(2, 2, 2, 2).mean(dim=[1, 2, 3])
    assert torch.allclose(y[1, 4:, 0, 0], expected, atol=1e-6)
    assert torch.equal(y[1, 4:], y[4, 4:])


def _fp16_supported():
    try:
        torch.nn.functional.conv2d(torch.ones([1, 1, 3, 3], dtype=torch.float16), torch.ones([1, 1, 1, 1]).half())
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(not _fp16_supported(), reason="float16 convolution not available on this device")
@pytest.mark.parametrize("channels_last", [False, True])
def test_fp16_blocks_track_fp32(channels_last):
    """fp16 blocks (with pre-normalisation and clamping) stay close to the float32 evaluation of the same weights."""
    G, io = _build(networks.Generator, "G_fp16clamp32_skip")
    if channels_last:
        kwargs = json_value(io["kwargs"])
        kwargs["synthesis_kwargs"]["fp16_channels_last"] = True
        G = networks.Generator(**kwargs).eval()
        G.load_state_dict({key: _t(value) for key, value in load_vectors("net_G_fp16clamp32_skip_state.npz").items()})
        assert G.synthesis.b32.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    ws = _t(io["ws"])
    with torch.no_grad():
        for fused in [None, False]:
            out16 = G.synthesis(ws, noise_mode="const", fused_modconv=fused)
            assert out16.dtype == torch.float32
            out32 = G.synthesis(ws, noise_mode="const", force_fp32=True, fused_modconv=fused)
            assert torch.isfinite(out16).all()
            assert (out16 - out32).abs().max() < 0.05 * max(1.0, out32.abs().max().item())

    D, dio = _build(networks.Discriminator, "D_resnet32_cond_fp16clamp_mb2x2")
    with torch.no_grad():
        logits16 = D(_t(dio["img"]), _t(dio["c"]))
    assert logits16.dtype == torch.float32
    assert (logits16 - _t(dio["logits"])).abs().max() < 0.05 * max(1.0, np.abs(dio["logits"]).max())


@cuda_only
def test_cuda_matches_cpu_vectors():
    """Same vectors on the GPU (TF32 off so float32 means float32); fp16 blocks run and stay finite."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        G, io = _build(networks.Generator, "G_fp16clamp32_skip")
        G = G.cuda()
        ws, z, c = (_t(io[key]).cuda() for key in ["ws", "z", "c"])
        with torch.no_grad():
            for fused in [True, False]:
                key = "synthesis_const_fused" if fused else "synthesis_const_unfused"
                out = G.synthesis(ws, noise_mode="const", fused_modconv=fused, force_fp32=True)
                assert_close(out.cpu(), io[key], NET_TOL, key, allowed_fraction=CLAMP_FRACTION)
            out = G(z, c, noise_mode="const", force_fp32=True)
            assert_close(out.cpu(), io["G_psi1_const"], NET_TOL, "G_psi1_const", allowed_fraction=CLAMP_FRACTION)
            assert torch.isfinite(G.synthesis(ws, noise_mode="random")).all()

        D, dio = _build(networks.Discriminator, "D_resnet32_cond_fp16clamp_mb2x2")
        D = D.cuda()
        img = _t(dio["img"]).cuda().requires_grad_(True)
        logits = D(img, _t(dio["c"]).cuda(), force_fp32=True)
        (grad,) = torch.autograd.grad(logits.sum(), [img])
        assert_close(logits.cpu(), dio["logits"], NET_TOL, "logits", allowed_fraction=CLAMP_FRACTION)
        assert_close(grad.cpu(), dio["img_grad"], NET_TOL, "img_grad", allowed_fraction=CLAMP_FRACTION)
        with torch.no_grad():
            assert torch.isfinite(D(img, _t(dio["c"]).cuda())).all()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
