"""Vector parity of the custom ops' reference paths (setup_filter, upfirdn2d & wrappers, bias_act, conv2d_resample,
fma) against tests/data/ops_*.npz, plus worked examples of the documented semantics and the impl selection rules."""

import warnings

import numpy as np
import pytest
import torch
from conftest import assert_close, cuda_only, json_value, load_vectors

from torch_utils import custom_ops
from torch_utils.ops import bias_act, conv2d_resample, fma, upfirdn2d

OPS_TOL = 1e-5  # outputs and first-order gradients (vectors README)
SECOND_ORDER_TOL = 1e-4  # second-order bias_act gradients
FILTER_TOL = 1e-7  # setup_filter outputs
CLAMP_FRACTION = 1e-3  # share of elements that may flip on a clamp boundary


def _cases(vectors):
    return sorted(key[: -len(".args")] for key in vectors if key.endswith(".args"))


def _tensor(vectors, key, requires_grad=False):
    return torch.from_numpy(vectors[key].copy()).requires_grad_(requires_grad)


SETUP_FILTER = load_vectors("ops_setup_filter.npz")
UPFIRDN2D = load_vectors("ops_upfirdn2d.npz")
BIAS_ACT = load_vectors("ops_bias_act.npz")
CONV2D_RESAMPLE = load_vectors("ops_conv2d_resample.npz")
FMA = load_vectors("ops_fma.npz")


# ----------------------------------------------------------------------------
# setup_filter


@pytest.mark.parametrize("case", _cases(SETUP_FILTER))
def test_setup_filter_vectors(case):
    out = upfirdn2d.setup_filter(**json_value(SETUP_FILTER[f"{case}.args"]))
    assert out.dtype == torch.float32
    assert_close(out, SETUP_FILTER[f"{case}.out"], FILTER_TOL, name=case)


