"""gen_video.py: the real command line on tiny snapshots (mp4 read back with imageio-ffmpeg, PNG frames exactly)."""

import os

import imageio_ffmpeg
import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from test_generate import build_snapshot

import gen_video
from torch_utils import images
from training import video

RES = 16
DEVICE = torch.device("cpu")


def _snapshot(tmp_path_factory, name, **kwargs):
    path = tmp_path_factory.mktemp("nets") / f"{name}.pkl"
    return str(path), build_snapshot(path, img_resolution=RES, **kwargs)


@pytest.fixture(scope="module")
def rgb_pkl(tmp_path_factory):
    return _snapshot(tmp_path_factory, "rgb")


@pytest.fixture(scope="module")
def gray_pkl(tmp_path_factory):
    return _snapshot(tmp_path_factory, "gray", img_channels=1, seed=2)


def run_cli(*args):
    return CliRunner().invoke(gen_video.main, ["--device=cpu", *[str(a) for a in args]], catch_exceptions=False)


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def one_line_error(result, text):
    """A refused command: exit status 1 or 2 and `Error: ...` with `text` as the last (only) error line."""
    assert result.exit_code in (1, 2), result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.output


def read_mp4(path, pix_fmt="rgb24"):
    """(size (W, H), frames uint8 [N, H, W, C]) of an mp4, decoded by imageio-ffmpeg's ffmpeg."""
    channels = 1 if pix_fmt == "gray" else 3
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt=pix_fmt, bpp=channels)
    width, height = next(reader)["size"]
    frames = [np.frombuffer(data, np.uint8).reshape(height, width, channels) for data in reader]
    return (width, height), np.stack(frames)


def luma_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Mean |luma difference| of two RGB images: H.264 in yuv420p keeps luma well, but halves the colour resolution."""
    weights = np.array([0.299, 0.587, 0.114])
    return float(np.abs(actual.astype(float) @ weights - expected.astype(float) @ weights).mean())


def read_frames_dir(path):
    names = sorted(os.listdir(path))
    assert names == [f"frame{idx:05d}.png" for idx in range(len(names))], names
    frames = []
    for name in names:
        with PIL.Image.open(os.path.join(path, name)) as img:
            frames.append((img.mode, np.array(img)))
    return frames


def seed_w(G, seed):
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float()
    return G.mapping(z, None)


def render_w(G, ws):
    return images.generator_to_hwc(G.synthesis(ws, noise_mode="const"))[0]


# ----------------------------------------------------------------------------------------------------------------------


def test_mp4_frame_count_and_size(tmp_path, rgb_pkl):
    """Loop (default): K * w-frames frames; a 2x1 grid of 16-pixel cells is 32x16; frame 0 shows the keyframes."""
    pkl, G = rgb_pkl
    out = tmp_path / "walk.mp4"
    ok(run_cli("--network", pkl, "--seeds", "0-3", "--grid", "2x1", "--w-frames", 3, "--output", out))
    size, frames = read_mp4(out)
    assert size == (2 * RES, RES) and frames.shape == (2 * 3, RES, 2 * RES, 3)
    # Cell 0 takes seeds 0, 1 and cell 1 seeds 2, 3: frame 0 is seed 0 next to seed 2 (H.264 is lossy).
    left, right = render_w(G, seed_w(G, 0)), render_w(G, seed_w(G, 2))
    assert luma_error(frames[0], np.concatenate([left, right], axis=1)) < 6
    assert luma_error(frames[0], np.concatenate([right, left], axis=1)) > 12
    assert sorted(os.listdir(tmp_path)) == ["walk.mp4"]  # no temporary file left


def test_frames_dir_exact_keyframes_and_no_loop(tmp_path, rgb_pkl):
    """--no-loop: (K - 1) * w-frames + 1 frames, first and last exactly the first and last keyframes."""
    pkl, G = rgb_pkl
    ok(run_cli("--network", pkl, "--seeds", "5,6,7", "--w-frames", 2, "--no-loop", "--frames-dir", tmp_path / "f"))
    frames = read_frames_dir(tmp_path / "f")
    assert len(frames) == 2 * 2 + 1
    assert all(mode == "RGB" and frame.shape == (RES, RES, 3) for mode, frame in frames)
    assert np.abs(frames[0][1].astype(int) - render_w(G, seed_w(G, 5))).max() <= 1
    assert np.abs(frames[-1][1].astype(int) - render_w(G, seed_w(G, 7))).max() <= 1
    assert np.abs(frames[2][1].astype(int) - render_w(G, seed_w(G, 6))).max() <= 1  # keyframe 1 at frame w-frames


def test_loop_returns_to_the_start():
    """A looping walk's frame K * w-frames (one past the last) is keyframe 0 again, for both easings."""
    keyframes = np.random.RandomState(0).randn(3, 2, 4)
    for easing in video.EASINGS:
        walk = video.LatentWalk(keyframes, 4, easing, loop=True)
        assert walk.num_frames == 12
        np.testing.assert_allclose(walk(12), keyframes[0], atol=1e-9)
        np.testing.assert_allclose(walk(4), keyframes[1], atol=1e-9)
        assert not np.allclose(walk(11), keyframes[0])
    linear = video.LatentWalk(keyframes, 4, "linear", loop=True)
    np.testing.assert_allclose(linear(10), 0.5 * (keyframes[2] + keyframes[0]))


