"""Non-square images (issue 15): networks at 64x32 and 32x64, the kwarg contract for square networks, the aspect
limits, and tiny end-to-end training runs on the CPU."""

import json
import math
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


# ----------------------------------------------------------------------------------------------------------------------
# Augmentation and training


@pytest.mark.parametrize("height,width", SHAPES)
def test_augment_pipe_keeps_the_shape(height, width):
    from training.augment import AUGPIPE_SPECS, AugmentPipe

    pipe = AugmentPipe(**AUGPIPE_SPECS["bgcfnc"]).train().requires_grad_(False)
    pipe.p.copy_(torch.ones([]))
    images = torch.rand([2, 3, height, width], requires_grad=True) * 2 - 1
    out = pipe(images)
    assert out.shape == images.shape and torch.isfinite(out).all()
    out.sum().backward()  # The loss differentiates through the pipe (R1 on augmented reals).


def _write_folder(path, count, height, width):
    """`count` PNGs of random RGB noise, `width` x `height` pixels."""
    import os

    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(0)
    os.makedirs(path)
    for idx in range(count):
        pixels = rng.integers(0, 256, size=[height, width, 3], dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(os.path.join(path, f"img{idx:03d}.png"))
    return str(path)


class ProbeDataset:
    """Stands in for the dataset reader in `config._probe_dataset`: only the shape matters (path = "HxW")."""

    def __init__(self, path, **_kwargs):
        self.name, self.num_channels, self.has_labels = "probe", 3, False
        self.image_shape = [3, *map(int, path.split("x"))]

    def __len__(self):
        return 2

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass


@pytest.mark.parametrize(
    "height,width,message",
    [
        (8, 64, "are 64x8; training needs power-of-two width and height with an aspect ratio between 1:4 and 4:1"),
        (48, 64, "are 64x48; training needs power-of-two width and height with an aspect ratio between 1:4 and 4:1"),
        (4, 16, "are 16x4; training needs at least 8x8"),
    ],
)
def test_training_rejects_bad_shapes_with_one_line(height, width, message):
    from training import config

    path = f"{height}x{width}"
    with pytest.raises(config.UserError) as info:
        config._probe_dataset(dict(class_name="test_nonsquare.ProbeDataset", path=path))
    assert str(info.value) == f"--data: the images of {path} {message}"
    facts = config._probe_dataset(dict(class_name="test_nonsquare.ProbeDataset", path="16x64"))
    assert (facts.resolution, facts.height, facts.width) == (64, 16, 64)


def test_reader_rejects_bad_aspect_with_one_line(tmp_path):
    from training import config

    data = _write_folder(tmp_path / "thin", 2, 8, 64)
    with pytest.raises(config.UserError, match=r"^--data: .*64x8.*$") as info:
        config.setup_training_loop_kwargs(data=data, metrics=[])
    assert "aspect ratio between 1:4 and 4:1" in str(info.value) and "\n" not in str(info.value)


def test_auto_config_uses_the_larger_side(tmp_path):
    from training import config

    _, wide = config.setup_training_loop_kwargs(data=_write_folder(tmp_path / "wide", 2, 32, 64), metrics=[])
    _, square = config.setup_training_loop_kwargs(data=_write_folder(tmp_path / "square", 2, 64, 64), metrics=[])
    for key in ("G_kwargs", "D_kwargs", "loss_kwargs", "batch_size", "ema_kimg"):
        assert wide[key] == square[key], key
    assert wide.training_set_kwargs.resolution == 64


@pytest.mark.parametrize("height,width", SHAPES)
def test_end_to_end_cpu_run(tmp_path, height, width):
    """A tiny real `train.py` run on H x W data: grids, snapshot and the snapshot's generator are H x W."""
    import os
    import subprocess
    import sys

    import PIL.Image
    from conftest import REPO_ROOT

    import legacy

    data = _write_folder(tmp_path / "data", 4, height, width)
    outdir = tmp_path / "runs"
    args = ["--cbase=128", "--cmax=8", "--map=2", "--batch=4", "--workers=1", "--metrics=none", "--fp32=1"]
    args += [f"--outdir={outdir}", f"--data={data}", "--kimg=0.004", "--snap=1", "--aug=ada", "--mirror=1"]
    result = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_name,) = os.listdir(outdir)
    run_dir = outdir / run_name
    log = (run_dir / "log.txt").read_text()
    assert f"Image shape: [3, {height}, {width}]" in log
    # Every loss phase ran, the regularisers included (path length on G, R1 on D): finite numbers.
    (stats,) = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    for key in ("Loss/G/loss", "Loss/pl_penalty", "Loss/D/loss", "Loss/r1_penalty"):
        assert stats[key]["num"] > 0 and math.isfinite(stats[key]["mean"]), key
    cols, rows = min(7680 // width, 32), min(4320 // height, 32)
    for name in ["reals.png", "fakes_init.png", "fakes000000.png"]:
        with PIL.Image.open(run_dir / name) as image:
            assert image.size == (cols * width, rows * height), name
    with open(run_dir / "network-snapshot-000000.pkl", "rb") as f:
        snapshot = legacy.load_network_pkl(f)
    for key in ("G", "D", "G_ema"):
        assert networks.image_size(snapshot[key]) == (height, width), key
    G = snapshot["G_ema"]
    assert (G.init_kwargs.img_height, G.init_kwargs.img_width, G.img_resolution) == (height, width, 64)
    with torch.no_grad():
        image = G(torch.randn([1, G.z_dim]), torch.zeros([1, 0]), noise_mode="const")
    assert image.shape == (1, 3, height, width) and torch.isfinite(image).all()
    assert snapshot["D"](image, torch.zeros([1, 0])).shape == (1, 1)
