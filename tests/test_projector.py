"""projector.py: schedule, noise regulariser, W statistics, the projection loop and the real command line.

A tiny random generator snapshot and a stand-in VGG16 TorchScript file (found through $STYLEGAN_DETECTOR_DIR, the
local-file path of metrics.metric_utils) keep everything offline and fast.
"""

import copy
import os
import pickle
import re
import subprocess
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import projector
from metrics import metric_utils
from torch_utils.launch import default_device
from training import projection

Z_DIM = 16
W_DIM = 16
RESOLUTION = 32
NOISE_STRENGTH = 0.1
NUM_STEPS = 24
STEP_LINE = re.compile(r"^step +(\d+)/(\d+): dist (\d+\.\d\d) *loss (\d+\.\d\d) *$", re.MULTILINE)

# ----------------------------------------------------------------------------------------------------------------------
# Stand-in VGG16 and tiny snapshots.


class StandInVGG16(torch.nn.Module):
    """Same call signature as the published VGG16 file; `return_lpips` gives a size-dependent embedding [N, D].

    The embedding (unit-normalised per-pixel conv features, scaled by 1/sqrt(HW)) makes squared distances behave
    like LPIPS: bounded, and zero only for matching images.
    """

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        # Buffers, not parameters: the projector must not need gradients of the detector itself.
        self.register_buffer("conv_weight", torch.randn([8, 3, 3, 3], generator=gen) / 3)
        self.register_buffer("proj", torch.randn([4096, 48], generator=gen) / 4)

    def forward(
        self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        assert img.dim() == 4 and img.shape[1] == 3, "expected [N, 3, H, W]"
        x = img.to(torch.float32) / 127.5 - 1
        if resize_images:
            x = torch.nn.functional.interpolate(x, size=(16, 16), mode="area")
        if return_lpips:
            assert img.dtype == torch.float32, "LPIPS inputs are float pixel values"
            assert not resize_images, "the projector passes resize_images=False"
            f = torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(x, self.conv_weight, padding=1), 0.2)
            f = f / (f.square().sum(dim=1, keepdim=True) + 1e-10).sqrt()
            return f.flatten(1) / float(f.shape[2] * f.shape[3]) ** 0.5
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return torch.tanh(torch.nn.functional.linear(pooled, self.proj))


def build_generator(c_dim: int = 0, seed: int = 0, img_channels: int = 3):
    from training import networks

    torch.manual_seed(seed)
    G = networks.Generator(
        z_dim=Z_DIM,
        c_dim=c_dim,
        w_dim=W_DIM,
        img_resolution=RESOLUTION,
        img_channels=img_channels,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=128, channel_max=8),
    )
    G = G.eval().requires_grad_(False)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith("noise_strength"):
                param.fill_(NOISE_STRENGTH)  # makes the (constant vs optimised) noise buffers matter
    return G


def write_snapshot(path, G):
    """Training-style snapshot pickle; the projector only uses G_ema."""
    from training import networks

    D = networks.Discriminator(
        c_dim=G.c_dim, img_resolution=RESOLUTION, img_channels=G.img_channels, channel_base=128, channel_max=8
    )
    with open(path, "wb") as f:
        pickle.dump(dict(G=G, D=D, G_ema=G, augment_pipe=None, training_set_kwargs=None), f)


def render(G, w: torch.Tensor, device) -> np.ndarray:
    """The projector's conversion: (x + 1) * 127.5, NHWC, clamp, truncate; constant noise; [num_ws, w_dim] in."""
    with torch.no_grad():
        img = copy.deepcopy(G).to(device).synthesis(w[None].to(device), noise_mode="const")
    return ((img + 1) * 127.5).permute(0, 2, 3, 1).clamp(0, 255).to(torch.uint8)[0].cpu().numpy()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("projector")
    detector_dir = root / "detectors"
    detector_dir.mkdir()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript is the published format.
        torch.jit.script(StandInVGG16()).save(str(detector_dir / "vgg16.pt"))

    G = build_generator()
    pkl = str(root / "uncond.pkl")
    write_snapshot(pkl, G)
    cond_pkl = str(root / "cond.pkl")
    write_snapshot(cond_pkl, build_generator(c_dim=3, seed=1))

    # An easy target: an image the generator itself produced (with its own constant noise).
    z = torch.from_numpy(np.random.RandomState(7).randn(1, Z_DIM))
    with torch.no_grad():
        target_uint8 = render(G, G.mapping(z, None)[0], torch.device("cpu"))
    target_png = str(root / "target.png")
    PIL.Image.fromarray(target_uint8).save(target_png)
    return dict(root=root, detector_dir=str(detector_dir), G=G, pkl=pkl, cond_pkl=cond_pkl, target_png=target_png)


