"""Non-square images (issue 15): networks at 64x32 and 32x64, the kwarg contract for square networks, the aspect
limits, and tiny end-to-end training runs on the CPU."""

import pickle

import pytest
import torch

from training import networks

SHAPES = [(64, 32), (32, 64)]  # (height, width)
TINY = dict(channel_base=128, channel_max=8)  # 8 channels at 4x8 .. 32x64: fast on the CPU
Z_DIM = W_DIM = 8
C_DIM = 2


def _generator(height, width, **synthesis_kwargs):
    shape = {} if height == width else dict(img_height=height, img_width=width)
    return networks.Generator(
        z_dim=Z_DIM,
        c_dim=C_DIM,
        w_dim=W_DIM,
        img_resolution=max(height, width),
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(TINY, **synthesis_kwargs),
        **shape,
    )


def _discriminator(height, width, **kwargs):
    shape = {} if height == width else dict(img_height=height, img_width=width)
    return networks.Discriminator(
        c_dim=C_DIM, img_resolution=max(height, width), img_channels=3, **TINY, **kwargs, **shape
    )


def _inputs(batch=2):
    torch.manual_seed(1)
    return torch.randn([batch, Z_DIM]), torch.randn([batch, C_DIM])


# ----------------------------------------------------------------------------------------------------------------------
# Generator and discriminator


@pytest.mark.parametrize("architecture", ["skip", "resnet", "orig"])
@pytest.mark.parametrize("height,width", SHAPES)
def test_generator_forward_backward(height, width, architecture):
    G = _generator(height, width, architecture=architecture)
    z, c = _inputs()
    z.requires_grad_(True)
    img = G(z, c)
    assert img.shape == (2, 3, height, width) and img.dtype == torch.float32
    img.square().mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert all(p.grad is not None for p in G.synthesis.parameters())
    # The stages keep the aspect ratio from the 4 x 4*a constant up; ws are those of the square net at the shorter side.
    short, stretch_h, stretch_w = min(height, width), height // min(height, width), width // min(height, width)
    assert G.synthesis.block_resolutions == [4, 8, 16, 32]
    assert G.num_ws == _generator(short, short).num_ws == 8
    assert tuple(G.synthesis.b4.const.shape[1:]) == (4 * stretch_h, 4 * stretch_w)
    for res in G.synthesis.block_resolutions:
        assert tuple(G.synthesis.get_submodule(f"b{res}.conv1").noise_const.shape) == (res * stretch_h, res * stretch_w)


@pytest.mark.parametrize("height,width", SHAPES)
def test_generator_noise_modes_and_fused_path(height, width):
    G = _generator(height, width, num_fp16_res=2, conv_clamp=256).eval()
    z, c = _inputs()
    with torch.no_grad():
        for noise_mode in networks.NOISE_MODES:
            for fused_modconv in (True, False):
                img = G(z, c, noise_mode=noise_mode, fused_modconv=fused_modconv)
                assert img.shape == (2, 3, height, width)
        assert torch.equal(G(z, c, noise_mode="const"), G(z, c, noise_mode="const"))