def test_z_space_and_w_space_differ(tmp_path, rgb_pkl):
    """Linear midpoints: --space=w renders (w0 + w1) / 2, --space=z maps (z0 + z1) / 2 (truncation per frame)."""
    pkl, G = rgb_pkl
    for space in video.SPACES:
        args = ["--network", pkl, "--seeds", "1,2", "--w-frames", 2, "--easing", "linear", "--space", space]
        ok(run_cli(*args, "--trunc", 0.5, "--frames-dir", tmp_path / space))
    z = torch.from_numpy(np.random.RandomState(1).randn(G.z_dim) + np.random.RandomState(2).randn(G.z_dim)).float()
    expected_z = render_w(G, G.mapping(z.unsqueeze(0) / 2, None, truncation_psi=0.5))
    w_mid = (G.mapping(torch.from_numpy(video.seed_latents([1, 2], G.z_dim)).float(), None, truncation_psi=0.5)).mean(0)
    expected_w = render_w(G, w_mid.unsqueeze(0))
    frame_w = read_frames_dir(tmp_path / "w")[1][1].astype(int)
    frame_z = read_frames_dir(tmp_path / "z")[1][1].astype(int)
    assert np.abs(frame_w - expected_w).max() <= 1
    assert np.abs(frame_z - expected_z).max() <= 1
    assert np.abs(frame_w - frame_z).max() > 10


def test_grayscale_mp4_and_frames(tmp_path, gray_pkl):
    pkl, G = gray_pkl
    ok(run_cli("--network", pkl, "--seeds", "0,1", "--w-frames", 2, "--output", tmp_path / "g.mp4"))
    size, frames = read_mp4(tmp_path / "g.mp4", pix_fmt="gray")
    assert size == (RES, RES) and len(frames) == 4
    assert np.abs(frames[0].astype(int) - render_w(G, seed_w(G, 0))).mean() < 6
    ok(run_cli("--network", pkl, "--seeds", "0,1", "--w-frames", 2, "--frames-dir", tmp_path / "f"))
    assert [mode for mode, _ in read_frames_dir(tmp_path / "f")] == ["L"] * 4


def test_rgba_frames_keep_alpha_and_mp4_warns(tmp_path_factory, tmp_path):
    pkl, _ = _snapshot(tmp_path_factory, "rgba", img_channels=4, seed=3)
    ok(run_cli("--network", pkl, "--seeds", "0", "--w-frames", 2, "--frames-dir", tmp_path / "f"))
    assert [(mode, frame.shape) for mode, frame in read_frames_dir(tmp_path / "f")] == [("RGBA", (RES, RES, 4))] * 2
    result = ok(run_cli("--network", pkl, "--seeds", "0", "--w-frames", 2, "--output", tmp_path / "a.mp4"))
    assert "warn: an mp4 has no alpha channel" in result.output
    assert read_mp4(tmp_path / "a.mp4")[1].shape == (2, RES, RES, 3)


def test_projected_w_keyframes(tmp_path, rgb_pkl):
    """Rows of one [2, num_ws, w_dim] file and one [1, num_ws, w_dim] file are the keyframes, in order."""
    pkl, G = rgb_pkl
    ws = torch.randn([3, G.num_ws, G.w_dim])
    np.savez(tmp_path / "a.npz", w=ws[:2].numpy())
    np.savez(tmp_path / "b.npz", w=ws[2:].numpy())
    args = ["--network", pkl, "--projected-w", tmp_path / "a.npz", "--projected-w", tmp_path / "b.npz"]
    ok(run_cli(*args, "--w-frames", 1, "--easing", "linear", "--frames-dir", tmp_path / "f"))
    frames = read_frames_dir(tmp_path / "f")
    assert len(frames) == 3
    for idx in range(3):
        assert np.abs(frames[idx][1].astype(int) - render_w(G, ws[idx : idx + 1])).max() <= 1
    # --trunc moves projected keyframes towards w_avg, as the mapping truncates the seeds' w.
    ok(run_cli(*args, "--w-frames", 1, "--trunc", 0.5, "--frames-dir", tmp_path / "t"))
    truncated = G.mapping.w_avg.lerp(ws[1:2], 0.5)
    assert np.abs(read_frames_dir(tmp_path / "t")[1][1].astype(int) - render_w(G, truncated)).max() <= 1


def test_killed_run_keeps_the_old_video(tmp_path, rgb_pkl, monkeypatch):
    """The mp4 is written to a temporary file: a run that fails half-way leaves the previous video untouched."""
    pkl, _ = rgb_pkl
    out = tmp_path / "walk.mp4"
    out.write_bytes(b"old video")
    rendered = []

    def failing_render(*args, **kwargs):
        if len(rendered) == 2:
            raise KeyboardInterrupt
        rendered.append(1)
        return real_render(*args, **kwargs)

    real_render = video.render_cells
    monkeypatch.setattr(video, "render_cells", failing_render)
    result = CliRunner().invoke(
        gen_video.main, ["--network", pkl, "--seeds", "0,1", "--w-frames", "3", "--output", str(out)]
    )
    assert isinstance(result.exception, KeyboardInterrupt) or result.exit_code != 0
    assert out.read_bytes() == b"old video"
    assert sorted(os.listdir(tmp_path)) == ["walk.mp4"]


