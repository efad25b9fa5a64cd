"""Projection of a target image into the latent space of a trained generator (LPIPS distance + noise regulariser).

`project(G, target)` is the reference projector's algorithm (docs: spec "Projector"): one W broadcast to all layers,
optimised with Adam together with the synthesis noise maps. With `w_plus=True` it optimises one W per layer instead
(the "W+" space), which reaches images the single W cannot. Targets are `[C, H, W]` pixel tensors with the
network's channel count and image shape (square or not); the VGG16 perceptual distance sees three channels
(grayscale repeated, RGBA without alpha). Used by projector.py. Imports: numpy, torch, metrics.metric_utils,
torch_utils.
"""

import copy

import numpy as np
import torch
import torch.nn.functional as F

from metrics import metric_utils
from torch_utils import images, misc

# ----------------------------------------------------------------------------------------------------------------------
# Constants of the reference projector.

W_STATS_SEED = 123  # Fixed seed of the z samples that define the starting point and scale of the search.
LPIPS_MAX_RESOLUTION = 256  # Larger images are area-downsampled so that their larger side is this long.
LPIPS_KWARGS = dict(resize_images=False, return_lpips=True)
LPIPS_CHANNELS = 3  # VGG16 sees RGB.
NOISE_REG_MIN_RESOLUTION = 8  # The noise regulariser stops halving a buffer once it is this small.
ADAM_BETAS = (0.9, 0.999)


# ----------------------------------------------------------------------------------------------------------------------
# Pieces of the algorithm.


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


def perceptual_view(pixels: torch.Tensor) -> torch.Tensor:
    """`[N, C, H, W]` (C = 1, 3 or 4) -> the `[N, 3, H, W]` VGG16 sees: grayscale repeated, RGBA without alpha."""
    channels = pixels.shape[1]
    if channels == 1:
        return pixels.repeat([1, LPIPS_CHANNELS, 1, 1])
    if channels == 4:
        return pixels[:, :LPIPS_CHANNELS]
    misc.assert_shape(pixels, [None, LPIPS_CHANNELS, None, None])
    return pixels


def lpips_size(height: int, width: int) -> tuple[int, int]:
    """(H, W) the LPIPS embedding is computed at: unchanged up to 256, else shrunk keeping the aspect (square: 256)."""
    longest = max(height, width)
    if longest <= LPIPS_MAX_RESOLUTION:
        return height, width
    return height * LPIPS_MAX_RESOLUTION // longest, width * LPIPS_MAX_RESOLUTION // longest


def lpips_features(vgg16, pixels: torch.Tensor) -> torch.Tensor:
    """Float images `[N, C, H, W]` in pixel range -> LPIPS embedding `[N, D]` (area-shrunk when larger than 256)."""
    pixels = perceptual_view(pixels)
    size = lpips_size(pixels.shape[2], pixels.shape[3])
    if size != tuple(pixels.shape[2:]):
        pixels = F.interpolate(pixels, size=size, mode="area")
    return vgg16(pixels, **LPIPS_KWARGS)


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


def _restart_noise(noise_bufs) -> None:
    """Fresh standard normals in every noise buffer, so the optimised maps do not inherit the training constants."""
    for buf in noise_bufs:
        buf[:] = torch.randn_like(buf)
        buf.requires_grad = True


@torch.no_grad()
def _renormalize_noise(noise_bufs) -> None:
    """Zero mean and unit RMS for every noise buffer (in place, after each step)."""
    for buf in noise_bufs:
        buf -= buf.mean()
        buf *= buf.square().mean().rsqrt()


# ----------------------------------------------------------------------------------------------------------------------
# The projection loop.


def _step_loss(G, ws, target_shape, target_features, vgg16, noise_bufs, regularize_noise_weight):
    """(LPIPS distance, loss) of the image of `ws` `[1, num_ws, w_dim]` (scalars with gradients)."""
    synth_images = images.projector_pixels(G.synthesis(ws, noise_mode="const"))
    misc.assert_shape(synth_images, list(target_shape))  # the target has the network's channels and shape
    dist = (target_features - lpips_features(vgg16, synth_images)).square().sum()
    return dist, dist + noise_regularization(noise_bufs) * regularize_noise_weight


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
    w_plus=False,
    verbose=False,
    device: torch.device,
) -> torch.Tensor:
    """Find the W whose image is closest to `target` `[C, H, W]` (pixel range, G's channels and shape) in LPIPS.

    Returns the W after every step, `[num_steps, num_ws, w_dim]` float32 on `device`: one w broadcast to all layers
    (the reference), or with `w_plus` one w per layer, all starting at the mean W. Random draws: the noise buffers'
    restart values, then one W perturbation per step (`[1, 1, w_dim]`, with `w_plus` `[1, num_ws, w_dim]`).
    """
    misc.assert_shape(target, [G.img_channels, None, None])
    logprint = print if verbose else (lambda *args: None)
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)  # the caller's noise buffers stay untouched
    num_ws = G.mapping.num_ws

    logprint(f"Computing W midpoint and stddev using {w_avg_samples} samples...")
    w_avg, w_std = compute_w_stats(G, w_avg_samples, device)
    noise_bufs = [buf for name, buf in G.synthesis.named_buffers() if "noise_const" in name]
    vgg16 = metric_utils.get_feature_detector(metric_utils.VGG16_URL, device=device, verbose=verbose)
    target_images = target.unsqueeze(0).to(device).to(torch.float32)
    target_features = lpips_features(vgg16, target_images)

    w_start = np.repeat(w_avg, num_ws, axis=1) if w_plus else w_avg  # [1, num_ws or 1, w_dim]
    w_opt = torch.tensor(w_start, dtype=torch.float32, device=device, requires_grad=True)
    w_out = torch.zeros([num_steps, *w_opt.shape[1:]], dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam([w_opt, *noise_bufs], betas=ADAM_BETAS, lr=initial_learning_rate)
    _restart_noise(noise_bufs)

    for step in range(num_steps):
        t = step / num_steps
        w_noise_scale = noise_scale_at(t, w_std, initial_noise_factor, noise_ramp_length)
        lr = learning_rate_at(t, initial_learning_rate, lr_rampdown_length, lr_rampup_length)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr

        ws = w_opt + torch.randn_like(w_opt) * w_noise_scale
        ws = ws if w_plus else ws.repeat([1, num_ws, 1])  # [1, num_ws, w_dim]
        dist, loss = _step_loss(G, ws, target_images.shape, target_features, vgg16, noise_bufs, regularize_noise_weight)

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        logprint(f"step {step + 1:>4d}/{num_steps}: dist {dist.item():<4.2f} loss {loss.item():<5.2f}")
        w_out[step] = w_opt.detach()[0]
        _renormalize_noise(noise_bufs)

    return w_out if w_plus else w_out.repeat([1, num_ws, 1])
