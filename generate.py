"""Generate images from a trained network pickle, one PNG per seed or per projected W."""

import math
import os
import re

import click
import numpy as np
import PIL.Image
import torch

import legacy
from torch_utils.launch import default_device

# ----------------------------------------------------------------------------------------------------------------------

NOISE_MODES = ["const", "random", "none"]
PNG_MODES = {1: "L", 3: "RGB"}
MAX_SEED = 2**32 - 1  # numpy's RandomState accepts seeds 0 .. 2**32 - 1


class NumRange(click.ParamType):
    """`a-b` (inclusive range, empty when reversed) or a comma-separated list of integers.

    Mixed forms such as `0-3,7` are rejected, as in the reference parser. With `seed=True` every value (for a
    range: both ends, checked before the list is built) must be a valid seed, 0 .. 2**32 - 1.
    """

    name = "num_range"

    def __init__(self, seed: bool = False):
        self.seed = seed

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return parse_num_range(value, seed=self.seed)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _check_seeds(values: list[int]):
    for value in values:
        if not 0 <= value <= MAX_SEED:
            raise ValueError(f"seed {value} is out of range 0..{MAX_SEED}")


def parse_num_range(text: str, seed: bool = False) -> list[int]:
    match = re.fullmatch(r"(\d+)-(\d+)", text)
    if match:
        first, last = int(match.group(1)), int(match.group(2))
        if seed:
            _check_seeds([first, last])
        return list(range(first, last + 1))
    values = [int(piece) for piece in text.split(",")]
    if seed:
        _check_seeds(values)
    return values


