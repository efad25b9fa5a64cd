"""Native CUDA kernels of upfirdn2d and bias_act (torch_utils/ops/*.cpp/.cu) against the reference paths.

Everything here needs a CUDA device and a working CUDA toolchain (the plugins are built on first use); without a
GPU the whole module is skipped. On a GPU machine a failing plugin build is an error here, not a fallback.
Checks: randomized shapes / dtypes / memory formats against the float64 reference, first- and second-order
gradients, the stored reference vectors run with impl='cuda', a build from scratch in a fresh
TORCH_EXTENSIONS_DIR, and four processes building the same plugin at once.
"""

import os
import random
import textwrap
import zlib

import pytest
import torch
from conftest import REPO_ROOT, assert_close, json_value, load_vectors
from plugin_helpers import check_single_build, lines_starting_with, run_python_processes

from torch_utils.ops import bias_act, upfirdn2d

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

OPS_TOL = 1e-5  # float32 outputs and first-order gradients (vectors README)
SECOND_ORDER_TOL = 1e-4  # float32 second-order gradients
CLAMP_FRACTION = 1e-3  # share of elements that may flip on a clamp boundary
# Relative tolerance per dtype against a float64 evaluation (scaled by max(1, max|ref|), see assert_close).
DTYPE_TOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 4e-3}
DTYPES = [torch.float16, torch.float32, torch.float64]
LAYOUTS = ["contiguous", "channels_last", "strided"]
BUILD_TIMEOUT_S = 900


@pytest.fixture(scope="module", autouse=True)
def _plugins_built():
    """Build both plugins once; on a GPU machine a build failure must fail the tests instead of falling back."""
    upfirdn2d._plugin.reset()
    bias_act._plugin.reset()
    assert upfirdn2d._plugin.available(), "upfirdn2d_plugin failed to build (see the warning for the compiler output)"
    assert bias_act._plugin.available(), "bias_act_plugin failed to build (see the warning for the compiler output)"


def _seed(*values):
    """A per-case seed that does not depend on PYTHONHASHSEED."""
    return zlib.crc32(repr(values).encode())


