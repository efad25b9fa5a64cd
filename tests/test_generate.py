"""generate.py: seed parsing, seed -> z mapping, uint8 conversion and the real command line on tiny snapshots.

The seed parser lives in dnnlib/cli.py, the uint8 conversion in torch_utils/images.py and the pickle loading in
training/pickles.py; generate.py is the command line over them.
"""

import copy
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO_ROOT

import dnnlib
import generate
from dnnlib import cli
from torch_utils import images
from torch_utils.launch import default_device
from training import pickles

Z_DIM = 16
W_DIM = 16
RESOLUTION = 32


def build_snapshot(path, c_dim: int = 0, seed: int = 0, img_channels: int = 3, img_resolution: int = RESOLUTION):
    """Write a training-style snapshot pickle with a tiny random G_ema (non-zero w_avg and noise strengths)."""
    from training import networks

    torch.manual_seed(seed)
    kwargs = dict(
        z_dim=Z_DIM,
        c_dim=c_dim,
        w_dim=W_DIM,
        img_resolution=img_resolution,
        img_channels=img_channels,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=128, channel_max=8),
    )
    G = networks.Generator(**kwargs).eval().requires_grad_(False)
    with torch.no_grad():
        G.mapping.w_avg.copy_(torch.randn([W_DIM]))  # makes truncation visible
        for name, param in G.named_parameters():
            if name.endswith("noise_strength"):
                param.fill_(0.5)  # makes the noise mode visible
    D = networks.Discriminator(
        c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, channel_base=128, channel_max=8
    )
    snapshot = dict(G=G, D=D, G_ema=G, augment_pipe=None, training_set_kwargs=None)
    with open(path, "wb") as f:
        pickle.dump(snapshot, f)
    return G


@pytest.fixture(scope="module")
def uncond_pkl(tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "uncond.pkl"
    return str(path), build_snapshot(path, c_dim=0)


@pytest.fixture(scope="module")
def cond_pkl(tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "cond.pkl"
    return str(path), build_snapshot(path, c_dim=4, seed=1)


def run_cli(*args):
    return CliRunner().invoke(generate.generate_images, [str(a) for a in args], catch_exceptions=False)


def read_png(path) -> np.ndarray:
    with PIL.Image.open(path) as img:
        assert img.mode == "RGB"
        return np.array(img)


def on_tool_device(G):
    """The tools run on CUDA when present; compute expectations there too."""
    return copy.deepcopy(G).to(default_device())


def assert_same_image(actual: np.ndarray, expected: np.ndarray, name: str = ""):
    """Bit-exact on the CPU; CUDA kernels may round differently, so allow one code value there."""
    assert actual.shape == expected.shape, name
    if default_device().type == "cpu":
        np.testing.assert_array_equal(actual, expected, err_msg=name)
    else:
        assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 1, name


def expected_image(G, seed, c=None, **kwargs) -> np.ndarray:
    """Reference rendering: z = RandomState(seed).randn(1, z_dim), G(z, c, ...), then x*127.5 + 128 -> uint8."""
    G = on_tool_device(G)
    device = default_device()
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).to(device)
    c = torch.zeros([1, G.c_dim]) if c is None else c
    with torch.no_grad():
        img = G(z, c.to(device), **kwargs)
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].cpu().numpy()


# ----------------------------------------------------------------------------------------------------------------------


def test_num_range_parser():
    assert cli.parse_num_range("600-605") == [600, 601, 602, 603, 604, 605]
    assert cli.parse_num_range("85,265,297") == [85, 265, 297]
    assert cli.parse_num_range("7") == [7]
    assert cli.parse_num_range("5-3") == []


def test_mixed_seed_list_is_rejected(tmp_path):
    args = ["--network", "x.pkl", "--seeds", "0-3,7", "--outdir", str(tmp_path)]
    result = CliRunner().invoke(generate.generate_images, args)
    assert result.exit_code == 2
    assert "Invalid value for '--seeds': invalid literal for int() with base 10: '0-3'" in result.stderr


def test_seed_to_z_vector():
    z = generate.seed_to_z(0, 512)
    assert z.shape == (1, 512) and z.dtype == np.float64
    np.testing.assert_allclose(z[0, :4], [1.76405235, 0.40015721, 0.97873798, 2.2408932], rtol=0, atol=1e-8)


def test_uint8_conversion():
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, -3.0, 3.0]).reshape(1, 1, 1, 6)
    assert images.generator_to_hwc(x).reshape(-1).tolist() == [0, 128, 191, 255, 0, 255]


