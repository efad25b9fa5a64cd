"""Edit directions by closed-form factorisation (SeFa) of a network's style modulation, and pictures of the edits."""

import os

import click
import numpy as np
import torch
import tqdm
from click.core import ParameterSource

from dnnlib import cli
from torch_utils import images
from torch_utils.launch import DeviceError, resolve_device
from training import inference, pickles, sefa, video

DIRECTIONS_FILE = "directions.npz"
GRID_FILE = "grid.png"
VIDEO_FILE = "edits.mp4"
# Options that only matter when seeds are rendered.
RENDER_OPTIONS = ("k", "degrees", "steps", "truncation_psi", "class_value", "noise_mode", "save_video", "fps", "frames")

# ----------------------------------------------------------------------------------------------------------------------


def check_render_options(seeds) -> None:
    """Options that shape the pictures are refused without --seeds (they would do nothing)."""
    if seeds is not None:
        return
    ctx = click.get_current_context()
    given = [name for name in RENDER_OPTIONS if ctx.get_parameter_source(name) != ParameterSource.DEFAULT]
    if given:
        option = next(param.opts[0] for param in ctx.command.params if param.name == given[0])
        raise click.UsageError(f"{option} shapes the pictures of the edits: give --seeds to render them")


def seed_ws(G, seeds: list[int], label: torch.Tensor, truncation_psi: float, device) -> torch.Tensor:
    """ws [len(seeds), num_ws, w_dim] of the seeds' z (RandomState(seed).randn(z_dim)) with `label`, truncated."""
    z = torch.from_numpy(video.seed_latents(seeds, G.z_dim)).to(device=device, dtype=torch.float32)
    return video.map_z(G, z, label, truncation_psi)


def save_directions(G, layers: list[int] | None, outdir: str) -> tuple[np.ndarray, list[int]]:
    """Factorise the layers, write <outdir>/directions.npz; return (directions [w_dim, w_dim], edited w rows)."""
    with cli.errors_as_messages(sefa.DirectionError):
        weights, rows = sefa.select_layers(G, layers)
    directions, eigenvalues = sefa.factorise([weight for _, weight in weights])
    cli.make_outdir(outdir)
    path = os.path.join(outdir, DIRECTIONS_FILE)
    names = [name for name, _ in weights]
    sefa.save_directions(path, directions, eigenvalues, names, rows, G.num_ws)
    print(f'Saved {len(directions)} directions of {len(names)} layers to "{path}"')
    return directions, rows


def save_grid(path: str, grid: np.ndarray) -> None:
    """uint8 [H, W, C] -> PNG at `path`, atomically."""
    images.save_png(grid, path)


# ----------------------------------------------------------------------------------------------------------------------


@click.command()
@click.option("--network", "network_pkl", help="Snapshot to factorise (file or URL)", required=True)
@click.option(
    "--layers",
    type=cli.NumRange(),
    help="w indices of the convolution layers to factorise, e.g. 0-3 [default: all]",
)
@click.option("--k", type=click.IntRange(min=1), default=5, show_default=True, help="Top directions to render")
@click.option("--seeds", type=cli.NumRange(seed=True), help="Seeds to render edits of [default: directions only]")
@click.option(
    "--degrees", type=cli.FiniteFloat(), default=5.0, show_default=True, help="Largest strength of an edit (w units)"
)
@click.option(
    "--steps", type=click.IntRange(min=2), default=7, show_default=True, help="Grid columns from -degrees to +degrees"
)
@cli.truncation_option()
@cli.class_option()
@cli.noise_mode_option()
@click.option(
    "--video", "save_video", is_flag=True, help=f"Also write {VIDEO_FILE}: the edits swinging -degrees .. +degrees"
)
@click.option(
    "--fps",
    type=click.FloatRange(min=0, min_open=True),
    default=video.DEFAULT_FPS,
    show_default=True,
    help="Frames per second of the video",
)
@click.option("--frames", type=click.IntRange(min=2), default=120, show_default=True, help="Frames of the video")
@click.option("--outdir", help="Folder for the outputs", type=str, required=True, metavar="DIR")
@cli.device_option()
@cli.trust_pickle_option()
@torch.no_grad()
def main(
    network_pkl,
    layers,
    k,
    seeds,
    degrees,
    steps,
    truncation_psi,
    class_value,
    noise_mode,
    save_video,
    fps,
    frames,
    outdir,
    device,
    trust_pickle,
):
    """Find edit directions in W by closed-form factorisation (SeFa) and render seeds moved along them.

    The directions are the eigenvectors of A^T A, A the style-modulation (affine) weights of the synthesis
    convolution layers: all of them, or those of --layers (w indices; the final toRGB layer is left out). They are
    saved, largest eigenvalue first, to <outdir>/directions.npz (directions [w_dim, w_dim], eigenvalues,
    layer_names, ws: the w rows an edit moves, all of them without --layers).

    With --seeds, <outdir>/grid.png shows every seed moved along each of the top --k directions: a row per (seed,
    direction), --steps columns from -degrees to +degrees; --video also writes <outdir>/edits.mp4. Apply one
    direction with generate.py --direction=<outdir>/directions.npz:INDEX --strength=X.

    \b
    Examples:
      python sefa.py --network=snapshot.pkl --outdir=sefa
      python sefa.py --network=snapshot.pkl --layers=0-3 --seeds=0-3 --k=5 --degrees=5 --outdir=sefa
      python sefa.py --network=snapshot.pkl --seeds=0-3 --video --outdir=sefa
    """
    check_render_options(seeds)
    cli.check_outdir(outdir)
    with cli.errors_as_messages(DeviceError):
        device = resolve_device(device)
    with cli.errors_as_messages(pickles.NetworkPickleError):
        snapshot, G = inference.load_generator(network_pkl, device, trust_pickle)
    if k > G.w_dim:
        raise click.UsageError(f"--k={k}: the network has only w_dim={G.w_dim} directions")
    directions, rows = save_directions(G, layers, outdir)
    if seeds is None:
        return
    with cli.errors_as_messages(images.ImageChannelsError):
        images.check_channels(G.img_channels)
    with cli.usage_errors(inference.ClassLabelError):
        label = inference.class_label(G.c_dim, class_value, inference.class_names_of(snapshot), device)
    ws = seed_ws(G, seeds, label, truncation_psi, device)
    top = directions[:k]
    grid = sefa.render_edit_grid(G, ws, top, rows, np.linspace(-degrees, degrees, steps), noise_mode)
    save_grid(os.path.join(outdir, GRID_FILE), grid)
    print(f'Saved "{os.path.join(outdir, GRID_FILE)}"')
    if save_video:
        write_edit_video(G, ws, top, rows, degrees, frames, noise_mode, os.path.join(outdir, VIDEO_FILE), fps)


def write_edit_video(G, ws, directions, rows, degrees, num_frames, noise_mode, path, fps) -> None:
    """The edits as an mp4 at `path` (seeds in columns, directions in rows), with a progress bar."""
    if G.img_channels == 4:
        print("warn: an mp4 has no alpha channel: the video shows the RGB channels")
    print(f'Writing {num_frames} frames to "{path}"...')
    frames = sefa.edit_video_frames(G, ws, directions, rows, degrees, num_frames, noise_mode)
    with cli.errors_as_messages(video.VideoError), video.mp4_writer(path, fps) as write:
        for frame in tqdm.tqdm(frames, total=num_frames, unit="frame"):
            write(frame)


# ----------------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    main()