def _layout(x, layout, gen):
    """`x` [N, C, H, W] as a contiguous, channels-last or non-dense strided tensor with the same values."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        n, c, h, w = x.shape
        big = torch.randn([n, c, h * 2, w + 3], generator=gen, dtype=x.dtype, device="cpu").to(x.device)
        view = big[:, :, ::2, 1 : w + 1]
        view.copy_(x)
        return view
    return x.contiguous()


# ----------------------------------------------------------------------------
# upfirdn2d


def _random_upfirdn2d_configs(count, seed):
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        shape = [rng.randint(1, 3), rng.randint(1, 5), rng.randint(1, 17), rng.randint(1, 17)]
        up = [rng.randint(1, 4), rng.randint(1, 4)]
        down = [rng.randint(1, 3), rng.randint(1, 3)]
        separable = rng.random() < 0.3
        taps = rng.randint(1, 8)
        fshape = [taps] if separable else [rng.randint(1, 6), rng.randint(1, 6)]
        fw, fh = fshape[-1], fshape[0]
        padding = [rng.randint(-3, 6) for _ in range(4)]
        if shape[2] * up[1] + padding[2] + padding[3] < fh or shape[3] * up[0] + padding[0] + padding[1] < fw:
            continue
        dtype = DTYPES[len(configs) % len(DTYPES)]
        layout = LAYOUTS[(len(configs) // len(DTYPES)) % len(LAYOUTS)]
        kwargs = dict(up=up, down=down, padding=padding, flip_filter=rng.random() < 0.5, gain=rng.choice([1, 0.5, 3]))
        configs.append((shape, fshape, dtype, layout, kwargs))
    return configs


@pytest.mark.parametrize("shape, fshape, dtype, layout, kwargs", _random_upfirdn2d_configs(60, seed=0), ids=str)
def test_upfirdn2d_matches_reference(shape, fshape, dtype, layout, kwargs):
    gen = torch.Generator().manual_seed(_seed(shape, fshape, kwargs))
    f = torch.randn(fshape, generator=gen).cuda()
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64).cuda()
    x = _layout(x64.to(dtype), layout, gen)

    y = upfirdn2d.upfirdn2d(x, f, impl="cuda", **kwargs)
    # The float64 reference gets the gain afterwards: the ref path would round the scaled taps to float32 first.
    unit_gain = dict(kwargs, gain=1)
    expected = upfirdn2d.upfirdn2d(x.double(), f, impl="ref", **unit_gain) * kwargs["gain"]

    assert y.dtype == dtype and y.shape == expected.shape
    if layout == "channels_last" and not x.is_contiguous():
        assert y.is_contiguous(memory_format=torch.channels_last), "channels-last input must give channels-last output"
    taps = f.numel() if f.ndim == 2 else 2 * f.numel()
    assert_close(y, expected.cpu(), DTYPE_TOL[dtype] * max(taps, 4), name="upfirdn2d")


@pytest.mark.parametrize("separable", [False, True], ids=["2d", "separable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upfirdn2d_gradients(separable, dtype):
    gen = torch.Generator().manual_seed(3)
    f = upfirdn2d.setup_filter([1, 3, 3, 1] * (2 if separable else 1), separable=separable).cuda()
    kwargs = dict(up=[2, 1], down=[1, 2], padding=[3, 2, 1, 4], gain=2.5)
    x = torch.randn([2, 3, 9, 7], generator=gen, dtype=dtype).cuda().requires_grad_(True)
    r = torch.randn(upfirdn2d.upfirdn2d(x, f, impl="ref", **kwargs).shape, generator=gen, dtype=dtype).cuda()
    q = torch.randn(x.shape, generator=gen, dtype=dtype).cuda()
    # The ref path rounds the gain-scaled taps to float32, so float64 agrees only to float32 precision here.
    tol = max(DTYPE_TOL[dtype], 1e-7) * 64

    results = {}
    for impl in ["ref", "cuda"]:
        rr = r.clone().requires_grad_(True)
        y = upfirdn2d.upfirdn2d(x, f, impl=impl, **kwargs)
        (dx,) = torch.autograd.grad((y * rr).sum(), x, create_graph=True)
        # upfirdn2d is linear: the second-order term is d/dr of <dx, q>, i.e. upfirdn2d(q).
        (dr,) = torch.autograd.grad((dx * q).sum(), rr)
        results[impl] = (y, dx, dr)
    for name, got, expected in zip(["y", "dx", "d2"], results["cuda"], results["ref"]):
        assert_close(got, expected.detach(), tol, name=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", ["filter2d", "upsample2d", "downsample2d", "upsample2d_separable"])
def test_network_resampling_ops(op, layout, dtype):
    """The [1,3,3,1] filter calls the networks make (the kernel has compile-time variants for them)."""
    gen = torch.Generator().manual_seed(_seed(op, layout, str(dtype)))
    separable = op.endswith("_separable")
    f = upfirdn2d.setup_filter([1, 3, 3, 1], separable=separable).cuda()
    x = _layout(torch.randn([3, 5, 16, 12], generator=gen, dtype=torch.float64).to(dtype).cuda(), layout, gen)
    fn = getattr(upfirdn2d, op.removesuffix("_separable"))
    y = fn(x, f, impl="cuda")
    expected = fn(x.double(), f, impl="ref")
    assert y.dtype == dtype and y.shape == expected.shape
    assert_close(y, expected.cpu(), DTYPE_TOL[dtype] * 16, name=op)


@pytest.mark.slow
def test_64bit_indexing():
    """Tensors beyond the 32-bit fast path (> 1.6e9 elements) give the same values as small slices of them."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn([1, 1700, 1024, 1024], generator=gen, device="cuda", dtype=torch.float16)
    b = torch.randn([1700], generator=gen, device="cuda", dtype=torch.float16)
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).cuda()
    for channels in [slice(0, 3), slice(1697, 1700)]:
        part = x[:, channels]
        y = bias_act.bias_act(x, b, act="lrelu", impl="cuda")[:, channels]
        assert torch.equal(y, bias_act.bias_act(part, b[channels], act="lrelu", impl="cuda"))
        del y
        y = upfirdn2d.filter2d(x, f, impl="cuda")[:, channels]
        assert torch.equal(y, upfirdn2d.filter2d(part, f, impl="cuda"))
        del y


