"""Parity tests for training.loss.StyleGAN2Loss against the reference vectors (tests/data/loss_*.npz).

Every phase file is run once with the recorded random draws replayed in call order (so the comparison is
independent of how the other modules happen to consume the generator), and the run is checked for:
per-parameter gradients, pl_mean, w_avg after the call, the training_stats reports (names, order, values), and
that the draws the implementation requested match the log (operation kind, shape, and with the stored seed, the
values the global generator actually produces).
"""

import contextlib
import functools
import inspect

import numpy as np
import pytest
import torch
from conftest import assert_close, json_value, load_vectors

PHASE_FILES = [
    f"loss_{setup}_{phase}.npz"
    for setup in ("uncond32", "cond16")
    for phase in ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")
]

# Vectors README, "Tolerances": loss gradients per tensor max|diff| / max|ref| <= 1e-3.
GRAD_REL_TOL = 1e-3
# Scalars/vectors computed before the long second-order chains (mapping output average, running path-length mean).
STATE_REL_TOL = 1e-4
# Reports pass through the augmentation pipe and D (and R1 / path-length double backward).
REPORT_REL_TOL = 1e-3

# Distribution family of every intercepted draw operation; a replayed value is only valid for the same family.
_DRAW_KIND = {
    "torch.rand": "uniform",
    "torch.rand_like": "uniform",
    "torch.randn": "normal",
    "torch.randn_like": "normal",
    "Tensor.random_": "integer",
    "torch.randint": "integer",
}
# Generator-consuming operations absent from every log: calling one during a phase breaks the draw contract
# (docs/compatibility.md, "Loss").
_FORBIDDEN_TORCH = ("randint_like", "randperm", "bernoulli", "multinomial", "normal", "poisson")
_FORBIDDEN_TENSOR = ("uniform_", "normal_", "bernoulli_", "exponential_", "geometric_", "cauchy_", "log_normal_")


def _rel_close(actual, expected, rel_tol, name):
    """max|actual - expected| <= rel_tol * max|expected| (the README's per-tensor relative criterion)."""
    actual = actual.detach().double().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual, np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: non-finite values"
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    worst = float(np.abs(actual - expected).max()) if expected.size else 0.0
    assert worst <= rel_tol * scale or worst <= 1e-12, f"{name}: max abs diff {worst:g} > {rel_tol:g} * {scale:g}"


def _size_from(args, kwargs):
    """The `size` of torch.rand/randn-style calls: rand(2, 3), rand([2, 3]), rand(size=(2, 3))."""
    if "size" in kwargs:
        return tuple(kwargs["size"])
    if len(args) == 1 and isinstance(args[0], (list, tuple, torch.Size)):
        return tuple(args[0])
    return tuple(args)


class DrawReplayer:
    """Replays recorded random draws in order by patching torch's random functions.

    `draws` is a list of (log_entry, np.ndarray). Each intercepted call must have the logged distribution family and
    result shape; it returns the recorded array. When `seeded_check` is set, the real generator is also advanced
    with the same call and its output is compared with the recording (`mismatches` collects the differences), which
    checks that the implementation draws exactly what the reference draws from a seeded generator.
    """

    def __init__(self, draws, seeded_check=False):
        self.draws = draws
        self.seeded_check = seeded_check
        self.position = 0
        self.mismatches = []
        self.requested = []

    def _next(self, op, shape, live_fn):
        shape = tuple(int(s) for s in shape)
        self.requested.append((op, list(shape)))
        assert self.position < len(self.draws), f"unexpected extra draw #{self.position}: {op}{list(shape)}"
        entry, value = self.draws[self.position]
        where = f"draw #{self.position} ({entry['key']})"
        assert _DRAW_KIND[op] == _DRAW_KIND[entry["op"]], f"{where}: got {op}, log has {entry['op']}"
        assert list(shape) == list(entry["shape"]), f"{where}: {op} shape {list(shape)}, log has {entry['shape']}"
        if self.seeded_check:
            live = live_fn().detach().cpu().numpy()
            if not np.array_equal(live, value):
                self.mismatches.append(f"{where}: {op}{list(shape)} differs from the seeded reference draw")
        self.position += 1
        return torch.from_numpy(np.array(value, copy=True))

    @contextlib.contextmanager
    def active(self):
        originals = {}
        replayer = self

        def patch(owner, name, replacement):
            originals[(owner, name)] = owner.__dict__.get(name, None)
            setattr(owner, name, replacement)

        real = {name: getattr(torch, name) for name in ("rand", "randn", "rand_like", "randn_like", "randint")}
        real_random_ = torch.Tensor.random_

        def make_sized(name):
            def fn(*args, **kwargs):
                out = replayer._next(f"torch.{name}", _size_from(args, kwargs), lambda: real[name](*args, **kwargs))
                return out.to(dtype=kwargs.get("dtype") or torch.float32, device=kwargs.get("device") or "cpu")

            return fn

        def make_like(name):
            def fn(t, *args, **kwargs):
                out = replayer._next(f"torch.{name}", t.shape, lambda: real[name](t, *args, **kwargs))
                return out.to(dtype=kwargs.get("dtype") or t.dtype, device=kwargs.get("device") or t.device)

            return fn

        def randint(*args, **kwargs):
            size = kwargs.get("size", args[-1])
            out = replayer._next("torch.randint", size, lambda: real["randint"](*args, **kwargs))
            return out.to(dtype=kwargs.get("dtype") or torch.int64, device=kwargs.get("device") or "cpu")

        def random_(self, *args, **kwargs):
            value = replayer._next("Tensor.random_", self.shape, lambda: real_random_(self.clone(), *args, **kwargs))
            with torch.no_grad():
                self.copy_(value)
            return self

        def forbidden(name):
            def fn(*args, **kwargs):
                raise AssertionError(f"draw operation {name} is not in the reference draw log")

            return fn

        try:
            for name in ("rand", "randn"):
                patch(torch, name, make_sized(name))
            for name in ("rand_like", "randn_like"):
                patch(torch, name, make_like(name))
            patch(torch, "randint", randint)
            patch(torch.Tensor, "random_", random_)
            for name in _FORBIDDEN_TORCH:
                patch(torch, name, forbidden(f"torch.{name}"))
            for name in _FORBIDDEN_TENSOR:
                patch(torch.Tensor, name, forbidden(f"Tensor.{name}"))
            yield self
        finally:
            for (owner, name), original in originals.items():
                if original is None:
                    delattr(owner, name)
                else:
                    setattr(owner, name, original)


