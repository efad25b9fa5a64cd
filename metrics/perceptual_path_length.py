"""Perceptual Path Length (Karras et al. 2019): LPIPS distance between images generated from two latents a small
step `epsilon` apart, scaled by 1/epsilon^2 and averaged over random points with outliers removed."""

import copy

import numpy as np
import torch

import dnnlib
from metrics import metric_utils

LPIPS_KWARGS = dict(resize_images=False, return_lpips=True)
LPIPS_MAX_RES = 256  # Images are box-down-sampled by R // 256 before LPIPS.
LOW_PERCENTILE = 1  # Outlier rejection: keep values within [1st percentile (lower), 99th percentile (higher)].
HIGH_PERCENTILE = 99


def slerp(a, b, t):
    """Spherical interpolation between the directions of rows `a`, `b` `[N, D]` at fractions `t` `[N, 1]`."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    d = (a * b).sum(dim=-1, keepdim=True)
    p = t * torch.acos(d)
    c = b - d * a
    c = c / c.norm(dim=-1, keepdim=True)
    d = a * torch.cos(p) + c * torch.sin(p)
    return d / d.norm(dim=-1, keepdim=True)


class PPLSampler(torch.nn.Module):
    """Produces one batch of scaled LPIPS path-length samples `[B]` per call from private copies of G and VGG16."""

    def __init__(self, G, G_kwargs, epsilon, space, sampling, crop, vgg16):
        assert space in ["z", "w"], f"space must be 'z' or 'w', got {space!r}"
        assert sampling in ["full", "end"], f"sampling must be 'full' or 'end', got {sampling!r}"
        super().__init__()
        self.G = copy.deepcopy(G)
        self.G_kwargs = G_kwargs
        self.epsilon = epsilon
        self.space = space
        self.sampling = sampling
        self.crop = crop
        self.vgg16 = copy.deepcopy(vgg16)

    def forward(self, c):
        """`c`: labels `[B, c_dim]` on the device. Random draws, in order: t, z pair, noise buffers."""
        t = torch.rand([c.shape[0]], device=c.device) * (1 if self.sampling == "full" else 0)
        z0, z1 = torch.randn([c.shape[0] * 2, self.G.z_dim], device=c.device).chunk(2)

        if self.space == "w":
            w0, w1 = self.G.mapping(z=torch.cat([z0, z1]), c=torch.cat([c, c])).chunk(2)
            wt0 = w0.lerp(w1, t.unsqueeze(1).unsqueeze(2))
            wt1 = w0.lerp(w1, t.unsqueeze(1).unsqueeze(2) + self.epsilon)
        else:
            zt0 = slerp(z0, z1, t.unsqueeze(1))
            zt1 = slerp(z0, z1, t.unsqueeze(1) + self.epsilon)
            wt0, wt1 = self.G.mapping(z=torch.cat([zt0, zt1]), c=torch.cat([c, c])).chunk(2)

        # One shared noise realisation for both images of every pair, so noise does not count as path length.
        for name, buf in self.G.named_buffers():
            if name.endswith(".noise_const"):
                buf.copy_(torch.randn_like(buf))

        img = self.G.synthesis(ws=torch.cat([wt0, wt1]), noise_mode="const", force_fp32=True, **self.G_kwargs)

        if self.crop:
            assert img.shape[2] == img.shape[3], f"crop needs square images, got {list(img.shape)}"
            q = img.shape[2] // 8
            img = img[:, :, q * 3 : q * 7, q * 2 : q * 6]

        # The factor comes from the full resolution even after cropping (reference behaviour).
        factor = self.G.img_resolution // LPIPS_MAX_RES
        if factor > 1:
            img = img.reshape([-1, img.shape[1], img.shape[2] // factor, factor, img.shape[3] // factor, factor])
            img = img.mean([3, 5])

        img = (img + 1) * (255 / 2)
        if self.G.img_channels == 1:
            img = img.repeat([1, 3, 1, 1])

        lpips_t0, lpips_t1 = self.vgg16(img, **LPIPS_KWARGS).chunk(2)
        return (lpips_t0 - lpips_t1).square().sum(1) / self.epsilon**2


def ppl_from_distances(dist):
    """Mean of the float32 samples `[N]` lying within [1st percentile (lower), 99th percentile (higher)], inclusive."""
    lo = np.percentile(dist, LOW_PERCENTILE, method="lower")
    hi = np.percentile(dist, HIGH_PERCENTILE, method="higher")
    return float(np.extract(np.logical_and(dist >= lo, dist <= hi), dist).mean())


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

    dist = []
    progress = opts.progress.sub(tag="ppl sampling", num_items=num_samples)
    for batch_start in range(0, num_samples, batch_size * opts.num_gpus):
        progress.update(batch_start)
        c = metric_utils.sample_labels(dataset, batch_size, opts.device)
        x = sampler(c)
        for src in range(opts.num_gpus):
            y = x.clone()
            if opts.num_gpus > 1:
                torch.distributed.broadcast(y, src=src)
            dist.append(y)
    progress.update(num_samples)

    if opts.rank != 0:
        return float("nan")
    dist = torch.cat(dist)[:num_samples].cpu().numpy()
    return ppl_from_distances(dist)