UPFIRDN2D = load_vectors("ops_upfirdn2d.npz")


@pytest.mark.parametrize("case", sorted(k[: -len(".args")] for k in UPFIRDN2D if k.endswith(".args")))
def test_upfirdn2d_vectors_on_cuda(case):
    args = json_value(UPFIRDN2D[f"{case}.args"])
    x = torch.from_numpy(UPFIRDN2D[f"{case}.x"].copy()).cuda().requires_grad_(True)
    f = torch.from_numpy(UPFIRDN2D[f"{case}.f"].copy()).cuda() if f"{case}.f" in UPFIRDN2D else None
    y = getattr(upfirdn2d, args["fn"])(x, f, impl="cuda", **args["kwargs"])
    assert_close(y, UPFIRDN2D[f"{case}.y"], OPS_TOL, name=f"{case}.y")
    r = torch.from_numpy(UPFIRDN2D[f"{case}.r"].copy()).cuda()
    (dx,) = torch.autograd.grad((y * r).sum(), x)
    assert_close(dx, UPFIRDN2D[f"{case}.dx"], OPS_TOL, name=f"{case}.dx")


def test_upfirdn2d_plugin_rejects_bad_arguments():
    x = torch.zeros([1, 1, 4, 4], device="cuda")
    f = torch.ones([3, 3], device="cuda")
    with pytest.raises(RuntimeError, match="smaller than the filter"):
        upfirdn2d._plugin.module.upfirdn2d(x, f, 1, 1, 1, 1, -1, 0, 0, 0, False, 1.0)
    with pytest.raises(RuntimeError, match="float32"):
        upfirdn2d._plugin.module.upfirdn2d(x, f.double(), 1, 1, 1, 1, 0, 0, 0, 0, False, 1.0)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        upfirdn2d._plugin.module.upfirdn2d(x.cpu(), f, 1, 1, 1, 1, 0, 0, 0, 0, False, 1.0)


def test_upfirdn2d_empty_batch():
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).cuda()
    y = upfirdn2d.upsample2d(torch.zeros([0, 3, 4, 4], device="cuda"), f)
    assert y.shape == (0, 3, 8, 8)


# ----------------------------------------------------------------------------
# bias_act

ACTIVATIONS = list(bias_act.activation_funcs)


def _random_bias_act_configs(seed):
    rng = random.Random(seed)
    configs = []
    for i, act in enumerate(ACTIVATIONS * 4):
        shape = rng.choice([[4, 7], [2, 6, 5, 3], [3, 4, 5], [2, 5, 1, 1]])
        configs.append(
            dict(
                act=act,
                shape=shape,
                dim=rng.randrange(len(shape)),
                with_bias=rng.random() < 0.75,
                alpha=rng.choice([None, 0.1]),
                gain=rng.choice([None, 0.7, 2.0]),
                clamp=rng.choice([None, None, 1.5]),
                dtype=DTYPES[i % len(DTYPES)],
                channels_last=len(shape) == 4 and rng.random() < 0.5,
            )
        )
    return configs


