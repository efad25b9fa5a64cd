"""Project a target image into the W (or W+) space of a trained generator; the algorithm is training/projection.py."""

import os
import time

import click
import numpy as np
import PIL.Image
import torch

import dnnlib
from dnnlib import atomic, cli
from torch_utils import images
from torch_utils.launch import DeviceError, resolve_device
from training import inference, networks, pickles, projection

# ----------------------------------------------------------------------------------------------------------------------
# Constants of the command line.

DEFAULT_SEED = 303  # Default --seed of the command line.

# PIL modes of 16-bit grayscale images ('I' is how PNG/TIFF readers may return them): convert() would clip them to
# white, so they are scaled to 8 bits first.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
MAX_16BIT = 65535

VIDEO_FPS = 10
VIDEO_CODEC = "libx264"
VIDEO_BITRATE = "16M"

# ----------------------------------------------------------------------------------------------------------------------
# Command-line helpers.


def to_8bit(img: PIL.Image.Image, mode: str) -> PIL.Image.Image:
    """Any PIL image -> 8-bit image of `mode` (L, RGB or RGBA); 16-bit grayscale keeps its top 8 bits.

    Mode 'I' is taken as 0..65535. Colour to grayscale uses PIL's luma formula; a missing alpha becomes opaque.
    """
    if img.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(img).astype(np.int64), 0, MAX_16BIT)
        return PIL.Image.fromarray((values >> 8).astype(np.uint8)).convert(mode)
    return img.convert(mode)


def read_target_image(path: str) -> PIL.Image.Image:
    """Open and decode the target with PIL (its own mode); unreadable or too large files are a one-line CLI error.

    The declared size is checked before decoding (`images.open_image`), so a tiny file claiming gigapixels fails.
    """
    try:
        with images.open_image(path, path) as img:
            return img.copy()  # decoded; the file is closed on leaving the block
    except images.ImageFileError as exc:
        raise click.ClickException(f"Cannot read target image {exc}") from exc
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"Cannot read target image {path}: {exc}") from exc


def prepare_target(image: PIL.Image.Image, height: int, width: int) -> np.ndarray:
    """Centre crop to the aspect `width:height`, Lanczos resize to `width x height` -> uint8 `[H, W, C]`.

    For a square network this is the reference's centre square crop.
    """
    w, h = image.size
    crop_w, crop_h = (h * width // height, h) if w * height >= h * width else (w, w * height // width)
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h))
    image = image.resize((width, height), PIL.Image.LANCZOS)
    pixels = np.array(image, dtype=np.uint8)
    return pixels.reshape(height, width, -1)  # grayscale [H, W] -> [H, W, 1]


def check_generator(G, network_pkl: str):
    """The projector needs an unconditional generator (W statistics are mapped without labels) with a PNG mode."""
    if G.c_dim != 0:
        raise click.ClickException(
            f"{network_pkl}: the projector supports unconditional networks only; found c_dim={G.c_dim}"
        )
    with cli.errors_as_messages(images.ImageChannelsError, prefix=f"{network_pkl}: "):
        images.check_channels(G.img_channels)


def video_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 `[H, W, C]` -> the `[H, W, 3]` a video frame shows: grayscale repeated, RGBA without alpha."""
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]


@torch.no_grad()
def render_w(G, w: torch.Tensor) -> np.ndarray:
    """W `[num_ws, w_dim]` -> uint8 `[H, W, C]` with constant noise, by the projector's formula (`projector_to_hwc`)."""
    return images.projector_to_hwc(G.synthesis(w.unsqueeze(0), noise_mode="const"))[0]


