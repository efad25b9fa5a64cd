"""The CPU fast path (torch_utils/ops/fast_path.py): the switch, and agreement with the reference path.

The fast path must give the reference path's results within 1e-5 relative (forward values and gradients, first and
second order), and with the switch off (the default) every op must be the reference path bit for bit.
"""

import copy

import pytest
import torch

from torch_utils.ops import bias_act, conv2d_resample, fast_path, upfirdn2d
from training import networks

TOLERANCE = 1e-5


def relative_error(actual, expected):
    """max |actual - expected| / max |expected| (the plain maximum difference when `expected` is all zeros)."""
    scale = float(expected.abs().max())
    return float((actual - expected).abs().max()) / (scale if scale > 0 else 1.0)


@pytest.fixture(autouse=True)
def _switch_restored():
    """Every test starts with the fast path off and leaves it as it found it."""
    with fast_path.cpu_fast_path(False):
        yield


def _on_both_paths(fn, *inputs):
    """fn(*inputs) on the reference and the fast path, with gradients of the summed squares w.r.t. the inputs."""
    results = []
    for enabled in [False, True]:
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        with fast_path.cpu_fast_path(enabled):
            y = fn(*leaves)
            grads = torch.autograd.grad(y.square().sum(), leaves)
        results.append((y.detach(), grads))
    return results


# ----------------------------------------------------------------------------
# The switch.


def test_switch_defaults_off_and_context_manager_restores():
    assert not fast_path.cpu_fast_path_enabled()
    with fast_path.cpu_fast_path():
        assert fast_path.cpu_fast_path_enabled()
        with fast_path.cpu_fast_path(False):
            assert not fast_path.cpu_fast_path_enabled()
        assert fast_path.cpu_fast_path_enabled()
    assert not fast_path.cpu_fast_path_enabled()
    fast_path.set_cpu_fast_path(True)
    assert fast_path.cpu_fast_path_enabled()
    fast_path.set_cpu_fast_path(False)
    with pytest.raises(TypeError, match="expected a bool"):
        fast_path.set_cpu_fast_path("yes")


def test_switch_from_environment(monkeypatch):
    for value, expected in [("1", True), ("0", False), ("", False)]:
        monkeypatch.setenv(fast_path.ENV_VAR, value)
        assert fast_path._enabled_from_environment() is expected
    monkeypatch.setenv(fast_path.ENV_VAR, "yes")
    with pytest.raises(ValueError, match="STYLEGAN_CPU_FAST: expected 0 or 1, found 'yes'"):
        fast_path._enabled_from_environment()


def test_fast_path_only_for_float32_cpu_tensors():
    with fast_path.cpu_fast_path():
        assert fast_path.applies(torch.zeros([1]))
        assert not fast_path.applies(torch.zeros([1], dtype=torch.float16))
        assert not fast_path.applies(torch.zeros([1], dtype=torch.float64))
    assert not fast_path.applies(torch.zeros([1]))


def test_switch_changes_the_computation():
    """With the switch on the ops really take another route (a result that differs in the last bits, or in
    layout), so the agreement tests below compare two different computations."""
    torch.manual_seed(0)
    x = torch.randn([1, 8, 9, 9])
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    ref = upfirdn2d.upsample2d(x, f)
    with fast_path.cpu_fast_path():
        fast = upfirdn2d.upsample2d(x, f)
    assert fast.shape == ref.shape
    assert not torch.equal(fast, ref)
    assert relative_error(fast, ref) < TOLERANCE


# ----------------------------------------------------------------------------
# The ops.

UPFIRDN_CASES = [
    dict(up=2, padding=[2, 1]),
    dict(up=2, padding=[1, 2, 0, 3]),
    dict(up=[2, 1], padding=[2, 1, 0, 0], gain=3),
    dict(down=2, padding=1),
    dict(down=[1, 2], padding=[1, 2, 0, 1], flip_filter=True),
    dict(padding=[1, 2, -1, 1]),
    dict(padding=1, gain=4),
    dict(up=2, down=2, padding=1),
]


