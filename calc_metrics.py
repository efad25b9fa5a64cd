"""Command-line metric evaluation: FID, KID, precision/recall, IS or PPL of the G_ema network stored in a pickle."""

import contextlib
import copy
import dataclasses
import json
import logging
import os
import tempfile
import time

import click
import torch
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException

import dnnlib
from dnnlib import cli
from metrics import metric_main, metric_utils
from torch_utils import custom_ops, misc, training_stats
from torch_utils.launch import DeviceError, resolve_device, run_processes, spawned_process_group
from training import inference, pickles

# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvaluationJob:
    """What every evaluation process needs: the network, what to measure, and where to report it."""

    G: torch.nn.Module  # G_ema of the pickle, still on the CPU.
    metrics: list[str]
    dataset_kwargs: dnnlib.EasyDict  # Real images to compare with.
    num_gpus: int
    network_pkl: str  # As given on the command line; recorded in the results.
    run_dir: str | None  # Training run the pickle belongs to, which also gets the results.
    verbose: bool
    detector_dir: str | None
    device: torch.device = torch.device("cpu")  # Of a single process; with --gpus > 1 on CUDA, rank r uses cuda:r.
    error_dir: str | None = None  # Where spawned processes leave the one-line message of their failure.


def _configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # Full-precision matmuls/convolutions keep the numbers comparable with published results.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def _frozen_copy(G: torch.nn.Module, device: torch.device, show_summary: bool) -> torch.nn.Module:
    """This process's own inference-only copy of G on `device`; optionally prints its module table."""
    G = inference.run_float32_off_cuda(copy.deepcopy(G).eval().requires_grad_(False).to(device), device)
    if show_summary:
        # One forward pass with placeholder inputs: a [1, z_dim] latent and a [1, c_dim] label.
        z, c = torch.empty([1, G.z_dim], device=device), torch.empty([1, G.c_dim], device=device)
        misc.print_module_summary(G, [z, c])
    return G


def subprocess_fn(rank: int, args: EvaluationJob, temp_dir: str) -> None:
    """One evaluation process (rank of args.num_gpus); they share the work of every metric, rank 0 reports."""
    dnnlib.util.Logger(should_flush=True)
    leader = rank == 0
    chatty = leader and args.verbose
    device = rank_device(args.device, rank, args.num_gpus)
    # Failures are recorded inside the group: leaving it first would make the peers fail before this one is on file.
    with spawned_process_group(rank, args.num_gpus, temp_dir, device), _failure_recorded(rank, args.error_dir):
        training_stats.init_multiprocessing(rank=rank, sync_device=device if args.num_gpus > 1 else None)
        if not chatty:
            custom_ops.verbosity = "none"
        if args.detector_dir is not None:
            metric_utils.set_detector_dir(args.detector_dir)  # Spawned processes do not inherit module state.
        _configure_backends(device)
        G = _frozen_copy(args.G, device, show_summary=chatty)

        for metric in args.metrics:
            if chatty:
                print(f"Calculating {metric}...")
            result = metric_main.calc_metric(
                metric=metric,
                G=G,
                dataset_kwargs=args.dataset_kwargs,
                num_gpus=args.num_gpus,
                rank=rank,
                device=device,
                progress=metric_utils.ProgressMonitor(verbose=args.verbose),
            )
            if leader:
                metric_main.report_metric(result, run_dir=args.run_dir, snapshot_pkl=args.network_pkl)
            if chatty:
                print()
        if chatty:
            print("Exiting...")


def rank_device(device: torch.device, rank: int, num_gpus: int) -> torch.device:
    """The device of process `rank`: with several processes on CUDA one GPU each (cuda:rank), else `device`."""
    return torch.device("cuda", rank) if device.type == "cuda" and num_gpus > 1 else device


