"""sefa.py and generate.py --direction: the real command lines on a tiny snapshot on the CPU."""

import os

import imageio_ffmpeg
import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from test_generate import assert_same_image, build_snapshot, on_tool_device

import generate
import sefa
from torch_utils import images
from training import sefa as sefa_lib

RES = 16


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "net.pkl"
    return str(path), build_snapshot(path, img_resolution=RES)


@pytest.fixture(scope="module")
def directions(net, tmp_path_factory):
    """The directions file of all layers, and the grid of seeds 1, 2 along the top 2 directions (5 strengths)."""
    pkl, _ = net
    outdir = tmp_path_factory.mktemp("sefa")
    args = ["--network", pkl, "--seeds", "1,2", "--k", "2", "--degrees", "4", "--steps", "5", "--outdir", outdir]
    result = run(sefa.main, *args)
    assert result.exit_code == 0, result.output
    return outdir


def run(command, *args):
    return CliRunner().invoke(command, ["--device=cpu", *[str(a) for a in args]])


def run_generate(*args):
    """generate.py picks its device itself (CUDA when present): compare with on_tool_device's copies."""
    return CliRunner().invoke(generate.generate_images, [str(a) for a in args])


def read_png(path) -> np.ndarray:
    with PIL.Image.open(path) as img:
        return np.array(img)


def one_line_error(result, text):
    assert result.exit_code in (1, 2), result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def seed_ws(G, seed):
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(G.mapping.w_avg.device)
    return G.mapping(z, None)


def render(G, ws):
    return images.generator_to_hwc(G.synthesis(ws, noise_mode="const"))[0]


# ----------------------------------------------------------------------------------------------------------------------


def test_directions_are_orthonormal_eigenvectors(net, directions):
    """Rows orthonormal, and each an eigenvector of A^T A (A: all conv affine weights, rows normalised)."""
    _, G = net
    with np.load(directions / "directions.npz") as npz:
        dirs, eigenvalues, names, rows = npz["directions"], npz["eigenvalues"], list(npz["layer_names"]), npz["ws"]
    assert dirs.shape == (G.w_dim, G.w_dim)
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(G.w_dim), atol=1e-5)
    assert np.all(np.diff(eigenvalues) <= 1e-9)
    assert names == ["b4.conv1", "b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1"]
    assert rows.tolist() == list(range(G.num_ws))
    layers = [G.synthesis.get_submodule(name) for name in names]
    A = torch.cat([layer.affine.weight for layer in layers]).double()
    A = A / A.norm(dim=1, keepdim=True)
    gram = (A.T @ A).numpy()
    np.testing.assert_allclose(dirs @ gram, eigenvalues[:, None] * dirs, atol=1e-4)
    assert eigenvalues[0] > eigenvalues[-1] + 1e-3


def test_grid_shows_edits(net, directions):
    """grid.png: a row per (seed, direction), 5 columns -4 .. 4; the middle column is the unedited seed."""
    _, G = net
    grid = read_png(directions / "grid.png")
    assert grid.shape == (2 * 2 * RES, 5 * RES, 3)
    with np.load(directions / "directions.npz") as npz:
        top = torch.from_numpy(npz["directions"][0])
    cell = lambda row, col: grid[row * RES : (row + 1) * RES, col * RES : (col + 1) * RES]  # noqa: E731
    for row, seed in [(0, 1), (2, 2)]:
        np.testing.assert_array_equal(cell(row, 2), render(G, seed_ws(G, seed)))
        np.testing.assert_array_equal(cell(row, 4), render(G, seed_ws(G, seed) + 4 * top))
        assert np.abs(cell(row, 0).astype(int) - cell(row, 2)).max() > 10  # an edit changes the image
    assert not np.array_equal(cell(0, 0), cell(1, 0))  # the two directions edit differently


def test_layers_choose_the_factorised_and_edited_rows(net, tmp_path):
    pkl, G = net
    result = run(sefa.main, "--network", pkl, "--layers", "0,1", "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["directions.npz"]
    with np.load(tmp_path / "directions.npz") as npz:
        assert list(npz["layer_names"]) == ["b4.conv1", "b8.conv0"] and npz["ws"].tolist() == [0, 1]
        direction = npz["directions"][1]
    out = tmp_path / "out"
    args = ["--network", pkl, "--seeds", "3", "--direction", f"{tmp_path / 'directions.npz'}:1", "--strength", -2]
    result = run_generate(*args, "--outdir", out)
    assert result.exit_code == 0, result.output
    G = on_tool_device(G)
    ws = seed_ws(G, 3)
    ws[:, :2] += -2 * torch.from_numpy(direction).to(ws.device)
    assert_same_image(read_png(out / "seed0003.png"), render(G, ws))


def test_generate_direction_moves_every_row(net, directions, tmp_path):
    pkl, G = net
    spec = f"{directions / 'directions.npz'}:0"
    result = run_generate("--network", pkl, "--seeds", "1", "--direction", spec, "--strength", 3,
                 "--outdir", tmp_path / "e")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = run_generate("--network", pkl, "--seeds", "1", "--outdir", tmp_path / "plain")
    assert result.exit_code == 0, result.output
    edited, plain = read_png(tmp_path / "e" / "seed0001.png"), read_png(tmp_path / "plain" / "seed0001.png")
    G = on_tool_device(G)
    with np.load(directions / "directions.npz") as npz:
        top = torch.from_numpy(npz["directions"][0]).to(G.mapping.w_avg.device)
    assert_same_image(edited, render(G, seed_ws(G, 1) + 3 * top))
    assert_same_image(plain, render(G, seed_ws(G, 1)))
    assert np.abs(edited.astype(int) - plain).max() > 10


def test_video_of_the_edits(net, tmp_path):
    pkl, _ = net
    args = ["--network", pkl, "--seeds", "0-2", "--k", "2", "--video", "--frames", 4, "--outdir", tmp_path]
    result = run(sefa.main, *args)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["directions.npz", "edits.mp4", "grid.png"]
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "edits.mp4"))
    assert next(reader)["size"] == (3 * RES, 2 * RES)  # seeds in columns, directions in rows
    assert sum(1 for _ in reader) == 4