def write_progress_video(path: str, G, target_uint8: np.ndarray, projected_w_steps: torch.Tensor):
    """One RGB frame per step: target (left) next to the rendering of that step's W (right)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise click.ClickException(
            "--save-video needs the imageio-ffmpeg package (pip install imageio-ffmpeg), or pass --save-video=0"
        ) from exc
    height, width = target_uint8.shape[0], 2 * target_uint8.shape[1]
    with atomic.atomic_path(path) as tmp_path:  # an interrupted run leaves an earlier proj.mp4 as it was
        writer = imageio_ffmpeg.write_frames(
            tmp_path, (width, height), fps=VIDEO_FPS, codec=VIDEO_CODEC, bitrate=VIDEO_BITRATE, pix_fmt_in="rgb24"
        )
        writer.send(None)  # start the ffmpeg process
        try:
            for w in projected_w_steps:
                frame = video_rgb(np.concatenate([target_uint8, render_w(G, w)], axis=1))
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()


def save_outputs(outdir: str, G, target_uint8: np.ndarray, projected_w_steps: torch.Tensor, save_video: bool):
    """proj.mp4 (if asked), target.png, proj.png and projected_w.npz (the last step's W as `[1, num_ws, w_dim]`)."""
    if save_video:
        video_path = f"{outdir}/proj.mp4"
        print(f'Saving optimization progress video "{video_path}"')
        write_progress_video(video_path, G, target_uint8, projected_w_steps)

    images.save_png(target_uint8, f"{outdir}/target.png")
    projected_w = projected_w_steps[-1]  # [num_ws, w_dim]
    images.save_png(render_w(G, projected_w), f"{outdir}/proj.png")
    w = projected_w.unsqueeze(0).cpu().numpy()  # [1, num_ws, w_dim]
    atomic.atomic_write(f"{outdir}/projected_w.npz", lambda f: np.savez(f, w=w))


# ----------------------------------------------------------------------------------------------------------------------


@click.command()
@click.option("--network", "network_pkl", help="Snapshot whose generator is inverted (file or URL)", required=True)
@click.option("--target", "target_fname", help="Image to reconstruct", required=True, metavar="FILE")
@click.option("--num-steps", help="Adam steps to run", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--seed", help="Seed for numpy and torch", type=int, default=DEFAULT_SEED, show_default=True)
@click.option(
    "--save-video",
    help="Also write proj.mp4 showing every step next to the target",
    type=bool,
    default=True,
    show_default=True,
)
@click.option(
    "--w-plus",
    is_flag=True,
    help="Optimise one w per layer (W+) instead of a single w for all layers; reaches closer images",
)
@click.option(
    "--outdir", help="Folder for target.png, proj.png, projected_w.npz and the video", required=True, metavar="DIR"
)
@cli.device_option()
@cli.trust_pickle_option()
def run_projection(
    network_pkl: str,
    target_fname: str,
    outdir: str,
    save_video: bool,
    seed: int,
    num_steps: int,
    w_plus: bool,
    device: str,
    trust_pickle: bool,
):
    """Project a target image into the W latent space of a network pickle (file name or URL; G_ema is used).

    Writes <outdir>/target.png (the target cropped to the network's aspect and resized), <outdir>/proj.png (the
    final projection), <outdir>/projected_w.npz (array w of shape [1, num_ws, w_dim]; with --w-plus its rows
    differ) and, unless --save-video=0, <outdir>/proj.mp4. Grayscale and RGBA networks get targets converted to
    their channel count; the VGG16 distance sees grayscale repeated to RGB, and RGBA without alpha. The VGG16
    LPIPS network is downloaded on first use, or read from $STYLEGAN_DETECTOR_DIR/vgg16.pt.

    \b
    Examples:
      python projector.py --network=snapshot.pkl --target=photo.png --outdir=out
      python projector.py --network=snapshot.pkl --target=photo.png --w-plus --device=cpu --outdir=out
      python generate.py --network=snapshot.pkl --projected-w=out/projected_w.npz --outdir=out
    """
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds the CPU and every CUDA device

    with cli.errors_as_messages(DeviceError):
        device = resolve_device(device)
    target_pil = read_target_image(os.path.expanduser(target_fname))
    cli.make_outdir(outdir)  # before the (long) projection, so that a bad --outdir cannot lose the run

    with cli.errors_as_messages(pickles.NetworkPickleError):
        _, G = inference.load_generator(network_pkl, device, trust_pickle)
    G.requires_grad_(False)
    check_generator(G, network_pkl)

    height, width = networks.image_size(G)
    target_uint8 = prepare_target(to_8bit(target_pil, images.PIL_MODES[G.img_channels]), height, width)

    start_time = time.perf_counter()
    with cli.errors_as_messages(dnnlib.util.DownloadError):  # VGG16, offline: the message says where to put it.
        projected_w_steps = projection.project(
            G,
            target=torch.tensor(target_uint8.transpose([2, 0, 1]), device=device),
            num_steps=num_steps,
            w_plus=w_plus,
            device=device,
            verbose=True,
        )
    print(f"Elapsed: {(time.perf_counter() - start_time):.1f} s")

    save_outputs(outdir, G, target_uint8, projected_w_steps, save_video)


# ----------------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    run_projection()
