"""StyleGAN2 training loss: non-saturating logistic loss with lazy R1 and path-length regularisation.

The training loop calls `accumulate_gradients` once per phase and round; every part of a phase runs its own
`backward()`, so gradients add up in the parameters' `.grad` across parts and rounds.

The random draws on the global generator are part of the contract (docs/compatibility.md, "Loss"): exactly the
listed calls, in the listed order, with the listed shapes, so that a seeded run matches the reference.
"""

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import training_stats
from torch_utils.ops import conv2d_gradfix

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")


class Loss:
    """Interface the training loop relies on: one call accumulates one round of one phase into `.grad`."""

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, sync, gain):
        raise NotImplementedError(f"{type(self).__name__} must implement accumulate_gradients()")


class StyleGAN2Loss(Loss):
    """Non-saturating GAN loss with style mixing, path-length regularisation (G) and R1 regularisation (D).

    Only the call interface of `G_mapping`, `G_synthesis` and `D` is used, so shapes such as `num_ws` are read
    from the tensors rather than from module attributes. Nothing here synchronises processes: the training loop
    averages the gradients itself after each phase. (A caller that wraps the modules in DistributedDataParallel
    gets an all-reduce on every backward pass.)
    """

    def __init__(
        self,
        device,
        G_mapping,
        G_synthesis,
        D,
        augment_pipe=None,
        style_mixing_prob=0.9,
        r1_gamma=10,
        pl_batch_shrink=2,
        pl_decay=0.01,
        pl_weight=2,
    ):
        # The modules the phases call (the reference's attribute names, which scripts written for it read).
        self.G_mapping, self.G_synthesis, self.D, self.augment_pipe = G_mapping, G_synthesis, D, augment_pipe
        # Strengths: the chance of mixing two latents per call, and the weights of the two lazy regularisers.
        self.style_mixing_prob, self.r1_gamma, self.pl_weight = style_mixing_prob, r1_gamma, pl_weight
        # Path-length bookkeeping: the batch divisor, the EMA rate, and the running mean of the lengths. The mean
        # is plain state on `device`, not a buffer, so no network carries it: it starts at 0, and only an exact
        # continuation (training/resume.py) brings back an earlier value.
        self.pl_batch_shrink, self.pl_decay = pl_batch_shrink, pl_decay
        self.device = device
        self.pl_mean = torch.zeros([], device=device)

    def run_G(self, z, c):
        """Generate images with style mixing.

        z: [B, z_dim], c: [B, c_dim]. Returns (img [B, C, H, W], ws [B, num_ws, w_dim]) where `ws` is the mixed
        tensor the synthesis network consumed (path-length gradients are taken with respect to it).
        """
        ws = self.G_mapping(z, c)
        if self.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, num_ws)
            keep_mixing = torch.rand([], device=ws.device) < self.style_mixing_prob
            cutoff = torch.where(keep_mixing, cutoff, torch.full_like(cutoff, num_ws))
            # Drawn even when mixing is off for this call, so the generator sequence does not depend on u.
            ws2 = self.G_mapping(torch.randn_like(z), c, skip_w_avg_update=True)
            ws[:, cutoff:] = ws2[:, cutoff:]
        img = self.G_synthesis(ws)
        return img, ws

    def run_D(self, img, c):
        """Augment (if a pipe is present) and score images. img: [B, C, H, W], c: [B, c_dim] -> logits [B, 1]."""
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, sync, gain):
        """Run one round of `phase` and accumulate gain-scaled gradients into `.grad`.

        real_img: [B, C, H, W] in [-1, 1], real_c: [B, c_dim], gen_z: [B, z_dim], gen_c: [B, c_dim].
        `sync` is accepted for scripts written for the reference and ignored: no module is wrapped in
        DistributedDataParallel here, and the training loop averages the gradients over processes itself.
        """
        if phase not in PHASES:
            raise ValueError(f"StyleGAN2Loss: unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
        do_Gmain = phase in ("Gmain", "Gboth")
        do_Dmain = phase in ("Dmain", "Dboth")
        do_Gpl = phase in ("Greg", "Gboth") and self.pl_weight != 0
        do_Dr1 = phase in ("Dreg", "Dboth") and self.r1_gamma != 0

        if do_Gmain:
            self._accumulate_Gmain(gen_z, gen_c, gain=gain)
        if do_Gpl:
            self._accumulate_Gpl(gen_z, gen_c, gain=gain)
        loss_Dgen = 0
        if do_Dmain:
            loss_Dgen = self._accumulate_Dgen(gen_z, gen_c, gain=gain)
        if do_Dmain or do_Dr1:
            self._accumulate_Dreal_Dr1(real_img, real_c, loss_Dgen, do_Dmain, do_Dr1, gain=gain)

    def _accumulate_Gmain(self, gen_z, gen_c, gain):
        """Non-saturating generator loss softplus(-D(G(z)))."""
        with torch.autograd.profiler.record_function("Gmain_forward"):
            gen_img, _gen_ws = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c)
            training_stats.report("Loss/scores/fake", gen_logits)
            training_stats.report("Loss/signs/fake", gen_logits.sign())
            loss_Gmain = F.softplus(-gen_logits)  # [B, 1]
            training_stats.report("Loss/G/loss", loss_Gmain)
        with torch.autograd.profiler.record_function("Gmain_backward"):
            loss_Gmain.mean().mul(gain).backward()

    def _accumulate_Gpl(self, gen_z, gen_c, gain):
        """Path-length penalty (|J_w^T y| - a)^2 on a shrunk batch, a = running mean of the lengths."""
        with torch.autograd.profiler.record_function("Gpl_forward"):
            batch_size = gen_z.shape[0] // self.pl_batch_shrink
            gen_img, gen_ws = self.run_G(gen_z[:batch_size], gen_c[:batch_size])
            # Scaling by 1/sqrt(H*W) makes the expected length independent of the image resolution.
            pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
            with torch.autograd.profiler.record_function("pl_grads"), conv2d_gradfix.no_weight_gradients():
                pl_grads = torch.autograd.grad(
                    outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws], create_graph=True, only_inputs=True
                )[0]  # [b, num_ws, w_dim]
            pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()  # [b]
            # The non-detached EMA feeds the penalty, so the gradient also flows through mean(pl_lengths).
            pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            pl_penalty = (pl_lengths - pl_mean).square()  # [b]
            training_stats.report("Loss/pl_penalty", pl_penalty)
            loss_Gpl = pl_penalty * self.pl_weight
            training_stats.report("Loss/G/reg", loss_Gpl)
        with torch.autograd.profiler.record_function("Gpl_backward"):
            # The zero term puts every synthesis parameter into the graph, so each gets a gradient (zero where the
            # penalty does not reach it) rather than None, and the optimiser steps the same parameters as the
            # reference's.
            (gen_img[:, 0, 0, 0] * 0 + loss_Gpl).mean().mul(gain).backward()

    def _accumulate_Dgen(self, gen_z, gen_c, gain):
        """Discriminator loss on generated images softplus(D(G(z))); returns it ([B, 1]) for the D/loss report."""
        with torch.autograd.profiler.record_function("Dgen_forward"):
            gen_img, _gen_ws = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c)
            training_stats.report("Loss/scores/fake", gen_logits)
            training_stats.report("Loss/signs/fake", gen_logits.sign())
            loss_Dgen = F.softplus(gen_logits)  # [B, 1]
        with torch.autograd.profiler.record_function("Dgen_backward"):
            loss_Dgen.mean().mul(gain).backward()
        return loss_Dgen

    def _accumulate_Dreal_Dr1(self, real_img, real_c, loss_Dgen, do_Dmain, do_Dr1, gain):
        """Discriminator loss on real images softplus(-D(x)) and/or the R1 penalty, sharing one D pass."""
        name = "Dreal_Dr1" if do_Dmain and do_Dr1 else "Dreal" if do_Dmain else "Dr1"
        with torch.autograd.profiler.record_function(name + "_forward"):
            real_img_tmp = real_img.detach().requires_grad_(do_Dr1)
            real_logits = self.run_D(real_img_tmp, real_c)  # [B, 1]
            training_stats.report("Loss/scores/real", real_logits)
            training_stats.report("Loss/signs/real", real_logits.sign())

            loss_Dreal = 0
            if do_Dmain:
                loss_Dreal = F.softplus(-real_logits)  # [B, 1]
                training_stats.report("Loss/D/loss", loss_Dgen + loss_Dreal)

            loss_Dr1 = 0
            if do_Dr1:
                with torch.autograd.profiler.record_function("r1_grads"), conv2d_gradfix.no_weight_gradients():
                    r1_grads = torch.autograd.grad(
                        outputs=[real_logits.sum()], inputs=[real_img_tmp], create_graph=True, only_inputs=True
                    )[0]  # [B, C, H, W]
                r1_penalty = r1_grads.square().sum([1, 2, 3])  # [B]
                loss_Dr1 = r1_penalty * (self.r1_gamma / 2)
                training_stats.report("Loss/r1_penalty", r1_penalty)
                training_stats.report("Loss/D/reg", loss_Dr1)

        with torch.autograd.profiler.record_function(name + "_backward"):
            # [B, 1] + [B] broadcasts to [B, B] when R1 is present; its mean equals the sum of the two means, and
            # forming the same tensor keeps float32 rounding identical to the reference.
            (real_logits * 0 + loss_Dreal + loss_Dr1).mean().mul(gain).backward()
