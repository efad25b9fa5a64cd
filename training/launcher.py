"""Starting a training run from TrainOptions: the machine's defaults, the options block, the run directory and the
processes (one per GPU on this machine, or this process's share of a torchrun job).

Errors about the options are `config.UserError`s; errors met once training runs (bad data, a --resume pickle that
does not fit, a failed download) propagate as the training code raises them. train.py turns both into click errors.
"""

import dataclasses
import json
import os

import torch

import dnnlib
from torch_utils import custom_ops, training_stats
from torch_utils.launch import default_device, run_processes, spawned_process_group
from training import resume, training_loop
from training.config import TrainOptions, UserError, build_training_config, cpu_defaults

# How often to try the next number when other runs keep taking the run directory this one was about to create.
RUN_DIR_ATTEMPTS = 100


class RunDirError(Exception):
    """The run directory cannot be created (read-only or full --outdir, or too many runs racing for names)."""


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

    notes: list[str] = []
    run_desc, args = build_training_config(options, notes)
    _check_paths(options.outdir, args)
    if torchrun is None or torchrun["rank"] == 0:
        for note in notes:  # Labels left unused, the snapshot --resume=latest found: before the options block.
            print(note)
    dnnlib.util.Logger(should_flush=True)  # Only now: click reports usage errors on the real stderr.

    if torchrun is None:
        launch_local(args, options.outdir, run_desc, options.dry_run)
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


def next_run_dir(outdir: str, desc: str) -> str:
    """`outdir/<id>-<desc>` with an id one past every taken one (the leading numbers of outdir's subdirectory names;
    files and other names are ignored), zero-padded to 5 digits (docs/compatibility.md, "Training options")."""
    run_id = max((run_id for run_id, _name in resume.numbered_run_dirs(outdir)), default=-1) + 1
    return os.path.join(outdir, f"{run_id:05d}-{desc}")


def create_run_dir(outdir: str, desc: str) -> str:
    """Create and return the next run directory. The exclusive mkdir makes two runs started at once in the same
    --outdir take different numbers: the one that loses the race moves on to the next."""
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"--outdir {outdir} cannot be created: {err.strerror or err}") from err
    for _attempt in range(RUN_DIR_ATTEMPTS):
        run_dir = next_run_dir(outdir, desc)
        try:
            os.mkdir(run_dir)
            return run_dir
        except FileExistsError:
            continue  # Another run took this number between the listing and the mkdir.
        except OSError as err:
            message = f"--outdir {outdir}: cannot create the run directory {run_dir}: {err.strerror or err}"
            raise RunDirError(message) from err
    raise RunDirError(f"--outdir {outdir}: other runs kept taking the next run number; try again")


def _write_options(args: dnnlib.EasyDict) -> None:
    path = os.path.join(args.run_dir, "training_options.json")
    try:
        with open(path, "w") as f:
            json.dump(args, f, indent=2)
    except OSError as err:
        raise RunDirError(f"cannot write {path}: {err.strerror or err}") from err


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


def launch_local(args: dnnlib.EasyDict, outdir: str, run_desc: str, dry_run: bool) -> None:
    """Print the options, create the run directory and run one process per GPU (this one alone for one GPU)."""
    if dry_run:
        args.run_dir = next_run_dir(outdir, run_desc)
        print_options(args)
        print("Dry run; exiting.")
        return
    if torch.cuda.is_available() and args.num_gpus > torch.cuda.device_count():
        raise UserError(f"--gpus={args.num_gpus} but only {torch.cuda.device_count()} CUDA devices are visible")
    # Created before the options are printed, so that they show the number this run really got.
    args.run_dir = create_run_dir(outdir, run_desc)
    print_options(args)
    if not torch.cuda.is_available():
        print("No CUDA device found: training on the CPU (reference ops; gloo for several processes).")

    print("Creating output directory...")
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
    try:
        args.run_dir = _agree_on_run(args, outdir, run_desc, dry_run, env["rank"])
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


def _agree_on_run(args: dnnlib.EasyDict, outdir: str, run_desc: str, dry_run: bool, rank: int) -> str:
    """The run directory, named (and for a real run created) by rank 0, and a check that every rank starts from the
    same pickle: each resolved --resume=latest on its own view of --outdir. Collective; a failure is raised on every
    rank alike, so that none is left waiting."""
    decision = [None]
    if rank == 0:
        try:
            decision[0] = ("run_dir", next_run_dir(outdir, run_desc) if dry_run else create_run_dir(outdir, run_desc))
        except RunDirError as err:
            decision[0] = ("error", str(err))
    torch.distributed.broadcast_object_list(decision, src=0)
    kind, value = decision[0]
    if kind == "error":
        raise RunDirError(value)
    starts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(starts, args.get("resume_pkl"))
    other = next((r for r, start in enumerate(starts) if start != starts[0]), None)
    if other is not None:
        raise UserError(
            f"--resume: rank 0 starts from {starts[0]} but rank {other} from {starts[other]}; every node must see "
            "the same --outdir"
        )
    return value