@pytest.fixture(autouse=True)
def stand_in_detector(env, monkeypatch):
    """Point the detector loader at the stand-in and give this test a private detector cache."""
    monkeypatch.setenv(metric_utils.DETECTOR_DIR_ENV, env["detector_dir"])
    monkeypatch.setattr(metric_utils, "_feature_detector_cache", {})


def run_cli(*args):
    return CliRunner().invoke(projector.run_projection, [str(a) for a in args], catch_exceptions=False)


def read_png(path) -> np.ndarray:
    with PIL.Image.open(path) as img:
        assert img.mode == "RGB"
        return np.array(img)


def assert_same_image(actual: np.ndarray, expected: np.ndarray, name: str = ""):
    """Bit-exact on the CPU; CUDA kernels may round differently, so allow one code value there."""
    assert actual.shape == expected.shape, name
    if default_device().type == "cpu":
        np.testing.assert_array_equal(actual, expected, err_msg=name)
    else:
        assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 1, name


def ffmpeg_works() -> bool:
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        return subprocess.run([exe, "-version"], capture_output=True, timeout=30).returncode == 0
    except Exception:
        return False


# ----------------------------------------------------------------------------------------------------------------------
# Pieces of the algorithm.


def test_learning_rate_schedule():
    lr = [projection.learning_rate_at(t, 0.1, 0.25, 0.05) for t in [0.0, 0.025, 0.05, 0.5, 0.75, 0.875, 0.999]]
    np.testing.assert_allclose(lr[:5], [0.0, 0.05, 0.1, 0.1, 0.1], atol=1e-12)
    np.testing.assert_allclose(lr[5], 0.1 * (0.5 - 0.5 * np.cos(0.5 * np.pi)), atol=1e-12)  # halfway down
    assert 0 < lr[6] < 1e-4


def test_noise_scale_schedule():
    scales = [projection.noise_scale_at(t, 2.0, 0.05, 0.75) for t in [0.0, 0.375, 0.75, 0.9]]
    np.testing.assert_allclose(scales, [0.1, 0.025, 0.0, 0.0], atol=1e-12)


