"""Autograd checks (float64 gradcheck / gradgradcheck) of every custom op, the gradfix modules' custom paths
(including `no_weight_gradients`), and the native-plugin autograd wrappers driven by a pure-PyTorch stand-in plugin."""

import pytest
import torch

from torch_utils.ops import bias_act, conv2d_gradfix, conv2d_resample, fma, grid_sample_gradfix, upfirdn2d

F64 = torch.float64


def _randn(shape, seed, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=F64).requires_grad_(requires_grad)


def _check(fn, inputs, second_order=True):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    if second_order:
        assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------
# upfirdn2d (reference path)

UPFIRDN2D_CONFIGS = [
    dict(filter=[1, 3, 3, 1], kwargs=dict(up=2, padding=[2, 1, 2, 1])),
    dict(filter=[1, 3, 3, 1], kwargs=dict(down=2, padding=1, gain=2)),
    dict(filter=[1, 2, 3], kwargs=dict(up=[1, 2], down=[2, 1], padding=[1, -1, 2, 0], flip_filter=True)),
    dict(filter=[[1, 2, 0], [0, 1, 3], [1, 1, 1]], kwargs=dict(up=2, down=2, padding=[1, 2], flip_filter=True)),
    dict(filter=[1, 2, 3, 4, 5, 6, 7, 8], kwargs=dict(up=2, padding=[4, 3, 4, 3], gain=0.5)),  # separable
    dict(filter=None, kwargs=dict(up=2, padding=[0, -1, 1, 0])),
]


@pytest.mark.parametrize("config", UPFIRDN2D_CONFIGS, ids=lambda c: str(c["kwargs"]))
def test_upfirdn2d_gradcheck(config):
    f = upfirdn2d.setup_filter(config["filter"]) if config["filter"] is not None else None
    x = _randn([1, 2, 4, 5], seed=10)
    _check(lambda x: upfirdn2d.upfirdn2d(x, f, impl="ref", **config["kwargs"]), (x,))


def test_upfirdn2d_wrappers_gradcheck():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = _randn([1, 1, 4, 4], seed=11)
    _check(lambda x: upfirdn2d.filter2d(x, f, padding=[1, 0, 0, 1]), (x,))
    _check(lambda x: upfirdn2d.upsample2d(x, f), (x,))
    _check(lambda x: upfirdn2d.downsample2d(x, f, flip_filter=True, gain=3), (x,))


# ----------------------------------------------------------------------------
# bias_act (reference path): every activation, with and without bias / gain / clamp.


@pytest.mark.parametrize("act", sorted(bias_act.activation_funcs))
@pytest.mark.parametrize(
    "options",
    [dict(use_bias=True, dim=1), dict(use_bias=False, dim=1), dict(use_bias=True, dim=2, gain=0.7, clamp=0.9)],
    ids=["bias", "nobias", "gain_clamp"],
)
def test_bias_act_gradcheck(act, options):
    x = _randn([2, 3, 3], seed=20)
    b = _randn([x.shape[options["dim"]]], seed=21) if options["use_bias"] else None
    kwargs = dict(dim=options["dim"], act=act, gain=options.get("gain"), clamp=options.get("clamp"), impl="ref")
    if b is None:
        _check(lambda x: bias_act.bias_act(x, None, **kwargs), (x,))
    else:
        _check(lambda x, b: bias_act.bias_act(x, b, **kwargs), (x, b))


# ----------------------------------------------------------------------------
# conv2d_resample

CONV2D_RESAMPLE_CONFIGS = [
    dict(kernel=3, kwargs=dict(up=2, padding=1, flip_weight=False)),
    dict(kernel=3, kwargs=dict(down=2, padding=1)),
    dict(kernel=1, kwargs=dict(up=2, flip_weight=False)),
    dict(kernel=1, kwargs=dict(down=2)),
    dict(kernel=3, kwargs=dict(padding=[1, 0, 0, 1], groups=2)),
    dict(kernel=3, kwargs=dict(up=2, padding=1, groups=2)),
]