def test_setup_filter_does_not_modify_its_input():
    f = torch.tensor([1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    upfirdn2d.setup_filter(f, flip_filter=True, gain=4)
    assert f.tolist() == [1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_setup_filter_spec_examples():
    assert upfirdn2d.setup_filter([1, 2, 3], normalize=False, flip_filter=True)[0].tolist() == [9, 6, 3]
    assert upfirdn2d.setup_filter([[1, 2], [3, 4]], normalize=False, gain=4).tolist() == [[4, 8], [12, 16]]
    assert upfirdn2d.setup_filter(None).tolist() == [[1.0]]
    with pytest.raises(AssertionError):
        upfirdn2d.setup_filter([[1, 2], [3, 4]], separable=True)


# ----------------------------------------------------------------------------
# upfirdn2d, filter2d, upsample2d, downsample2d


@pytest.mark.parametrize("case", _cases(UPFIRDN2D))
def test_upfirdn2d_vectors(case):
    args = json_value(UPFIRDN2D[f"{case}.args"])
    x = _tensor(UPFIRDN2D, f"{case}.x", requires_grad=True)
    f = _tensor(UPFIRDN2D, f"{case}.f") if f"{case}.f" in UPFIRDN2D else None
    if args["filter"] is not None:
        assert_close(upfirdn2d.setup_filter(**args["filter"]), UPFIRDN2D[f"{case}.f"], FILTER_TOL, name=f"{case}.f")
    y = getattr(upfirdn2d, args["fn"])(x, f, impl=args["impl"], **args["kwargs"])
    assert y.dtype == x.dtype
    assert_close(y, UPFIRDN2D[f"{case}.y"], OPS_TOL, name=f"{case}.y")
    (dx,) = torch.autograd.grad((y * _tensor(UPFIRDN2D, f"{case}.r")).sum(), x)
    assert_close(dx, UPFIRDN2D[f"{case}.dx"], OPS_TOL, name=f"{case}.dx")


def test_upfirdn2d_spec_examples():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    expected = [
        [0.5625, 0.9375, 1.3125, 1.125],
        [1.125, 1.75, 2.25, 1.875],
        [1.875, 2.75, 3.25, 2.625],
        [1.6875, 2.4375, 2.8125, 2.25],
    ]
    assert_close(upfirdn2d.upsample2d(img, f)[0, 0], expected, 1e-7, name="upsample2d")
    ramp = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert_close(upfirdn2d.downsample2d(ramp, f)[0, 0], [[2.734375, 3.9375], [7.546875, 8.75]], 1e-7)
    filtered = upfirdn2d.filter2d(ramp, f)[0, 0]
    assert_close(filtered[0], [0.3125, 0.75, 1.25, 1.4375], 1e-7, name="filter2d first row")
    assert_close(filtered[-1], [4.109375, 7.546875, 9.3125, 8.75], 1e-7, name="filter2d last row")
    pair = torch.tensor([[1.0, 2.0]])
    assert upfirdn2d.upfirdn2d(ramp, pair, padding=[1, 0, 0, 0])[0, 0, 0].tolist() == [0, 1, 4, 7]
    assert upfirdn2d.upfirdn2d(ramp, pair, padding=[1, 0, 0, 0], flip_filter=True)[0, 0, 0].tolist() == [0, 2, 5, 8]
    assert upfirdn2d.upfirdn2d(ramp, None, padding=[-1, 2, 0, -3]).tolist() == [[[[1, 2, 3, 0, 0]]]]


def test_upfirdn2d_adjoint_identity():
    """The gradient of upfirdn2d is upfirdn2d with swapped factors, flipped filter and the adjoint padding."""
    gen = torch.Generator().manual_seed(1)
    f = upfirdn2d.setup_filter([[1, 2, 0], [0, 1, 3], [1, 1, 1]])
    x = torch.randn([1, 2, 7, 9], generator=gen, dtype=torch.float64, requires_grad=True)
    up, down, (px0, px1, py0, py1), gain = [3, 2], [2, 1], (2, -1, 1, 3), 1.5
    y = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=[px0, px1, py0, py1], gain=gain)
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, x, dy)
    (ih, iw), (oh, ow), fh, fw = x.shape[2:], y.shape[2:], 3, 3
    padding = [fw - px0 - 1, iw * up[0] - ow * down[0] + px0 - up[0] + 1]
    padding += [fh - py0 - 1, ih * up[1] - oh * down[1] + py0 - up[1] + 1]
    adjoint = upfirdn2d.upfirdn2d(dy, f, up=down, down=up, padding=padding, flip_filter=True, gain=gain)
    assert torch.allclose(dx, adjoint, rtol=0, atol=1e-12)


def test_upfirdn2d_rejects_bad_arguments():
    x = torch.zeros([1, 1, 4, 4])
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with pytest.raises(AssertionError):
        upfirdn2d.upfirdn2d(x, f, up=np.int64(2))
    with pytest.raises(AssertionError):
        upfirdn2d.upfirdn2d(x, f, padding=[1, 2, 3])
    with pytest.raises(AssertionError):
        upfirdn2d.upfirdn2d(x, f, impl="triton")
    with pytest.raises(AssertionError):
        upfirdn2d.upfirdn2d(x, f.double())
    with pytest.raises(AssertionError):
        upfirdn2d.upfirdn2d(x, f, padding=-1)  # 2x2 left, smaller than the 4x4 filter


def test_upfirdn2d_keeps_half_precision():
    x = torch.randn([1, 2, 6, 6]).half()
    y = upfirdn2d.upsample2d(x, upfirdn2d.setup_filter([1, 3, 3, 1]))
    assert y.dtype == torch.float16 and y.shape == (1, 2, 12, 12)


# ----------------------------------------------------------------------------
# bias_act


def _bias_act_allowed_fraction(args):
    return CLAMP_FRACTION if args["clamp"] is not None else 0.0


@pytest.mark.parametrize("case", _cases(BIAS_ACT))
def test_bias_act_vectors(case):
    args = json_value(BIAS_ACT[f"{case}.args"])
    x = _tensor(BIAS_ACT, f"{case}.x", requires_grad=True)
    b = _tensor(BIAS_ACT, f"{case}.b", requires_grad=True) if args["b"] is not None else None
    r = _tensor(BIAS_ACT, f"{case}.r")
    fraction = _bias_act_allowed_fraction(args)
    kwargs = {name: args[name] for name in ["dim", "act", "alpha", "gain", "clamp", "impl"]}

    y = bias_act.bias_act(x, b, **kwargs)
    assert_close(y, BIAS_ACT[f"{case}.y"], OPS_TOL, name=f"{case}.y", allowed_fraction=fraction)

    inputs = [x] if b is None else [x, b]
    grads = torch.autograd.grad((y * r).sum(), inputs, create_graph=True)
    assert_close(grads[0], BIAS_ACT[f"{case}.dx"], OPS_TOL, name=f"{case}.dx", allowed_fraction=fraction)
    if b is not None:
        assert_close(grads[1], BIAS_ACT[f"{case}.db"], OPS_TOL, name=f"{case}.db", allowed_fraction=fraction)

    penalty = grads[0].square().sum()
    # A constant first derivative (linear activation) leaves no graph: the second derivative is zero.
    second = torch.autograd.grad(penalty, inputs, allow_unused=True) if penalty.requires_grad else [None] * len(inputs)
    second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, inputs)]
    scale = SECOND_ORDER_TOL
    assert_close(second[0], BIAS_ACT[f"{case}.d2x"], scale, name=f"{case}.d2x", allowed_fraction=fraction)
    if b is not None:
        assert_close(second[1], BIAS_ACT[f"{case}.d2b"], scale, name=f"{case}.d2b", allowed_fraction=fraction)