def test_bad_direction_is_one_line(net, directions, tmp_path):
    pkl, _ = net
    good = directions / "directions.npz"
    other = tmp_path / "other.pkl"
    build_snapshot(other, img_resolution=8)
    assert run(sefa.main, "--network", other, "--outdir", tmp_path / "o").exit_code == 0
    np.save(tmp_path / "array.npy", np.zeros(3))
    np.savez(tmp_path / "w.npz", w=np.zeros(3))
    cases = [
        (str(good), "expected FILE:INDEX, e.g. directions.npz:0"),
        (f"{good}:x", "expected FILE:INDEX"),
        (f"{good}:16", "index 16 is out of range; the file holds directions 0-15"),
        (f"{tmp_path / 'missing.npz'}:0", "is not a file"),
        (f"{tmp_path / 'array.npy'}:0", "expected a sefa.py .npz, found a single array"),
        (f"{tmp_path / 'w.npz'}:0", "not a sefa.py directions file (no array directions)"),
        (f"{pkl}:0", "cannot read it as a sefa.py .npz"),
        (f"{tmp_path / 'o' / 'directions.npz'}:0", "computed for a network with num_ws=4"),
    ]
    for spec, text in cases:
        args = ["--network", pkl, "--seeds", "0", "--direction", spec, "--strength", 1, "--outdir", tmp_path / "g"]
        one_line_error(run_generate(*args), text)
    args = ["--network", pkl, "--seeds", "0", "--strength", 1, "--outdir", tmp_path / "g"]
    one_line_error(run_generate(*args), "--direction and --strength go together")
    assert not (tmp_path / "g").exists()


def test_sefa_refusals(net, tmp_path):
    pkl, G = net
    one_line_error(run(sefa.main, "--network", pkl, "--layers", "5", "--outdir", tmp_path), "expected w indices 0-4")
    one_line_error(run(sefa.main, "--network", pkl, "--video", "--outdir", tmp_path), "--video shapes the pictures")
    args = ["--network", pkl, "--seeds", "0", "--k", 17, "--outdir", tmp_path]
    one_line_error(run(sefa.main, *args), "only w_dim=16 directions")
    one_line_error(run(sefa.main, "--network", pkl, "--k", 2, "--outdir", tmp_path), "--k shapes the pictures")
    one_line_error(run(sefa.main, "--network", pkl, "--device", "mps", "--outdir", tmp_path), "--device mps")
    assert os.listdir(tmp_path) == []


def test_apply_direction_strength_per_item():
    ws = torch.zeros([2, 3, 4])
    edited = sefa_lib.apply_direction(ws, np.ones(4, np.float32), [1], torch.tensor([1.0, -2.0]))
    assert edited[:, [0, 2]].abs().max() == 0 and edited[0, 1].tolist() == [1] * 4 and edited[1, 1].tolist() == [-2] * 4
    assert ws.abs().max() == 0  # the input is left as it is


def test_generate_direction_edits_projected_w(net, directions, tmp_path):
    pkl, G = net
    G = on_tool_device(G)
    ws = torch.randn([2, G.num_ws, G.w_dim])
    np.savez(tmp_path / "p.npz", w=ws.numpy())
    spec = f"{directions / 'directions.npz'}:1"
    args = ["--network", pkl, "--projected-w", tmp_path / "p.npz", "--direction", spec, "--strength", 2.5]
    result = run_generate(*args, "--outdir", tmp_path / "o")
    assert result.exit_code == 0, result.output
    with np.load(directions / "directions.npz") as npz:
        second = torch.from_numpy(npz["directions"][1])
    for idx in range(2):
        expected = render(G, (ws[idx : idx + 1] + 2.5 * second).to(G.mapping.w_avg.device))
        assert_same_image(read_png(tmp_path / "o" / f"proj{idx:02d}.png"), expected)


def test_conditional_networks_take_the_class_by_index_or_recorded_name(tmp_path):
    pkl = tmp_path / "cond.pkl"
    build_snapshot(pkl, c_dim=3, img_resolution=RES)
    args = ["--network", pkl, "--seeds", "1", "--k", "1", "--steps", "3"]
    one_line_error(run(sefa.main, *args, "--outdir", tmp_path / "a"), "Must specify class label with --class")
    one_line_error(run(sefa.main, *args, "--class", "cats", "--outdir", tmp_path / "b"), "recorded no class names")
    result = run(sefa.main, *args, "--class", "2", "--outdir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert read_png(tmp_path / "c" / "grid.png").shape[1] == 3 * RES