@pytest.mark.parametrize("config", CONV2D_RESAMPLE_CONFIGS, ids=lambda c: f"k{c['kernel']}-{c['kwargs']}")
def test_conv2d_resample_gradcheck(config):
    groups = config["kwargs"].get("groups", 1)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = _randn([1, 2 * groups, 4, 4], seed=30)
    w = _randn([2 * groups, 2, config["kernel"], config["kernel"]], seed=31)
    _check(lambda x, w: conv2d_resample.conv2d_resample(x=x, w=w, f=f, **config["kwargs"]), (x, w))


# ----------------------------------------------------------------------------
# conv2d_gradfix: the custom op (enabled) must give the same numbers of every order as PyTorch's own ops.


@pytest.fixture
def gradfix_enabled(monkeypatch):
    """Both custom ops on, and on the CPU too (by default they run for CUDA tensors only)."""
    monkeypatch.setattr(conv2d_gradfix, "enabled", True)
    monkeypatch.setattr(conv2d_gradfix, "weight_gradients_disabled", False)
    monkeypatch.setattr(conv2d_gradfix, "_custom_op_devices", ("cuda", "cpu"))
    monkeypatch.setattr(grid_sample_gradfix, "enabled", True)
    monkeypatch.setattr(grid_sample_gradfix, "_custom_op_devices", ("cuda", "cpu"))


CONV_CASES = [
    dict(transpose=False, w=[4, 2, 3, 3], kwargs=dict(stride=2, padding=1)),
    dict(transpose=False, w=[4, 1, 2, 3], kwargs=dict(padding=[1, 0], dilation=[2, 1], groups=2)),
    dict(transpose=True, w=[2, 3, 3, 3], kwargs=dict(stride=2, padding=1, output_padding=1)),
    dict(transpose=True, w=[2, 2, 3, 2], kwargs=dict(stride=[1, 2], groups=2)),
]


def _conv_op(case):
    op = conv2d_gradfix.conv_transpose2d if case["transpose"] else conv2d_gradfix.conv2d
    return lambda x, w, b: op(x, w, b, **case["kwargs"])


def _conv_inputs(case, seed):
    in_channels = case["w"][0] if case["transpose"] else case["w"][1] * case["kwargs"].get("groups", 1)
    groups = case["kwargs"].get("groups", 1)
    out_channels = case["w"][1] * groups if case["transpose"] else case["w"][0]
    return _randn([1, in_channels, 4, 5], seed), _randn(case["w"], seed + 1), _randn([out_channels], seed + 2)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{'T' if c['transpose'] else 'C'}-{c['kwargs']}")
def test_conv2d_gradfix_custom_op(gradfix_enabled, case):
    x, w, b = _conv_inputs(case, seed=40)
    y = _conv_op(case)(x, w, b)
    assert "Convolution" not in type(y.grad_fn).__name__, "the custom autograd function was not used"
    native = torch.nn.functional.conv_transpose2d if case["transpose"] else torch.nn.functional.conv2d
    assert torch.equal(y, native(x, w, b, **case["kwargs"]))
    _check(_conv_op(case), (x, w, b))


def test_conv2d_gradfix_disabled_is_native():
    x, w, b = _conv_inputs(CONV_CASES[0], seed=41)
    y = conv2d_gradfix.conv2d(input=x, weight=w, bias=b, stride=2, padding=1)
    assert "Convolution" in type(y.grad_fn).__name__