class FiniteFloat(click.types.FloatParamType):
    """A float option that rejects nan and +-inf (a non-finite truncation renders black images)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number", param, ctx)
        return number


def load_generator(network_pkl: str, device: torch.device) -> torch.nn.Module:
    """Load `G_ema` from a snapshot file name or URL; unreadable or unsupported files are a one-line CLI error."""
    return legacy.cli_load_network_pkl(network_pkl)["G_ema"].to(device)


def check_outdir(outdir: str):
    """Fail early when --outdir, or the nearest of its parents that exists, is something other than a folder."""
    existing = os.path.abspath(outdir)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if os.path.isdir(existing):
        return
    if existing == os.path.abspath(outdir):
        raise click.ClickException(f"--outdir {outdir} exists and is not a folder")
    raise click.ClickException(f"--outdir {outdir} cannot be created: {existing} is not a folder")


def make_outdir(outdir: str):
    """Create --outdir (and its parents); failures are a one-line CLI error."""
    check_outdir(outdir)
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"Cannot create --outdir {outdir}: {exc}") from exc


def to_uint8_images(img: torch.Tensor) -> np.ndarray:
    """Generator range [N, C, H, W] -> uint8 [N, H, W, C]: x*127.5 + 128, clamped, truncated."""
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()


def to_pil(image: np.ndarray) -> PIL.Image.Image:
    """uint8 [H, W, C] -> PIL image; 3 channels -> RGB (the reference's only mode), 1 channel -> L."""
    channels = image.shape[2]
    if channels not in PNG_MODES:
        raise click.ClickException(f"Cannot save images with {channels} channels; expected 1 (grayscale) or 3 (RGB)")
    return PIL.Image.fromarray(image[:, :, 0] if channels == 1 else image)


def seed_to_z(seed: int, z_dim: int) -> np.ndarray:
    """Latent [1, z_dim] float64 from numpy's legacy Mersenne-Twister generator seeded with `seed`."""
    return np.random.RandomState(seed).randn(1, z_dim)


def load_projected_w(path: str, G) -> torch.Tensor:
    """W vectors [K, num_ws, w_dim]: array `w` of a projector result (.npz), or a .npy file holding that array."""
    try:
        loaded = np.load(path)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                ws = loaded["w"]
        else:
            ws = loaded
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise click.ClickException(
            f"Cannot read --projected-w file {path} (a .npz with array 'w' or a .npy array): {exc}"
        ) from exc
    if not (np.issubdtype(ws.dtype, np.floating) or np.issubdtype(ws.dtype, np.integer)):
        raise click.ClickException(f"--projected-w {path}: expected a float array, found dtype {ws.dtype}")
    if ws.ndim != 3 or ws.shape[1:] != (G.num_ws, G.w_dim):
        raise click.ClickException(
            f"--projected-w {path}: expected w of shape [K, {G.num_ws}, {G.w_dim}] (num_ws, w_dim of the network), "
            f"found {list(ws.shape)}"
        )
    return torch.from_numpy(ws.astype(np.float32))


def make_label(G, class_idx: int | None, device: torch.device) -> torch.Tensor:
    """One-hot label [1, c_dim] (all zeros and of width 0 for unconditional networks)."""
    label = torch.zeros([1, G.c_dim], device=device)
    if G.c_dim == 0:
        if class_idx is not None:
            print("warn: --class=lbl ignored when running on an unconditional network")
        return label
    if class_idx is None:
        raise click.UsageError("Must specify class label with --class when using a conditional network")
    if not 0 <= class_idx < G.c_dim:
        raise click.UsageError(f"--class={class_idx} is out of range for a network with {G.c_dim} classes")
    label[:, class_idx] = 1
    return label


# ----------------------------------------------------------------------------------------------------------------------


@click.command()
@click.option("--network", "network_pkl", help="Snapshot to render from (file or URL)", required=True)
@click.option("--seeds", type=NumRange(seed=True), help="Seeds to render, e.g. 0-7 or 3,14,15")
@click.option(
    "--trunc", "truncation_psi", type=FiniteFloat(), help="Truncation strength (1 = none)", default=1, show_default=True
)
@click.option("--class", "class_idx", type=int, help="Class index for conditional networks")
@click.option(
    "--noise-mode",
    help="Per-pixel noise: fixed buffers, fresh draws, or off",
    type=click.Choice(NOISE_MODES),
    default="const",
    show_default=True,
)
@click.option(
    "--projected-w",
    help="projected_w.npz written by projector.py (or a .npy array); render its W vectors instead of seeds",
    type=str,
    metavar="FILE",
)
@click.option("--outdir", help="Folder for the PNG files", type=str, required=True, metavar="DIR")
@torch.no_grad()
def generate_images(
    network_pkl: str,
    seeds: list[int] | None,
    truncation_psi: float,
    noise_mode: str,
    outdir: str,
    class_idx: int | None,
    projected_w: str | None,
):
    """Render images from a network pickle (file name or URL; the G_ema network is used).

    Each seed of --seeds (a range such as 0-5, or a list such as 3,14,15) gives one latent
    z = RandomState(seed).randn(z_dim), rendered with truncation --trunc and saved as <outdir>/seedNNNN.png.
    Conditional networks need --class. With --projected-w (a projector.py result), every W vector of the file
    is rendered instead and saved as <outdir>/projNN.png.

    \b
    Examples:
      python generate.py --network=snapshot.pkl --seeds=0-7 --outdir=out
      python generate.py --network=snapshot.pkl --seeds=3,14,15 --trunc=0.7 --outdir=out
      python generate.py --network=cifar10.pkl --seeds=0-15 --class=4 --outdir=out
      python generate.py --network=snapshot.pkl --projected-w=out/projected_w.npz --outdir=out
    """
    check_outdir(outdir)
    print(f'Loading networks from "{network_pkl}"...')
    device = default_device()
    G = load_generator(network_pkl, device)
    make_outdir(outdir)

    if projected_w is not None:
        if seeds is not None:
            print("warn: --seeds is ignored when using --projected-w")
        print(f'Generating images from projected W "{projected_w}"')
        ws = load_projected_w(projected_w, G).to(device)
        for idx, w in enumerate(ws):
            img = G.synthesis(w.unsqueeze(0), noise_mode=noise_mode)
            to_pil(to_uint8_images(img)[0]).save(os.path.join(outdir, f"proj{idx:02d}.png"))
        return

    if seeds is None:
        raise click.UsageError("--seeds option is required when not using --projected-w")
    label = make_label(G, class_idx, device)

    for seed_idx, seed in enumerate(seeds):
        print(f"Generating image for seed {seed} ({seed_idx}/{len(seeds)}) ...")
        z = torch.from_numpy(seed_to_z(seed, G.z_dim)).to(device=device, dtype=torch.float32)
        img = G(z, label, truncation_psi=truncation_psi, noise_mode=noise_mode)
        to_pil(to_uint8_images(img)[0]).save(os.path.join(outdir, f"seed{seed:04d}.png"))


# ----------------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    generate_images()
