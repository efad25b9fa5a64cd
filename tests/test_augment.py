"""Tests for training/augment.py: reference vectors (outputs, draw schedule, gradients), gradcheck, buffers, presets."""

import copy
import pickle

import numpy as np
import pytest
import torch
from conftest import assert_close, cuda_only, json_value, load_vectors

from torch_utils import persistence
from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
from training import augment

VEC = load_vectors("augment.npz")
CASES = sorted({key.split(".")[0] for key in VEC if key.startswith("a") and key[1:4].isdigit()})
OUT_ATOL = 1e-4  # vectors README: outputs <= 1e-4 abs (inputs in [-1, 1]) ...
OUT_MEAN_ATOL = 1e-5  # ... and mean |diff| <= 1e-5 (bilinear sampling amplifies tiny coordinate differences).

_DRAW_FUNCS = {"torch.rand": "rand", "torch.randn": "randn"}


class _DrawRecorder:
    """Wraps torch.rand / torch.randn to record (op, shape, values) of every draw in call order."""

    def __init__(self, monkeypatch):
        self.log = []
        for op, attr in _DRAW_FUNCS.items():
            monkeypatch.setattr(torch, attr, self._wrap(op, getattr(torch, attr)))

    def _wrap(self, op, fn):
        def recorded(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.log.append((op, list(out.shape), out.detach().cpu().clone()))
            return out

        return recorded


def _run_case(case, monkeypatch=None):
    args = json_value(VEC[f"{case}.args"])
    pipe = augment.AugmentPipe(**args["kwargs"]).train()
    pipe.p.copy_(torch.as_tensor(args["p"]))
    images = torch.from_numpy(VEC[args["input"]]).clone()
    recorder = _DrawRecorder(monkeypatch) if monkeypatch is not None else None
    torch.manual_seed(args["seed"])
    if args["debug_percentile"] is None:
        out = pipe(images)
    else:
        out = pipe(images, debug_percentile=args["debug_percentile"])
    return out, recorder


@pytest.mark.parametrize("case", CASES)
def test_reference_case(case, monkeypatch):
    out, recorder = _run_case(case, monkeypatch)
    ref = VEC[f"{case}.out"]
    assert_close(out, ref, OUT_ATOL, name=f"{case}.out")
    mean_diff = float(np.abs(out.detach().double().numpy() - ref).mean())
    assert mean_diff <= OUT_MEAN_ATOL, f"{case}.out: mean abs diff {mean_diff:g} exceeds {OUT_MEAN_ATOL:g}"

    # Same draws, same shapes, same order: this is what makes seeded runs (and the loss vectors) reproducible.
    expected_log = json_value(VEC[f"{case}.rng_log"])
    got = [(op, shape) for op, shape, _ in recorder.log]
    want = [(entry["op"], entry["shape"]) for entry in expected_log]
    assert got == want, f"{case}: draw schedule {got} != reference {want}"
    for (_, _, values), entry in zip(recorder.log, expected_log):
        assert torch.equal(values, torch.from_numpy(VEC[entry["key"]])), f"{case}: draw {entry['key']} differs"


@pytest.mark.parametrize("case", [c for c in CASES if f"{c}.dx" in VEC])
def test_reference_input_gradient(case):
    args = json_value(VEC[f"{case}.args"])
    pipe = augment.AugmentPipe(**args["kwargs"]).train()
    pipe.p.copy_(torch.as_tensor(args["p"]))
    images = torch.from_numpy(VEC[args["input"]]).clone().requires_grad_(True)
    torch.manual_seed(args["seed"])
    out = pipe(images, debug_percentile=args["debug_percentile"])
    (dx,) = torch.autograd.grad((out * torch.from_numpy(VEC[f"{case}.r"])).sum(), [images])
    assert_close(dx, VEC[f"{case}.dx"], OUT_ATOL, name=f"{case}.dx")


def test_buffers_match_reference():
    pipe = augment.AugmentPipe()
    state = pipe.state_dict()
    assert list(state.keys()) == ["p", "Hz_geom", "Hz_fbank"]
    assert list(pipe.parameters()) == []
    for name in state:
        ref = torch.from_numpy(np.asarray(VEC[f"buffers.{name}"]))
        assert state[name].dtype == torch.float32 and state[name].shape == ref.shape, name
        assert torch.equal(state[name], ref), f"buffer {name} differs from the reference"


def test_state_dict_round_trip():
    source = augment.AugmentPipe(**augment.AUGPIPE_SPECS["bgc"])
    source.p.fill_(0.25)
    target = augment.AugmentPipe(**augment.AUGPIPE_SPECS["bgc"])
    target.load_state_dict({k: torch.from_numpy(np.asarray(VEC[f"buffers.{k}"])) for k in ["p", "Hz_geom", "Hz_fbank"]})
    target.load_state_dict(source.state_dict())
    assert float(target.p) == 0.25


def test_p_is_buffer_and_zero_p_is_identity():
    images = torch.from_numpy(VEC["input"]).clone()
    pipe = augment.AugmentPipe(**augment.AUGPIPE_SPECS["color"])
    assert "p" in dict(pipe.named_buffers()) and "p" not in dict(pipe.named_parameters())
    assert pipe.p.shape == () and float(pipe.p) == 1.0

    pipe.p.zero_()
    torch.manual_seed(3)
    assert_close(pipe(images), images.numpy(), 1e-6, name="colour preset with p=0")

    # Geometric stages still resample with p=0, reproducing the input only up to the filters' round-trip error.
    pipe = augment.AugmentPipe(**augment.AUGPIPE_SPECS["bgcfnc"])
    pipe.p.zero_()
    torch.manual_seed(3)
    assert_close(pipe(images), images.numpy(), 1e-4, name="bgcfnc with p=0")

    # Nothing enabled: no stage runs, no draws are made.
    state = torch.get_rng_state()
    assert torch.equal(augment.AugmentPipe()(images), images)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("gradfix", [False, True], ids=["native", "gradfix"])
def test_gradcheck_bgc_float64(gradfix, monkeypatch):
    # The training loop enables the custom-gradient paths; check both settings. They act on CUDA tensors only,
    # so let them act on the CPU here to exercise them.
    monkeypatch.setattr(grid_sample_gradfix, "enabled", gradfix)
    monkeypatch.setattr(conv2d_gradfix, "enabled", gradfix)
    monkeypatch.setattr(grid_sample_gradfix, "_custom_op_devices", ("cuda", "cpu"))
    monkeypatch.setattr(conv2d_gradfix, "_custom_op_devices", ("cuda", "cpu"))
    pipe = augment.AugmentPipe(**augment.AUGPIPE_SPECS["bgc"])
    pipe.p.fill_(0.6)
    images = torch.rand([1, 3, 8, 8], dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    images.requires_grad_(True)

    def fn(x):
        torch.manual_seed(11)
        return pipe(x, debug_percentile=0.3)

    assert fn(images).dtype == torch.float64
    assert not torch.allclose(fn(images), images, atol=1e-2), "transform at debug_percentile=0.3 should be non-trivial"
    assert torch.autograd.gradcheck(fn, (images,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(fn, (images,), eps=1e-6, atol=1e-7, fast_mode=True)


def test_second_order_gradient_float32():
    """R1-style double backward: the gradient of the input gradient's norm exists through every stage."""
    pipe = augment.AugmentPipe(**augment.AUGPIPE_SPECS["bgcfnc"])
    pipe.p.fill_(0.6)
    images = torch.from_numpy(VEC["input"][:2]).clone().requires_grad_(True)
    torch.manual_seed(4)
    out = pipe(images)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (dx,) = torch.autograd.grad((out.square() * weights).sum(), [images], create_graph=True)
    (ddx,) = torch.autograd.grad(dx.square().sum(), [images])
    assert torch.isfinite(ddx).all() and ddx.abs().sum() > 0


def test_presets_match_reference():
    # The six single-group presets, in the order the combined presets accumulate them: 'bg' ... 'bgcfnc' are
    # named by the initials of the first two to six groups.
    stages = [
        ("blit", ["xflip", "rotate90", "xint"]),
        ("geom", ["scale", "rotate", "aniso", "xfrac"]),
        ("color", ["brightness", "contrast", "lumaflip", "hue", "saturation"]),
        ("filter", ["imgfilter"]),
        ("noise", ["noise"]),
        ("cutout", ["cutout"]),
    ]
    groups = dict(stages)
    for count in range(2, len(stages) + 1):
        first = stages[:count]
        groups["".join(name[0] for name, _ in first)] = [key for _, keys in first for key in keys]
    assert {"bg", "bgc", "bgcf", "bgcfn", "bgcfnc"} < set(groups)
    assert set(augment.AUGPIPE_SPECS) == set(groups)
    for name, enabled in groups.items():
        spec = augment.AUGPIPE_SPECS[name]
        assert list(spec.items()) == [(key, 1) for key in enabled], name  # canonical key order
    for name, kwargs in json_value(VEC["presets"]).items():
        assert augment.AUGPIPE_SPECS[name] == kwargs, name


def test_constructor_stores_floats_and_validates():
    pipe = augment.AugmentPipe(xflip=1, imgfilter_bands=(1, 0, 1, 1), cutout_size=1)
    assert isinstance(pipe.xflip, float) and pipe.xflip == 1.0
    assert isinstance(pipe.cutout_size, float) and pipe.noise == 0.0
    assert pipe.imgfilter_bands == [1, 0, 1, 1]
    with pytest.raises(ValueError, match="imgfilter_bands"):
        augment.AugmentPipe(imgfilter_bands=[1, 1, 1])


def test_bad_inputs():
    with pytest.raises(AssertionError):
        augment.AugmentPipe(xflip=1)(torch.zeros([3, 8, 8]))
    with pytest.raises(ValueError, match="RGB"):
        augment.AugmentPipe(brightness=1)(torch.zeros([1, 2, 8, 8]))


def test_zero_band_multiplier_keeps_band_gain():
    """A band with multiplier 0 keeps gain 1 under debug_percentile; the draws are still made for it."""
    images = torch.from_numpy(VEC["input"][:1]).clone()
    full = augment.AugmentPipe(imgfilter=1)
    partial = augment.AugmentPipe(imgfilter=1, imgfilter_bands=[0, 0, 0, 0])
    torch.manual_seed(0)
    assert not torch.allclose(full(images, debug_percentile=0.9), images, atol=1e-3)
    torch.manual_seed(0)
    assert_close(partial(images, debug_percentile=0.9), images.numpy(), 1e-5, name="all bands off")


def test_persistent_and_deepcopy():
    pipe = augment.AugmentPipe(**augment.AUGPIPE_SPECS["bgc"])
    pipe.p.fill_(0.4)
    assert persistence.is_persistent(pipe)
    for clone in [copy.deepcopy(pipe), pickle.loads(pickle.dumps(pipe))]:
        assert clone.init_kwargs == augment.AUGPIPE_SPECS["bgc"]
        assert float(clone.p) == pytest.approx(0.4)
        images = torch.from_numpy(VEC["input"][:2]).clone()
        torch.manual_seed(1)
        expected = pipe(images)
        torch.manual_seed(1)
        assert torch.equal(clone(images), expected)


@cuda_only
@pytest.mark.parametrize("case", ["a061", "a062", "a071"])
def test_cuda_matches_reference_with_debug_percentile(case):
    """On a GPU the draws differ, but debug_percentile fixes every parameter (these cases have no pixel noise)."""
    args = json_value(VEC[f"{case}.args"])
    pipe = augment.AugmentPipe(**args["kwargs"]).cuda()
    pipe.p.copy_(torch.as_tensor(args["p"]))
    images = torch.from_numpy(VEC[args["input"]]).cuda()
    out = pipe(images, debug_percentile=args["debug_percentile"])
    assert_close(out.cpu(), VEC[f"{case}.out"], OUT_ATOL, name=f"{case}.out (cuda)")


def test_full_convolution_matches_numpy_up_to_rounding():
    rng = np.random.default_rng(5)
    for lengths in [(1, 7), (7, 1), (13, 7), (4, 4), (43, 7)]:
        x, h = rng.standard_normal(lengths[0]), rng.standard_normal(lengths[1])
        ours = augment._full_convolution(x, h)
        assert ours.shape == (sum(lengths) - 1,)
        np.testing.assert_allclose(ours, np.convolve(x, h), rtol=1e-12, atol=1e-15)
    # One rounding keeps the residue of 0.1 * 10; rounding the product first gives 0.1 * 10 - 1 == 0.
    assert augment._fma(0.1, 10.0, -1.0) == 5.551115123125783e-17


# ----------------------------------------------------------------------------
# RGBA (issue 14) and non-square images (issue 15).


def _smooth_images(batch, channels, height, width, seed=0):
    """Low-frequency images in [-1, 1]: the 2x resampling reproduces them closely."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand([batch, channels, height // 4, width // 4], generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=[height, width], mode="bilinear", align_corners=False)


def _seeded(pipe, images, seed=5, **kwargs):
    torch.manual_seed(seed)
    return pipe(images, **kwargs)


def test_rgba_colour_transforms_leave_alpha_and_match_rgb():
    rgba = _smooth_images(4, 4, 16, 16)
    pipe = augment.AugmentPipe(**augment.AUGPIPE_SPECS["color"])
    out = _seeded(pipe, rgba)
    assert torch.equal(out[:, 3], rgba[:, 3])  # alpha untouched
    assert torch.equal(out[:, :3], _seeded(pipe, rgba[:, :3].clone()))  # RGB exactly as a 3-channel image
    assert not torch.allclose(out[:, :3], rgba[:, :3])


def test_rgba_geometric_transforms_move_alpha_with_colour():
    rgba = _smooth_images(4, 4, 32, 32)
    bg = augment.AugmentPipe(**augment.AUGPIPE_SPECS["bg"])
    bgc = augment.AugmentPipe(**augment.AUGPIPE_SPECS["bgc"])
    out = _seeded(bgc, rgba)
    # The geometric draws come first, so alpha follows exactly the warp a 1-channel image gets.
    assert torch.allclose(out[:, 3:], _seeded(bg, rgba[:, 3:].clone()), atol=1e-6)
    assert torch.allclose(out[:, :3], _seeded(bgc, rgba[:, :3].clone()), atol=1e-6)


def test_rgba_full_pipe_keeps_shape_and_gradients():
    rgba = _smooth_images(2, 4, 32, 32).requires_grad_(True)
    out = _seeded(augment.AugmentPipe(**augment.AUGPIPE_SPECS["bgcfnc"]), rgba)
    assert out.shape == rgba.shape
    (grad,) = torch.autograd.grad(out.square().sum(), [rgba])
    assert grad.shape == rgba.shape and torch.isfinite(grad).all()


@pytest.mark.parametrize("height, width", [(32, 64), (64, 32)])
def test_non_square_batch_keeps_shape_and_zero_p_is_identity(height, width):
    images = _smooth_images(3, 3, height, width)
    pipe = augment.AugmentPipe(**augment.AUGPIPE_SPECS["bgcfnc"])
    assert _seeded(pipe, images).shape == images.shape
    pipe.p.zero_()
    assert_close(_seeded(pipe, images), images.numpy(), 1e-3, name=f"bgcfnc {width}x{height} with p=0")


@pytest.mark.parametrize("height, width", [(32, 64), (64, 32)])
def test_non_square_geometry_uses_each_side(height, width):
    """Width and height are not mixed up: the isotropic zoom commutes with transposition, and a forced x-flip is a
    mirror along the width."""
    images = _smooth_images(3, 3, height, width)
    zoom = augment.AugmentPipe(scale=1)
    direct = _seeded(zoom, images)
    transposed = _seeded(zoom, images.transpose(2, 3).contiguous())
    assert torch.allclose(direct.transpose(2, 3), transposed, atol=1e-5)
    flipped = _seeded(augment.AugmentPipe(xflip=1), images, debug_percentile=0.75)  # floor(0.75 * 2) = 1: flip
    # The 2x resampling filter is not symmetric, so a flip is exact only up to ~0.05; a wrong axis is off by ~0.5.
    assert (flipped - images.flip(3)).abs().mean() < 0.02 < 0.2 < (flipped - images.flip(2)).abs().mean()
    shifted = _seeded(augment.AugmentPipe(xint=1, xint_max=0.25), images, debug_percentile=1.0)
    # (2d - 1) * 0.25 of each side: a whole-pixel shift of width/4 and height/4; the interior moves exactly so.
    dx, dy = width // 4, height // 4
    inner = shifted[:, :, dy + 4 : -4, dx + 4 : -4]
    assert (inner - images[:, :, 4 : height - dy - 4, 4 : width - dx - 4]).abs().mean() < 0.02