def test_bias_act_spec_examples():
    x = torch.tensor([-1.0, 0.5, 3.0])
    assert_close(bias_act.bias_act(x, act="lrelu"), [-0.28284273, 0.70710677, 4.2426405], 1e-7)
    assert_close(bias_act.bias_act(x, act="lrelu", clamp=2), [-0.28284273, 0.70710677, 2.0], 1e-7)
    m = torch.tensor([[-1.0, 0.5], [3.0, 1.0]])
    b = torch.tensor([1.0, -1.0])
    assert bias_act.bias_act(m, b, dim=1, act="relu", gain=1).tolist() == [[0, 0], [4, 0]]
    assert bias_act.bias_act(m, b, dim=0, act="linear").tolist() == [[0, 1.5], [2, 0]]
    assert bias_act.bias_act(m, act="linear", clamp=0).abs().sum() == 0
    assert bias_act.bias_act(m) is m  # nothing to do: the input itself comes back


def test_bias_act_table():
    table = bias_act.activation_funcs
    assert sorted(table) == sorted(["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"])
    assert table["lrelu"].def_gain == np.sqrt(2) and table["lrelu"].def_alpha == 0.2
    assert table["linear"].def_gain == 1 and table["swish"].ref == "x" and not table["relu"].has_2nd_grad
    assert [table[name].cuda_idx for name in ["linear", "relu", "swish"]] == [1, 2, 9]


def test_bias_act_rejects_bad_arguments():
    x = torch.zeros([2, 3])
    with pytest.raises(AssertionError):
        bias_act.bias_act(x, torch.zeros([2]), dim=1)
    with pytest.raises(AssertionError):
        bias_act.bias_act(x, torch.zeros([3]), dim=-1)
    with pytest.raises(AssertionError):
        bias_act.bias_act(x, clamp=-1)
    with pytest.raises(ValueError, match="unknown activation"):
        bias_act.bias_act(x, act="gelu")


# ----------------------------------------------------------------------------
# conv2d_resample


