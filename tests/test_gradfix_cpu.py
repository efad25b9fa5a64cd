"""The gradfix modules step aside on the CPU, as the reference's do: with the training loop's settings
(`conv2d_gradfix.enabled = grid_sample_gradfix.enabled = True`) every phase of StyleGAN2Loss gives bit for bit the
gradients of plain autograd, so a CPU training run rounds exactly like the reference's. On CUDA (skipped without a
device) the custom autograd functions are used."""

import pytest
import torch
from conftest import cuda_only

from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix

# Tiny conditional networks with every block kind the loss differentiates twice (modulated convolutions with
# up/down-sampling, toRGB, skip/resnet paths, minibatch stddev), and augmentation through grid_sample and the
# filter convolutions.
G_KWARGS = dict(
    z_dim=8,
    c_dim=2,
    w_dim=8,
    img_resolution=16,
    img_channels=3,
    mapping_kwargs=dict(num_layers=2),
    synthesis_kwargs=dict(channel_base=128, channel_max=16),
)
D_KWARGS = dict(
    c_dim=2,
    img_resolution=16,
    img_channels=3,
    architecture="resnet",
    channel_base=128,
    channel_max=16,
    mapping_kwargs=dict(num_layers=1),
    epilogue_kwargs=dict(mbstd_group_size=2),
)
AUGMENT_PRESET = "bgc"  # the training default
AUGMENT_P = 0.5
BATCH = 4
PHASES = ["Gmain", "Greg", "Dmain", "Dreg"]


@pytest.fixture
def gradfix(monkeypatch):
    """Sets both gradfix flags for one test (restored afterwards); `gradfix(True)` = the training loop's setting."""

    def set_enabled(value):
        monkeypatch.setattr(conv2d_gradfix, "enabled", value)
        monkeypatch.setattr(grid_sample_gradfix, "enabled", value)

    return set_enabled


def _phase_gradients(phase):
    """Gradients of every parameter of G and D after one `accumulate_gradients(phase)` round, by name."""
    from training import augment, loss, networks

    torch.manual_seed(123)
    G = networks.Generator(**G_KWARGS).train()
    D = networks.Discriminator(**D_KWARGS).train()
    pipe = augment.AugmentPipe(**augment.AUGPIPE_SPECS[AUGMENT_PRESET]).train().requires_grad_(False)
    pipe.p.fill_(AUGMENT_P)
    optimised = G if phase.startswith("G") else D
    for net in (G, D):
        net.requires_grad_(net is optimised)
    loss_obj = loss.StyleGAN2Loss(
        device=torch.device("cpu"), G_mapping=G.mapping, G_synthesis=G.synthesis, D=D, augment_pipe=pipe, r1_gamma=1
    )
    gen = torch.Generator().manual_seed(7)
    real_img = torch.rand([BATCH, 3, 16, 16], generator=gen) * 2 - 1
    real_c = torch.nn.functional.one_hot(torch.arange(BATCH) % 2, 2).float()
    gen_z = torch.randn([BATCH, G_KWARGS["z_dim"]], generator=gen)
    gen_c = real_c.flip(0)
    loss_obj.accumulate_gradients(
        phase=phase, real_img=real_img, real_c=real_c, gen_z=gen_z, gen_c=gen_c, sync=True, gain=4
    )
    return {
        f"{prefix}.{name}": param.grad.detach().clone()
        for prefix, net in (("G", G), ("D", D))
        for name, param in net.named_parameters()
        if param.grad is not None
    }


@pytest.mark.parametrize("phase", PHASES)
def test_cpu_gradients_equal_plain_autograd_bitwise(gradfix, phase):
    gradfix(True)
    with_gradfix = _phase_gradients(phase)
    gradfix(False)
    plain = _phase_gradients(phase)
    assert with_gradfix.keys() == plain.keys() and plain, f"{phase}: different parameters received gradients"
    differing = [name for name in plain if not torch.equal(with_gradfix[name], plain[name])]
    assert not differing, f"{phase}: gradients differ from plain autograd in {differing}"


def _conv_inputs(device):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn([2, 3, 6, 6], generator=gen).to(device).requires_grad_(True)
    w = torch.randn([4, 3, 3, 3], generator=gen).to(device).requires_grad_(True)
    grid = (torch.rand([2, 5, 5, 2], generator=gen) * 2 - 1).to(device)
    return x, w, grid


def test_cpu_tensors_take_the_native_ops(gradfix):
    gradfix(True)
    x, w, grid = _conv_inputs("cpu")
    assert "Convolution" in type(conv2d_gradfix.conv2d(x, w, padding=1).grad_fn).__name__
    assert "Convolution" in type(conv2d_gradfix.conv_transpose2d(x, w.transpose(0, 1), stride=2).grad_fn).__name__
    assert "GridSampler2D" in type(grid_sample_gradfix.grid_sample(x, grid).grad_fn).__name__


@cuda_only
def test_cuda_tensors_take_the_custom_ops(gradfix):
    gradfix(True)
    x, w, grid = _conv_inputs("cuda")
    assert "Convolution" not in type(conv2d_gradfix.conv2d(x, w, padding=1).grad_fn).__name__
    assert "Convolution" not in type(conv2d_gradfix.conv_transpose2d(x, w.transpose(0, 1), stride=2).grad_fn).__name__
    assert "GridSample2dForward" in type(grid_sample_gradfix.grid_sample(x, grid).grad_fn).__name__

    # no_weight_gradients() keeps its meaning there: the custom op skips the weight gradient.
    with conv2d_gradfix.no_weight_gradients():
        conv2d_gradfix.conv2d(x, w, padding=1).square().sum().backward()
    assert w.grad is None and x.grad is not None
    gradfix(False)
    assert "Convolution" in type(conv2d_gradfix.conv2d(x, w, padding=1).grad_fn).__name__