@pytest.mark.parametrize("architecture", ["skip", "resnet", "orig"])
@pytest.mark.parametrize("height,width", SHAPES)
def test_discriminator_forward_backward(height, width, architecture):
    D = _discriminator(height, width, architecture=architecture, epilogue_kwargs=dict(mbstd_group_size=2))
    img = torch.randn([4, 3, height, width], requires_grad=True)
    logits = D(img, torch.randn([4, C_DIM]))
    assert logits.shape == (4, 1) and logits.dtype == torch.float32
    logits.sum().backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()
    # The epilogue ends on the 4 x 4*a stage and its fc takes all of it.
    stage = (4 * height // min(height, width), 4 * width // min(height, width))
    assert D.block_resolutions == [32, 16, 8]
    assert D.b4.fc.weight.shape[1] == D.b4.in_channels * stage[0] * stage[1]
    with pytest.raises(AssertionError):
        D(torch.randn([4, 3, width, height]), torch.randn([4, C_DIM]))  # transposed images are rejected


@pytest.mark.parametrize("height,width", SHAPES)
def test_channels_follow_the_longer_side(height, width):
    """Per stage, channel_base / longer side: the non-square net has the channels of the square net at the larger
    side, stage for stage from the top."""
    wide = dict(channel_base=512, channel_max=64)
    G, square = _generator(height, width, **wide), _generator(64, 64, **wide)
    ours = [G.synthesis.get_submodule(f"b{res}").conv1.weight.shape[0] for res in G.synthesis.block_resolutions]
    theirs = [square.synthesis.get_submodule(f"b{res}").conv1.weight.shape[0] for res in (8, 16, 32, 64)]
    assert ours == theirs == [64, 32, 16, 8]


@pytest.mark.parametrize("height,width", SHAPES)
def test_pickle_roundtrip_and_rebuild(height, width):
    G = _generator(height, width).eval()
    z, c = _inputs()
    expected = G(z, c, noise_mode="const")
    loaded = pickle.loads(pickle.dumps(G))  # runs the embedded module source
    assert torch.equal(loaded(z, c, noise_mode="const"), expected)
    assert (G.init_kwargs.img_height, G.init_kwargs.img_width) == (height, width)
    assert networks.image_size(loaded) == (height, width)
    rebuilt = type(G)(**G.init_kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in G.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------------
# Square networks record nothing new


NEW_ATTRIBUTES = ("img_height", "img_width", "stage_shape")


@pytest.mark.parametrize("architecture", ["skip", "resnet"])
def test_square_networks_record_nothing_new(architecture):
    G, D = _generator(32, 32, architecture=architecture), _discriminator(32, 32, architecture=architecture)
    assert set(G.init_kwargs) == {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"} | {
        "mapping_kwargs",
        "synthesis_kwargs",
    }
    assert set(D.init_kwargs) == {"c_dim", "img_resolution", "img_channels", "architecture", *TINY}
    for net in (G, D):
        for name, module in net.named_modules():
            assert not set(NEW_ATTRIBUTES) & set(vars(module)), f"{name or 'top'} stores a shape attribute"
            assert "stage_shape" not in module.init_kwargs, name
        assert networks.image_size(net) == (32, 32)


def test_nonsquare_networks_record_their_shape():
    G = _generator(32, 64)
    assert (G.img_height, G.img_width) == (32, 64)
    assert (G.synthesis.img_height, G.synthesis.img_width, G.synthesis.img_resolution) == (32, 64, 64)
    assert G.synthesis.b8.stage_shape == (8, 16) and G.synthesis.b8.conv0.stage_shape == (8, 16)
    D = _discriminator(64, 32)
    assert D.b32.stage_shape == (64, 32) and D.b4.stage_shape == (8, 4)


# ----------------------------------------------------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize(
    "img_resolution,height,width",
    [
        (64, 8, 64),  # 1:8
        (64, 64, 8),  # 8:1
        (64, 48, 64),  # not a power of two
        (64, 32, 32),  # larger side is not img_resolution
        (8, 2, 8),  # shorter side below 4
    ],
)
@pytest.mark.parametrize("cls", ["Generator", "Discriminator"])
def test_aspect_limits(cls, img_resolution, height, width):
    kwargs = dict(c_dim=0, img_resolution=img_resolution, img_channels=3, img_height=height, img_width=width)
    if cls == "Generator":
        kwargs.update(z_dim=Z_DIM, w_dim=W_DIM, synthesis_kwargs=TINY)
    else:
        kwargs.update(TINY)
    with pytest.raises(
        ValueError, match=rf"^{cls}: img_width x img_height must be powers of two .* got {width}x{height}$"
    ):
        getattr(networks, cls)(**kwargs)


def test_extreme_aspects_build():
    for height, width in [(16, 64), (64, 16)]:
        G, D = _generator(height, width), _discriminator(height, width, epilogue_kwargs=dict(mbstd_group_size=2))
        z, c = _inputs()
        assert D(G(z, c), c).shape == (2, 1)