def _bias_act_both(config, gen):
    """(x64, b64) float64 CPU inputs and (x, b) CUDA inputs in the config's dtype and layout."""
    x64 = torch.randn(config["shape"], generator=gen, dtype=torch.float64) * 3
    b64 = torch.randn([config["shape"][config["dim"]]], generator=gen, dtype=torch.float64)
    x = x64.to(config["dtype"]).cuda()
    if config["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    b = b64.to(config["dtype"]).cuda() if config["with_bias"] else None
    # The reference sees exactly the rounded inputs.
    return x.double().cpu(), (b.double().cpu() if b is not None else None), x, b


@pytest.mark.parametrize("config", _random_bias_act_configs(seed=1), ids=lambda c: "-".join(map(str, c.values())))
def test_bias_act_matches_reference(config):
    gen = torch.Generator().manual_seed(_seed(config))
    x64, b64, x, b = _bias_act_both(config, gen)
    kwargs = {k: config[k] for k in ["dim", "act", "alpha", "gain", "clamp"]}
    fraction = CLAMP_FRACTION if config["clamp"] is not None else 0.0
    tol = DTYPE_TOL[config["dtype"]]

    y = bias_act.bias_act(x, b, impl="cuda", **kwargs)
    expected = bias_act.bias_act(x64, b64, impl="ref", **kwargs)
    assert y.dtype == x.dtype and y.shape == x.shape
    if config["channels_last"]:
        assert y.stride() == x.stride(), "the output must keep the input's memory layout"
    # float16 outputs round once, but the gain amplifies that rounding.
    assert_close(y, expected, tol * 4, name="y", allowed_fraction=fraction)


def _grads(x, b, impl, r, q, kwargs):
    """y, first-order (dx, db) of sum(y*r) and second-order (d2x, d2b) of sum(dx*q); None where independent."""
    x = x.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True) if b is not None else None
    inputs = [x] if b is None else [x, b]
    y = bias_act.bias_act(x, b, impl=impl, **kwargs)
    first = torch.autograd.grad((y * r).sum(), inputs, create_graph=True)
    penalty = (first[0] * q).sum()
    second = [None] * len(inputs)
    if penalty.requires_grad:
        second = list(torch.autograd.grad(penalty, inputs, allow_unused=True))
    second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, inputs)]
    return [y.detach(), *[g.detach() for g in first], *second]


@pytest.mark.parametrize("config", _random_bias_act_configs(seed=2), ids=lambda c: "-".join(map(str, c.values())))
def test_bias_act_gradients(config):
    if config["dtype"] == torch.float16:
        config = dict(config, dtype=torch.float32)  # fp16 gradients are too coarse for a meaningful comparison
    gen = torch.Generator().manual_seed(_seed(config))
    x64, b64, x, b = _bias_act_both(config, gen)
    kwargs = {k: config[k] for k in ["dim", "act", "alpha", "gain", "clamp"]}
    fraction = CLAMP_FRACTION if config["clamp"] is not None else 0.0
    r64 = torch.randn(config["shape"], generator=gen, dtype=torch.float64)
    q64 = torch.randn(config["shape"], generator=gen, dtype=torch.float64)
    r = r64.to(config["dtype"]).cuda()
    q = q64.to(config["dtype"]).cuda()

    got = _grads(x, b, "cuda", r, q, kwargs)
    expected = _grads(x64, b64, "ref", r.double().cpu(), q.double().cpu(), kwargs)
    names = ["y", "dx", "db", "d2x", "d2b"] if b is not None else ["y", "dx", "d2x"]
    tol = DTYPE_TOL[config["dtype"]]
    for name, g, e in zip(names, got, expected):
        scale = tol * (100 if name.startswith("d2") else 10)
        assert_close(g, e, scale, name=name, allowed_fraction=fraction)


BIAS_ACT = load_vectors("ops_bias_act.npz")


