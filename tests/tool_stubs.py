"""A tiny stand-in generator whose images are not square, for the tools' shape-agnostic code paths.

It has the attributes and call signatures the tools use (`z_dim`, `c_dim`, `w_dim`, `num_ws`, `img_channels`,
`img_resolution`, `mapping(z, c, truncation_psi=...)` with `w_avg`, `synthesis(ws, noise_mode=...)`, `G(z, c, ...)`),
and is differentiable in W so that the projector can optimise it. Snapshots holding it are handed to the tools by
replacing `training.pickles.load_network_from` (see `fake_loader`).
"""

import torch

from training import pickles


class StubMapping(torch.nn.Module):
    def __init__(self, z_dim: int, w_dim: int, num_ws: int):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws = z_dim, w_dim, num_ws
        self.weight = torch.nn.Parameter(torch.randn([w_dim, z_dim]) / z_dim**0.5)
        self.register_buffer("w_avg", torch.randn([w_dim]) * 0.1)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **kwargs):
        w = torch.nn.functional.linear(z.to(torch.float32), self.weight)  # [N, w_dim]
        w = self.w_avg.lerp(w, truncation_psi)
        return w.unsqueeze(1).repeat([1, self.num_ws, 1])  # [N, num_ws, w_dim]


class StubSynthesis(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> tanh of a linear map per layer group -> [N, C, H, W]."""

    def __init__(self, w_dim: int, num_ws: int, channels: int, height: int, width: int):
        super().__init__()
        self.num_ws, self.w_dim, self.shape = num_ws, w_dim, (channels, height, width)
        self.weight = torch.nn.Parameter(torch.randn([num_ws, w_dim, channels * height * width]) / w_dim**0.5)

    def forward(self, ws, noise_mode="const", force_fp32=False, **kwargs):
        assert ws.shape[1:] == (self.num_ws, self.w_dim), ws.shape
        x = torch.einsum("nlw,lwp->np", ws.to(torch.float32), self.weight) / self.num_ws**0.5
        return torch.tanh(x).reshape(ws.shape[0], *self.shape)


class StubGenerator(torch.nn.Module):
    def __init__(self, height=16, width=32, channels=3, z_dim=8, w_dim=8, num_ws=4, c_dim=0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.img_channels, self.img_resolution = channels, max(height, width)
        if height != width:  # as training.networks records a non-square shape
            self.img_height, self.img_width = height, width
        self.mapping = StubMapping(z_dim, w_dim, num_ws)
        self.synthesis = StubSynthesis(w_dim, num_ws, channels, height, width)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        return self.synthesis(self.mapping(z, c, truncation_psi=truncation_psi), **synthesis_kwargs)


def fake_loader(monkeypatch, G, calls=None, **snapshot_entries):
    """Make `pickles.load_network_from` return a snapshot holding `G`; record each call's kwargs in `calls`."""

    def load_network_from(url, **kwargs):
        if calls is not None:
            calls.append(kwargs)
        return dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=None, **snapshot_entries)

    monkeypatch.setattr(pickles, "load_network_from", load_network_from)
