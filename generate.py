"""Generate images from a trained network pickle, one PNG per seed or per projected W."""

import os
import re

import click
import numpy as np
import PIL.Image
import torch

import dnnlib
import legacy
from torch_utils.launch import default_device

# ----------------------------------------------------------------------------------------------------------------------

NOISE_MODES = ["const", "random", "none"]
PNG_MODES = {1: "L", 3: "RGB"}


class NumRange(click.ParamType):
    """`a-b` (inclusive range, empty when reversed) or a comma-separated list of integers.

    Mixed forms such as `0-3,7` are rejected, as in the reference parser.
    """

    name = "num_range"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return parse_num_range(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def parse_num_range(text: str) -> list[int]:
    match = re.fullmatch(r"(\d+)-(\d+)", text)
    if match:
        return list(range(int(match.group(1)), int(match.group(2)) + 1))
    return [int(piece) for piece in text.split(",")]


def load_generator(network_pkl: str, device: torch.device) -> torch.nn.Module:
    """Load `G_ema` from a snapshot file name or URL."""
    with dnnlib.util.open_url(network_pkl) as f:
        return legacy.load_network_pkl(f)["G_ema"].to(device)


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
    """Array `w` of a projector result: [K, num_ws, w_dim]."""
    try:
        with np.load(path) as data:
            ws = data["w"]
    except (OSError, ValueError, KeyError) as exc:
        raise click.ClickException(f"Cannot read array 'w' from --projected-w file {path}: {exc}") from exc
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
@click.option("--seeds", type=NumRange(), help="Seeds to render, e.g. 0-7 or 3,14,15")
@click.option(
    "--trunc", "truncation_psi", type=float, help="Truncation strength (1 = none)", default=1, show_default=True
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
    help="projected_w.npz written by projector.py; render its W vectors instead of seeds",
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
    print(f'Loading networks from "{network_pkl}"...')
    device = default_device()
    G = load_generator(network_pkl, device)
    os.makedirs(outdir, exist_ok=True)

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