def _autocorr_reg_numpy(v: np.ndarray) -> float:
    """Independent float64 version: per level, squared mean of v * v shifted by one pixel (wrapping) along x, y."""
    total = 0.0
    while True:
        total += np.mean(v * np.roll(v, 1, axis=1)) ** 2 + np.mean(v * np.roll(v, 1, axis=0)) ** 2
        if v.shape[0] <= 8:
            return total
        v = v.reshape(v.shape[0] // 2, 2, v.shape[1] // 2, 2).mean(axis=(1, 3))


def test_noise_regularization():
    # A constant map is perfectly correlated at every level: 2 per level; 32x32 has levels 32, 16, 8.
    assert float(projection.noise_regularization([torch.ones([4, 4])])) == pytest.approx(2.0)
    assert float(projection.noise_regularization([torch.ones([8, 8])])) == pytest.approx(2.0)
    assert float(projection.noise_regularization([torch.ones([32, 32])])) == pytest.approx(6.0)

    rnd = np.random.RandomState(1)
    bufs = [rnd.randn(4, 4), rnd.randn(16, 16), rnd.randn(64, 64)]
    expected = sum(_autocorr_reg_numpy(b) for b in bufs)
    actual = projection.noise_regularization([torch.from_numpy(b) for b in bufs])
    assert float(actual) == pytest.approx(expected, rel=1e-10)


def test_w_stats_use_fixed_seed(env):
    G = env["G"]
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    with torch.no_grad():
        w_avg, w_std = projection.compute_w_stats(G, 500, torch.device("cpu"))
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # the global numpy RNG is not consumed

    z = torch.from_numpy(np.random.RandomState(123).randn(500, Z_DIM))
    with torch.no_grad():
        w = G.mapping(z, None)[:, 0].double().numpy()  # [500, w_dim]
    assert w_avg.shape == (1, 1, W_DIM) and w_avg.dtype == np.float32
    np.testing.assert_allclose(w_avg[0, 0], w.mean(axis=0), rtol=0, atol=1e-5)
    rms_distance = np.sqrt(np.mean(np.sum((w - w.mean(axis=0)) ** 2, axis=1)))  # one scalar, not per channel
    assert w_std == pytest.approx(rms_distance, rel=1e-5)


def test_project_function(env, capsys):
    G = env["G"]
    device = torch.device("cpu")
    noise_before = {name: buf.clone() for name, buf in G.named_buffers() if name.endswith(".noise_const")}
    target = torch.from_numpy(read_png(env["target_png"]).transpose(2, 0, 1).copy())

    torch.manual_seed(1)
    ws = projection.project(G, target, num_steps=6, w_avg_samples=300, device=device, verbose=True)
    assert ws.shape == (6, G.num_ws, W_DIM) and ws.dtype == torch.float32
    assert torch.equal(ws, ws[:, :1].expand_as(ws))  # a single w broadcast to all layers

    with torch.no_grad():
        w_avg, _ = projection.compute_w_stats(G, 300, device)
    np.testing.assert_array_equal(ws[0, 0].numpy(), w_avg[0, 0])  # learning rate 0 at step 0
    assert not torch.equal(ws[-1], ws[0])

    for name, buf in G.named_buffers():
        if name in noise_before:
            assert torch.equal(buf, noise_before[name]), f"{name} of the caller's network was modified"

    out = capsys.readouterr().out
    assert out.startswith("Computing W midpoint and stddev using 300 samples...\n")
    steps = STEP_LINE.findall(out)
    assert [(int(s), int(n)) for s, n, _, _ in steps] == [(s, 6) for s in range(1, 7)]
    assert "step    1/6: dist " in out  # step number right-aligned to width 4

    torch.manual_seed(1)
    again = projection.project(G, target, num_steps=6, w_avg_samples=300, device=device)
    assert torch.equal(again, ws)  # all randomness comes from the (seeded) torch RNG and RandomState(123)
    assert capsys.readouterr().out == ""  # not verbose

    with pytest.raises(AssertionError):
        projection.project(G, target[:, :16], num_steps=1, w_avg_samples=10, device=device)


def test_random_draw_order(env, monkeypatch):
    """Torch draws: every noise buffer once (registration order), then one W perturbation per step.

    Also checks the noise maps of the private copy after the last step.
    """
    G = env["G"]
    draws = []
    randn_like = torch.randn_like

    def recording_randn_like(tensor, *args, **kwargs):
        draws.append(tuple(tensor.shape))
        return randn_like(tensor, *args, **kwargs)

    copies = []
    deepcopy = copy.deepcopy

    def recording_deepcopy(obj, *args, **kwargs):
        result = deepcopy(obj, *args, **kwargs)
        if obj is G:
            copies.append(result)
        return result

    monkeypatch.setattr(torch, "randn_like", recording_randn_like)
    monkeypatch.setattr(projection.copy, "deepcopy", recording_deepcopy)
    target = torch.from_numpy(read_png(env["target_png"]).transpose(2, 0, 1).copy())
    projection.project(G, target, num_steps=3, w_avg_samples=10, device=torch.device("cpu"))

    noise_shapes = [tuple(buf.shape) for name, buf in G.synthesis.named_buffers() if name.endswith("noise_const")]
    assert len(noise_shapes) == 2 * 4 - 1  # resolutions 4..32: one noise layer at 4, two per block above
    assert draws == noise_shapes + [(1, 1, W_DIM)] * 3

    # The private copy's optimised noise maps are re-normalised after every step: zero mean, unit RMS.
    (G_private,) = copies
    for name, buf in G_private.synthesis.named_buffers():
        buf = buf.detach()
        if name.endswith("noise_const"):
            assert abs(float(buf.mean())) < 1e-5 and float(buf.square().mean()) == pytest.approx(1, abs=1e-4), name


def test_prepare_target_crops_centre_square():
    rnd = np.random.RandomState(2)
    wide = PIL.Image.fromarray(rnd.randint(0, 256, size=[40, 57, 3], dtype=np.uint8))  # w=57, h=40
    expected = np.array(wide.crop((8, 0, 48, 40)).resize((RESOLUTION, RESOLUTION), PIL.Image.LANCZOS))
    np.testing.assert_array_equal(projector.prepare_target(wide, RESOLUTION, RESOLUTION), expected)
    tall = PIL.Image.fromarray(rnd.randint(0, 256, size=[51, 32, 3], dtype=np.uint8))  # w=32, h=51
    expected = np.array(tall.crop((0, 9, 32, 41)))
    np.testing.assert_array_equal(
        projector.prepare_target(tall, RESOLUTION, RESOLUTION), expected
    )  # same size: crop only


# ----------------------------------------------------------------------------------------------------------------------
# Command line.


def test_cli_outputs_and_video(env, tmp_path):
    outdir = tmp_path / "out" / "nested"
    args = ["--network", env["pkl"], "--target", env["target_png"], "--num-steps", NUM_STEPS, "--outdir", outdir]
    want_video = ffmpeg_works()
    result = run_cli(*args, "--save-video", int(want_video))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f'Loading networks from "{env["pkl"]}"...' in out
    assert "Computing W midpoint and stddev using 10000 samples..." in out
    assert re.search(r"^Elapsed: \d+\.\d s$", out, re.MULTILINE)

    steps = STEP_LINE.findall(out)
    assert [int(s) for s, _, _, _ in steps] == list(range(1, NUM_STEPS + 1))
    dists = [float(d) for _, _, d, _ in steps]
    losses = [float(loss) for _, _, _, loss in steps]
    assert dists[-1] < 0.7 * dists[0], f"LPIPS distance did not drop: {dists}"
    assert losses[-1] < losses[0]

    expected_files = ["proj.png", "projected_w.npz", "target.png"] + (["proj.mp4"] if want_video else [])
    assert sorted(os.listdir(outdir)) == sorted(expected_files)
    np.testing.assert_array_equal(read_png(outdir / "target.png"), read_png(env["target_png"]))

    with np.load(outdir / "projected_w.npz") as data:
        assert data.files == ["w"]
        w = data["w"]
    assert w.shape == (1, env["G"].num_ws, W_DIM) and w.dtype == np.float32
    # proj.png is rendered with the network's original constant noise, not the optimised noise.
    proj = read_png(outdir / "proj.png")
    assert proj.shape == (RESOLUTION, RESOLUTION, 3)
    assert_same_image(proj, render(env["G"], torch.from_numpy(w[0]), default_device()), "proj.png")

    if want_video:
        import imageio_ffmpeg

        assert f'Saving optimization progress video "{outdir}/proj.mp4"' in out
        reader = imageio_ffmpeg.read_frames(str(outdir / "proj.mp4"))
        meta = reader.__next__()
        frames = list(reader)
        assert tuple(meta["size"]) == (2 * RESOLUTION, RESOLUTION)
        assert meta["fps"] == 10
        assert len(frames) == NUM_STEPS
        last = np.frombuffer(frames[-1], dtype=np.uint8).reshape(RESOLUTION, 2 * RESOLUTION, 3).astype(int)
        # Lossy yuv420p: only coarse agreement with target (left) and projection (right).
        assert np.abs(last[:, :RESOLUTION] - read_png(outdir / "target.png")).mean() < 12
        assert np.abs(last[:, RESOLUTION:] - proj).mean() < 12
    else:
        pytest.skip("the imageio-ffmpeg binary cannot run here; video not checked")


def test_cli_seed_and_no_video(env, tmp_path):
    """The seed fixes every random draw; --save-video=0 writes no mp4; non-square targets are centre-cropped."""
    rnd = np.random.RandomState(4)
    target_path = tmp_path / "wide.jpg"
    PIL.Image.fromarray(rnd.randint(0, 256, size=[40, 50, 3], dtype=np.uint8)).save(target_path)

    def project_w(seed, name):
        outdir = tmp_path / name
        args = ["--network", env["pkl"], "--target", target_path, "--num-steps", 5, "--seed", seed]
        result = run_cli(*args, "--save-video", "false", "--outdir", outdir)
        assert result.exit_code == 0, result.output
        assert "Saving optimization progress video" not in result.stdout
        assert sorted(os.listdir(outdir)) == ["proj.png", "projected_w.npz", "target.png"]
        with PIL.Image.open(target_path) as img:
            expected_target = projector.prepare_target(img.convert("RGB"), RESOLUTION, RESOLUTION)
        np.testing.assert_array_equal(read_png(outdir / "target.png"), expected_target)
        with np.load(outdir / "projected_w.npz") as data:
            return data["w"]

    w_a = project_w(303, "a")
    np.testing.assert_array_equal(project_w(303, "b"), w_a)
    assert not np.array_equal(project_w(1, "c"), w_a)


def test_cli_errors(env, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    for target in [garbage, tmp_path / "missing.png"]:
        result = CliRunner().invoke(
            projector.run_projection, ["--network", env["pkl"], "--target", str(target), "--outdir", str(tmp_path)]
        )
        assert result.exit_code == 1
        assert f"Error: Cannot read target image {target}: " in result.output
        assert "Traceback" not in result.output

    args = ["--target", env["target_png"], "--num-steps", "1", "--outdir", str(tmp_path / "o")]
    result = CliRunner().invoke(projector.run_projection, ["--network", env["cond_pkl"], *args])
    assert result.exit_code == 1
    assert "the projector supports unconditional networks only; found c_dim=3" in result.output

    result = CliRunner().invoke(
        projector.run_projection, ["--network", env["pkl"], *args[:2], *args[4:], "--num-steps", "0"]
    )
    assert result.exit_code == 2 and "Invalid value for '--num-steps': 0 is not in the range x>=1" in result.output

    result = CliRunner().invoke(projector.run_projection, ["--network", env["pkl"], "--outdir", str(tmp_path)])
    assert result.exit_code == 2 and "Missing option '--target'" in result.output


# ----------------------------------------------------------------------------------------------------------------------
# Robustness of the command line.


def _gray16() -> np.ndarray:
    """uint16 [24, 24] over the whole 16-bit range (a gradient plus noise)."""
    rnd = np.random.RandomState(6)
    ramp = np.linspace(0, 65535, 24)[None, :] * np.ones([24, 1])
    return np.clip(ramp + rnd.randint(-300, 300, size=[24, 24]), 0, 65535).astype(np.uint16)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_16bit_targets_are_scaled_not_clipped(mode):
    values = _gray16()
    if mode == "I":
        img = PIL.Image.fromarray(values.astype(np.int32))
    else:
        img = PIL.Image.frombytes(mode, (24, 24), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert img.mode == mode
    assert (np.array(img.convert("RGB")) == 255).mean() > 0.9  # what plain convert('RGB') does
    rgb = projector.to_8bit(img, "RGB")
    assert rgb.mode == "RGB"
    expected = (values >> 8).astype(np.uint8)
    np.testing.assert_array_equal(np.array(rgb), np.stack([expected] * 3, axis=-1))


def test_mode_i_is_clipped_to_16_bits():
    img = PIL.Image.fromarray(np.array([[-5, 0, 65535, 70000, 2**30]], dtype=np.int32))
    assert np.array(projector.to_8bit(img, "RGB"))[0, :, 0].tolist() == [0, 0, 255, 255, 255]


def test_palette_and_8bit_targets_convert_as_before():
    rnd = np.random.RandomState(8)
    rgb = PIL.Image.fromarray(rnd.randint(0, 256, size=[16, 16, 3], dtype=np.uint8))
    palette = rgb.quantize(colors=16)
    for img in [palette, palette.convert("PA"), rgb, rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("LA")]:
        np.testing.assert_array_equal(np.array(projector.to_8bit(img, "RGB")), np.array(img.convert("RGB")), img.mode)


def test_cli_16bit_png_target(env, tmp_path):
    values = _gray16()
    target = tmp_path / "gray16.png"
    PIL.Image.frombytes("I;16", (24, 24), values.astype("<u2").tobytes()).save(target)
    with PIL.Image.open(target) as img:
        assert img.mode in projector.SIXTEEN_BIT_MODES
    outdir = tmp_path / "out"
    args = ["--network", env["pkl"], "--target", target, "--num-steps", 1, "--save-video", "false"]
    result = run_cli(*args, "--outdir", outdir)
    assert result.exit_code == 0, result.output
    gray8 = PIL.Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB")
    np.testing.assert_array_equal(
        read_png(outdir / "target.png"), projector.prepare_target(gray8, RESOLUTION, RESOLUTION)
    )


def test_cli_outdir_is_checked_before_the_network_is_loaded(env, tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    missing = tmp_path / "missing.pkl"
    for outdir, message in [
        (not_a_dir, f"Error: --outdir {not_a_dir} exists and is not a folder"),
        (not_a_dir / "sub", f"Error: --outdir {not_a_dir / 'sub'} cannot be created: {not_a_dir} is not a folder"),
    ]:
        args = ["--network", missing, "--target", env["target_png"], "--outdir", outdir]
        result = CliRunner().invoke(projector.run_projection, [str(a) for a in args])
        assert result.exit_code == 1 and message in result.stderr, result.output
        assert "Loading networks" not in result.stdout

    # A good --outdir exists before the network is read (so the long projection cannot be lost to it).
    outdir = tmp_path / "new" / "out"
    args = ["--network", missing, "--target", env["target_png"], "--outdir", outdir]
    result = CliRunner().invoke(projector.run_projection, [str(a) for a in args])
    assert result.exit_code == 1 and f"Error: Cannot read network pickle {missing}: " in result.stderr
    assert outdir.is_dir()


def test_cli_offline_vgg16_is_one_line_error(env, tmp_path, monkeypatch):
    """No local VGG16 and no network: the download error (which says where to put the file) without a traceback."""
    monkeypatch.setenv(metric_utils.DETECTOR_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "cache"))

    real_open_url = dnnlib.util.open_url

    def offline(url, *args, **kwargs):
        if not dnnlib.util.is_url(url):
            return real_open_url(url, *args, **kwargs)
        raise dnnlib.util.DownloadError(f"Cannot download {url}: offline (simulated)")

    monkeypatch.setattr(metric_utils.dnnlib.util, "open_url", offline)
    args = ["--network", env["pkl"], "--target", env["target_png"], "--num-steps", "1", "--outdir", tmp_path / "o"]
    result = CliRunner().invoke(projector.run_projection, [str(a) for a in args])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "Error: Could not load feature detector 'vgg16': downloading https://" in result.output


# ----------------------------------------------------------------------------------------------------------------------
# W+, channel counts, non-square networks, huge targets, --device and --trust-pickle.


def images_module():
    from torch_utils import images

    return images


def _lpips_distance(G, w: torch.Tensor, target: torch.Tensor) -> float:
    """Stand-in LPIPS distance between the image of `w` [num_ws, w_dim] (constant noise) and `target` [3, H, W]."""
    vgg16 = StandInVGG16()
    with torch.no_grad():
        synth = projection.lpips_features(vgg16, (G.synthesis(w[None], noise_mode="const") + 1) * 127.5)
        return float((synth - projection.lpips_features(vgg16, target[None].to(torch.float32))).square().sum())


def test_w_plus_reaches_a_lower_distance_than_w():
    """On a generator-made target with a different w in every layer, W+ gets much closer than a single W."""
    G = build_generator(seed=6)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith("noise_strength"):
                param.zero_()  # only W decides the image, so the comparison is about W vs W+ alone
        z = torch.from_numpy(np.random.RandomState(20).randn(G.num_ws, Z_DIM))
        w_target = G.mapping(z, None)[:, 0]  # [num_ws, w_dim]: one seed per layer
    target = torch.from_numpy(render(G, w_target, torch.device("cpu")).transpose(2, 0, 1).copy())
    results = {}
    for w_plus in [False, True]:
        torch.manual_seed(2)
        results[w_plus] = projection.project(G, target, num_steps=50, w_avg_samples=300, w_plus=w_plus,
                                             device=torch.device("cpu"))  # fmt: skip
    ws_w, ws_plus = results[False], results[True]
    assert ws_plus.shape == ws_w.shape == (50, G.num_ws, W_DIM) and ws_plus.dtype == torch.float32
    assert torch.equal(ws_w, ws_w[:, :1].expand_as(ws_w))
    assert len(np.unique(ws_plus[-1].numpy(), axis=0)) == G.num_ws  # every layer has its own w
    with torch.no_grad():
        w_avg, _ = projection.compute_w_stats(G, 300, torch.device("cpu"))
    np.testing.assert_array_equal(ws_plus[0].numpy(), np.repeat(w_avg[0], G.num_ws, axis=0))  # lr 0 at step 0
    dist_w, dist_plus = (_lpips_distance(G, ws[-1], target) for ws in (ws_w, ws_plus))
    assert dist_plus < 0.8 * dist_w, (dist_plus, dist_w)


def test_cli_w_plus_file_renders_with_generate(env, tmp_path):
    import generate

    outdir = tmp_path / "out"
    args = ["--network", env["pkl"], "--target", env["target_png"], "--num-steps", 8, "--save-video", 0, "--w-plus"]
    result = run_cli(*args, "--outdir", outdir)
    assert result.exit_code == 0, result.output
    with np.load(outdir / "projected_w.npz") as data:
        w = data["w"]
    assert w.shape == (1, env["G"].num_ws, W_DIM) and w.dtype == np.float32
    assert len(np.unique(w[0], axis=0)) == env["G"].num_ws
    assert_same_image(read_png(outdir / "proj.png"), render(env["G"], torch.from_numpy(w[0]), default_device()))

    args = ["--network", env["pkl"], "--projected-w", str(outdir / "projected_w.npz"), "--outdir", str(tmp_path / "g")]
    result = CliRunner().invoke(generate.generate_images, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        img = (
            copy.deepcopy(env["G"])
            .to(default_device())
            .synthesis(torch.from_numpy(w).to(default_device()), noise_mode="const")
        )
    assert_same_image(read_png(tmp_path / "g" / "proj00.png"), images_module().generator_to_hwc(img)[0])


def test_perceptual_view_and_lpips_size():
    x = torch.arange(2 * 4 * 3 * 5, dtype=torch.float32).reshape(2, 4, 3, 5)
    assert torch.equal(projection.perceptual_view(x[:, :1]), x[:, :1].expand(2, 3, 3, 5))
    assert torch.equal(projection.perceptual_view(x[:, :3]), x[:, :3])
    assert torch.equal(projection.perceptual_view(x), x[:, :3])  # RGBA: the RGB part
    assert projection.lpips_size(256, 128) == (256, 128)
    assert projection.lpips_size(1024, 1024) == (256, 256)
    assert projection.lpips_size(512, 1024) == (128, 256)
    assert projection.lpips_size(1024, 256) == (256, 64)


@pytest.mark.parametrize("channels, mode", [(1, "L"), (4, "RGBA")])
def test_cli_grayscale_and_rgba_networks(env, tmp_path, channels, mode):
    G = build_generator(seed=3, img_channels=channels)
    pkl = tmp_path / f"net{channels}.pkl"
    write_snapshot(pkl, G)
    outdir = tmp_path / "out"
    args = ["--network", pkl, "--target", env["target_png"], "--num-steps", 12, "--save-video", int(ffmpeg_works())]
    result = run_cli(*args, "--outdir", outdir)
    assert result.exit_code == 0, result.output
    dists = [float(d) for _, _, d, _ in STEP_LINE.findall(result.stdout)]
    assert dists[-1] < dists[0]
    with PIL.Image.open(env["target_png"]) as img:
        expected_target = np.array(img.convert(mode)).reshape(RESOLUTION, RESOLUTION, channels)
    with PIL.Image.open(outdir / "target.png") as img:
        assert img.mode == mode
        np.testing.assert_array_equal(np.array(img).reshape(expected_target.shape), expected_target)
    with np.load(outdir / "projected_w.npz") as data:
        w = data["w"]
    with PIL.Image.open(outdir / "proj.png") as img:
        assert img.mode == mode
        proj = np.array(img).reshape(RESOLUTION, RESOLUTION, channels)
    assert_same_image(proj, render(G, torch.from_numpy(w[0]), default_device()))
    if ffmpeg_works():
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(outdir / "proj.mp4"))
        assert tuple(reader.__next__()["size"]) == (2 * RESOLUTION, RESOLUTION)
        assert len(list(reader)) == 12


def test_prepare_target_crops_to_the_network_aspect():
    rnd = np.random.RandomState(3)
    square = PIL.Image.fromarray(rnd.randint(0, 256, size=[40, 40, 3], dtype=np.uint8))
    # 2:1 network (H=16, W=32) from a square image: keep the middle 40x20 band.
    expected = np.array(square.crop((0, 10, 40, 30)).resize((32, 16), PIL.Image.LANCZOS))
    np.testing.assert_array_equal(projector.prepare_target(square, 16, 32), expected)
    # 1:2 network (H=32, W=16): the middle 20x40 column.
    expected = np.array(square.crop((10, 0, 30, 40)).resize((16, 32), PIL.Image.LANCZOS))
    np.testing.assert_array_equal(projector.prepare_target(square, 32, 16), expected)
    gray = square.convert("L")
    assert projector.prepare_target(gray, 16, 32).shape == (16, 32, 1)


@pytest.mark.parametrize("w_plus", [False, True])
def test_cli_non_square_network(tmp_path, monkeypatch, w_plus):
    from tool_stubs import StubGenerator, fake_loader

    G = StubGenerator(height=16, width=32, channels=3, seed=4)
    fake_loader(monkeypatch, G)
    target = tmp_path / "photo.png"
    PIL.Image.fromarray(np.random.RandomState(5).randint(0, 256, size=[30, 50, 3], dtype=np.uint8)).save(target)
    outdir = tmp_path / "out"
    args = ["--network", "stub.pkl", "--target", target, "--num-steps", 6, "--save-video", int(ffmpeg_works())]
    result = run_cli(*args, *(["--w-plus"] if w_plus else []), "--outdir", outdir)
    assert result.exit_code == 0, result.output
    with PIL.Image.open(target) as img:
        expected_target = projector.prepare_target(img.convert("RGB"), 16, 32)
    np.testing.assert_array_equal(read_png(outdir / "target.png"), expected_target)
    assert read_png(outdir / "proj.png").shape == (16, 32, 3)
    with np.load(outdir / "projected_w.npz") as data:
        assert data["w"].shape == (1, G.num_ws, G.w_dim)
        assert len(np.unique(data["w"][0], axis=0)) == (G.num_ws if w_plus else 1)
    if ffmpeg_works():
        import imageio_ffmpeg

        assert tuple(imageio_ffmpeg.read_frames(str(outdir / "proj.mp4")).__next__()["size"]) == (64, 16)


def _png_declaring(path, width: int, height: int):
    """A tiny valid PNG whose header is rewritten to declare width x height (the pixels are never decoded)."""
    import struct
    import zlib

    PIL.Image.new("L", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("size", [9000, 100000])
def test_cli_huge_declared_target_is_one_line(env, tmp_path, size):
    target = tmp_path / "bomb.png"
    _png_declaring(target, size, size)
    args = ["--network", env["pkl"], "--target", str(target), "--outdir", str(tmp_path / "o")]
    result = CliRunner().invoke(projector.run_projection, args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: Cannot read target image {target}: the image declares ")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_cli_device_and_trust_pickle(env, tmp_path, monkeypatch):
    args = ["--network", env["pkl"], "--target", env["target_png"], "--num-steps", 2, "--save-video", 0]
    result = run_cli(*args, "--device", "cpu", "--outdir", tmp_path / "cpu")
    assert result.exit_code == 0, result.output
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        result = CliRunner().invoke(projector.run_projection, [str(a) for a in args] + ["--device", "mps",
                                    "--outdir", str(tmp_path / "mps")])  # fmt: skip
        assert result.exit_code == 1
        assert result.stderr == (
            "Error: --device mps: this machine has no Apple MPS device (or this PyTorch build lacks it)\n"
        )
        assert not (tmp_path / "mps").exists()

    from tool_stubs import StubGenerator, fake_loader

    calls = []
    fake_loader(monkeypatch, StubGenerator(height=32, width=32), calls)
    assert run_cli(*args, "--outdir", tmp_path / "a").exit_code == 0
    assert run_cli(*args, "--trust-pickle", "--outdir", tmp_path / "b").exit_code == 0
    assert [call.get("allow_code") for call in calls] == [False, True]
