"""Command-line entry point for training: `python train.py --outdir=runs --data=datasets/faces256.zip`.

The options are the fields of training.config.TrainOptions (the click options below are generated from them); their
names, defaults, order and error messages are those of the reference implementation, plus a few from its successor
(--cbase, --cmax, --map, --tick, --batch-gpu, fractional --kimg): docs/compatibility.md, "Training options".
training.config builds the training-loop kwargs, training.launcher starts the run.
"""

import contextlib

import click
from click.core import ParameterSource

import dnnlib
from dnnlib import cli
from training import launcher, pickles, reporting, training_loop
from training.config import TrainOptions, UserError, setup_training_loop_kwargs
from training.dataset import DatasetError

# setup_training_loop_kwargs and UserError: the reference's entry point, for users' scripts and bench/train_speed.py.
__all__ = ["main", "setup_training_loop_kwargs", "UserError"]


@contextlib.contextmanager
def _click_errors():
    """Bad options become usage errors (exit status 2); errors about the user's data or pickle raised once training
    has started become one `Error:` line (exit status 1) instead of a traceback.

    (With several local processes, torch.multiprocessing reports a worker's error with its traceback instead.)"""
    try:
        yield
    except UserError as err:
        raise click.UsageError(str(err)) from err
    except DatasetError as err:
        raise click.ClickException(f"--data: {err}") from err
    except (
        training_loop.ResumeError,
        pickles.NetworkPickleError,
        dnnlib.util.DownloadError,
        launcher.RunDirError,  # A read-only --outdir, say.
        reporting.OutputError,  # A full disk while writing a snapshot, image grid or stats.jsonl.
    ) as err:
        raise click.ClickException(str(err)) from err


@click.command()
@click.pass_context
@cli.options_from_dataclass(TrainOptions)
def main(ctx, **values):
    """Train a StyleGAN2-ADA generator and discriminator on an image dataset.

    Examples:

    \b
    # A dataset of your own on a single GPU, default (auto) settings.
    python train.py --outdir=runs --data=datasets/faces256.zip

    \b
    # A labelled dataset, conditional model, CIFAR preset, 2 GPUs.
    python train.py --outdir=runs --data=datasets/cifar10.zip --cond=1 \\
        --cfg=cifar --gpus=2

    \b
    # Fine-tune the 1024x1024 FFHQ network on a small dataset, 4 GPUs, Freeze-D.
    python train.py --outdir=runs --data=datasets/paintings1024.zip --mirror=1 \\
        --cfg=paper1024 --resume=ffhq1024 --freezed=10 --snap=10 --gpus=4

    \b
    # Tiny run on the CPU (minutes): 32x32 data, small networks, half a kimg.
    python train.py --outdir=runs --data=tiny.zip --cbase=1024 --cmax=64 --map=2 \\
        --batch=8 --kimg=0.5 --tick=0.25 --snap=1

    \b
    # Several machines: run the same command on every node under torchrun.
    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d \\
        --rdzv-endpoint=HOST:29500 train.py --outdir=... --data=...

    \b
    Base configs (--cfg):
      auto       Settings derived from the resolution and the GPU count;
                 the place to start with a new dataset.
      stylegan2  StyleGAN2 config F (1024x1024).
      paper256   The paper's 256x256 setup (FFHQ, LSUN Cat).
      paper512   The paper's 512x512 setup (BreCaHAD, AFHQ).
      paper1024  The paper's 1024x1024 setup (MetFaces).
      cifar      The paper's CIFAR-10 setup (32x32).

    \b
    Named starting points for --resume (downloaded once, then cached):
      ffhq256, ffhq512, ffhq1024   FFHQ at that resolution.
      celebahq256                  CelebA-HQ, 256x256.
      lsundog256                   LSUN Dog, 256x256.
      <PATH or URL>  Custom network pickle; one of this project's snapshots
                     continues its run exactly (kimg, ticks, optimiser, ADA).
      latest         The newest snapshot of any run under --outdir (none:
                     start a new run), for jobs that get pre-empted.
      <RUN_DIR>      The newest snapshot in that run directory.
    """
    given = {name: value for name, value in values.items() if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    with _click_errors():
        launcher.launch(TrainOptions.from_given(given))


if __name__ == "__main__":
    main()