def _recorded_draws(vec):
    log = json_value(vec["draws.rng_log"])
    return [(entry, vec[entry["key"]]) for entry in log]


def _build_network(kind, name):
    """Construct G or D from the kwargs in net_<kind>_<name>_io.npz and load net_<kind>_<name>_state.npz."""
    from training import networks

    kwargs = json_value(load_vectors(f"net_{kind}_{name}_io.npz")["kwargs"])
    cls = networks.Generator if kind == "G" else networks.Discriminator
    net = cls(**kwargs)
    state = load_vectors(f"net_{kind}_{name}_state.npz")
    net.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()})
    return net.train().requires_grad_(False)


def _report_keys(names):
    """Vector key of each report in call order ('/' -> '_', repeats numbered '#k')."""
    seen = {}
    keys = []
    for name in names:
        base = "report." + name.replace("/", "_")
        count = seen.get(base, 0)
        keys.append(base if count == 0 else f"{base}#{count}")
        seen[base] = count + 1
    return keys


@functools.cache
def _run_phase(file_name):
    """Run the recorded call of one phase file with replayed draws; returns everything the tests compare."""
    from torch_utils import training_stats
    from training import augment, loss

    vec = load_vectors(file_name)
    call = json_value(vec["call"])
    G = _build_network("G", call["G"][len("G_") :])
    D = _build_network("D", call["D"][len("D_") :])
    optimised = G if call["phase"].startswith("G") else D
    optimised.requires_grad_(True)
    pipe = augment.AugmentPipe(**call["augment_kwargs"]).train().requires_grad_(False)
    pipe.p.copy_(torch.as_tensor(call["augment_p"]))

    loss_kwargs = dict(call["loss_kwargs"])
    device = torch.device(loss_kwargs.pop("device"))
    loss_obj = loss.StyleGAN2Loss(
        device=device, G_mapping=G.mapping, G_synthesis=G.synthesis, D=D, augment_pipe=pipe, **loss_kwargs
    )

    reports = []
    real_report = training_stats.report

    def recording_report(name, value):
        reports.append((name, torch.as_tensor(value).detach().clone()))
        return real_report(name, value)

    tensors = {key: torch.from_numpy(vec[key].copy()) for key in ("real_img", "real_c", "gen_z", "gen_c")}
    replayer = DrawReplayer(_recorded_draws(vec), seeded_check=True)
    torch.manual_seed(call["seed"])
    training_stats.report = recording_report
    try:
        with replayer.active():
            loss_obj.accumulate_gradients(phase=call["phase"], sync=call["sync"], gain=call["gain"], **tensors)
    finally:
        training_stats.report = real_report

    grads = {}
    for prefix, net in (("G", G), ("D", D)):
        for name, param in net.named_parameters():
            grads[f"{prefix}.{name}"] = None if param.grad is None else param.grad.detach().clone()
    return dict(
        vec=vec,
        grads=grads,
        pl_mean=loss_obj.pl_mean.detach().clone(),
        w_avg=G.mapping.w_avg.detach().clone(),
        reports=reports,
        replayer=replayer,
    )


