"""Project a target image into the W space of a trained generator (LPIPS distance + noise regularisation)."""

import copy
import os
import time

import click
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

import dnnlib
from dnnlib import cli
from metrics import metric_utils
from torch_utils import images, misc
from torch_utils.launch import default_device
from training import pickles

# ----------------------------------------------------------------------------------------------------------------------
# Constants of the reference projector.

W_STATS_SEED = 123  # Fixed seed of the z samples that define the starting point and scale of the search.
DEFAULT_SEED = 303  # Default --seed of the command line.
LPIPS_MAX_RESOLUTION = 256  # Larger images are area-downsampled to this size before the VGG16 LPIPS embedding.
LPIPS_KWARGS = dict(resize_images=False, return_lpips=True)
NOISE_REG_MIN_RESOLUTION = 8  # The noise regulariser stops halving a buffer once it is this small.
ADAM_BETAS = (0.9, 0.999)

# PIL modes of 16-bit grayscale images ('I' is how PNG/TIFF readers may return them): convert('RGB') would clip
# them to white, so they are scaled to 8 bits first.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
MAX_16BIT = 65535

VIDEO_FPS = 10
VIDEO_CODEC = "libx264"
VIDEO_BITRATE = "16M"

# ----------------------------------------------------------------------------------------------------------------------
# Projection.


def compute_w_stats(G, num_samples: int, device: torch.device) -> tuple[np.ndarray, float]:
    """Mean W `[1, 1, w_dim]` (float32) and the scalar RMS distance of W samples to it.

    The z samples come from `RandomState(123)`, independent of the global RNG state.
    """
    z_samples = np.random.RandomState(W_STATS_SEED).randn(num_samples, G.z_dim)
    w_samples = G.mapping(torch.from_numpy(z_samples).to(device), None)  # [Ns, num_ws, w_dim]
    w_samples = w_samples[:, :1, :].cpu().numpy().astype(np.float32)  # all layers are equal; keep one
    w_avg = np.mean(w_samples, axis=0, keepdims=True)
    w_std = float((np.sum((w_samples - w_avg) ** 2) / num_samples) ** 0.5)
    return w_avg, w_std


def lpips_features(vgg16, images: torch.Tensor) -> torch.Tensor:
    """Float images `[N, 3, H, W]` in pixel range -> LPIPS embedding `[N, D]` (area-shrunk to 256 when larger)."""
    if images.shape[2] > LPIPS_MAX_RESOLUTION:
        images = F.interpolate(images, size=(LPIPS_MAX_RESOLUTION, LPIPS_MAX_RESOLUTION), mode="area")
    return vgg16(images, **LPIPS_KWARGS)


def noise_regularization(noise_bufs) -> torch.Tensor:
    """Sum over buffers and pyramid levels of squared one-pixel circular autocorrelations along x and y.

    Penalising spatial correlation stops the optimised noise maps from smuggling image content past W.
    """
    reg = 0.0
    for buf in noise_bufs:
        noise = buf[None, None, :, :]  # [1, 1, H, W]
        while True:
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=3)).mean() ** 2
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=2)).mean() ** 2
            if noise.shape[2] <= NOISE_REG_MIN_RESOLUTION:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return reg


def learning_rate_at(t: float, initial_learning_rate: float, rampdown_length: float, rampup_length: float) -> float:
    """Linear ramp-up over the first `rampup_length`, cosine ramp-down over the last `rampdown_length` of t."""
    ramp = min(1.0, (1.0 - t) / rampdown_length)
    ramp = 0.5 - 0.5 * np.cos(ramp * np.pi)
    ramp = ramp * min(1.0, t / rampup_length)
    return initial_learning_rate * ramp


def noise_scale_at(t: float, w_std: float, initial_noise_factor: float, noise_ramp_length: float) -> float:
    """Std of the exploration noise added to W; decays quadratically to zero at `noise_ramp_length`."""
    return w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp_length) ** 2


