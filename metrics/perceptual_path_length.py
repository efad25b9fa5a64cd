"""Perceptual Path Length (Karras et al. 2019): LPIPS distance between images generated from two latents a small
step `epsilon` apart, scaled by 1/epsilon^2 and averaged over random points with outliers removed."""

import copy

import numpy as np
import torch

import dnnlib
from metrics import metric_utils
from torch_utils import misc

LPIPS_KWARGS = dict(resize_images=False, return_lpips=True)
LPIPS_MAX_RES = 256  # Images are box-down-sampled by R // 256 before LPIPS.
LOW_PERCENTILE = 1  # Outlier rejection: keep values within [1st percentile (lower), 99th percentile (higher)].
HIGH_PERCENTILE = 99


def slerp(a, b, t):
    """Spherical interpolation between the directions of rows `a`, `b` `[N, D]` at fractions `t` `[N, 1]`."""
    start = torch.nn.functional.normalize(a, dim=-1)
    end = torch.nn.functional.normalize(b, dim=-1)
    cos_angle = (start * end).sum(dim=-1, keepdim=True)
    # Unit vector orthogonal to `start` in the plane of both directions: the arc is start*cos + ortho*sin.
    ortho = torch.nn.functional.normalize(end - cos_angle * start, dim=-1)
    angle = t * torch.acos(cos_angle)
    return torch.nn.functional.normalize(start * torch.cos(angle) + ortho * torch.sin(angle), dim=-1)


class PPLSampler(torch.nn.Module):
    """Produces one batch of scaled LPIPS path-length samples `[B]` per call from private copies of G and VGG16."""

    def __init__(self, G, G_kwargs, epsilon, space, sampling, crop, vgg16):
        assert space in ["z", "w"], f"space must be 'z' or 'w', got {space!r}"
        assert sampling in ["full", "end"], f"sampling must be 'full' or 'end', got {sampling!r}"
        super().__init__()
        # Own copies of both networks: every call refills G's noise buffers, and `.to(device)` or tracing the sampler
        # must leave the caller's modules (and the shared detector cache entry) alone.
        self.G, self.vgg16 = copy.deepcopy(G), copy.deepcopy(vgg16)
        self.G_kwargs = G_kwargs
        self.space, self.sampling, self.crop, self.epsilon = space, sampling, crop, epsilon

    def _path_ws(self, pos, z0, z1, c):
        """Latents at path positions `pos` and `pos + epsilon`, stacked: `[2B, num_ws, w_dim]`."""
        steps = (pos, pos + self.epsilon)
        both_c = torch.cat([c, c])
        if self.space == "w":
            w_start, w_end = self.G.mapping(z=torch.cat([z0, z1]), c=both_c).chunk(2)
            return torch.cat([w_start.lerp(w_end, step[:, None, None]) for step in steps])
        return self.G.mapping(z=torch.cat([slerp(z0, z1, step[:, None]) for step in steps]), c=both_c)

    def _refresh_noise(self):
        # One shared noise realisation for both images of every pair, so noise does not count as path length.
        for name, buf in self.G.named_buffers():
            if name.endswith(".noise_const"):
                buf.copy_(torch.randn_like(buf))

    def _lpips_input(self, img):
        """Synthesised images `[2B, C, H, W]` -> VGG16 input: cropped, box-filtered, pixel range, three channels."""
        if self.crop:
            # The face crop in eighths of each side: rows 3/8..7/8, columns 2/8..6/8 (non-square images alike).
            row, col = img.shape[2] // 8, img.shape[3] // 8
            img = img[:, :, 3 * row : 7 * row, 2 * col : 6 * col]
        # The factor comes from the full resolution even after cropping (reference behaviour).
        factor = self.G.img_resolution // LPIPS_MAX_RES
        if factor > 1:
            img = img.unflatten(3, (-1, factor)).unflatten(2, (-1, factor)).mean([3, 5])
        img = (img + 1) * (255 / 2)
        return metric_utils.detector_rgb(img)

    def forward(self, c):
        """`c`: labels `[B, c_dim]` on the device. Random draws, in order: t, z pair, noise buffers."""
        batch = c.shape[0]
        pos = torch.rand([batch], device=c.device) * (1 if self.sampling == "full" else 0)
        z0, z1 = torch.randn([batch * 2, self.G.z_dim], device=c.device).chunk(2)
        ws = self._path_ws(pos, z0, z1, c)
        self._refresh_noise()
        img = self.G.synthesis(ws=ws, noise_mode="const", force_fp32=True, **self.G_kwargs)
        embed_here, embed_next = self.vgg16(self._lpips_input(img), **LPIPS_KWARGS).chunk(2)
        return (embed_here - embed_next).square().sum(1) / self.epsilon**2


def ppl_from_distances(dist):
    """Mean of the float32 samples `[N]` lying within [1st percentile (lower), 99th percentile (higher)], inclusive."""
    lo = np.percentile(dist, LOW_PERCENTILE, method="lower")
    hi = np.percentile(dist, HIGH_PERCENTILE, method="higher")
    return float(dist[(lo <= dist) & (dist <= hi)].mean())


def compute_ppl(opts, num_samples, epsilon, space, sampling, crop, batch_size, jit=False):
    """PPL over `num_samples` random paths (rank 0; NaN elsewhere). `batch_size` is per process."""
    dataset = dnnlib.util.construct_class_by_name(**opts.dataset_kwargs)  # Only a source of labels.
    vgg16 = metric_utils.get_feature_detector(
        metric_utils.VGG16_URL, num_gpus=opts.num_gpus, rank=opts.rank, verbose=opts.progress.verbose
    )

    sampler = PPLSampler(
        G=opts.G, G_kwargs=opts.G_kwargs, epsilon=epsilon, space=space, sampling=sampling, crop=crop, vgg16=vgg16
    )
    sampler.eval().requires_grad_(False).to(opts.device)
    if jit:
        c = torch.zeros([batch_size, opts.G.c_dim], device=opts.device)
        sampler = torch.jit.trace(sampler, [c], check_trace=False)

    samples = []  # [B] tensors: per round, one from every process in rank order.
    progress = opts.progress.sub(tag="ppl sampling", num_items=num_samples)
    for done in range(0, num_samples, batch_size * opts.num_gpus):
        progress.update(done)
        labels = misc.sample_labels(dataset, batch_size, opts.device)
        samples += misc.gather_from_ranks(sampler(labels), opts.num_gpus)
    progress.update(num_samples)

    if opts.rank != 0:
        return float("nan")
    return ppl_from_distances(torch.cat(samples)[:num_samples].cpu().numpy())