def test_seeds_match_direct_generator_call(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    outdir = tmp_path / "out" / "nested"  # parents are created
    result = run_cli("--network", pkl, "--seeds", "0,12345", "--trunc", 0.7, "--outdir", outdir)
    assert result.exit_code == 0, result.output
    assert f'Loading networks from "{pkl}"...' in result.stdout
    assert "Generating image for seed 0 (0/2) ..." in result.stdout
    assert "Generating image for seed 12345 (1/2) ..." in result.stdout
    assert sorted(os.listdir(outdir)) == ["seed0000.png", "seed12345.png"]
    for seed, name in [(0, "seed0000.png"), (12345, "seed12345.png")]:
        actual = read_png(outdir / name)
        assert actual.shape == (RESOLUTION, RESOLUTION, 3)
        assert_same_image(actual, expected_image(G, seed, truncation_psi=0.7, noise_mode="const"), name)
    # Truncation really took part.
    assert not np.array_equal(read_png(outdir / "seed0000.png"), expected_image(G, 0, noise_mode="const"))


def test_seed_range_and_noise_modes(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    assert run_cli("--network", pkl, "--seeds", "3-4", "--noise-mode", "none", "--outdir", tmp_path).exit_code == 0
    assert sorted(os.listdir(tmp_path)) == ["seed0003.png", "seed0004.png"]
    assert_same_image(read_png(tmp_path / "seed0004.png"), expected_image(G, 4, noise_mode="none"))
    assert run_cli("--network", pkl, "--seeds", "4", "--noise-mode", "random", "--outdir", tmp_path).exit_code == 0
    random_img = read_png(tmp_path / "seed0004.png")
    assert not np.array_equal(random_img, expected_image(G, 4, noise_mode="const"))
    assert not np.array_equal(random_img, expected_image(G, 4, noise_mode="none"))


def test_network_given_as_file_url(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    result = run_cli("--network", "file://" + pkl, "--seeds", "5", "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    assert_same_image(read_png(tmp_path / "seed0005.png"), expected_image(G, 5, noise_mode="const"))


def test_missing_seeds_is_usage_error_after_outdir_created(tmp_path, uncond_pkl):
    outdir = tmp_path / "out"
    result = CliRunner().invoke(generate.generate_images, ["--network", uncond_pkl[0], "--outdir", str(outdir)])
    assert result.exit_code == 2
    assert "--seeds option is required when not using --projected-w" in result.stderr
    assert outdir.is_dir() and not os.listdir(outdir)


def test_class_ignored_for_unconditional(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    result = run_cli("--network", pkl, "--seeds", "1", "--class", 3, "--outdir", tmp_path)
    assert result.exit_code == 0
    assert "warn: --class=lbl ignored when running on an unconditional network" in result.stdout
    assert_same_image(read_png(tmp_path / "seed0001.png"), expected_image(G, 1, noise_mode="const"))


def test_conditional_network(tmp_path, cond_pkl):
    pkl, G = cond_pkl
    result = CliRunner().invoke(generate.generate_images, ["--network", pkl, "--seeds", "1", "--outdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "Must specify class label with --class when using a conditional network" in result.stderr

    result = CliRunner().invoke(
        generate.generate_images, ["--network", pkl, "--seeds", "1", "--class", "4", "--outdir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--class=4 is out of range" in result.stderr

    assert run_cli("--network", pkl, "--seeds", "1,2", "--class", 2, "--outdir", tmp_path).exit_code == 0
    onehot = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    for seed in [1, 2]:
        expected = expected_image(G, seed, c=onehot, noise_mode="const")
        assert_same_image(read_png(tmp_path / f"seed{seed:04d}.png"), expected)
    other_class = expected_image(G, 1, c=torch.tensor([[1.0, 0.0, 0.0, 0.0]]), noise_mode="const")
    assert not np.array_equal(read_png(tmp_path / "seed0001.png"), other_class)


def test_projected_w(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    ws = np.random.RandomState(9).randn(3, G.num_ws, G.w_dim).astype(np.float32)
    npz = tmp_path / "projected_w.npz"
    np.savez(npz, w=ws)
    outdir = tmp_path / "out"
    result = run_cli("--network", pkl, "--projected-w", npz, "--seeds", "1-2", "--outdir", outdir)
    assert result.exit_code == 0, result.output
    assert "warn: --seeds is ignored when using --projected-w" in result.stdout
    assert f'Generating images from projected W "{npz}"' in result.stdout
    assert sorted(os.listdir(outdir)) == ["proj00.png", "proj01.png", "proj02.png"]
    G = on_tool_device(G)
    for k in range(3):
        with torch.no_grad():
            img = G.synthesis(torch.from_numpy(ws[k : k + 1]).to(default_device()), noise_mode="const")
        assert_same_image(read_png(outdir / f"proj{k:02d}.png"), images.generator_to_hwc(img)[0])


def test_projected_w_wrong_shape(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    npz = tmp_path / "w.npz"
    np.savez(npz, w=np.zeros([1, G.num_ws + 1, G.w_dim], np.float32))
    result = CliRunner().invoke(
        generate.generate_images, ["--network", pkl, "--projected-w", str(npz), "--outdir", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert f"expected w of shape [K, {G.num_ws}, {G.w_dim}]" in result.stderr
    assert not os.listdir(tmp_path / "o")


def test_grayscale_network_writes_8bit_gray_png(tmp_path):
    """Extension: the reference saves RGB only; a 1-channel generator is saved as mode L instead of failing."""
    G = build_snapshot(tmp_path / "gray.pkl", img_channels=1, seed=3)
    assert run_cli("--network", tmp_path / "gray.pkl", "--seeds", "2", "--outdir", tmp_path).exit_code == 0
    with PIL.Image.open(tmp_path / "seed0002.png") as img:
        assert img.mode == "L"
        assert_same_image(np.array(img)[:, :, None], expected_image(G, 2, noise_mode="const"))


def test_unsupported_channel_count_is_a_one_line_error(tmp_path):
    build_snapshot(tmp_path / "two.pkl", img_channels=2, seed=4)
    outdir = tmp_path / "o"
    result = CliRunner().invoke(
        generate.generate_images, ["--network", str(tmp_path / "two.pkl"), "--seeds", "2", "--outdir", str(outdir)]
    )
    assert result.exit_code == 1, result.output
    assert result.stderr == "Error: Cannot save images with 2 channels; expected 1 (grayscale), 3 (RGB) or 4 (RGBA)\n"
    assert os.listdir(outdir) == []


def test_real_command_line(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    cmd = [sys.executable, "generate.py", "--network", pkl, "--seeds", "85", "--outdir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A separate process may use other thread counts, hence other float summation orders: allow one code value.
    diff = read_png(tmp_path / "seed0085.png").astype(int) - expected_image(G, 85, noise_mode="const")
    assert np.abs(diff).max() <= 1


def test_bad_network_file_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    list_pkl = tmp_path / "list.pkl"
    list_pkl.write_bytes(pickle.dumps([1, 2]))
    cases = [
        (empty, f"Error: {empty}: not a network pickle (file is empty)"),
        (list_pkl, f"Error: {list_pkl}: not a network pickle (a list, not a dict"),
        (tmp_path / "missing.pkl", f"Error: Cannot read network pickle {tmp_path / 'missing.pkl'}: "),
        (tmp_path, f"Error: Cannot read network pickle {tmp_path}: "),
    ]
    for network, message in cases:
        result = CliRunner().invoke(
            generate.generate_images, ["--network", str(network), "--seeds", "1", "--outdir", str(tmp_path / "o")]
        )
        assert result.exit_code == 1, result.output
        assert message in result.stderr and "Aborted!" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_download_errors_and_unnamed_streams_name_the_url(tmp_path, monkeypatch):
    url = "https://example.invalid/net.pkl"
    args = ["--network", url, "--seeds", "1", "--outdir", str(tmp_path / "o")]

    def failing_open_url(*args, **kwargs):
        raise dnnlib.util.DownloadError(f"Could not download {url} (ConnectionError: offline).")

    monkeypatch.setattr(dnnlib.util, "open_url", failing_open_url)
    message = f"Cannot read network pickle {url}: Could not download {url}"
    with pytest.raises(pickles.NetworkPickleReadError, match=message) as info:
        pickles.load_network_from(url)
    assert isinstance(info.value, OSError) and isinstance(info.value.__cause__, dnnlib.util.DownloadError)
    result = CliRunner().invoke(generate.generate_images, args)
    assert result.exit_code == 1 and f"Error: {message}" in result.stderr

    monkeypatch.setattr(dnnlib.util, "open_url", lambda *args, **kwargs: io.BytesIO(b"\x80\x04"))
    with pytest.raises(pickles.UnsupportedPickleError, match=f"^{url}: not a network pickle \\(truncated\\)$"):
        pickles.load_network_from(url)
    result = CliRunner().invoke(generate.generate_images, args)
    assert result.exit_code == 1 and result.stderr == f"Error: {url}: not a network pickle (truncated)\n"


def test_outdir_that_is_a_file_is_a_clear_error(tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    cases = [
        (not_a_dir, f"Error: --outdir {not_a_dir} exists and is not a folder"),
        (not_a_dir / "sub" / "dir", f"Error: --outdir {not_a_dir / 'sub' / 'dir'} cannot be created: {not_a_dir} is"),
    ]
    for outdir, message in cases:
        # The network is never read: --outdir is checked first.
        args = ["--network", str(tmp_path / "missing.pkl"), "--seeds", "1", "--outdir", str(outdir)]
        result = CliRunner().invoke(generate.generate_images, args)
        assert result.exit_code == 1, result.output
        assert message in result.stderr and "Loading networks" not in result.stdout


def test_outdir_that_cannot_be_created_is_a_clear_error(tmp_path, uncond_pkl, monkeypatch):
    def refuse(path, exist_ok=False):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "makedirs", refuse)
    outdir = tmp_path / "new"
    args = ["--network", uncond_pkl[0], "--seeds", "1", "--outdir", str(outdir)]
    result = CliRunner().invoke(generate.generate_images, args)
    assert result.exit_code == 1
    assert f"Error: Cannot create --outdir {outdir}: [Errno 13] Permission denied" in result.stderr


def test_seed_values_are_range_checked():
    assert cli.parse_num_range("0,4294967295", seed=True) == [0, 4294967295]
    assert cli.parse_num_range("4294967290-4294967295", seed=True)[-1] == 4294967295
    for text, bad in [
        ("4294967296", 4294967296),
        ("1,-2", -2),
        ("0-99999999999", 99999999999),
        ("5-99999999999999999999", 99999999999999999999),
    ]:
        with pytest.raises(ValueError, match=f"^seed {bad} is out of range 0..4294967295$"):
            cli.parse_num_range(text, seed=True)
    # Without seed=True (--styles) negative values stay valid.
    assert cli.parse_num_range("-1,-2") == [-1, -2]


@pytest.mark.parametrize("seeds, bad", [("4294967296", "4294967296"), ("0-99999999999", "99999999999"), ("3,-1", "-1")])
def test_out_of_range_seeds_are_usage_errors(tmp_path, seeds, bad):
    args = ["--network", "x.pkl", "--seeds", seeds, "--outdir", str(tmp_path / "o")]
    result = CliRunner().invoke(generate.generate_images, args)
    assert result.exit_code == 2
    assert f"Invalid value for '--seeds': seed {bad} is out of range 0..4294967295" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("trunc", ["nan", "inf", "-inf"])
def test_non_finite_trunc_is_usage_error(tmp_path, trunc):
    args = ["--network", "x.pkl", "--seeds", "1", "--trunc", trunc, "--outdir", str(tmp_path / "o")]
    result = CliRunner().invoke(generate.generate_images, args)
    assert result.exit_code == 2
    assert f"Invalid value for '--trunc': {trunc} is not a finite number" in result.stderr


def test_projected_w_as_npy(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    ws = np.random.RandomState(10).randn(2, G.num_ws, G.w_dim).astype(np.float32)
    np.save(tmp_path / "w.npy", ws)
    np.savez(tmp_path / "w.npz", w=ws)
    for name in ["w.npy", "w.npz"]:
        result = run_cli("--network", pkl, "--projected-w", tmp_path / name, "--outdir", tmp_path / name[2:])
        assert result.exit_code == 0, result.output
        assert sorted(os.listdir(tmp_path / name[2:])) == ["proj00.png", "proj01.png"]
    for k in range(2):
        np.testing.assert_array_equal(
            read_png(tmp_path / "npy" / f"proj{k:02d}.png"), read_png(tmp_path / "npz" / f"proj{k:02d}.png")
        )

    np.save(tmp_path / "bad.npy", np.zeros([1, G.num_ws]))
    np.save(tmp_path / "text.npy", np.array([["a"] * G.w_dim] * G.num_ws))
    np.savez(tmp_path / "other.npz", x=ws)
    (tmp_path / "empty.npy").write_bytes(b"")
    for name, message in [
        ("bad.npy", f"expected w of shape [K, {G.num_ws}, {G.w_dim}]"),
        ("text.npy", "expected a float array, found dtype <U1"),
        ("other.npz", "(a .npz with array 'w' or a .npy array)"),
        ("empty.npy", f"Cannot read --projected-w file {tmp_path / 'empty.npy'}"),
    ]:
        result = CliRunner().invoke(
            generate.generate_images,
            ["--network", pkl, "--projected-w", str(tmp_path / name), "--outdir", str(tmp_path / "o")],
        )
        assert result.exit_code == 1, (name, result.output)
        assert message in result.stderr, name


# ----------------------------------------------------------------------------------------------------------------------
# Issues 12-15: empty ranges, non-finite W, --device, --trust-pickle, class names, RGBA, non-square images.


def test_empty_seed_range_is_a_usage_error(tmp_path):
    args = ["--network", "x.pkl", "--seeds", "5-3", "--outdir", str(tmp_path / "o")]
    result = CliRunner().invoke(generate.generate_images, args)
    assert result.exit_code == 2
    assert "Invalid value for '--seeds': the range names no value (in a-b, b must not be less than a)" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_projected_w_with_non_finite_values_is_an_error(tmp_path, uncond_pkl, bad):
    pkl, G = uncond_pkl
    ws = np.zeros([2, G.num_ws, G.w_dim], np.float32)
    ws[1, 2, 3] = bad
    np.savez(tmp_path / "w.npz", w=ws)
    args = ["--network", pkl, "--projected-w", str(tmp_path / "w.npz"), "--outdir", str(tmp_path / "o")]
    result = CliRunner().invoke(generate.generate_images, args)
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"Error: --projected-w {tmp_path / 'w.npz'}: w holds 1 NaN or infinite values; expected finite numbers\n"
    )
    assert os.listdir(tmp_path / "o") == []


def test_device_cpu_and_unavailable_devices(tmp_path, uncond_pkl):
    pkl, G = uncond_pkl
    result = run_cli("--network", pkl, "--seeds", "7", "--device", "cpu", "--outdir", tmp_path / "cpu")
    assert result.exit_code == 0, result.output
    z = torch.from_numpy(np.random.RandomState(7).randn(1, G.z_dim))
    with torch.no_grad():
        expected = images.generator_to_hwc(copy.deepcopy(G).cpu()(z, None, noise_mode="const"))[0]
    np.testing.assert_array_equal(read_png(tmp_path / "cpu" / "seed0007.png"), expected)  # CPU even where CUDA is

    cases = [("cuda:x", "--device cuda:x: expected cuda or cuda:N with N a GPU index"), ("tpu", "expected one of")]
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        cases.append(("mps", "--device mps: this machine has no Apple MPS device"))
    if not torch.cuda.is_available():
        cases.append(("cuda:1", "--device cuda:1: CUDA is not available on this machine (try --device=cpu)"))
    for spec, message in cases:
        args = ["--network", pkl, "--seeds", "7", "--device", spec, "--outdir", str(tmp_path / spec)]
        result = CliRunner().invoke(generate.generate_images, args)
        assert result.exit_code == 1, (spec, result.output)
        assert result.stderr.startswith("Error: ") and message in result.stderr, spec
        assert len(result.stderr.splitlines()) == 1 and "Loading networks" not in result.stdout, spec


def test_fp16_network_runs_in_float32_off_cuda(tmp_path):
    """A network with fp16 blocks renders, on the CPU, exactly what force_fp32=True gives (not the fp16 rounding)."""
    from training import networks

    torch.manual_seed(8)
    G = networks.Generator(
        z_dim=Z_DIM, c_dim=0, w_dim=W_DIM, img_resolution=RESOLUTION, img_channels=3,
        mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=8, num_fp16_res=2,
                                                                 conv_clamp=256),
    ).eval().requires_grad_(False)  # fmt: skip
    with open(tmp_path / "fp16.pkl", "wb") as f:
        pickle.dump(dict(G=G, D=G, G_ema=G, augment_pipe=None, training_set_kwargs=None), f)
    result = run_cli("--network", tmp_path / "fp16.pkl", "--seeds", "0-3", "--device", "cpu", "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    differs = False
    for seed in range(4):
        actual = read_png(tmp_path / f"seed{seed:04d}.png")
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, Z_DIM))
        with torch.no_grad():
            fp32 = images.generator_to_hwc(G(z, None, noise_mode="const", force_fp32=True))[0]
            fp16 = images.generator_to_hwc(G(z, None, noise_mode="const"))[0]
        np.testing.assert_array_equal(actual, fp32)
        differs |= not np.array_equal(fp32, fp16)
    assert differs  # otherwise the test would not show anything


def test_trust_pickle_is_passed_to_the_loader(tmp_path, monkeypatch):
    from tool_stubs import StubGenerator, fake_loader

    calls = []
    fake_loader(monkeypatch, StubGenerator(), calls)
    assert run_cli("--network", "x.pkl", "--seeds", "1", "--outdir", tmp_path).exit_code == 0
    assert run_cli("--network", "x.pkl", "--seeds", "1", "--trust-pickle", "--outdir", tmp_path).exit_code == 0
    assert [call.get("allow_code") for call in calls] == [False, True]


def _with_entries(path, src, **entries):
    with open(src, "rb") as f:
        data = pickle.load(f)
    kwargs = entries.pop("training_set_kwargs", None)
    data.update(entries, training_set_kwargs=kwargs)
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return str(path)


@pytest.mark.parametrize("where", ["snapshot", "training_set_kwargs"])
def test_class_by_name(tmp_path, cond_pkl, where):
    pkl, G = cond_pkl
    names = ["cats", "dogs", "3", "owls"]
    entries = dict(class_names=names) if where == "snapshot" else dict(training_set_kwargs=dict(class_names=names))
    named = _with_entries(tmp_path / "named.pkl", pkl, **entries)
    result = run_cli("--network", named, "--seeds", "1", "--class", "owls", "--outdir", tmp_path / "owls")
    assert result.exit_code == 0, result.output
    result = run_cli("--network", named, "--seeds", "1", "--class", "3", "--outdir", tmp_path / "three")
    assert result.exit_code == 0, result.output
    assert "warn: --class=3 is taken as a class index ('owls'); the class named '3' has index 2" in result.stdout
    onehot = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    for sub in ["owls", "three"]:
        assert_same_image(read_png(tmp_path / sub / "seed0001.png"), expected_image(G, 1, c=onehot, noise_mode="const"))

    args = ["--network", named, "--seeds", "1", "--class", "bats", "--outdir", str(tmp_path / "o")]
    result = CliRunner().invoke(generate.generate_images, args)
    assert result.exit_code == 2
    assert "--class=bats is not a class of this network; its classes are: cats, dogs, 3, owls" in result.stderr

    args = ["--network", pkl, "--seeds", "1", "--class", "cats", "--outdir", str(tmp_path / "o")]
    result = CliRunner().invoke(generate.generate_images, args)
    assert result.exit_code == 2
    assert "--class=cats: this network recorded no class names; give a class index 0..3" in result.stderr


def test_rgba_network_writes_rgba_png(tmp_path):
    G = build_snapshot(tmp_path / "rgba.pkl", img_channels=4, seed=5)
    assert run_cli("--network", tmp_path / "rgba.pkl", "--seeds", "2", "--outdir", tmp_path).exit_code == 0
    with PIL.Image.open(tmp_path / "seed0002.png") as img:
        assert img.mode == "RGBA"
        actual = np.array(img)
    assert_same_image(actual, expected_image(G, 2, noise_mode="const"))
    assert len(np.unique(actual[:, :, 3])) > 1  # the alpha channel varies


@pytest.mark.parametrize("height, width, channels", [(16, 32, 3), (32, 8, 1)])
def test_non_square_generator(tmp_path, monkeypatch, height, width, channels):
    from tool_stubs import StubGenerator, fake_loader

    G = StubGenerator(height=height, width=width, channels=channels)
    fake_loader(monkeypatch, G)
    result = run_cli("--network", "stub.pkl", "--seeds", "4", "--trunc", 0.5, "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    z = torch.from_numpy(np.random.RandomState(4).randn(1, G.z_dim))
    with torch.no_grad():
        expected = images.generator_to_hwc(G(z, None, truncation_psi=0.5))[0]
    with PIL.Image.open(tmp_path / "seed0004.png") as img:
        assert img.size == (width, height) and img.mode == images.PIL_MODES[channels]
        np.testing.assert_array_equal(np.array(img).reshape(expected.shape), expected)

    ws = np.random.RandomState(1).randn(1, G.num_ws, G.w_dim).astype(np.float32)
    np.savez(tmp_path / "w.npz", w=ws)
    result = run_cli("--network", "stub.pkl", "--projected-w", tmp_path / "w.npz", "--outdir", tmp_path / "p")
    assert result.exit_code == 0, result.output
    with PIL.Image.open(tmp_path / "p" / "proj00.png") as img:
        assert img.size == (width, height)
