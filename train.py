"""Command-line entry point for training: `python train.py --outdir=runs --data=datasets/faces256.zip`.

Options, their order and their errors follow the reference implementation (spec: training.md §5); a few options
from its successor are added (--cbase, --cmax, --map, --tick, --batch-gpu, fractional --kimg).
"""

import json
import os
import re
import tempfile

import click
import torch

import dnnlib
from dnnlib import cli
from metrics import metric_main
from torch_utils import custom_ops, training_stats
from training import training_loop

RESUME_SPECS = {
    "ffhq256": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl",
    "ffhq512": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res512-mirror-stylegan2-noaug.pkl",
    "ffhq1024": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res1024-mirror-stylegan2-noaug.pkl",
    "celebahq256": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl",
    "lsundog256": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/lsundog-res256-paper256-kimg100000-noaug.pkl",
}

# Base configurations: ref_gpus, kimg, mb, mbstd, fmaps, lrate, gamma, ema, ramp, map (-1 = a formula, for 'auto').
CFG_SPECS = {
    "auto": dict(ref_gpus=-1, kimg=25000, mb=-1, mbstd=-1, fmaps=-1, lrate=-1, gamma=-1, ema=-1, ramp=0.05, map=2),
    "stylegan2": dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=10, ema=10, ramp=None, map=8),
    "paper256": dict(
        ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=0.5, lrate=0.0025, gamma=1, ema=20, ramp=None, map=8
    ),
    "paper512": dict(
        ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=1, lrate=0.0025, gamma=0.5, ema=20, ramp=None, map=8
    ),
    "paper1024": dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=2, ema=10, ramp=None, map=8),
    "cifar": dict(
        ref_gpus=2, kimg=100000, mb=64, mbstd=32, fmaps=1, lrate=0.0025, gamma=0.01, ema=500, ramp=0.05, map=2
    ),
}

AUGPIPE_CHOICES = ["blit", "geom", "color", "filter", "noise", "cutout", "bg", "bgc", "bgcf", "bgcfn", "bgcfnc"]


class UserError(Exception):
    """An invalid option or combination of options; reported as a click usage error (exit status 2)."""


def _number(value: float) -> int | float:
    """A float option as the reference writes it: integral values as int (10, not 10.0)."""
    return int(value) if float(value).is_integer() else float(value)


