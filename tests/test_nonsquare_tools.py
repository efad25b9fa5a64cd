"""Every image tool on real non-square generators (64x32 and 32x64): the files they write have the network's size."""

import glob
import os
import pickle

import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import gen_video
import generate
import sefa
import style_mixing
from training import networks

SHAPES = [(64, 32), (32, 64)]  # (height, width)


def write_snapshot(path, height, width):
    """A snapshot whose G_ema makes [N, 3, height, width] images (tiny channels)."""
    torch.manual_seed(0)
    G = networks.Generator(
        z_dim=8,
        c_dim=0,
        w_dim=8,
        img_resolution=max(height, width),
        img_channels=3,
        img_height=height,
        img_width=width,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=128, channel_max=8),
    ).eval()
    D = networks.Discriminator(
        c_dim=0,
        img_resolution=max(height, width),
        img_channels=3,
        img_height=height,
        img_width=width,
        channel_base=128,
        channel_max=8,
    )
    snapshot = dict(G=G, D=D, G_ema=G, augment_pipe=None, training_set_kwargs=None)
    with open(path, "wb") as f:
        pickle.dump(snapshot, f)


def invoke(command, *args):
    result = CliRunner().invoke(command, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def png_size(path):
    with PIL.Image.open(path) as img:
        return img.size  # (width, height)


@pytest.mark.parametrize("height,width", SHAPES)
def test_every_tool_writes_the_network_shape(tmp_path, height, width):
    pkl = tmp_path / "ns.pkl"
    write_snapshot(pkl, height, width)

    invoke(generate.generate_images, "--network", pkl, "--seeds", "0-1", "--outdir", tmp_path / "gen", "--device=cpu")
    assert [png_size(p) for p in sorted(glob.glob(str(tmp_path / "gen" / "*.png")))] == [(width, height)] * 2

    invoke(
        style_mixing.generate_style_mix,
        "--network",
        pkl,
        "--rows",
        "0-1",
        "--cols",
        "2-4",
        "--outdir",
        tmp_path / "mix",
    )
    assert png_size(tmp_path / "mix" / "grid.png") == (width * 4, height * 3)
    assert png_size(tmp_path / "mix" / "0-2.png") == (width, height)

    frames = tmp_path / "frames"
    invoke(
        gen_video.main, "--network", pkl, "--seeds", "0-3", "--grid", "2x1", "--w-frames", "2", "--frames-dir", frames
    )
    names = sorted(os.listdir(frames))
    assert len(names) == 2 * 2 and {png_size(frames / name) for name in names} == {(width * 2, height)}

    invoke(sefa.main, "--network", pkl, "--seeds", "0,1", "--k", "2", "--outdir", tmp_path / "sefa")
    grid_w, grid_h = png_size(tmp_path / "sefa" / "grid.png")
    assert grid_w % width == 0 and grid_h % height == 0 and (grid_w, grid_h) != (width, height)