def test_stale_frames_warning(tmp_path, rgb_pkl):
    pkl, _ = rgb_pkl
    frames_dir = tmp_path / "f"
    frames_dir.mkdir()
    (frames_dir / "frame00009.png").write_bytes(b"")
    result = ok(run_cli("--network", pkl, "--seeds", "0", "--w-frames", 2, "--frames-dir", frames_dir))
    assert "keeps 1 older frames from frame00009.png on" in result.output


def test_bad_combinations_are_one_line(tmp_path, rgb_pkl):
    pkl, _ = rgb_pkl
    out = tmp_path / "v.mp4"
    np.savez(tmp_path / "w.npz", w=np.zeros([1, 3, 5], np.float32))
    cases = [
        (["--seeds", "0"], "give exactly one of --output"),
        (["--seeds", "0", "--output", out, "--frames-dir", tmp_path], "give exactly one of --output"),
        (["--output", out], "give exactly one of --seeds"),
        (["--seeds", "0", "--projected-w", tmp_path / "w.npz", "--output", out], "give exactly one of --seeds"),
        (["--projected-w", tmp_path / "w.npz", "--space", "z", "--output", out], "--space=z needs --seeds"),
        (["--projected-w", tmp_path / "w.npz", "--class", 1, "--output", out], "--class applies to --seeds only"),
        (["--projected-w", tmp_path / "w.npz", "--output", out], "expected a float array [N, "),
        (["--seeds", "0-2", "--grid", "2x1", "--output", out], "--seeds gives 3 keyframes, which a grid of 2 cells"),
        (["--seeds", "0", "--no-loop", "--output", out], "--no-loop needs at least 2 keyframes"),
        (["--seeds", "0", "--output", tmp_path / "v.avi"], "expected a file name ending in .mp4"),
        (["--seeds", "0", "--grid", "2by2", "--output", out], "expected WxH or W,H"),
    ]
    for args, text in cases:
        one_line_error(run_cli("--network", pkl, *args), text)
    one_line_error(
        CliRunner().invoke(gen_video.main, ["--network", pkl, "--seeds", "0", "--device", "mps", "--output", out]),
        "--device mps",
    )
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]


def test_num_keyframes_and_shuffle_repeat_the_seeds():
    slots = video.assign_keyframes(3, 2, 4, None, "--seeds")
    np.testing.assert_array_equal(slots, [[0, 1, 2, 0], [1, 2, 0, 1]])
    shuffled = video.assign_keyframes(3, 2, 4, 7, "--seeds")
    assert sorted(shuffled.ravel()) == sorted(slots.ravel()) and not np.array_equal(shuffled, slots)


def test_cubic_loop_is_nvidias_spline():
    """The looping cubic walk equals scipy's interp1d(kind='cubic') over the keyframes tiled 5 times (NVIDIA's)."""
    import scipy.interpolate

    keyframes = np.random.RandomState(1).randn(3, 2, 5).astype(np.float32)
    reference = scipy.interpolate.interp1d(np.arange(-6, 9), np.tile(keyframes, [5, 1, 1]), kind="cubic", axis=0)
    walk = video.LatentWalk(keyframes, 7, "cubic", loop=True)
    for frame in range(walk.num_frames):
        np.testing.assert_allclose(walk(frame), reference(frame / 7), rtol=1e-9, atol=1e-9)


def test_conditional_network_needs_class(tmp_path_factory, tmp_path):
    pkl, G = _snapshot(tmp_path_factory, "cond", c_dim=3, seed=4)
    one_line_error(
        run_cli("--network", pkl, "--seeds", "0", "--frames-dir", tmp_path / "f"),
        "Must specify class label with --class",
    )
    args = ["--network", pkl, "--seeds", "0,1", "--w-frames", 2, "--space", "z", "--class", 2]
    ok(run_cli(*args, "--frames-dir", tmp_path / "f"))
    label = torch.zeros([1, 3])
    label[:, 2] = 1
    z = torch.from_numpy(video.seed_latents([1], G.z_dim)).float()
    expected = render_w(G, G.mapping(z, label))
    assert np.abs(read_frames_dir(tmp_path / "f")[2][1].astype(int) - expected).max() <= 1


def test_atomic_path_keeps_the_extension_and_cleans_up(tmp_path):
    from dnnlib import atomic

    target = tmp_path / "v.mp4"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.atomic_path(str(target)) as tmp:
        assert tmp.endswith(".mp4") and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "wb").write(b"half")
        raise RuntimeError
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["v.mp4"]
    with atomic.atomic_path(str(target)) as tmp:
        open(tmp, "wb").write(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["v.mp4"]
