"""style_mixing.py: mixed images, file names and grid layout of the real command line on a tiny snapshot."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO_ROOT
from test_generate import RESOLUTION, assert_same_image, build_snapshot, on_tool_device

import style_mixing
from torch_utils import images


@pytest.fixture(scope="module")
def uncond_pkl(tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "uncond.pkl"
    return str(path), build_snapshot(path, c_dim=0, seed=2)


def run_cli(*args, catch=False):
    return CliRunner().invoke(style_mixing.generate_style_mix, [str(a) for a in args], catch_exceptions=catch)


def read_png(path) -> np.ndarray:
    with PIL.Image.open(path) as img:
        assert img.mode == "RGB"
        return np.array(img)


def seed_w(G, seed: int, psi: float) -> torch.Tensor:
    """[num_ws, w_dim]: mapping without labels, then w_avg + psi * (w - w_avg) on every layer."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(G.mapping.w_avg.device)
    with torch.no_grad():
        w = G.mapping(z, None)[0]
    return G.mapping.w_avg + (w - G.mapping.w_avg) * psi


def render(G, w: torch.Tensor, noise_mode="const") -> np.ndarray:
    with torch.no_grad():
        return images.generator_to_hwc(G.synthesis(w.unsqueeze(0), noise_mode=noise_mode))[0]