def project(
    G,
    target: torch.Tensor,
    *,
    num_steps=1000,
    w_avg_samples=10000,
    initial_learning_rate=0.1,
    initial_noise_factor=0.05,
    lr_rampdown_length=0.25,
    lr_rampup_length=0.05,
    noise_ramp_length=0.75,
    regularize_noise_weight=1e5,
    verbose=False,
    device: torch.device,
) -> torch.Tensor:
    """Find the W whose image is closest to `target` `[C, R, R]` (pixel range) in LPIPS distance.

    Returns the W after every step, broadcast to all layers: `[num_steps, num_ws, w_dim]` float32 on `device`.
    Random draws: the noise buffers' restart values, then one W perturbation per step (torch RNG of `device`).
    """
    misc.assert_shape(target, [G.img_channels, G.img_resolution, G.img_resolution])

    def logprint(*args):
        if verbose:
            print(*args)

    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)  # the caller's noise buffers stay untouched

    logprint(f"Computing W midpoint and stddev using {w_avg_samples} samples...")
    w_avg, w_std = compute_w_stats(G, w_avg_samples, device)

    noise_bufs = [buf for name, buf in G.synthesis.named_buffers() if "noise_const" in name]

    vgg16 = metric_utils.get_feature_detector(metric_utils.VGG16_URL, device=device, verbose=verbose)

    target_images = target.unsqueeze(0).to(device).to(torch.float32)
    target_features = lpips_features(vgg16, target_images)

    w_opt = torch.tensor(w_avg, dtype=torch.float32, device=device, requires_grad=True)  # [1, 1, w_dim]
    w_out = torch.zeros([num_steps, *w_opt.shape[1:]], dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam([w_opt, *noise_bufs], betas=ADAM_BETAS, lr=initial_learning_rate)

    # Restart the noise from scratch so the optimised maps do not inherit the training-time constants.
    for buf in noise_bufs:
        buf[:] = torch.randn_like(buf)
        buf.requires_grad = True

    for step in range(num_steps):
        t = step / num_steps
        w_noise_scale = noise_scale_at(t, w_std, initial_noise_factor, noise_ramp_length)
        lr = learning_rate_at(t, initial_learning_rate, lr_rampdown_length, lr_rampup_length)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr

        w_noise = torch.randn_like(w_opt) * w_noise_scale
        ws = (w_opt + w_noise).repeat([1, G.mapping.num_ws, 1])
        synth_images = images.projector_pixels(G.synthesis(ws, noise_mode="const"))
        synth_features = lpips_features(vgg16, synth_images)
        dist = (target_features - synth_features).square().sum()

        loss = dist + noise_regularization(noise_bufs) * regularize_noise_weight

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        logprint(f"step {step + 1:>4d}/{num_steps}: dist {dist.item():<4.2f} loss {loss.item():<5.2f}")

        w_out[step] = w_opt.detach()[0]

        with torch.no_grad():
            for buf in noise_bufs:
                buf -= buf.mean()
                buf *= buf.square().mean().rsqrt()

    return w_out.repeat([1, G.mapping.num_ws, 1])


# ----------------------------------------------------------------------------------------------------------------------
# Command-line helpers.


def to_rgb8(img: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL image -> 8-bit RGB; 16-bit grayscale keeps its top 8 bits (mode 'I' is taken as 0..65535)."""
    if img.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(img).astype(np.int64), 0, MAX_16BIT)
        return PIL.Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def read_target_image(path: str) -> PIL.Image.Image:
    """Open the target with PIL as 8-bit RGB; unreadable files become a one-line CLI error."""
    try:
        with PIL.Image.open(path) as img:
            return to_rgb8(img)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"Cannot read target image {path}: {exc}") from exc


def prepare_target(image: PIL.Image.Image, resolution: int) -> np.ndarray:
    """Centre square crop, Lanczos resize to `resolution` -> uint8 `[R, R, 3]`."""
    w, h = image.size
    s = min(w, h)
    image = image.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))
    image = image.resize((resolution, resolution), PIL.Image.LANCZOS)
    return np.array(image, dtype=np.uint8)


def check_generator(G, network_pkl: str):
    """The projector needs an unconditional RGB generator (W statistics are mapped without labels)."""
    if G.c_dim != 0:
        raise click.ClickException(
            f"{network_pkl}: the projector supports unconditional networks only; found c_dim={G.c_dim}"
        )
    if G.img_channels != 3:
        raise click.ClickException(
            f"{network_pkl}: the projector supports RGB networks only; found img_channels={G.img_channels}"
        )


@torch.no_grad()
def render_w(G, w: torch.Tensor) -> np.ndarray:
    """W `[num_ws, w_dim]` -> uint8 `[R, R, 3]` with constant noise, by the projector's formula (`projector_to_hwc`)."""
    return images.projector_to_hwc(G.synthesis(w.unsqueeze(0), noise_mode="const"))[0]


def write_progress_video(path: str, G, target_uint8: np.ndarray, projected_w_steps: torch.Tensor):
    """One frame per step: target (left) next to the rendering of that step's W (right)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise click.ClickException(
            "--save-video needs the imageio-ffmpeg package (pip install imageio-ffmpeg), or pass --save-video=0"
        ) from exc
    height, width = target_uint8.shape[0], 2 * target_uint8.shape[1]
    writer = imageio_ffmpeg.write_frames(
        path, (width, height), fps=VIDEO_FPS, codec=VIDEO_CODEC, bitrate=VIDEO_BITRATE, pix_fmt_in="rgb24"
    )
    writer.send(None)  # start the ffmpeg process
    try:
        for w in projected_w_steps:
            frame = np.concatenate([target_uint8, render_w(G, w)], axis=1)
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


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
    "--outdir", help="Folder for target.png, proj.png, projected_w.npz and the video", required=True, metavar="DIR"
)
def run_projection(network_pkl: str, target_fname: str, outdir: str, save_video: bool, seed: int, num_steps: int):
    """Project a target image into the W latent space of a network pickle (file name or URL; G_ema is used).

    Writes <outdir>/target.png (the cropped and resized target), <outdir>/proj.png (the final projection),
    <outdir>/projected_w.npz (array w of shape [1, num_ws, w_dim]) and, unless --save-video=0, <outdir>/proj.mp4.
    The VGG16 LPIPS network is downloaded on first use, or read from $STYLEGAN_DETECTOR_DIR/vgg16.pt.

    \b
    Examples:
      python projector.py --network=snapshot.pkl --target=photo.png --outdir=out
      python generate.py --network=snapshot.pkl --projected-w=out/projected_w.npz --outdir=out
    """
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds the CPU and every CUDA device

    target_pil = read_target_image(os.path.expanduser(target_fname))
    cli.make_outdir(outdir)  # before the (long) projection, so that a bad --outdir cannot lose the run

    print(f'Loading networks from "{network_pkl}"...')
    device = default_device()
    with cli.errors_as_messages(pickles.NetworkPickleError):
        G = pickles.load_network_from(network_pkl)["G_ema"].to(device).requires_grad_(False)
    check_generator(G, network_pkl)

    target_uint8 = prepare_target(target_pil, G.img_resolution)

    start_time = time.perf_counter()
    with cli.errors_as_messages(dnnlib.util.DownloadError):  # VGG16, offline: the message says where to put it.
        projected_w_steps = project(
            G,
            target=torch.tensor(target_uint8.transpose([2, 0, 1]), device=device),
            num_steps=num_steps,
            device=device,
            verbose=True,
        )
    print(f"Elapsed: {(time.perf_counter() - start_time):.1f} s")

    if save_video:
        video_path = f"{outdir}/proj.mp4"
        print(f'Saving optimization progress video "{video_path}"')
        write_progress_video(video_path, G, target_uint8, projected_w_steps)

    PIL.Image.fromarray(target_uint8, "RGB").save(f"{outdir}/target.png")
    projected_w = projected_w_steps[-1]  # [num_ws, w_dim]
    PIL.Image.fromarray(render_w(G, projected_w), "RGB").save(f"{outdir}/proj.png")
    np.savez(f"{outdir}/projected_w.npz", w=projected_w.unsqueeze(0).cpu().numpy())


# ----------------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    run_projection()