@pytest.mark.parametrize("case", _cases(CONV2D_RESAMPLE))
def test_conv2d_resample_vectors(case):
    args = json_value(CONV2D_RESAMPLE[f"{case}.args"])
    x = _tensor(CONV2D_RESAMPLE, f"{case}.x", requires_grad=True)
    w = _tensor(CONV2D_RESAMPLE, f"{case}.w", requires_grad=True)
    f = _tensor(CONV2D_RESAMPLE, f"{case}.f") if f"{case}.f" in CONV2D_RESAMPLE else None
    y = conv2d_resample.conv2d_resample(x=x, w=w, f=f, **args["kwargs"])
    assert_close(y, CONV2D_RESAMPLE[f"{case}.y"], OPS_TOL, name=f"{case}.y")
    dx, dw = torch.autograd.grad((y * _tensor(CONV2D_RESAMPLE, f"{case}.r")).sum(), [x, w])
    assert_close(dx, CONV2D_RESAMPLE[f"{case}.dx"], OPS_TOL, name=f"{case}.dx")
    assert_close(dw, CONV2D_RESAMPLE[f"{case}.dw"], OPS_TOL, name=f"{case}.dw")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(up=2, padding=1, flip_weight=False),
        dict(up=2, padding=[2, 0, 1, 1], flip_weight=True),
        dict(down=2, padding=1),
        dict(up=2, down=2, padding=1),
        dict(padding=[1, 0, 2, -1]),
        dict(up=2, padding=0, groups=2, flip_weight=False),
    ],
)
def test_conv2d_resample_matches_definition(kwargs):
    """Every branch equals: upfirdn2d(up, pad, gain up^2) -> conv -> upfirdn2d(down) (docs/compatibility.md, "Ops")."""
    gen = torch.Generator().manual_seed(2)
    groups = kwargs.get("groups", 1)
    x = torch.randn([2, 2 * groups, 5, 6], generator=gen, dtype=torch.float64)
    w = torch.randn([3 * groups, 2, 3, 3], generator=gen, dtype=torch.float64)
    f = upfirdn2d.setup_filter([1, 2, 3, 1])
    up, down = kwargs.get("up", 1), kwargs.get("down", 1)
    y = conv2d_resample.conv2d_resample(x=x, w=w, f=f, **kwargs)

    px0, px1, py0, py1 = upfirdn2d._parse_padding(kwargs["padding"])
    if up > 1:
        px0, px1, py0, py1 = px0 + (4 + up - 1) // 2, px1 + (4 - up) // 2, py0 + (4 + up - 1) // 2, py1 + (4 - up) // 2
    if down > 1:
        px0, px1 = px0 + (4 - down + 1) // 2, px1 + (4 - down) // 2
        py0, py1 = py0 + (4 - down + 1) // 2, py1 + (4 - down) // 2
    t = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up**2)
    kernel = w if kwargs.get("flip_weight", True) else w.flip([2, 3])
    t = torch.nn.functional.conv2d(t, kernel, groups=groups)
    expected = upfirdn2d.upfirdn2d(t, f, down=down) if down > 1 else t
    assert y.shape == expected.shape
    assert torch.allclose(y, expected, rtol=0, atol=1e-11)


def test_conv2d_resample_network_shapes():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn([1, 4, 8, 8])
    w3, w1 = torch.randn([5, 4, 3, 3]), torch.randn([5, 4, 1, 1])
    shape = lambda **kw: tuple(conv2d_resample.conv2d_resample(x=x, f=f, **kw).shape[2:])  # noqa: E731
    assert shape(w=w3, up=2, padding=1, flip_weight=False) == (16, 16)
    assert shape(w=w3, down=2, padding=1) == (4, 4)
    assert shape(w=w3, padding=1) == (8, 8)
    assert shape(w=w1, up=2, flip_weight=False) == (16, 16)
    assert shape(w=w1, down=2) == (4, 4)


# ----------------------------------------------------------------------------
# fma


@pytest.mark.parametrize("case", sorted({key.split(".")[0] for key in FMA}))
def test_fma_vectors(case):
    a, b, c = (_tensor(FMA, f"{case}.{name}", requires_grad=True) for name in "abc")
    out = fma.fma(a, b, c)
    assert_close(out, FMA[f"{case}.out"], OPS_TOL, name=f"{case}.out")
    grads = torch.autograd.grad((out * _tensor(FMA, f"{case}.r")).sum(), [a, b, c])
    for name, grad in zip("abc", grads):
        assert_close(grad, FMA[f"{case}.d{name}"], OPS_TOL, name=f"{case}.d{name}")


# ----------------------------------------------------------------------------
# Implementation selection (docs/compatibility.md, "Ops"): CPU never builds and never warns; a missing or failing
# plugin warns once per op and the reference path runs.


@pytest.fixture(params=[upfirdn2d, bias_act], ids=["upfirdn2d", "bias_act"])
def fresh_op_module(request, monkeypatch):
    module = request.param
    monkeypatch.setattr(module._plugin, "module", None)
    monkeypatch.setattr(module._plugin, "attempted", False)
    return module