@pytest.mark.parametrize("file_name", PHASE_FILES)
def test_parameter_gradients(file_name):
    result = _run_phase(file_name)
    vec = result["vec"]
    expected = {key for key in vec if key.startswith(("G.", "D."))}
    received = {key for key, grad in result["grads"].items() if grad is not None}
    assert received == expected, (
        f"{file_name}: parameters with gradients differ; missing {sorted(expected - received)}, "
        f"unexpected {sorted(received - expected)}"
    )
    for key in sorted(expected):
        _rel_close(result["grads"][key], vec[key], GRAD_REL_TOL, f"{file_name} {key}")


@pytest.mark.parametrize("file_name", PHASE_FILES)
def test_state_after_call(file_name):
    result = _run_phase(file_name)
    vec = result["vec"]
    assert result["pl_mean"].dtype == torch.float32 and result["pl_mean"].shape == ()
    if float(vec["pl_mean"]) == 0:
        assert float(result["pl_mean"]) == 0, f"{file_name}: pl_mean must stay 0 without a path-length pass"
    else:
        _rel_close(result["pl_mean"], vec["pl_mean"], STATE_REL_TOL, f"{file_name} pl_mean")
    _rel_close(result["w_avg"], vec["w_avg_after"], STATE_REL_TOL, f"{file_name} w_avg_after")
    assert_close(result["w_avg"], vec["w_avg_after"], 1e-5, f"{file_name} w_avg_after (abs)")


@pytest.mark.parametrize("file_name", PHASE_FILES)
def test_reports(file_name):
    result = _run_phase(file_name)
    vec = result["vec"]
    expected_keys = [key for key in vec if key.startswith("report.")]
    got_keys = _report_keys([name for name, _ in result["reports"]])
    assert got_keys == expected_keys, f"{file_name}: report order {got_keys} != {expected_keys}"
    for key, (_name, value) in zip(got_keys, result["reports"]):
        if "_signs_" in key:
            np.testing.assert_array_equal(value.numpy(), vec[key], err_msg=f"{file_name} {key}")
        else:
            _rel_close(value, vec[key], REPORT_REL_TOL, f"{file_name} {key}")


@pytest.mark.parametrize("file_name", PHASE_FILES)
def test_draw_sequence_matches_seeded_reference(file_name):
    """All logged draws are consumed, and a generator seeded like the reference yields the same numbers."""
    result = _run_phase(file_name)
    replayer = result["replayer"]
    assert replayer.position == len(replayer.draws), (
        f"{file_name}: only {replayer.position} of {len(replayer.draws)} recorded draws were requested"
    )
    assert not replayer.mismatches, f"{file_name}: " + "; ".join(replayer.mismatches[:5])


# --- Behaviour checks on small stand-in modules (no reference networks needed) ------------------------------------


class _StubMapping(torch.nn.Module):
    """ws[n, i, :] = z[n, :w_dim] + i; counts calls with and without the w_avg update."""

    def __init__(self, num_ws, w_dim):
        super().__init__()
        self.num_ws, self.w_dim = num_ws, w_dim
        self.calls = []

    def forward(self, z, c, skip_w_avg_update=False):
        self.calls.append(skip_w_avg_update)
        offsets = torch.arange(self.num_ws, dtype=z.dtype).reshape(1, -1, 1)
        return z[:, None, : self.w_dim] + offsets


class _StubSynthesis(torch.nn.Module):
    """Image [N, 1, 2, 2] whose pixels are sums of ws; a scale parameter makes it trainable."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones([]))

    def forward(self, ws):
        return (ws.sum(dim=[1, 2]) * self.scale).reshape(-1, 1, 1, 1).expand(-1, 1, 2, 2)


class _StubDiscriminator(torch.nn.Module):
    """Logits [N, 1]: a small multiple of each image's mean pixel (labels ignored), so softplus does not saturate."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones([]))

    def forward(self, img, c):
        return (img.mean(dim=[1, 2, 3]) * self.scale * 0.01).unsqueeze(1)


def _stub_loss(D=None, **kwargs):
    from training import loss

    mapping = _StubMapping(num_ws=4, w_dim=3)
    D = torch.nn.Identity() if D is None else D
    return loss.StyleGAN2Loss(device="cpu", G_mapping=mapping, G_synthesis=_StubSynthesis(), D=D, **kwargs)


