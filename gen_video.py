"""Interpolation videos: a grid of latent walks through keyframes from seeds (z) or projected W files."""

import re

import click
import torch
import tqdm

from dnnlib import cli
from torch_utils import images
from torch_utils.launch import DeviceError, resolve_device
from training import inference, pickles, video

# ----------------------------------------------------------------------------------------------------------------------


def parse_grid(ctx, param, value: str) -> tuple[int, int]:
    """`WxH` or `W,H` -> (W, H), both at least 1."""
    match = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*", value)
    if not match or min(int(match.group(1)), int(match.group(2))) < 1:
        raise click.BadParameter(f"expected WxH or W,H with W, H >= 1 (e.g. 2x2), found {value!r}")
    return int(match.group(1)), int(match.group(2))


def check_options(seeds, projected_w, space, class_value, output, frames_dir) -> None:
    """Refuse the combinations of options that have no meaning, before the network is loaded."""
    if (output is None) == (frames_dir is None):
        raise click.UsageError("give exactly one of --output (an mp4) and --frames-dir (PNG frames)")
    if (seeds is None) == (not projected_w):
        raise click.UsageError("give exactly one of --seeds (z keyframes) and --projected-w (w keyframes)")
    if projected_w and space == "z":
        raise click.UsageError("--space=z needs --seeds: --projected-w files hold w vectors, which have no z")
    if projected_w and class_value is not None:
        raise click.UsageError("--class applies to --seeds only: --projected-w files already hold w vectors")
    if output is not None:
        with cli.errors_as_messages(video.VideoError):
            video.check_mp4_name(output)
        cli.check_output_file(output, "--output")
    else:
        cli.check_outdir(frames_dir, "--frames-dir")


def keyframe_latents(G, seeds, projected_w, space, grid, num_keyframes, shuffle_seed, label, psi, device):
    """Keyframes [K, cells, z_dim] (space z) or [K, cells, num_ws, w_dim] (space w, truncated by psi)."""
    num_cells = grid[0] * grid[1]
    with cli.errors_as_messages(video.VideoError):
        if seeds is not None:
            slots = video.assign_keyframes(len(seeds), num_cells, num_keyframes, shuffle_seed, "--seeds")
            z = video.seed_latents(seeds, G.z_dim)[slots]  # [cells, K, z_dim]
            if space == "z":
                return z.transpose(1, 0, 2)
            sources = video.map_z(G, torch.from_numpy(z.reshape(-1, G.z_dim)).to(device, torch.float32), label, psi)
        else:
            ws = video.load_projected_ws(projected_w, G.num_ws, G.w_dim)
            slots = video.assign_keyframes(len(ws), num_cells, num_keyframes, shuffle_seed, "--projected-w")
            sources = video.truncate(G, torch.from_numpy(ws[slots.reshape(-1)]).to(device), psi)
    ws = sources.cpu().numpy().reshape(num_cells, -1, G.num_ws, G.w_dim)
    return ws.transpose(1, 0, 2, 3)


# ----------------------------------------------------------------------------------------------------------------------


