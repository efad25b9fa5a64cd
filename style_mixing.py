"""Style-mixing grid: row seeds give the fine styles, column seeds the layers listed in --styles."""

import os

import click
import numpy as np
import PIL.Image
import torch
from click.core import ParameterSource

from dnnlib import cli
from torch_utils import images
from torch_utils.launch import DeviceError, resolve_device
from training import inference, pickles

# ----------------------------------------------------------------------------------------------------------------------


def map_seeds(G, seeds: list[int], truncation_psi: float, device: torch.device) -> torch.Tensor:
    """W [len(seeds), num_ws, w_dim] for each seed's z = RandomState(seed).randn(z_dim), truncated on all layers."""
    z = np.stack([np.random.RandomState(seed).randn(G.z_dim) for seed in seeds])
    ws = G.mapping(torch.from_numpy(z).to(device=device, dtype=torch.float32), None)
    w_avg = G.mapping.w_avg
    return w_avg + (ws - w_avg) * truncation_psi


def mix_styles(G, row_seeds, col_seeds, col_styles, truncation_psi, noise_mode, device) -> dict:
    """Return {(row seed, col seed): uint8 [H, W, C]}, including (s, s) for every distinct seed."""
    print("Generating W vectors...")
    # Set order (deterministic for ints) decides batch positions, which matters for noise_mode='random'.
    all_seeds = list(set(row_seeds + col_seeds))
    all_w = map_seeds(G, all_seeds, truncation_psi, device)
    w_dict = dict(zip(all_seeds, all_w))

    print("Generating images...")
    all_images = images.generator_to_hwc(G.synthesis(all_w, noise_mode=noise_mode))
    mixed = {(seed, seed): image for seed, image in zip(all_seeds, all_images)}

    print("Generating style-mixed images...")
    for row_seed in row_seeds:
        for col_seed in col_seeds:
            w = w_dict[row_seed].clone()
            w[col_styles] = w_dict[col_seed][col_styles]
            mixed[(row_seed, col_seed)] = images.generator_to_hwc(G.synthesis(w.unsqueeze(0), noise_mode=noise_mode))[0]
    return mixed


def make_grid(mixed: dict, row_seeds, col_seeds) -> PIL.Image.Image:
    """Black top-left cell, column seeds' own images on top, row seeds' own images on the left, mixes inside.

    `mixed` maps seed pairs to uint8 `[H, W, C]` tiles (any H, W); the grid is `(rows + 1) * H` by `(cols + 1) * W`
    in the PNG mode of C channels (RGBA: the empty corner is transparent black).
    """
    height, width, channels = next(iter(mixed.values())).shape
    canvas = PIL.Image.new(images.PIL_MODES[channels], (width * (len(col_seeds) + 1), height * (len(row_seeds) + 1)))
    for row_idx, row_seed in enumerate([None, *row_seeds]):
        for col_idx, col_seed in enumerate([None, *col_seeds]):
            if row_seed is None and col_seed is None:
                continue
            if row_seed is None:
                key = (col_seed, col_seed)
            elif col_seed is None:
                key = (row_seed, row_seed)
            else:
                key = (row_seed, col_seed)
            canvas.paste(images.to_pil(mixed[key]), (width * col_idx, height * row_idx))
    return canvas


def check_styles(col_styles: list[int], num_ws: int):
    """Every --styles index must address one of the network's W layers (negative indices count from the end)."""
    bad_styles = [idx for idx in col_styles if not -num_ws <= idx < num_ws]
    if not bad_styles:
        return
    message = f"--styles index {bad_styles[0]} is out of range: the network has {num_ws} W layers"
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.get_parameter_source("col_styles") == ParameterSource.DEFAULT:
        message += f" (--styles defaults to 0-6); pass e.g. --styles=0-{num_ws - 1}"
    raise click.UsageError(message)


# ----------------------------------------------------------------------------------------------------------------------


@click.command()
@click.option("--network", "network_pkl", help="Snapshot to render from (file or URL)", required=True)
@click.option(
    "--rows",
    "row_seeds",
    type=cli.NumRange(seed=True),
    help="Seeds of the grid rows (they keep the unlisted layers)",
    required=True,
)
@click.option(
    "--cols",
    "col_seeds",
    type=cli.NumRange(seed=True),
    help="Seeds of the grid columns (they give the --styles layers)",
    required=True,
)
@click.option(
    "--styles",
    "col_styles",
    type=cli.NumRange(),
    help="W layers taken from the column seed",
    default="0-6",
    show_default=True,
)
@cli.truncation_option()
@cli.noise_mode_option()
@click.option("--outdir", help="Folder for the cell images and grid.png", type=str, required=True, metavar="DIR")
@cli.device_option()
@cli.trust_pickle_option()
@torch.no_grad()
def generate_style_mix(
    network_pkl: str,
    row_seeds: list[int],
    col_seeds: list[int],
    col_styles: list[int],
    truncation_psi: float,
    noise_mode: str,
    outdir: str,
    device: str,
    trust_pickle: bool,
):
    """Render a style-mixing grid from an unconditional network pickle (file name or URL; G_ema is used).

    Every cell copies the W layers listed in --styles (default 0-6, the coarse styles) from its column seed and
    the remaining layers from its row seed. Each image is saved as <outdir>/<row seed>-<col seed>.png (the
    unmixed image of a seed s as s-s.png) and the whole table as <outdir>/grid.png: the top row shows the column
    seeds, the left column the row seeds.

    \b
    Example:
      python style_mixing.py --network=snapshot.pkl --rows=1-4 --cols=10,20,30 \\
          --styles=0-6 --outdir=out
    """
    cli.check_outdir(outdir)
    with cli.errors_as_messages(DeviceError):
        device = resolve_device(device)
    with cli.errors_as_messages(pickles.NetworkPickleError):
        _, G = inference.load_generator(network_pkl, device, trust_pickle)
    if G.c_dim != 0:
        raise click.UsageError(f"style_mixing.py supports unconditional networks only; this one has c_dim={G.c_dim}")
    if G.img_channels not in images.PIL_MODES:
        raise click.UsageError(f"Cannot save images with {G.img_channels} channels; expected 1, 3 or 4")
    check_styles(col_styles, G.num_ws)
    cli.make_outdir(outdir)

    mixed = mix_styles(G, row_seeds, col_seeds, col_styles, truncation_psi, noise_mode, device)

    print("Saving images...")
    for (row_seed, col_seed), image in mixed.items():
        images.save_png(image, os.path.join(outdir, f"{row_seed}-{col_seed}.png"))

    print("Saving image grid...")
    grid = make_grid(mixed, row_seeds, col_seeds)
    images.save_png(grid, os.path.join(outdir, "grid.png"))


# ----------------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    generate_style_mix()