def test_mixed_images_and_grid(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    rows, cols, styles, psi = [1, 2], [3, 2, 40], [0, 1, 2], 0.6
    outdir = tmp_path / "out"
    result = run_cli("--network", pkl, "--rows", "1-2", "--cols", "3,2,40", "--styles", "0-2", "--trunc", psi,
                     "--outdir", outdir)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == [
        "Generating W vectors...",
        "Generating images...",
        "Generating style-mixed images...",
        "Saving images...",
        "Saving image grid...",
    ]

    # Every mixed pair plus every distinct seed's own image (2-2 is both).
    expected_files = {f"{r}-{c}.png" for r in rows for c in cols} | {f"{s}-{s}.png" for s in [1, 2, 3, 40]}
    assert set(os.listdir(outdir)) == expected_files | {"grid.png"}

    G = on_tool_device(G)
    ws = {s: seed_w(G, s, psi) for s in [1, 2, 3, 40]}
    for r in rows:
        for c in cols:
            mixed = ws[r].clone()
            mixed[styles] = ws[c][styles]
            assert_same_image(read_png(outdir / f"{r}-{c}.png"), render(G, mixed), f"{r}-{c}")
    for s in [1, 3, 40]:
        # Rendered in one batch by the tool; a batch may sum in another order, so allow one code value.
        diff = read_png(outdir / f"{s}-{s}.png").astype(int) - render(G, ws[s])
        assert np.abs(diff).max() <= 1
    # Styles really come from the column seed: the mix differs from both parents.
    assert not np.array_equal(read_png(outdir / "1-3.png"), read_png(outdir / "1-1.png"))
    assert not np.array_equal(read_png(outdir / "1-3.png"), read_png(outdir / "3-3.png"))

    grid = read_png(outdir / "grid.png")
    R = RESOLUTION
    assert grid.shape == (R * (len(rows) + 1), R * (len(cols) + 1), 3)
    assert not grid[:R, :R].any()
    for j, c in enumerate(cols, start=1):
        np.testing.assert_array_equal(grid[:R, R * j : R * (j + 1)], read_png(outdir / f"{c}-{c}.png"))
    for i, r in enumerate(rows, start=1):
        np.testing.assert_array_equal(grid[R * i : R * (i + 1), :R], read_png(outdir / f"{r}-{r}.png"))
        for j, c in enumerate(cols, start=1):
            cell = grid[R * i : R * (i + 1), R * j : R * (j + 1)]
            np.testing.assert_array_equal(cell, read_png(outdir / f"{r}-{c}.png"))


def test_default_styles_and_noise_none(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    assert G.num_ws > 7  # so that the default 0-6 leaves some layers to the row seed
    result = run_cli("--network", pkl, "--rows", "5", "--cols", "6", "--noise-mode", "none", "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    G = on_tool_device(G)
    mixed = seed_w(G, 5, 1.0).clone()
    mixed[:7] = seed_w(G, 6, 1.0)[:7]
    assert_same_image(read_png(tmp_path / "5-6.png"), render(G, mixed, noise_mode="none"))
    assert sorted(os.listdir(tmp_path)) == ["5-5.png", "5-6.png", "6-6.png", "grid.png"]


@pytest.mark.parametrize("option", ["--rows", "--cols", "--styles"])
def test_empty_ranges_are_usage_errors(tmp_path, uncond_pkl, option):
    """An empty range (the reference silently leaves its seeds or layers out) is refused before anything is loaded."""
    pkl, _G = uncond_pkl
    args = {"--rows": "1", "--cols": "2", "--styles": "0-1", option: "5-3"}
    result = run_cli("--network", pkl, *[x for item in args.items() for x in item], "--outdir", tmp_path / "o")
    assert result.exit_code == 2
    assert f"Invalid value for '{option}': the range names no value (in a-b, b must not be less than a)" in (
        result.stderr
    )
    assert not (tmp_path / "o").exists() and "Loading networks" not in result.stdout


def test_errors(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    result = run_cli("--network", pkl, "--rows", "1", "--cols", "2", "--styles", f"0,{G.num_ws}", "--outdir", tmp_path)
    assert result.exit_code == 2 and f"--styles index {G.num_ws} is out of range" in result.stderr

    result = run_cli(
        "--network", pkl, "--rows", "1", "--cols", "2", "--styles", f"-{G.num_ws + 1}", "--outdir", tmp_path
    )
    assert result.exit_code == 2 and f"--styles index -{G.num_ws + 1} is out of range" in result.stderr

    result = run_cli("--network", pkl, "--rows", "5-3", "--cols", "7-6", "--outdir", tmp_path)
    assert result.exit_code == 2 and "Invalid value for '--rows': the range names no value" in result.stderr

    result = run_cli("--network", pkl, "--rows", "1-3,5", "--cols", "2", "--outdir", tmp_path, catch=True)
    assert result.exit_code == 2
    assert "Invalid value for '--rows': invalid literal for int() with base 10: '1-3'" in result.stderr

    result = run_cli("--network", pkl, "--rows", "1", "--outdir", tmp_path, catch=True)
    assert result.exit_code == 2 and "Missing option '--cols'" in result.stderr

    cond = tmp_path / "cond.pkl"
    build_snapshot(cond, c_dim=3)
    result = run_cli("--network", cond, "--rows", "1", "--cols", "2", "--outdir", tmp_path / "o")
    assert result.exit_code == 2 and "supports unconditional networks only" in result.stderr

    two = tmp_path / "two.pkl"
    build_snapshot(two, img_channels=2)
    result = run_cli("--network", two, "--rows", "1", "--cols", "2", "--outdir", tmp_path / "o")
    assert result.exit_code == 2 and "Error: Cannot save images with 2 channels; expected 1, 3 or 4\n" in result.stderr
    assert not (tmp_path / "o").exists()


def test_real_command_line(tmp_path, uncond_pkl):
    pkl, _G = uncond_pkl
    cmd = [sys.executable, "style_mixing.py", "--network", pkl, "--rows", "1", "--cols", "2", "--outdir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["1-1.png", "1-2.png", "2-2.png", "grid.png"]
    with PIL.Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (2 * RESOLUTION, 2 * RESOLUTION) and grid.mode == "RGB"


def test_default_styles_too_many_for_small_network(tmp_path):
    small = tmp_path / "small.pkl"
    G = build_snapshot(small, img_resolution=16)
    assert G.num_ws == 6
    outdir = tmp_path / "o"
    result = run_cli("--network", small, "--rows", "1", "--cols", "2", "--outdir", outdir)
    assert result.exit_code == 2
    assert (
        "--styles index 6 is out of range: the network has 6 W layers (--styles defaults to 0-6); "
        "pass e.g. --styles=0-5"
    ) in " ".join(result.stderr.split())
    assert not outdir.exists()  # options are checked before --outdir is created

    result = run_cli("--network", small, "--rows", "1", "--cols", "2", "--styles", "0-6", "--outdir", outdir)
    assert result.exit_code == 2 and "--styles index 6 is out of range: the network has 6 W layers" in result.stderr
    assert "defaults" not in result.stderr

    result = run_cli("--network", small, "--rows", "1", "--cols", "2", "--styles", "0-5", "--outdir", outdir)
    assert result.exit_code == 0, result.output


def test_option_and_file_errors(tmp_path, uncond_pkl):
    pkl, _G = uncond_pkl
    for option, value, message in [
        ("--rows", "4294967296", "Invalid value for '--rows': seed 4294967296 is out of range 0..4294967295"),
        ("--cols", "0-99999999999", "Invalid value for '--cols': seed 99999999999 is out of range 0..4294967295"),
        ("--trunc", "nan", "Invalid value for '--trunc': nan is not a finite number"),
    ]:
        args = {"--rows": "1", "--cols": "2", "--trunc": "1", option: value}
        result = run_cli("--network", pkl, *[x for item in args.items() for x in item], "--outdir", tmp_path / "o")
        assert result.exit_code == 2 and message in result.stderr, result.output

    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    result = run_cli("--network", pkl, "--rows", "1", "--cols", "2", "--outdir", not_a_dir)
    assert result.exit_code == 1 and f"Error: --outdir {not_a_dir} exists and is not a folder" in result.stderr

    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    result = run_cli("--network", empty, "--rows", "1", "--cols", "2", "--outdir", tmp_path / "o")
    assert result.exit_code == 1 and f"Error: {empty}: not a network pickle (file is empty)" in result.stderr
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------------------------
# --device, --trust-pickle, RGBA and non-square networks.


def test_device_cpu_and_missing_mps(tmp_path, uncond_pkl):
    pkl, _G = uncond_pkl
    result = run_cli("--network", pkl, "--rows", "1", "--cols", "2", "--device", "cpu", "--outdir", tmp_path / "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "cpu")) == ["1-1.png", "1-2.png", "2-2.png", "grid.png"]
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    result = run_cli("--network", pkl, "--rows", "1", "--cols", "2", "--device", "mps", "--outdir", tmp_path / "mps")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: --device mps: this machine has no Apple MPS device (or this PyTorch build lacks it)\n"
    )
    assert not (tmp_path / "mps").exists()


def test_trust_pickle_is_passed_to_the_loader(tmp_path, monkeypatch):
    from tool_stubs import StubGenerator, fake_loader

    calls = []
    fake_loader(monkeypatch, StubGenerator(), calls)
    args = ["--network", "x.pkl", "--rows", "1", "--cols", "2", "--styles", "0-1", "--outdir", tmp_path]
    assert run_cli(*args).exit_code == 0
    assert run_cli(*args, "--trust-pickle").exit_code == 0
    assert [call.get("allow_code") for call in calls] == [False, True]


def _check_grid(outdir, rows, cols, height, width, mode):
    with PIL.Image.open(outdir / "grid.png") as img:
        assert img.mode == mode and img.size == (width * (len(cols) + 1), height * (len(rows) + 1))
        grid = np.array(img).reshape(height * (len(rows) + 1), width * (len(cols) + 1), -1)
    assert not grid[:height, :width].any()
    for i, r in enumerate([None, *rows]):
        for j, c in enumerate([None, *cols]):
            if i == j == 0:
                continue
            key = f"{c}-{c}" if r is None else f"{r}-{r}" if c is None else f"{r}-{c}"
            with PIL.Image.open(outdir / f"{key}.png") as img:
                assert img.mode == mode and img.size == (width, height)
                cell = np.array(img).reshape(height, width, -1)
            np.testing.assert_array_equal(grid[height * i : height * (i + 1), width * j : width * (j + 1)], cell)


def test_rgba_network_writes_rgba_grid(tmp_path):
    build_snapshot(tmp_path / "rgba.pkl", img_channels=4, seed=6)
    result = run_cli("--network", tmp_path / "rgba.pkl", "--rows", "1,2", "--cols", "3", "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    _check_grid(tmp_path, [1, 2], [3], RESOLUTION, RESOLUTION, "RGBA")
    with PIL.Image.open(tmp_path / "1-3.png") as img:
        assert len(np.unique(np.array(img)[:, :, 3])) > 1  # the alpha channel varies


@pytest.mark.parametrize("height, width, channels", [(16, 32, 3), (32, 8, 1)])
def test_non_square_grid(tmp_path, monkeypatch, height, width, channels):
    from tool_stubs import StubGenerator, fake_loader

    fake_loader(monkeypatch, StubGenerator(height=height, width=width, channels=channels))
    args = ["--network", "x.pkl", "--rows", "1,2", "--cols", "3,4,5", "--styles", "0-1", "--outdir", tmp_path]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    _check_grid(tmp_path, [1, 2], [3, 4, 5], height, width, images.PIL_MODES[channels])