def test_cuda_impl_on_cpu_is_silent_and_matches_ref(recwarn):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn([2, 3, 6, 6], generator=gen)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert torch.equal(upfirdn2d.upsample2d(x, f), upfirdn2d.upsample2d(x, f, impl="ref"))
    b = torch.randn([3], generator=gen)
    assert torch.equal(bias_act.bias_act(x, b, act="lrelu"), bias_act.bias_act(x, b, act="lrelu", impl="ref"))
    assert len(recwarn) == 0


def test_missing_sources_warn_once(fresh_op_module, tmp_path, monkeypatch):
    monkeypatch.setattr(fresh_op_module._plugin, "source_dir", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fresh_op_module._plugin.available() is False
        assert fresh_op_module._plugin.available() is False
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "Falling back to slow reference implementation" in message and "not found" in message


def test_build_failure_warns_once_with_details(fresh_op_module, tmp_path, monkeypatch):
    for name in fresh_op_module._plugin.sources + fresh_op_module._plugin.headers:
        (tmp_path / name).write_text("// placeholder\n")
    monkeypatch.setattr(fresh_op_module._plugin, "source_dir", str(tmp_path))

    def failing_get_plugin(**kwargs):
        raise RuntimeError("simulated compiler failure")

    monkeypatch.setattr(custom_ops, "get_plugin", failing_get_plugin)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fresh_op_module._plugin.available() is False
        assert fresh_op_module._plugin.available() is False
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("Failed to build CUDA kernels for") and "simulated compiler failure" in message


def test_plugin_that_fails_its_self_check_is_not_used(tmp_path, monkeypatch):
    """A plugin that builds but disagrees with the reference path is dropped after one warning."""
    for name in ["k.cpp", "k.h"]:
        (tmp_path / name).write_text("// placeholder\n")
    built = object()
    monkeypatch.setattr(custom_ops, "get_plugin", lambda **kwargs: built)
    checked = []

    def disagreeing_check():
        checked.append(disagreeing.module)  # the check runs with the new module installed
        return "max |y - ref| = 3"

    kwargs = dict(op_name="myop", module_name="k_plugin", sources=["k.cpp"], headers=["k.h"], source_dir=str(tmp_path))
    disagreeing = custom_ops.OptionalPlugin(**kwargs, self_check=disagreeing_check)
    agreeing = custom_ops.OptionalPlugin(**kwargs, self_check=lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert disagreeing.available() is False and disagreeing.available() is False
        assert disagreeing.module is None
        assert agreeing.available() is True and agreeing.module is built
    assert checked == [built]
    assert len(caught) == 1
    assert "disagree with the reference implementation" in str(caught[0].message)
    assert "max |y - ref| = 3" in str(caught[0].message)


class _PluginReached(Exception):
    pass


class _RaisingBiasActPlugin:
    def bias_act(self, *args):
        raise _PluginReached


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
def test_bias_act_self_check_runs_under_no_grad(grad_mode):
    """The first CUDA call may come from generate.py's no_grad: the check's reference half must still differentiate
    and hand over to the plugin, instead of failing and dropping a good plugin."""
    with grad_mode():
        with pytest.raises(_PluginReached), bias_act._plugin.installed(_RaisingBiasActPlugin()):
            bias_act._self_check(device="cpu")
    assert bias_act._plugin.module is None, "the self-check must restore the module's plugin"


@cuda_only
def test_cuda_tensors_use_plugin_or_fall_back_once(fresh_op_module):
    """On a CUDA device: the native plugin when it builds, else the reference path after exactly one warning."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn([2, 3, 8, 8], generator=gen)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    b = torch.randn([3], generator=gen)
    if fresh_op_module is upfirdn2d:
        run = lambda t, impl: upfirdn2d.upsample2d(t, f.to(t.device), impl=impl)  # noqa: E731
    else:
        run = lambda t, impl: bias_act.bias_act(t, b.to(t.device), act="lrelu", clamp=1.0, impl=impl)  # noqa: E731
    expected = run(x, "ref")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert_close(run(x.cuda(), "cuda"), expected, OPS_TOL, name=fresh_op_module.__name__)
    assert len(caught) <= 1
    if fresh_op_module._plugin.module is None:
        assert len(caught) == 1 and "Falling back to slow reference implementation" in str(caught[0].message)