def setup_training_loop_kwargs(
    gpus=None,
    snap=None,
    metrics=None,
    seed=None,
    data=None,
    cond=None,
    subset=None,
    mirror=None,
    cfg=None,
    gamma=None,
    kimg=None,
    batch=None,
    aug=None,
    p=None,
    target=None,
    augpipe=None,
    resume=None,
    freezed=None,
    fp32=None,
    nhwc=None,
    allow_tf32=None,
    nobench=None,
    workers=None,
    cbase=None,
    cmax=None,
    map=None,
    tick=None,
    batch_gpu=None,
) -> tuple[str, dnnlib.EasyDict]:
    """Turn command-line options into (run description, training_loop kwargs); raises UserError on bad input.

    Each argument is the value of the option of the same name, None when the option was not given. The keys of
    the returned kwargs are inserted in the order of spec training.md §5.2, which is the order of
    training_options.json.
    """
    args = dnnlib.EasyDict()

    # Run-wide settings (spec steps 1-4).
    if gpus is None:
        gpus = 1
    assert isinstance(gpus, int)
    if not (gpus >= 1 and gpus & (gpus - 1) == 0):
        raise UserError("--gpus must be a power of two")
    args.num_gpus = gpus

    if snap is None:
        snap = 50
    assert isinstance(snap, int)
    if snap < 1:
        raise UserError("--snap must be at least 1")
    args.image_snapshot_ticks = snap
    args.network_snapshot_ticks = snap

    if metrics is None:
        metrics = ["fid50k_full"]
    assert isinstance(metrics, list)
    if not all(metric_main.is_valid_metric(metric) for metric in metrics):
        raise UserError(
            "\n".join(["--metrics can only contain the following values:"] + metric_main.list_valid_metrics())
        )
    args.metrics = metrics

    if seed is None:
        seed = 0
    assert isinstance(seed, int)
    args.random_seed = seed

    # Training data and its variants (steps 5-8).
    assert data is not None
    assert isinstance(data, str)
    args.training_set_kwargs = dnnlib.EasyDict(
        class_name="training.dataset.ImageFolderDataset", path=data, use_labels=True, max_size=None, xflip=False
    )
    args.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=3, prefetch_factor=2)
    try:
        training_set = dnnlib.util.construct_class_by_name(**args.training_set_kwargs)
        args.training_set_kwargs.resolution = training_set.resolution
        args.training_set_kwargs.use_labels = training_set.has_labels
        args.training_set_kwargs.max_size = len(training_set)
        desc = training_set.name
    except OSError as err:
        raise UserError(f"--data: {err}") from err
    except ValueError as err:  # A malformed dataset: the dataset module names the file and the problem.
        raise UserError(f"--data: {err}") from err

    if cond is None:
        cond = False
    assert isinstance(cond, bool)
    if cond:
        if not args.training_set_kwargs.use_labels:
            raise UserError("--cond=True requires labels specified in dataset.json")
        desc += "-cond"
    else:
        args.training_set_kwargs.use_labels = False

    if subset is not None:
        assert isinstance(subset, int)
        if not 1 <= subset <= args.training_set_kwargs.max_size:
            raise UserError(f"--subset must be between 1 and {args.training_set_kwargs.max_size}")
        desc += f"-subset{subset}"
        if subset < args.training_set_kwargs.max_size:
            args.training_set_kwargs.max_size = subset
            args.training_set_kwargs.random_seed = args.random_seed

    if mirror is None:
        mirror = False
    assert isinstance(mirror, bool)
    if mirror:
        desc += "-mirror"
        args.training_set_kwargs.xflip = True

    # Hyperparameter preset and its overrides (steps 9-12).
    if cfg is None:
        cfg = "auto"
    assert isinstance(cfg, str)
    desc += f"-{cfg}"

    spec = dnnlib.EasyDict(CFG_SPECS[cfg])
    if cfg == "auto":
        desc += f"{gpus:d}"
        spec.ref_gpus = gpus
        res = args.training_set_kwargs.resolution
        spec.mb = max(min(gpus * min(4096 // res, 32), 64), gpus)
        spec.mbstd = min(spec.mb // gpus, 4)
        spec.fmaps = 1 if res >= 512 else 0.5
        spec.lrate = 0.002 if res >= 1024 else 0.0025
        spec.gamma = 0.0002 * (res**2) / spec.mb
        spec.ema = spec.mb * 10 / 32

    args.G_kwargs = dnnlib.EasyDict(
        class_name="training.networks.Generator",
        z_dim=512,
        w_dim=512,
        mapping_kwargs=dnnlib.EasyDict(),
        synthesis_kwargs=dnnlib.EasyDict(),
    )
    args.D_kwargs = dnnlib.EasyDict(
        class_name="training.networks.Discriminator",
        block_kwargs=dnnlib.EasyDict(),
        mapping_kwargs=dnnlib.EasyDict(),
        epilogue_kwargs=dnnlib.EasyDict(),
    )
    args.G_kwargs.synthesis_kwargs.channel_base = args.D_kwargs.channel_base = int(spec.fmaps * 32768)
    args.G_kwargs.synthesis_kwargs.channel_max = args.D_kwargs.channel_max = 512
    args.G_kwargs.mapping_kwargs.num_layers = spec.map
    args.G_kwargs.synthesis_kwargs.num_fp16_res = args.D_kwargs.num_fp16_res = 4
    args.G_kwargs.synthesis_kwargs.conv_clamp = args.D_kwargs.conv_clamp = 256
    args.D_kwargs.epilogue_kwargs.mbstd_group_size = spec.mbstd

    args.G_opt_kwargs = dnnlib.EasyDict(class_name="torch.optim.Adam", lr=spec.lrate, betas=[0, 0.99], eps=1e-8)
    args.D_opt_kwargs = dnnlib.EasyDict(class_name="torch.optim.Adam", lr=spec.lrate, betas=[0, 0.99], eps=1e-8)
    args.loss_kwargs = dnnlib.EasyDict(class_name="training.loss.StyleGAN2Loss", r1_gamma=spec.gamma)

    args.total_kimg = spec.kimg
    args.batch_size = spec.mb
    args.batch_gpu = spec.mb // spec.ref_gpus
    args.ema_kimg = spec.ema
    args.ema_rampup = spec.ramp

    if cfg == "cifar":
        args.loss_kwargs.pl_weight = 0
        args.loss_kwargs.style_mixing_prob = 0
        args.D_kwargs.architecture = "orig"

    if gamma is not None:
        assert isinstance(gamma, float)
        if not gamma >= 0:
            raise UserError("--gamma must be non-negative")
        desc += f"-gamma{gamma:g}"
        args.loss_kwargs.r1_gamma = gamma

    if kimg is not None:
        if not kimg > 0:
            raise UserError("--kimg must be positive")
        desc += f"-kimg{_number(kimg)}"
        args.total_kimg = _number(kimg)

    if batch is not None:
        assert isinstance(batch, int)
        if not (batch >= 1 and batch % gpus == 0):
            raise UserError("--batch must be at least 1 and divisible by --gpus")
        desc += f"-batch{batch}"
        args.batch_size = batch
        args.batch_gpu = batch // gpus

    # ADA / fixed-probability augmentation (steps 13-16).
    if aug is None:
        aug = "ada"
    else:
        assert isinstance(aug, str)
        desc += f"-{aug}"

    if aug == "ada":
        args.ada_target = 0.6
    elif aug == "noaug":
        pass
    elif aug == "fixed":
        if p is None:
            raise UserError(f"--aug={aug} requires specifying --p")
    else:
        raise UserError(f"--aug={aug} not supported")

    if p is not None:
        assert isinstance(p, float)
        if aug != "fixed":
            raise UserError("--p can only be specified with --aug=fixed")
        if not 0 <= p <= 1:
            raise UserError("--p must be between 0 and 1")
        desc += f"-p{p:g}"
        args.augment_p = p

    if target is not None:
        assert isinstance(target, float)
        if aug != "ada":
            raise UserError("--target can only be specified with --aug=ada")
        if not 0 <= target <= 1:
            raise UserError("--target must be between 0 and 1")
        desc += f"-target{target:g}"
        args.ada_target = target

    assert augpipe is None or isinstance(augpipe, str)
    if augpipe is None:
        augpipe = "bgc"
    else:
        if aug == "noaug":
            raise UserError("--augpipe cannot be specified with --aug=noaug")
        desc += f"-{augpipe}"

    if aug != "noaug":
        from training.augment import AUGPIPE_SPECS

        args.augment_kwargs = dnnlib.EasyDict(class_name="training.augment.AugmentPipe", **AUGPIPE_SPECS[augpipe])

    # Starting weights and frozen D layers (steps 17-18).
    assert resume is None or isinstance(resume, str)
    if resume is None:
        resume = "noresume"
    elif resume == "noresume":
        desc += "-noresume"
    elif resume in RESUME_SPECS:
        desc += f"-resume{resume}"
        args.resume_pkl = RESUME_SPECS[resume]
    else:
        desc += "-resumecustom"
        args.resume_pkl = resume

    if resume != "noresume":
        args.ada_kimg = 100
        args.ema_rampup = None

    if freezed is not None:
        assert isinstance(freezed, int)
        if not freezed >= 0:
            raise UserError("--freezed must be non-negative")
        desc += f"-freezed{freezed:d}"
        args.D_kwargs.block_kwargs.freeze_layers = freezed

    # Precision, memory layout and loader settings (steps 19-23).
    if fp32 is None:
        fp32 = False
    assert isinstance(fp32, bool)
    if fp32:
        args.G_kwargs.synthesis_kwargs.num_fp16_res = args.D_kwargs.num_fp16_res = 0
        args.G_kwargs.synthesis_kwargs.conv_clamp = args.D_kwargs.conv_clamp = None

    if nhwc is None:
        nhwc = False
    assert isinstance(nhwc, bool)
    if nhwc:
        args.G_kwargs.synthesis_kwargs.fp16_channels_last = args.D_kwargs.block_kwargs.fp16_channels_last = True

    if nobench is None:
        nobench = False
    assert isinstance(nobench, bool)
    if nobench:
        args.cudnn_benchmark = False

    if allow_tf32 is None:
        allow_tf32 = False
    assert isinstance(allow_tf32, bool)
    if allow_tf32:
        args.allow_tf32 = True

    if workers is not None:
        assert isinstance(workers, int)
        if not workers >= 1:
            raise UserError("--workers must be at least 1")
        args.data_loader_kwargs.num_workers = workers

    # Options beyond the reference.
    if cbase is not None:
        if not cbase >= 1:
            raise UserError("--cbase must be at least 1")
        args.G_kwargs.synthesis_kwargs.channel_base = args.D_kwargs.channel_base = cbase
    if cmax is not None:
        if not cmax >= 1:
            raise UserError("--cmax must be at least 1")
        args.G_kwargs.synthesis_kwargs.channel_max = args.D_kwargs.channel_max = cmax
    if map is not None:
        if not map >= 1:
            raise UserError("--map must be at least 1")
        args.G_kwargs.mapping_kwargs.num_layers = map
    if tick is not None:
        if not tick > 0:
            raise UserError("--tick must be positive")
        args.kimg_per_tick = _number(tick)
    if batch_gpu is not None:
        if not (batch_gpu >= 1 and args.batch_size % (batch_gpu * gpus) == 0):
            raise UserError(f"--batch-gpu must be at least 1 and divide --batch/--gpus ({args.batch_size // gpus})")
        args.batch_gpu = batch_gpu
    if args.batch_size % (args.batch_gpu * gpus) != 0 or args.batch_gpu < 1:
        raise UserError(
            f"the batch of {args.batch_size} cannot be split into {gpus} processes x rounds of {args.batch_gpu}; "
            "use --batch-gpu"
        )

    return desc, args


# ---------------------------------------------------------------------------------------------------------------------
# Launch.


def _torchrun_env() -> dict | None:
    """World size, rank and local rank when started by torchrun (env:// rendezvous), else None."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ and "LOCAL_RANK" in os.environ:
        return dict(
            world_size=int(os.environ["WORLD_SIZE"]),
            rank=int(os.environ["RANK"]),
            local_rank=int(os.environ["LOCAL_RANK"]),
        )
    return None


def _device_for(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _init_process(rank: int, args: dnnlib.EasyDict, device: torch.device) -> None:
    """Per-process setup shared by the spawn and torchrun launchers: logging, statistics, plugin verbosity."""
    dnnlib.util.Logger(file_name=os.path.join(args.run_dir, "log.txt"), file_mode="a", should_flush=True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    sync_device = device if args.num_gpus > 1 else None
    training_stats.init_multiprocessing(rank=rank, sync_device=sync_device)
    if rank != 0:
        custom_ops.verbosity = "none"


def subprocess_fn(rank: int, args: dnnlib.EasyDict, temp_dir: str) -> None:
    """Entry point of one spawned training process (file-based rendezvous, as the reference)."""
    device = _device_for(rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # Before NCCL starts, so that its communicator binds to this GPU.
    if args.num_gpus > 1:
        init_file = os.path.abspath(os.path.join(temp_dir, ".torch_distributed_init"))
        if os.name == "nt":
            init_method = "file:///" + init_file.replace("\\", "/")
        else:
            init_method = f"file://{init_file}"
        backend = "nccl" if device.type == "cuda" and os.name != "nt" else "gloo"
        torch.distributed.init_process_group(
            backend=backend, init_method=init_method, rank=rank, world_size=args.num_gpus
        )
    _init_process(rank, args, device)
    try:
        training_loop.training_loop(rank=rank, device=device, **args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _print_options(args: dnnlib.EasyDict) -> None:
    print()
    print("Training options:")
    print(json.dumps(args, indent=2))
    print()
    print(f"Output directory:   {args.run_dir}")
    print(f"Training data:      {args.training_set_kwargs.path}")
    print(f"Training duration:  {args.total_kimg} kimg")
    print(f"Number of GPUs:     {args.num_gpus}")
    print(f"Number of images:   {args.training_set_kwargs.max_size}")
    print(f"Image resolution:   {args.training_set_kwargs.resolution}")
    print(f"Conditional model:  {args.training_set_kwargs.use_labels}")
    print(f"Dataset x-flips:    {args.training_set_kwargs.xflip}")
    print()


def _next_run_dir(outdir: str, desc: str) -> str:
    prev_run_dirs = []
    if os.path.isdir(outdir):
        prev_run_dirs = [x for x in os.listdir(outdir) if os.path.isdir(os.path.join(outdir, x))]
    prev_run_ids = [re.match(r"^\d+", x) for x in prev_run_dirs]
    prev_run_ids = [int(x.group()) for x in prev_run_ids if x is not None]
    cur_run_id = max(prev_run_ids, default=-1) + 1
    run_dir = os.path.join(outdir, f"{cur_run_id:05d}-{desc}")
    assert not os.path.exists(run_dir)
    return run_dir


def _write_options(args: dnnlib.EasyDict) -> None:
    os.makedirs(args.run_dir, exist_ok=True)
    with open(os.path.join(args.run_dir, "training_options.json"), "w") as f:
        json.dump(args, f, indent=2)


def _cpu_defaults(config: dict, verbose: bool) -> dict:
    """Defaults for a machine without CUDA, for options the user did not give: float32, no metrics."""
    notes = []
    if config.get("fp32") is None:
        # Half precision is emulated on a CPU, several times slower than float32, and gains nothing there.
        config = dict(config, fp32=True)
        notes.append("--fp32 defaults to true")
    if config.get("metrics") is None:
        # The reference default (FID on 50k images at every snapshot, tick 0 included) would take hours on a CPU.
        config = dict(config, metrics=[])
        notes.append("--metrics defaults to none")
    if notes and verbose:
        print(f"No CUDA device: {' and '.join(notes)} on the CPU; give the options explicitly to override.")
    return config


def launch(outdir: str, dry_run: bool, config: dict) -> None:
    """Build the options, print them, create the run directory and start one process per GPU (or join torchrun)."""
    torchrun = _torchrun_env()
    if torchrun is not None and config.get("gpus") not in (None, torchrun["world_size"]):
        raise click.UsageError(
            f"--gpus={config['gpus']} does not match torchrun's world size {torchrun['world_size']}; leave --gpus out"
        )
    if torchrun is not None:
        config = dict(config, gpus=torchrun["world_size"])
    if not torch.cuda.is_available():
        config = _cpu_defaults(config, verbose=(torchrun is None or torchrun["rank"] == 0))

    try:
        run_desc, args = setup_training_loop_kwargs(**config)
    except UserError as err:
        raise click.UsageError(str(err)) from err
    dnnlib.util.Logger(should_flush=True)  # Only now: click reports usage errors on the real stderr.

    if torchrun is None:
        args.run_dir = _next_run_dir(outdir, run_desc)
        launch_local(args, dry_run)
    else:
        launch_torchrun(args, outdir, run_desc, dry_run, torchrun)


def launch_local(args: dnnlib.EasyDict, dry_run: bool) -> None:
    _print_options(args)
    if dry_run:
        print("Dry run; exiting.")
        return
    if not torch.cuda.is_available():
        print("No CUDA device found: training on the CPU (reference ops; gloo for several processes).")
    elif args.num_gpus > torch.cuda.device_count():
        raise click.UsageError(f"--gpus={args.num_gpus} but only {torch.cuda.device_count()} CUDA devices are visible")

    print("Creating output directory...")
    os.makedirs(args.run_dir)
    _write_options(args)

    print("Launching processes...")
    torch.multiprocessing.set_start_method("spawn", force=True)
    with tempfile.TemporaryDirectory() as temp_dir:
        if args.num_gpus == 1:
            subprocess_fn(rank=0, args=args, temp_dir=temp_dir)
        else:
            torch.multiprocessing.spawn(fn=subprocess_fn, args=(args, temp_dir), nprocs=args.num_gpus)


def launch_torchrun(args: dnnlib.EasyDict, outdir: str, run_desc: str, dry_run: bool, env: dict) -> None:
    """Join a torchrun job (one process per GPU, any number of nodes); rank 0 names the run directory."""
    device = _device_for(env["local_rank"])
    if device.type == "cuda":
        torch.cuda.set_device(device)  # Before NCCL starts, so that its communicator binds to this GPU.
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend, init_method="env://")
    run_dir = [_next_run_dir(outdir, run_desc) if env["rank"] == 0 else None]
    torch.distributed.broadcast_object_list(run_dir, src=0)
    args.run_dir = run_dir[0]
    try:
        if env["rank"] == 0:
            _print_options(args)
        if dry_run:
            if env["rank"] == 0:
                print("Dry run; exiting.")
            return
        if env["rank"] == 0:
            print("Creating output directory...")
            _write_options(args)
        torch.distributed.barrier()
        os.makedirs(args.run_dir, exist_ok=True)  # Nodes without a shared file system get their own log.txt.
        _init_process(env["rank"], args, device)
        training_loop.training_loop(rank=env["rank"], device=device, **args)
    finally:
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------------
# Command line.


@click.command()
@click.pass_context
# Run-wide settings.
@click.option("--outdir", help="Where to save the results", required=True, metavar="DIR")
@click.option("--gpus", help="Number of GPUs to use [default: 1]", type=int, metavar="INT")
@click.option("--snap", help="Snapshot interval [default: 50 ticks]", type=int, metavar="INT")
@click.option("--metrics", help='Comma-separated list or "none" [default: fid50k_full]', type=cli.CommaSeparatedList())
@click.option("--seed", help="Random seed [default: 0]", type=int, metavar="INT")
@click.option("-n", "--dry-run", help="Print training options and exit", is_flag=True)
# Training data.
@click.option("--data", help="Training data (directory or zip)", metavar="PATH", required=True)
@click.option(
    "--cond", help="Train conditional model based on dataset labels [default: false]", type=bool, metavar="BOOL"
)
@click.option("--subset", help="Train with only N images [default: all]", type=int, metavar="INT")
@click.option("--mirror", help="Enable dataset x-flips [default: false]", type=bool, metavar="BOOL")
# Hyperparameter preset and overrides.
@click.option("--cfg", help="Base config [default: auto]", type=click.Choice(list(CFG_SPECS)))
@click.option("--gamma", help="Override R1 gamma", type=float)
@click.option("--kimg", help="Override training duration (fractions allowed, e.g. 0.5)", type=float, metavar="KIMG")
@click.option("--batch", help="Override batch size", type=int, metavar="INT")
# Augmentation.
@click.option("--aug", help="Augmentation mode [default: ada]", type=click.Choice(["noaug", "ada", "fixed"]))
@click.option("--p", help="Augmentation probability for --aug=fixed", type=float)
@click.option("--target", help="ADA target value for --aug=ada", type=float)
@click.option("--augpipe", help="Augmentation pipeline [default: bgc]", type=click.Choice(AUGPIPE_CHOICES))
# Starting weights.
@click.option("--resume", help="Resume training [default: noresume]", metavar="PKL")
@click.option("--freezed", help="Freeze-D [default: 0 layers]", type=int, metavar="INT")
# Speed and memory.
@click.option("--fp32", help="Disable mixed-precision training", type=bool, metavar="BOOL")
@click.option("--nhwc", help="Use NHWC memory format with FP16", type=bool, metavar="BOOL")
@click.option("--nobench", help="Disable cuDNN benchmarking", type=bool, metavar="BOOL")
@click.option("--allow-tf32", help="Allow PyTorch to use TF32 internally", type=bool, metavar="BOOL")
@click.option("--workers", help="Override number of DataLoader workers", type=int, metavar="INT")
# Options beyond the reference.
@click.option("--cbase", help="Override channel base (capacity) [default: from --cfg]", type=int, metavar="INT")
@click.option("--cmax", help="Override max channels per layer [default: 512]", type=int, metavar="INT")
@click.option("--map", help="Override mapping network depth [default: from --cfg]", type=int, metavar="INT")
@click.option("--tick", help="Progress print interval in kimg [default: 4]", type=float, metavar="KIMG")
@click.option("--batch-gpu", help="Samples per GPU per round [default: from --cfg]", type=int, metavar="INT")
def main(ctx, outdir, dry_run, **config_kwargs):
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
    """
    _ = ctx
    launch(outdir=outdir, dry_run=dry_run, config=config_kwargs)


if __name__ == "__main__":
    main()