def _r1_like_penalty_grads(x, w, disable_weight_grads):
    """R1 pattern: inner input gradient under no_weight_gradients(), outer gradient of its norm w.r.t. w."""
    y = conv2d_gradfix.conv2d(input=x, weight=w, padding=1)
    y = conv2d_gradfix.conv2d(input=torch.tanh(y), weight=w.transpose(0, 1), padding=1)
    with conv2d_gradfix.no_weight_gradients(disable_weight_grads):
        (grad_x,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (grad_w,) = torch.autograd.grad(grad_x.square().sum(), w)
    return grad_x.detach(), grad_w


def test_no_weight_gradients_keeps_second_order_terms(gradfix_enabled, monkeypatch):
    x, w = _randn([1, 3, 4, 4], seed=42), _randn([3, 3, 3, 3], seed=43)
    custom_grad_x, custom_grad_w = _r1_like_penalty_grads(x, w, disable_weight_grads=True)
    monkeypatch.setattr(conv2d_gradfix, "enabled", False)
    native_grad_x, native_grad_w = _r1_like_penalty_grads(x, w, disable_weight_grads=False)
    assert torch.allclose(custom_grad_x, native_grad_x, rtol=1e-12, atol=1e-12)
    assert torch.allclose(custom_grad_w, native_grad_w, rtol=1e-12, atol=1e-12)


def test_no_weight_gradients_skips_weight_gradient(gradfix_enabled):
    x, w = _randn([1, 2, 5, 5], seed=44), _randn([3, 2, 3, 3], seed=45)
    (expected_dx,) = torch.autograd.grad(torch.nn.functional.conv2d(x, w).square().sum(), x)
    with conv2d_gradfix.no_weight_gradients():
        assert conv2d_gradfix.weight_gradients_disabled
        y = conv2d_gradfix.conv2d(x, w)
        y.square().sum().backward()
    assert not conv2d_gradfix.weight_gradients_disabled
    assert w.grad is None, "the weight gradient must be skipped inside no_weight_gradients()"
    assert torch.allclose(x.grad, expected_dx, rtol=1e-12, atol=1e-12)

    # Outside the context the weight gradient is back.
    conv2d_gradfix.conv2d(x, w).square().sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_no_weight_gradients_flag_handling():
    assert not conv2d_gradfix.weight_gradients_disabled
    with conv2d_gradfix.no_weight_gradients(disable=False):
        assert not conv2d_gradfix.weight_gradients_disabled
        with conv2d_gradfix.no_weight_gradients():
            assert conv2d_gradfix.weight_gradients_disabled
        assert not conv2d_gradfix.weight_gradients_disabled
    with pytest.raises(ValueError), conv2d_gradfix.no_weight_gradients():
        raise ValueError("restores the flag on errors")
    assert not conv2d_gradfix.weight_gradients_disabled


# ----------------------------------------------------------------------------
# grid_sample_gradfix


def _grid(seed, requires_grad):
    gen = torch.Generator().manual_seed(seed)
    grid = torch.rand([1, 3, 4, 2], generator=gen, dtype=F64) * 2.4 - 1.2  # some samples fall outside
    return grid.requires_grad_(requires_grad)


def test_grid_sample_gradfix(gradfix_enabled):
    x = _randn([1, 2, 4, 5], seed=50)
    grid = _grid(seed=51, requires_grad=True)
    y = grid_sample_gradfix.grid_sample(x, grid)
    assert "GridSample2dForward" in type(y.grad_fn).__name__, "the custom autograd function was not used"
    native = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    assert torch.equal(y, native)
    _check(grid_sample_gradfix.grid_sample, (x, grid), second_order=False)
    # Second order through the input (the R1 case: the grid is a constant) and through both.
    constant_grid = grid.detach()
    _check(lambda x: grid_sample_gradfix.grid_sample(x, constant_grid), (x,))
    _check(grid_sample_gradfix.grid_sample, (x, grid))


def test_grid_sample_gradfix_r1_pattern_matches_native(gradfix_enabled, monkeypatch):
    x, w = _randn([1, 2, 4, 4], seed=52), _randn([2, 2, 3, 3], seed=53)
    grid = _grid(seed=54, requires_grad=False)

    def penalty_grad_w():
        y = torch.nn.functional.conv2d(grid_sample_gradfix.grid_sample(x, grid), w, padding=1)
        (grad_x,) = torch.autograd.grad(torch.sigmoid(y).sum(), x, create_graph=True)
        return torch.autograd.grad(grad_x.square().sum(), w)[0]

    custom = penalty_grad_w()
    monkeypatch.setattr(grid_sample_gradfix, "enabled", False)
    assert torch.allclose(custom, penalty_grad_w(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# fma


@pytest.mark.parametrize(
    "shapes",
    [([2, 3, 2, 2], [2, 3, 1, 1], [2, 1, 2, 2]), ([3, 4], [4], [3, 1]), ([2, 1, 3], [1, 2, 1], [])],
    ids=str,
)
def test_fma_gradcheck(shapes):
    a, b, c = (_randn(shape, seed=60 + i) for i, shape in enumerate(shapes))
    out = fma.fma(a, b, c)
    assert torch.equal(out, torch.addcmul(c, a, b))
    _check(fma.fma, (a, b, c))


# ----------------------------------------------------------------------------
# Native-plugin autograd wrappers, driven by stand-in plugins built from the reference path. This checks the
# wrappers' gradient wiring (adjoint backward of upfirdn2d, first/second-order bias_act) without a GPU.


class _ReferenceUpfirdn2dPlugin:
    @staticmethod
    def upfirdn2d(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain):
        assert f.ndim == 2
        padding = [padx0, padx1, pady0, pady1]
        return upfirdn2d._upfirdn2d_ref(x, f, [upx, upy], [downx, downy], padding, flip_filter=flip, gain=gain)


class _ReferenceBiasActPlugin:
    @staticmethod
    def bias_act(x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp):
        (name,) = [key for key, spec in bias_act.activation_funcs.items() if spec.cuda_idx == act]
        spec = bias_act.activation_funcs[name]
        bias = None if b.numel() == 0 else b
        if grad == 0:
            clamp_arg = clamp if clamp >= 0 else None
            return bias_act._bias_act_ref(x, bias, dim, name, alpha=alpha, gain=gain, clamp=clamp_arg)
        mask = torch.ones_like(x) if clamp < 0 else (yref.abs() < clamp).to(x.dtype)
        if xref.numel() == 0:  # piecewise-linear activations: slope from the sign of the output
            assert not spec.has_2nd_grad
            slope = torch.ones_like(x) if name == "linear" else (yref > 0).to(x.dtype)
            if name == "lrelu":
                slope = slope + (1 - slope) * alpha
            return x * gain * slope * mask
        s = xref if bias is None else xref + bias.reshape([-1 if i == dim else 1 for i in range(xref.ndim)])
        with torch.enable_grad():
            s = s.detach().requires_grad_(True)
            (d1,) = torch.autograd.grad((spec.func(s, alpha=alpha) * gain).sum(), s, create_graph=True)
            if grad == 1:
                return x * d1.detach() * mask
            (d2,) = torch.autograd.grad(d1.sum(), s)
            return x * dy * d2 * mask


def test_upfirdn2d_native_wrapper_gradients(monkeypatch):
    monkeypatch.setattr(upfirdn2d._plugin, "module", _ReferenceUpfirdn2dPlugin())
    x = _randn([1, 2, 4, 5], seed=70)
    for filt, kwargs in [
        ([[1, 2, 0], [0, 1, 3], [1, 1, 1]], dict(up=[2, 1], down=[1, 2], padding=[2, 1, 0, 3], flip_filter=True)),
        ([1, 2, 3, 4, 5, 6, 7, 8], dict(up=2, down=2, padding=[4, 3, 3, 4], gain=3)),
    ]:
        f = upfirdn2d.setup_filter(filt)
        op = upfirdn2d._upfirdn2d_cuda(**kwargs)
        expected = upfirdn2d.upfirdn2d(x, f, impl="ref", **kwargs)
        assert torch.allclose(op.apply(x, f), expected, rtol=0, atol=1e-12)
        _check(lambda x, op=op, f=f: op.apply(x, f), (x,))


@pytest.mark.parametrize("act", ["linear", "lrelu", "tanh", "swish"])
@pytest.mark.parametrize("clamp", [None, 0.8], ids=["noclamp", "clamp"])
def test_bias_act_native_wrapper_gradients(monkeypatch, act, clamp):
    monkeypatch.setattr(bias_act._plugin, "module", _ReferenceBiasActPlugin())
    x, b = _randn([2, 3, 2, 2], seed=71), _randn([3], seed=72)
    op = bias_act._bias_act_cuda(dim=1, act=act, gain=1.3, clamp=clamp)
    expected = bias_act.bias_act(x, b, dim=1, act=act, gain=1.3, clamp=clamp, impl="ref")
    assert torch.allclose(op.apply(x, b), expected, rtol=0, atol=1e-12)
    _check(op.apply, (x, b))
    _check(lambda x: op.apply(x, None), (x,))