def _synthetic_draws(cutoff, u, z2):
    log = [
        {"op": "Tensor.random_", "shape": [], "key": "cutoff"},
        {"op": "torch.rand", "shape": [], "key": "u"},
        {"op": "torch.randn_like", "shape": list(z2.shape), "key": "z2"},
    ]
    values = [np.array(cutoff, np.int64), np.array(u, np.float32), z2]
    return list(zip(log, values))


@pytest.mark.parametrize("u, expect_mixed", [(0.5, True), (0.95, False)])
def test_run_G_style_mixing(u, expect_mixed):
    loss_obj = _stub_loss(style_mixing_prob=0.9)
    z = torch.zeros([2, 3])
    z2 = np.full([2, 3], 100.0, np.float32)
    replayer = DrawReplayer(_synthetic_draws(cutoff=1, u=u, z2=z2))
    with replayer.active():
        img, ws = loss_obj.run_G(z, torch.zeros([2, 0]))
    assert replayer.position == 3, "cutoff, u and the second latent must always be drawn"
    assert loss_obj.G_mapping.calls == [False, True], "second mapping call must skip the w_avg update"
    expected = torch.arange(4, dtype=torch.float32).reshape(1, 4, 1).expand(2, 4, 3).clone()
    if expect_mixed:
        expected[:, 1:] += 100
    torch.testing.assert_close(ws, expected, rtol=0, atol=0)
    assert img.shape == (2, 1, 2, 2)


def test_run_G_without_style_mixing_draws_nothing():
    loss_obj = _stub_loss(style_mixing_prob=0)
    with DrawReplayer([]).active():
        _img, ws = loss_obj.run_G(torch.zeros([2, 3]), torch.zeros([2, 0]))
    assert loss_obj.G_mapping.calls == [False]
    assert ws.shape == (2, 4, 3)


@pytest.mark.parametrize("phase, kwargs", [("Greg", {"pl_weight": 0}), ("Dreg", {"r1_gamma": 0})])
def test_disabled_regularisers_do_nothing(phase, kwargs):
    loss_obj = _stub_loss(**kwargs)
    with DrawReplayer([]).active():  # any draw would fail: nothing may run
        loss_obj.accumulate_gradients(phase, torch.zeros([2, 1, 2, 2]), None, torch.zeros([2, 3]), None, True, 1)
    assert loss_obj.G_synthesis.scale.grad is None
    assert float(loss_obj.pl_mean) == 0


@pytest.mark.parametrize("phase", ["Gmain", "Dmain", "Dreg", "Dboth"])
def test_sync_is_accepted_and_ignored(phase, monkeypatch):
    """Scripts written for the reference pass `sync`; it changes nothing, and no DDP-sync context is entered."""
    from torch_utils import misc

    def no_ddp_sync(*args, **kwargs):
        raise AssertionError("the loss must not enter misc.ddp_sync: nothing is wrapped in DDP")

    monkeypatch.setattr(misc, "ddp_sync", no_ddp_sync)
    gradients = []
    for sync in (True, False):
        loss_obj = _stub_loss(D=_StubDiscriminator())
        module = loss_obj.G_synthesis if phase.startswith("G") else loss_obj.D
        torch.manual_seed(0)
        real_img = torch.randn([2, 1, 2, 2])
        loss_obj.accumulate_gradients(phase, real_img, None, torch.randn([2, 3]), torch.zeros([2, 0]), sync, 1)
        gradients.append(module.scale.grad.clone())
    assert torch.equal(gradients[0], gradients[1]) and float(gradients[0]) != 0


def test_unknown_phase_is_rejected():
    with pytest.raises(ValueError, match="unknown phase 'Gfoo'"):
        _stub_loss().accumulate_gradients("Gfoo", None, None, None, None, True, 1)


def test_constructor_defaults_and_pl_mean_state():
    from training import loss

    params = inspect.signature(loss.StyleGAN2Loss.__init__).parameters
    defaults = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    assert list(params)[1:5] == ["device", "G_mapping", "G_synthesis", "D"]
    assert defaults == dict(
        augment_pipe=None, style_mixing_prob=0.9, r1_gamma=10, pl_batch_shrink=2, pl_decay=0.01, pl_weight=2
    )
    loss_obj = _stub_loss()
    assert isinstance(loss_obj, loss.Loss)
    assert loss_obj.pl_mean.dtype == torch.float32 and loss_obj.pl_mean.shape == () and float(loss_obj.pl_mean) == 0
    with pytest.raises(NotImplementedError):
        loss.Loss().accumulate_gradients("Gmain", None, None, None, None, True, 1)
