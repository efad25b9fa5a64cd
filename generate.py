"""Generate images from a trained network pickle, one PNG per seed or per projected W."""

import os

import click
import numpy as np
import torch

from dnnlib import cli
from torch_utils import images
from torch_utils.launch import DeviceError, resolve_device
from training import inference, pickles, sefa

# ----------------------------------------------------------------------------------------------------------------------


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
    bad = np.count_nonzero(~np.isfinite(ws))
    if bad:
        raise click.ClickException(
            f"--projected-w {path}: w holds {bad} NaN or infinite values; expected finite numbers"
        )
    return torch.from_numpy(ws.astype(np.float32))


def save_png(img: torch.Tensor, path: str) -> None:
    """Generator output `[1, C, H, W]` -> 8-bit PNG (x * 127.5 + 128, clamped, truncated; 1, 3 or 4 channels)."""
    with cli.errors_as_messages(images.ImageChannelsError):
        images.save_png(images.generator_to_hwc(img)[0], path)


def render_projected_w(G, path: str, noise_mode: str, outdir: str, device: torch.device, edit=None) -> None:
    """Save the image of every W vector of a projector result as <outdir>/projNN.png."""
    print(f'Generating images from projected W "{path}"')
    ws = load_projected_w(path, G).to(device)
    ws = ws if edit is None else edit(ws)
    for idx, w in enumerate(ws):
        img = G.synthesis(w.unsqueeze(0), noise_mode=noise_mode)
        save_png(img, os.path.join(outdir, f"proj{idx:02d}.png"))


def render_seeds(G, seeds, label, truncation_psi, noise_mode, outdir, device: torch.device, edit=None) -> None:
    """Save the image of every seed's z (with `label` `[1, c_dim]`) as <outdir>/seedNNNN.png; `edit` maps its ws."""
    for seed_idx, seed in enumerate(seeds):
        print(f"Generating image for seed {seed} ({seed_idx}/{len(seeds)}) ...")
        z = torch.from_numpy(seed_to_z(seed, G.z_dim)).to(device=device, dtype=torch.float32)
        if edit is None:
            img = G(z, label, truncation_psi=truncation_psi, noise_mode=noise_mode)
        else:
            img = G.synthesis(edit(G.mapping(z, label, truncation_psi=truncation_psi)), noise_mode=noise_mode)
        save_png(img, os.path.join(outdir, f"seed{seed:04d}.png"))


def direction_edit(G, direction: str | None, strength: float | None):
    """--direction FILE:INDEX and --strength -> a function ws [N, num_ws, w_dim] -> edited ws, or None."""
    if (direction is None) != (strength is None):
        raise click.UsageError("--direction and --strength go together: give both or neither")
    if direction is None:
        return None
    with cli.errors_as_messages(sefa.DirectionError):
        vector, rows = sefa.load_direction(direction, G.num_ws, G.w_dim)
    return lambda ws: sefa.apply_direction(ws, vector, rows, strength)


# ----------------------------------------------------------------------------------------------------------------------


@click.command()
@click.option("--network", "network_pkl", help="Snapshot to render from (file or URL)", required=True)
@click.option("--seeds", type=cli.NumRange(seed=True), help="Seeds to render, e.g. 0-7 or 3,14,15")
@cli.truncation_option()
@cli.class_option()
@cli.noise_mode_option()
@click.option(
    "--projected-w",
    help="projected_w.npz written by projector.py (or a .npy array); render its W vectors instead of seeds",
    type=str,
    metavar="FILE",
)
@click.option(
    "--direction",
    metavar="FILE:INDEX",
    help="Edit: add --strength times direction INDEX of a sefa.py directions.npz to the w of every image",
)
@click.option("--strength", type=cli.FiniteFloat(), help="How far to move along --direction (w units, may be < 0)")
@click.option("--outdir", help="Folder for the PNG files", type=str, required=True, metavar="DIR")
@cli.device_option()
@cli.trust_pickle_option()
@torch.no_grad()
def generate_images(
    network_pkl: str,
    seeds: list[int] | None,
    truncation_psi: float,
    noise_mode: str,
    outdir: str,
    class_value: str | None,
    projected_w: str | None,
    direction: str | None,
    strength: float | None,
    device: str,
    trust_pickle: bool,
):
    """Render images from a network pickle (file name or URL; the G_ema network is used).

    Each seed of --seeds (a range such as 0-5, or a list such as 3,14,15) gives one latent
    z = RandomState(seed).randn(z_dim), rendered with truncation --trunc and saved as <outdir>/seedNNNN.png.
    Conditional networks need --class: a class index, or a class name when the training set recorded names
    (dataset_tool.py --subfolders-as-labels). With --projected-w (a projector.py result), every W vector of the file
    is rendered instead and saved as <outdir>/projNN.png.

    \b
    Examples:
      python generate.py --network=snapshot.pkl --seeds=0-7 --outdir=out
      python generate.py --network=snapshot.pkl --seeds=3,14,15 --trunc=0.7 --outdir=out
      python generate.py --network=cifar10.pkl --seeds=0-15 --class=4 --outdir=out
      python generate.py --network=animals.pkl --seeds=0-15 --class=cats --device=cpu --outdir=out
      python generate.py --network=snapshot.pkl --projected-w=out/projected_w.npz --outdir=out
      python generate.py --network=snapshot.pkl --seeds=0-7 --direction=sefa/directions.npz:0 --strength=3 \\
          --outdir=out

    --direction moves the w rows the file lists: all of them, or those of the layers sefa.py --layers chose.
    """
    cli.check_outdir(outdir)
    with cli.errors_as_messages(DeviceError):
        device = resolve_device(device)
    with cli.errors_as_messages(pickles.NetworkPickleError):
        snapshot, G = inference.load_generator(network_pkl, device, trust_pickle)
    edit = direction_edit(G, direction, strength)
    cli.make_outdir(outdir)

    if projected_w is not None:
        if seeds is not None:
            print("warn: --seeds is ignored when using --projected-w")
        render_projected_w(G, projected_w, noise_mode, outdir, device, edit)
        return
    if seeds is None:
        raise click.UsageError("--seeds option is required when not using --projected-w")
    with cli.usage_errors(inference.ClassLabelError):
        label = inference.class_label(G.c_dim, class_value, inference.class_names_of(snapshot), device)
    render_seeds(G, seeds, label, truncation_psi, noise_mode, outdir, device, edit)


# ----------------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    generate_images()