@click.command()
@click.option("--network", "network_pkl", help="Snapshot to render from (file or URL)", required=True)
@click.option("--seeds", type=cli.NumRange(seed=True), help="Seeds of the z keyframes, e.g. 0-31 or 3,14,15")
@click.option(
    "--projected-w",
    multiple=True,
    metavar="FILE",
    help="w keyframes: projector.py's projected_w.npz ([N, num_ws, w_dim]); repeat for more files",
)
@click.option("--shuffle-seed", type=int, help="Shuffle the keyframes with this seed [default: keep their order]")
@click.option(
    "--grid", callback=parse_grid, default="1x1", show_default=True, metavar="WxH", help="Cells of the video grid"
)
@click.option(
    "--num-keyframes",
    type=click.IntRange(min=1),
    help="Keyframes per cell; the keyframes are repeated to fill them [default: keyframes / cells]",
)
@click.option(
    "--w-frames",
    type=click.IntRange(min=1),
    default=video.DEFAULT_W_FRAMES,
    show_default=True,
    help="Frames from one keyframe to the next",
)
@click.option("--space", type=click.Choice(video.SPACES), default="w", show_default=True, help="Interpolate in W or Z")
@click.option(
    "--easing", type=click.Choice(video.EASINGS), default="cubic", show_default=True, help="Path between keyframes"
)
@click.option("--loop/--no-loop", default=True, show_default=True, help="Return to the first keyframe at the end")
@cli.truncation_option()
@cli.class_option()
@cli.noise_mode_option()
@click.option(
    "--fps",
    type=click.FloatRange(min=0, min_open=True),
    default=video.DEFAULT_FPS,
    show_default=True,
    help="Frames per second of the mp4",
)
@click.option("--output", metavar="FILE", help="The mp4 to write (replaced only when complete)")
@click.option("--frames-dir", metavar="DIR", help="Write PNG frames frameNNNNN.png here instead of an mp4")
@cli.device_option()
@cli.trust_pickle_option()
@torch.no_grad()
def main(
    network_pkl,
    seeds,
    projected_w,
    shuffle_seed,
    grid,
    num_keyframes,
    w_frames,
    space,
    easing,
    loop,
    truncation_psi,
    class_value,
    noise_mode,
    fps,
    output,
    frames_dir,
    device,
    trust_pickle,
):
    """Render a video of latent walks through keyframes, one walk per cell of a --grid.

    Keyframes are the z of --seeds (RandomState(seed).randn(z_dim), as generate.py) or the w rows of --projected-w
    files. They are repeated cyclically to fill --num-keyframes per cell (optionally shuffled with --shuffle-seed);
    cell i of a WxH grid takes keyframes i*K .. i*K + K - 1 and sits at row i // W. The walk moves --w-frames frames
    from one keyframe to the next, along a cubic spline (--easing=cubic) or straight lines (linear), in W (--space=w:
    seeds are mapped and truncated first) or in Z (--space=z: every frame's z is mapped and truncated). --loop (the
    default) returns to the first keyframe: K * w-frames frames; --no-loop stops on the last: (K-1) * w-frames + 1.

    The mp4 (H.264) shows grayscale networks in gray and drops the alpha of 4-channel networks; --frames-dir keeps
    every channel (PNG frames frame00000.png, ...). With the defaults, the walk is that of NVIDIA's gen_video.py.

    \b
    Examples:
      python gen_video.py --network=snapshot.pkl --seeds=0-31 --grid=4x2 --output=lerp.mp4
      python gen_video.py --network=snapshot.pkl --seeds=0-3 --w-frames=60 --easing=linear --no-loop \\
          --space=z --output=walk.mp4
      python gen_video.py --network=snapshot.pkl --projected-w=a/projected_w.npz --projected-w=b/projected_w.npz \\
          --frames-dir=frames
    """
    check_options(seeds, projected_w, space, class_value, output, frames_dir)
    with cli.errors_as_messages(DeviceError):
        device = resolve_device(device)
    with cli.errors_as_messages(pickles.NetworkPickleError):
        snapshot, G = inference.load_generator(network_pkl, device, trust_pickle)
    with cli.errors_as_messages(images.ImageChannelsError):
        images.check_channels(G.img_channels)
    if output is not None and G.img_channels == 4:
        print("warn: an mp4 has no alpha channel: the video shows the RGB channels; --frames-dir keeps the alpha")
    label = None
    if seeds is not None:
        with cli.usage_errors(inference.ClassLabelError):
            label = inference.class_label(G.c_dim, class_value, inference.class_names_of(snapshot), device)
    keyframes = keyframe_latents(
        G, seeds, projected_w, space, grid, num_keyframes, shuffle_seed, label, truncation_psi, device
    )
    with cli.errors_as_messages(video.VideoError):
        walk = video.LatentWalk(keyframes, w_frames, easing, loop)
    write_video(G, walk, space, grid, label, truncation_psi, noise_mode, device, output, frames_dir, fps)


def write_video(G, walk, space, grid, label, truncation_psi, noise_mode, device, output, frames_dir, fps) -> None:
    """Render every frame of `walk` into the mp4 `output` or the folder `frames_dir`, with a progress bar."""
    if frames_dir is not None:
        cli.make_outdir(frames_dir, "--frames-dir")
        stale = video.stale_frames(frames_dir, walk.num_frames)
        if stale:
            print(f"warn: --frames-dir {frames_dir} keeps {len(stale)} older frames from {stale[0]} on")
        writer = video.frames_dir_writer(frames_dir)
    else:
        writer = video.mp4_writer(output, fps)
    target = output if output is not None else frames_dir
    print(f'Writing {walk.num_frames} frames to "{target}"...')
    frames = video.walk_frames(G, walk, space, grid, label, truncation_psi, noise_mode, device)
    with cli.errors_as_messages(video.VideoError), writer as write:
        for frame in tqdm.tqdm(frames, total=walk.num_frames, unit="frame"):
            write(frame)


# ----------------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    main()
