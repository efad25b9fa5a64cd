"""Command line for converting network pickles: `python legacy.py --source=SRC --dest=DEST`.

The loading itself lives in `training.pickles` (native and reference snapshots) and `training.tf_conversion`
(TensorFlow-era pickles); the names that users' scripts call (`legacy.load_network_pkl`, `convert_tf_generator`,
`convert_tf_discriminator`, `UnsupportedPickleError`) are re-exported here.
"""

import os
import pickle

import click

import dnnlib
from training.pickles import UnsupportedPickleError, load_network_pkl
from training.tf_conversion import convert_tf_discriminator, convert_tf_generator

__all__ = [
    "UnsupportedPickleError",
    "check_output_file",
    "cli_load_network_pkl",
    "convert_network_pickle",
    "convert_tf_discriminator",
    "convert_tf_generator",
    "load_network_pkl",
]


def cli_load_network_pkl(url, force_fp16=False):
    """`load_network_pkl` of a path or URL for the command-line tools.

    Unreadable or unsupported files become `click.ClickException` (printed as `Error: ...`, exit status 1).
    """
    try:
        with dnnlib.util.open_url(url) as f:
            try:
                return load_network_pkl(f, force_fp16=force_fp16)
            except UnsupportedPickleError as exc:
                # Downloads are read from memory (no file name): name the URL instead.
                named = getattr(f, "name", None) is not None
                raise click.ClickException(str(exc) if named else f"{url}: {exc}") from exc
    except OSError as exc:
        raise click.ClickException(f"Cannot read network pickle {url}: {exc}") from exc


def check_output_file(path, option):
    """Fail early (`click.ClickException`) if the file `path` of `option` cannot be written."""
    if os.path.isdir(path):
        raise click.ClickException(f"{option} {path} is a directory; expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise click.ClickException(f"{option} {path}: the folder {folder} does not exist")
    target = path if os.path.exists(path) else folder
    if not os.access(target, os.W_OK):
        raise click.ClickException(f"{option} {path}: {target} is not writable")


# ----------------------------------------------------------------------------
# Command line


@click.command()
@click.option("--source", help="Input pickle: local path, file:// URL or http(s) URL", required=True, metavar="PATH")
@click.option("--dest", help="Where to write the converted pickle", required=True, metavar="PATH")
@click.option(
    "--force-fp16",
    help="Rebuild the networks with FP16 layers (num_fp16_res=4, conv_clamp=256)",
    type=bool,
    default=False,
    show_default=True,
)
def convert_network_pickle(source, dest, force_fp16):
    """Rewrite a TensorFlow-era (or native) network pickle as a pickle of this project's PyTorch networks.

    Works for StyleGAN2 (configs E and F) and StyleGAN2-ADA networks written by the TensorFlow code, with the
    orig, skip and resnet architectures. Networks of other kinds (StyleGAN1, StyleGAN2 configs A-D and the
    alternative methods compared in the ADA paper) are rejected with an error.

    Example (an official StyleGAN2 LSUN Cat network):

    \b
    python legacy.py \\
        --source=https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/stylegan2-cat-config-f.pkl \\
        --dest=stylegan2-cat-config-f.pkl
    """
    check_output_file(dest, "--dest")
    print(f'Loading "{source}"...')
    data = cli_load_network_pkl(source, force_fp16=force_fp16)
    print(f'Saving "{dest}"...')
    try:
        with open(dest, "wb") as f:
            pickle.dump(data, f)
    except OSError as exc:
        raise click.ClickException(f"Cannot write --dest {dest}: {exc}") from exc
    print("Done.")


if __name__ == "__main__":
    convert_network_pickle()
