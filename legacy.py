"""Command line for converting network pickles: `python legacy.py --source=SRC --dest=DEST`.

The loading itself lives in `training.pickles` (native and reference snapshots, safe by default) and
`training.tf_conversion` (TensorFlow-era pickles); a `--dest` ending in `.safetensors` is written by
`training.safetensors_io` (weights and constructor arguments, no code). The names that users' scripts call
(`legacy.load_network_pkl`, `convert_tf_generator`, `convert_tf_discriminator`, `UnsupportedPickleError`) are
re-exported here.
"""

import click

from dnnlib import cli
from dnnlib.atomic import atomic_pickle
from training import pickles, safetensors_io
from training.pickles import UnsupportedPickleError, load_network_pkl
from training.tf_conversion import convert_tf_discriminator, convert_tf_generator

__all__ = [
    "UnsupportedPickleError",
    "convert_network_pickle",
    "convert_tf_discriminator",
    "convert_tf_generator",
    "load_network_pkl",
]

# ----------------------------------------------------------------------------
# Command line


@click.command()
@click.option("--source", help="Input pickle: local path, file:// URL or http(s) URL", required=True, metavar="PATH")
@click.option(
    "--dest",
    help="Where to write the converted pickle (*.safetensors: weights without code)",
    required=True,
    metavar="PATH",
)
@click.option(
    "--force-fp16",
    help="Rebuild the networks with FP16 layers (num_fp16_res=4, conv_clamp=256)",
    type=bool,
    default=False,
    show_default=True,
)
@cli.trust_pickle_option()
def convert_network_pickle(source, dest, force_fp16, trust_pickle):
    """Rewrite a TensorFlow-era (or native) network pickle as a pickle of this project's PyTorch networks.

    Works for StyleGAN2 (configs E and F) and StyleGAN2-ADA networks written by the TensorFlow code, with the
    orig, skip and resnet architectures. Networks of other kinds (StyleGAN1, StyleGAN2 configs A-D and the
    alternative methods compared in the ADA paper) are rejected with an error.

    Example (an official StyleGAN2 LSUN Cat network):

    \b
    python legacy.py \\
        --source=https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/stylegan2-cat-config-f.pkl \\
        --dest=stylegan2-cat-config-f.pkl

    With --dest=NAME.safetensors the networks are written as tensors plus their class names and constructor
    arguments, a file that can be loaded without running any code (every --network and --resume accepts it).
    """
    cli.check_output_file(dest, "--dest")
    print(f'Loading "{source}"...')
    with cli.errors_as_messages(pickles.NetworkPickleError):
        data = pickles.load_network_from(source, force_fp16=force_fp16, allow_code=trust_pickle)
    print(f'Saving "{dest}"...')
    # An existing --dest stays whole until the new file is complete (both writers are atomic).
    with cli.errors_as_messages(
        OSError, ValueError, pickles.NetworkPickleError, prefix=f"Cannot write --dest {dest}: "
    ):
        if dest.endswith(safetensors_io.SUFFIX):
            safetensors_io.save_networks(dest, data)
        else:
            atomic_pickle(dest, data)
    print("Done.")


if __name__ == "__main__":
    convert_network_pickle()