@pytest.mark.parametrize("case", UPFIRDN_CASES, ids=str)
@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1], None])
def test_upfirdn2d_matches_reference(case, taps):
    torch.manual_seed(1)
    f = upfirdn2d.setup_filter(taps) if taps is not None else None
    x = torch.randn([2, 3, 7, 8])
    (ref, ref_grads), (fast, fast_grads) = _on_both_paths(lambda x: upfirdn2d.upfirdn2d(x, f, **case), x)
    assert fast.shape == ref.shape
    assert relative_error(fast, ref) < TOLERANCE
    assert relative_error(fast_grads[0], ref_grads[0]) < TOLERANCE


def test_upfirdn2d_separable_filter_matches_reference():
    torch.manual_seed(2)
    f = upfirdn2d.setup_filter([1, 2, 4, 6, 6, 4, 2, 1])  # 8 taps: separable (1-D)
    x = torch.randn([1, 2, 6, 6])
    (ref, _), (fast, _) = _on_both_paths(lambda x: upfirdn2d.upsample2d(x, f), x)
    assert f.ndim == 1 and relative_error(fast, ref) < TOLERANCE


@pytest.mark.parametrize("act", sorted(bias_act.activation_funcs))
@pytest.mark.parametrize("clamp", [None, 0.5])
def test_bias_act_in_place_is_bitwise_and_leaves_input(act, clamp):
    torch.manual_seed(3)
    x = torch.randn([2, 4, 3, 3])
    b = torch.randn([4])
    x_before = x.clone()
    ref = bias_act.bias_act(x, b, act=act, clamp=clamp, gain=1.5)
    with fast_path.cpu_fast_path(), torch.no_grad():
        fast = bias_act.bias_act(x, b, act=act, clamp=clamp, gain=1.5)
        fast_nobias = bias_act.bias_act(x, None, act=act, clamp=clamp)
    assert torch.equal(fast, ref)
    assert torch.equal(fast_nobias, bias_act.bias_act(x, None, act=act, clamp=clamp))
    assert torch.equal(x, x_before)


def test_bias_act_with_gradients_takes_reference_ops():
    torch.manual_seed(4)
    x = torch.randn([2, 4, 3, 3])
    b = torch.randn([4])
    (ref, ref_grads), (fast, fast_grads) = _on_both_paths(lambda x, b: bias_act.bias_act(x, b, act="lrelu"), x, b)
    assert torch.equal(fast, ref)
    assert all(torch.equal(g, r) for g, r in zip(fast_grads, ref_grads, strict=True))


@pytest.mark.parametrize(
    "case",
    [dict(padding=1), dict(up=2, padding=1, flip_weight=False), dict(down=2, padding=1), dict(up=2), dict(down=2)],
    ids=str,
)
@pytest.mark.parametrize("size", [8, 32])
def test_conv2d_resample_matches_reference(case, size):
    torch.manual_seed(5)
    kernel = 1 if "padding" not in case else 3
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn([2, 4, size, size])
    w = torch.randn([5, 4, kernel, kernel])
    (ref, ref_grads), (fast, fast_grads) = _on_both_paths(
        lambda x, w: conv2d_resample.conv2d_resample(x, w, f=f, **case), x, w
    )
    assert fast.shape == ref.shape
    for actual, expected in [(fast, ref), *zip(fast_grads, ref_grads, strict=True)]:
        assert relative_error(actual, expected) < TOLERANCE


# ----------------------------------------------------------------------------
# Networks.


def _tiny_networks(resolution=32):
    torch.manual_seed(6)
    common = dict(channel_base=256, channel_max=16, conv_clamp=256)
    G = networks.Generator(8, 0, 8, resolution, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=common)
    D = networks.Discriminator(0, resolution, 3, **common)
    return G, D


@pytest.mark.parametrize("batch", [1, 3])
def test_generator_inference_matches_reference(batch):
    G, _ = _tiny_networks()
    G.eval()
    z = torch.randn([batch, G.z_dim])
    with torch.no_grad():
        ref = G(z, None, noise_mode="const")
        with fast_path.cpu_fast_path():
            fast = G(z, None, noise_mode="const")
    assert fast.shape == ref.shape and fast.is_contiguous()
    assert relative_error(fast, ref) < TOLERANCE