def _failure_line(exc: BaseException) -> str:
    """One line for a worker's exception: the message of our typed errors, else also the exception's type."""
    if isinstance(exc, click.ClickException):
        text = exc.format_message()
    elif isinstance(exc, dnnlib.util.DownloadError | pickles.NetworkPickleError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


@contextlib.contextmanager
def _failure_recorded(rank: int, error_dir: str | None):
    """Leave a one-line account of an exception in `error_dir/rank<N>.txt` (if given), for the parent to print.

    The line is stamped with the time, so that the parent reports the first failure, not the processes that then
    lost their peer.
    """
    try:
        yield
    except Exception as exc:
        if error_dir is not None:
            with open(os.path.join(error_dir, f"rank{rank}.txt"), "w", encoding="utf-8") as f:
                f.write(f"{time.time()!r}\t{_failure_line(exc)}")
        raise


def _worker_failure(exc: ProcessException, error_dir: str, num_gpus: int) -> str:
    """The message for failed spawned processes: the first failure recorded, else how the process ended."""
    recorded = []
    for name in os.listdir(error_dir):
        with open(os.path.join(error_dir, name), encoding="utf-8") as f:
            stamp, _, line = f.read().partition("\t")
        recorded.append((float(stamp), int(name.removeprefix("rank").removesuffix(".txt")), line))
    if recorded:
        _stamp, rank, line = min(recorded)
        return f"--gpus={num_gpus}: process {rank} failed: {line}"
    if isinstance(exc, ProcessExitedException):
        how = f"signal {exc.signal_name}" if exc.signal_name else f"exit code {exc.exit_code}"
        return f"--gpus={num_gpus}: process {exc.error_index} ended with {how}"
    return f"--gpus={num_gpus}: process {exc.error_index} failed: {' '.join(str(exc).split()[-20:])}"


@contextlib.contextmanager
def _log_level(logger: logging.Logger, level: int):
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def run_evaluation(job: EvaluationJob) -> None:
    """Run the job in its processes; a failed spawned process is one `Error:` line, not its traceback."""
    if job.num_gpus == 1:
        run_processes(subprocess_fn, job, 1)  # In this process: its errors surface as they are.
        return
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")  # Says it terminates the other processes.
    with tempfile.TemporaryDirectory() as error_dir, _log_level(spawn_log, logging.ERROR):
        job = dataclasses.replace(job, error_dir=error_dir)
        try:
            run_processes(subprocess_fn, job, job.num_gpus)
        except ProcessException as exc:
            raise click.ClickException(_worker_failure(exc, error_dir, job.num_gpus)) from None


def _resolve_device(ctx: click.Context, spec: str, gpus: int) -> torch.device:
    """`--device` for `--gpus` processes: with several, CUDA means cuda:0 .. cuda:gpus-1, and no single GPU or MPS."""
    with cli.errors_as_messages(DeviceError):
        device = resolve_device(spec)
    if gpus > 1 and device.type == "mps":
        ctx.fail(f"--device {spec}: MPS is one device; --gpus={gpus} needs --device=cuda or --device=cpu")
    if gpus > 1 and device.type == "cuda":
        if ":" in spec:
            ctx.fail(f"--device {spec} names one GPU; with --gpus={gpus} use --device=cuda (cuda:0 .. cuda:{gpus - 1})")
        if gpus > torch.cuda.device_count():
            ctx.fail(f"--gpus={gpus}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _check_options(ctx: click.Context, metrics: list[str], gpus: int, network_pkl: str) -> None:
    """Usage errors, in the order docs/compatibility.md, "Tools" gives; nothing is loaded before these pass."""
    if not all(metric_main.is_valid_metric(name) for name in metrics):
        ctx.fail("\n".join(["--metrics can only contain the following values:", *metric_main.list_valid_metrics()]))
    if gpus < 1:
        ctx.fail("--gpus must be at least 1")
    if not (dnnlib.util.is_url(network_pkl, allow_file_urls=True) or os.path.isfile(network_pkl)):
        ctx.fail("--network must point to a file or URL")


def _load_network(network_pkl: str, verbose: bool, trust_pickle: bool = False) -> tuple[torch.nn.Module, dict | None]:
    """G_ema of the pickle and the training-set options the training run stored in it (None if it has none)."""
    if verbose:
        print(f'Loading network from "{network_pkl}"...')
    with cli.errors_as_messages(pickles.NetworkPickleError, prefix="--network: "):
        snapshot = pickles.load_network_from(network_pkl, verbose=verbose, allow_code=trust_pickle)
    return snapshot["G_ema"], snapshot.get("training_set_kwargs")


def _dataset_options(
    ctx: click.Context, data: str | None, mirror: bool | None, G: torch.nn.Module, recorded: dict | None
) -> dnnlib.EasyDict:
    """Real-image options: --data if given, else those recorded at training time; --mirror overrides xflip."""
    if data is not None:
        options = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path=data)
    elif recorded is not None:
        options = dnnlib.EasyDict(recorded)
    else:
        ctx.fail("Could not look up dataset options; please specify --data")
    # The network, not the recorded options, decides the image size and whether labels are needed.
    options.update(resolution=G.img_resolution, use_labels=G.c_dim != 0)
    if mirror is not None:
        options.xflip = mirror
    _check_dataset(ctx, options, G, source="--data" if data is not None else "--data (recorded in the pickle)")
    return options


def _check_dataset(ctx: click.Context, options: dict, G: torch.nn.Module, source: str) -> None:
    """Open the real images once, so that a missing, malformed or mismatched dataset is a usage error."""
    try:
        with dnnlib.util.construct_class_by_name(**options) as dataset:
            label_dim = dataset.label_dim if G.c_dim != 0 else 0
    except (OSError, ValueError) as err:
        ctx.fail(f"{source}: {err}")
    if label_dim != G.c_dim:
        ctx.fail(
            f"{source}: the network is conditional with {G.c_dim} classes, but {options['path']} has "
            + (f"labels of dimension {label_dim}" if label_dim else "no labels")
        )


def _run_dir_of(network_pkl: str) -> str | None:
    """The training run a local snapshot belongs to: its folder, if that holds training_options.json."""
    if not os.path.isfile(network_pkl):
        return None
    folder = os.path.dirname(network_pkl)
    return folder if os.path.isfile(os.path.join(folder, "training_options.json")) else None


# ----------------------------------------------------------------------------------------------------------------------


@click.command()
@click.pass_context
@click.option(
    "network_pkl",
    "--network",
    help="Pickle holding the G_ema network to evaluate (file or URL)",
    metavar="PATH",
    required=True,
)
@click.option(
    "--metrics",
    help="Metric names separated by commas, or 'none'",
    type=cli.CommaSeparatedList(),
    default="fid50k_full",
    show_default=True,
)
@click.option(
    "--data",
    help="Real images to compare with (folder or zip) [default: the training data recorded in the pickle]",
    metavar="PATH",
)
@click.option(
    "--mirror",
    help="Count mirrored copies of the real images, as training with --mirror did [default: from the pickle]",
    type=bool,
    metavar="BOOL",
)
@click.option(
    "--gpus",
    help="Processes to split the work over, one per GPU",
    type=int,
    default=1,
    metavar="INT",
    show_default=True,
)
@click.option(
    "--verbose",
    help="Print progress and the network summary",
    type=bool,
    default=True,
    metavar="BOOL",
    show_default=True,
)
@click.option(
    "--detector-dir",
    help=f"Folder with the detector files (inception-2015-12-05.pt, vgg16.pt) to use instead of downloading them "
    f"[default: ${metric_utils.DETECTOR_DIR_ENV}, then <dnnlib cache>/detectors]",
    metavar="DIR",
)
@cli.device_option()
@cli.trust_pickle_option()
def calc_metrics(ctx, network_pkl, metrics, data, mirror, gpus, verbose, detector_dir, device, trust_pickle):
    """Evaluate quality metrics for a training snapshot or a pretrained network pickle.

    Examples:

    \b
    # A snapshot inside a run directory: the dataset is looked up in the pickle and the
    # results are also appended to metric-<name>.jsonl in that directory.
    python calc_metrics.py --metrics=fid50k_full,kid50k_full \\
        --network=runs/00003-faces256-auto1/network-snapshot-001200.pkl

    \b
    # Any other pickle (file or URL): give the dataset and its mirroring yourself;
    # the results are printed only.
    python calc_metrics.py --metrics=pr50k3_full --mirror=1 --data=datasets/ffhq256.zip \\
        --network=https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl

    Available metrics:

    \b
      ADA paper:
        fid50k_full  FID against every image of the dataset.
        kid50k_full  KID against every image of the dataset.
        pr50k3_full  Precision and recall (k=3) against every image of the dataset.
        is50k        Inception score (used for CIFAR-10).

    \b
      StyleGAN and StyleGAN2 papers:
        fid50k       FID against 50k real images.
        kid50k       KID against 50k real images.
        pr50k3       Precision and recall (k=3) against 50k real images.
        ppl2_wend    Perceptual path length in W, path endpoints, whole image.
        ppl_zfull    Perceptual path length in Z, full paths, cropped image.
        ppl_wfull    Perceptual path length in W, full paths, cropped image.
        ppl_zend     Perceptual path length in Z, path endpoints, cropped image.
        ppl_wend     Perceptual path length in W, path endpoints, cropped image.

    Feature detectors are downloaded (and cached) on first use. Without internet access, fetch
    inception-2015-12-05.pt and vgg16.pt from
    https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/ into a folder and pass
    --detector-dir (or set $STYLEGAN_DETECTOR_DIR), or put them in the detectors/ folder of the dnnlib
    cache ($DNNLIB_CACHE_DIR, default ~/.cache/dnnlib).
    """
    dnnlib.util.Logger(should_flush=True)
    _check_options(ctx, metrics, gpus, network_pkl)
    device = _resolve_device(ctx, device, gpus)
    if detector_dir is not None:
        metric_utils.set_detector_dir(detector_dir)

    G, recorded_dataset = _load_network(network_pkl, verbose, trust_pickle)
    dataset_kwargs = _dataset_options(ctx, data, mirror, G, recorded_dataset)
    if verbose:
        print("Dataset options:")
        print(json.dumps(dataset_kwargs, indent=2))

    job = EvaluationJob(
        G=G,
        metrics=metrics,
        dataset_kwargs=dataset_kwargs,
        num_gpus=gpus,
        network_pkl=network_pkl,
        run_dir=_run_dir_of(network_pkl),
        verbose=verbose,
        detector_dir=detector_dir,
        device=device,
    )
    if verbose:
        print("Launching processes...")
    with cli.errors_as_messages(dnnlib.util.DownloadError):  # Feature detectors, offline: says where to put them.
        run_evaluation(job)


# ----------------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    calc_metrics()
