"""Starting a training run from TrainOptions: the machine's defaults, the options block, the run directory and the
processes (one per GPU on this machine, or this process's share of a torchrun job).

Errors about the options are `config.UserError`s; errors met once training runs (bad data, a --resume pickle that
does not fit, a failed download) propagate as the training code raises them. train.py turns both into click errors.
"""

import dataclasses
import json
import os
import re

import torch

import dnnlib
from torch_utils import custom_ops, training_stats
from torch_utils.launch import default_device, run_processes, spawned_process_group
from training import training_loop
from training.config import TrainOptions, UserError, build_training_config, cpu_defaults

_LEADING_DIGITS = re.compile(r"\d+")


def launch(options: TrainOptions) -> None:
    """Build the options, print them, create the run directory and start one process per GPU (or join torchrun)."""
    torchrun = torchrun_env()
    if torchrun is not None:
        world_size = torchrun["world_size"]
        if options.is_given("gpus") and options.gpus != world_size:
            raise UserError(
                f"--gpus={options.gpus} does not match torchrun's world size {world_size}; leave --gpus out"
            )
        options = dataclasses.replace(options, gpus=world_size)
    if not torch.cuda.is_available():
        options, notes = cpu_defaults(options)
        if notes and (torchrun is None or torchrun["rank"] == 0):
            print(f"No CUDA device: {' and '.join(notes)} on the CPU; give the options explicitly to override.")

    run_desc, args = build_training_config(options)
    _check_paths(options.outdir, args)
    dnnlib.util.Logger(should_flush=True)  # Only now: click reports usage errors on the real stderr.

    if torchrun is None:
        args.run_dir = next_run_dir(options.outdir, run_desc)
        launch_local(args, options.dry_run)
    else:
        launch_torchrun(args, options.outdir, run_desc, options.dry_run, torchrun)


def torchrun_env() -> dict | None:
    """World size, rank and local rank when started by torchrun (env:// rendezvous), else None."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ and "LOCAL_RANK" in os.environ:
        return dict(
            world_size=int(os.environ["WORLD_SIZE"]),
            rank=int(os.environ["RANK"]),
            local_rank=int(os.environ["LOCAL_RANK"]),
        )
    return None


def _check_paths(outdir: str, args: dnnlib.EasyDict) -> None:
    """Paths that would otherwise fail only after the run directory exists."""
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise UserError(f"--outdir {outdir} exists and is not a directory")
    resume = args.get("resume_pkl")
    if resume is not None and not dnnlib.util.is_url(resume, allow_file_urls=True) and not os.path.isfile(resume):
        raise UserError(f"--resume: no such file: {resume}")


# ----------------------------------------------------------------------------------------------------------------------
# Console and run directory.


def print_options(args: dnnlib.EasyDict) -> None:
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


def _taken_run_ids(outdir: str) -> list[int]:
    """The leading numbers of outdir's subdirectory names; files, and names not starting with a digit, are ignored."""
    if not os.path.isdir(outdir):
        return []
    with os.scandir(outdir) as entries:
        numbered = [_LEADING_DIGITS.match(entry.name) for entry in entries if entry.is_dir()]
    return [int(match.group()) for match in numbered if match is not None]


def next_run_dir(outdir: str, desc: str) -> str:
    """`outdir/<id>-<desc>` with an id one past every taken one, zero-padded to 5 digits (docs/compatibility.md,
    "Training options")."""
    run_id = max(_taken_run_ids(outdir), default=-1) + 1
    run_dir = os.path.join(outdir, f"{run_id:05d}-{desc}")
    assert not os.path.exists(run_dir), f"{run_dir} already exists"
    return run_dir


def _write_options(args: dnnlib.EasyDict) -> None:
    os.makedirs(args.run_dir, exist_ok=True)
    with open(os.path.join(args.run_dir, "training_options.json"), "w") as f:
        json.dump(args, f, indent=2)


# ----------------------------------------------------------------------------------------------------------------------
# Processes.


def _start_log(args: dnnlib.EasyDict) -> None:
    dnnlib.util.Logger(file_name=os.path.join(args.run_dir, "log.txt"), file_mode="a", should_flush=True)


def _init_process(rank: int, args: dnnlib.EasyDict, device: torch.device) -> None:
    """Per-process setup shared by the spawn and torchrun launchers, after logging has started: statistics and
    plugin verbosity. Both launchers have already made `device` the current CUDA device (before NCCL starts)."""
    sync_device = device if args.num_gpus > 1 else None
    training_stats.init_multiprocessing(rank=rank, sync_device=sync_device)
    if rank != 0:
        custom_ops.verbosity = "none"


def subprocess_fn(rank: int, args: dnnlib.EasyDict, temp_dir: str) -> None:
    """One training process of a local run (rank of args.num_gpus)."""
    device = default_device(rank)
    _start_log(args)  # Before the process group, so that what its start prints reaches log.txt.
    with spawned_process_group(rank, args.num_gpus, temp_dir, device):
        _init_process(rank, args, device)
        training_loop.training_loop(rank=rank, device=device, **args)


def launch_local(args: dnnlib.EasyDict, dry_run: bool) -> None:
    """Print the options, create the run directory and run one process per GPU (this one alone for one GPU)."""
    print_options(args)
    if dry_run:
        print("Dry run; exiting.")
        return
    if not torch.cuda.is_available():
        print("No CUDA device found: training on the CPU (reference ops; gloo for several processes).")
    elif args.num_gpus > torch.cuda.device_count():
        raise UserError(f"--gpus={args.num_gpus} but only {torch.cuda.device_count()} CUDA devices are visible")

    print("Creating output directory...")
    os.makedirs(args.run_dir)
    _write_options(args)

    print("Launching processes...")
    run_processes(subprocess_fn, args, args.num_gpus)


def launch_torchrun(args: dnnlib.EasyDict, outdir: str, run_desc: str, dry_run: bool, env: dict) -> None:
    """Join a torchrun job (one process per GPU, any number of nodes); rank 0 names the run directory."""
    device = default_device(env["local_rank"])
    if device.type == "cuda":
        torch.cuda.set_device(device)  # Before NCCL starts, so that its communicator binds to this GPU.
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend, init_method="env://")
    run_dir = [next_run_dir(outdir, run_desc) if env["rank"] == 0 else None]
    torch.distributed.broadcast_object_list(run_dir, src=0)
    args.run_dir = run_dir[0]
    try:
        if env["rank"] == 0:
            print_options(args)
        if dry_run:
            if env["rank"] == 0:
                print("Dry run; exiting.")
            return
        if env["rank"] == 0:
            print("Creating output directory...")
            _write_options(args)
        torch.distributed.barrier()
        os.makedirs(args.run_dir, exist_ok=True)  # Nodes without a shared file system get their own log.txt.
        _start_log(args)  # Only now: the run directory is agreed on through the process group.
        _init_process(env["rank"], args, device)
        training_loop.training_loop(rank=env["rank"], device=device, **args)
    finally:
        torch.distributed.destroy_process_group()