def test_training_gradients_match_reference():
    """G and D gradients of a non-saturating loss plus R1 (second order through D) on both paths."""
    G, D = _tiny_networks()
    z = torch.randn([4, G.z_dim])
    reals = torch.randn([4, 3, 32, 32])
    results = []
    for enabled in [False, True]:
        G_i, D_i = copy.deepcopy(G), copy.deepcopy(D)
        with fast_path.cpu_fast_path(enabled):
            torch.manual_seed(7)  # the same noise draws on both paths
            fakes = G_i(z, None)
            loss = torch.nn.functional.softplus(-D_i(fakes, None)).mean()
            real = reals.detach().requires_grad_(True)
            (r1_grad,) = torch.autograd.grad(D_i(real, None).sum(), [real], create_graph=True)
            loss = loss + r1_grad.square().sum()
            loss.backward()
        results.append([p.grad for p in [*G_i.parameters(), *D_i.parameters()]])
    for ref, fast in zip(*results, strict=True):
        assert (ref is None) == (fast is None)
        if ref is not None and ref.abs().max() > 0:
            assert relative_error(fast, ref) < TOLERANCE


def test_default_training_path_is_bitwise_reference():
    """With the switch off (the default) a training step's gradients are those of the reference ops, bit for bit:
    the same computation with every op forced to impl='ref'."""
    G, D = _tiny_networks(resolution=16)
    z = torch.randn([2, G.z_dim])
    grads = []
    for force_ref in [False, True]:
        G_i, D_i = copy.deepcopy(G), copy.deepcopy(D)
        torch.manual_seed(8)
        with _reference_impl_forced(force_ref):
            loss = torch.nn.functional.softplus(-D_i(G_i(z, None), None)).mean()
            loss.backward()
        grads.append([p.grad for p in [*G_i.parameters(), *D_i.parameters()]])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True) if a is not None)


class _reference_impl_forced:
    """Patch upfirdn2d and bias_act so that every call uses impl='ref' (when `enabled`)."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.saved = []

    def __enter__(self):
        if self.enabled:
            for module, name in [(upfirdn2d, "upfirdn2d"), (bias_act, "bias_act")]:
                original = getattr(module, name)
                self.saved.append((module, name, original))
                setattr(module, name, lambda *a, _f=original, **k: _f(*a, **{**k, "impl": "ref"}))
        return self

    def __exit__(self, *exc):
        for module, name, original in self.saved:
            setattr(module, name, original)


def test_off_by_default_in_a_new_process():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != fast_path.ENV_VAR}
    code = "from torch_utils.ops import fast_path; print(fast_path.cpu_fast_path_enabled())"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    env[fast_path.ENV_VAR] = "1"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


# ----------------------------------------------------------------------------
# train.py --cpu-fast.


def test_cpu_fast_option_key_only_when_given(tmp_path):
    import numpy as np
    import PIL.Image

    from training import config, training_loop

    PIL.Image.fromarray(np.zeros([16, 16, 3], dtype=np.uint8)).save(tmp_path / "a.png")
    _, plain = config.setup_training_loop_kwargs(data=str(tmp_path), metrics=[])
    _, off = config.setup_training_loop_kwargs(data=str(tmp_path), metrics=[], cpu_fast=False)
    _, on = config.setup_training_loop_kwargs(data=str(tmp_path), metrics=[], cpu_fast=True)
    assert "cpu_fast_path" not in plain and "cpu_fast_path" not in off
    assert list(on) == [*plain, "cpu_fast_path"] and on.cpu_fast_path is True
    assert training_loop.DEFAULTS.cpu_fast_path is False


def test_training_loop_turns_the_switch_on_only_when_asked():
    from training import training_loop

    training_loop._configure_torch(training_loop.make_options(device="cpu"))
    assert not fast_path.cpu_fast_path_enabled()
    training_loop._configure_torch(training_loop.make_options(device="cpu", cpu_fast_path=True))
    assert fast_path.cpu_fast_path_enabled()