@pytest.mark.parametrize("case", sorted(k[: -len(".args")] for k in BIAS_ACT if k.endswith(".args")))
def test_bias_act_vectors_on_cuda(case):
    args = json_value(BIAS_ACT[f"{case}.args"])
    x = torch.from_numpy(BIAS_ACT[f"{case}.x"].copy()).cuda().requires_grad_(True)
    b = torch.from_numpy(BIAS_ACT[f"{case}.b"].copy()).cuda().requires_grad_(True) if args["b"] is not None else None
    r = torch.from_numpy(BIAS_ACT[f"{case}.r"].copy()).cuda()
    fraction = CLAMP_FRACTION if args["clamp"] is not None else 0.0
    kwargs = {name: args[name] for name in ["dim", "act", "alpha", "gain", "clamp"]}

    y = bias_act.bias_act(x, b, impl="cuda", **kwargs)
    assert_close(y, BIAS_ACT[f"{case}.y"], OPS_TOL, name=f"{case}.y", allowed_fraction=fraction)
    inputs = [x] if b is None else [x, b]
    grads = torch.autograd.grad((y * r).sum(), inputs, create_graph=True)
    assert_close(grads[0], BIAS_ACT[f"{case}.dx"], OPS_TOL, name=f"{case}.dx", allowed_fraction=fraction)
    if b is not None:
        assert_close(grads[1], BIAS_ACT[f"{case}.db"], OPS_TOL, name=f"{case}.db", allowed_fraction=fraction)
    penalty = grads[0].square().sum()
    second = torch.autograd.grad(penalty, inputs, allow_unused=True) if penalty.requires_grad else [None] * len(inputs)
    second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, inputs)]
    for name, got in zip(["d2x", "d2b"], second):
        expected = BIAS_ACT[f"{case}.{name}"]
        assert_close(got, expected, SECOND_ORDER_TOL, name=f"{case}.{name}", allowed_fraction=fraction)


def test_bias_act_plugin_rejects_bad_arguments():
    x = torch.zeros([2, 3], device="cuda")
    null = x.new_empty([0])
    with pytest.raises(RuntimeError, match="b must have shape"):
        bias_act._plugin.module.bias_act(x, torch.zeros([4], device="cuda"), null, null, null, 0, 1, 1, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="act must be"):
        bias_act._plugin.module.bias_act(x, null, null, null, null, 0, 1, 42, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="need yref"):
        bias_act._plugin.module.bias_act(x, null, null, null, null, 1, 1, 4, 0.0, 1.0, -1.0)


def test_bias_act_large_values_and_nan():
    """Saturated exponentials stay finite; NaN propagates through the forward pass like the reference."""
    x = torch.tensor([-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4, float("nan")], device="cuda")
    for act in ACTIVATIONS:
        y = bias_act.bias_act(x, act=act, impl="cuda")
        expected = bias_act.bias_act(x.double().cpu(), act=act, impl="ref")
        assert torch.isnan(y[-1]).item() == torch.isnan(expected[-1]).item(), act
        assert_close(y[:-1], expected[:-1], 1e-6, name=act)


# ----------------------------------------------------------------------------
# Building: from scratch, and four processes at once.

_BUILD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {repo!r})
    from torch_utils import custom_ops
    custom_ops.verbosity = "none"
    from torch_utils.ops import bias_act, upfirdn2d
    assert upfirdn2d._plugin.available() and bias_act._plugin.available(), "plugin build failed"
    import torch
    x = torch.randn([1, 2, 8, 8], device="cuda")
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device="cuda")
    y = bias_act.bias_act(upfirdn2d.upsample2d(x, f), act="lrelu")
    torch.cuda.synchronize()
    print("LOADED", upfirdn2d._plugin.module.__file__, bias_act._plugin.module.__file__)
    """
)


def _run_build_processes(extensions_dir, count):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(extensions_dir))
    outputs = run_python_processes(_BUILD_SCRIPT.format(repo=REPO_ROOT), env, count, BUILD_TIMEOUT_S)
    return [lines_starting_with(out, "LOADED")[0] for out in outputs]


@pytest.mark.slow
def test_build_from_scratch(tmp_path):
    (line,) = _run_build_processes(tmp_path, 1)
    assert str(tmp_path) in line
    for module_name in ["upfirdn2d_plugin", "bias_act_plugin"]:
        check_single_build(tmp_path, module_name)


@pytest.mark.slow
def test_concurrent_processes_build_once(tmp_path):
    lines = _run_build_processes(tmp_path, 4)
    assert len(set(lines)) == 1, f"the processes loaded different libraries: {lines}"
    for module_name in ["upfirdn2d_plugin", "bias_act_plugin"]:
        check_single_build(tmp_path, module_name)
