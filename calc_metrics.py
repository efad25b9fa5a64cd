"""Command-line metric evaluation: FID, KID, precision/recall, IS or PPL of the G_ema network stored in a pickle."""

import copy
import json
import os
import tempfile

import click
import torch

import dnnlib
import legacy
from dnnlib import cli
from metrics import metric_main, metric_utils
from torch_utils import custom_ops, misc, training_stats

# ----------------------------------------------------------------------------------------------------------------------


def subprocess_fn(rank, args, temp_dir):
    """One evaluation worker (rank `rank` of `args.num_gpus`)."""
    dnnlib.util.Logger(should_flush=True)

    if args.num_gpus > 1:
        init_file = os.path.abspath(os.path.join(temp_dir, ".torch_distributed_init"))
        if os.name == "nt":
            init_method = "file:///" + init_file.replace("\\", "/")
            torch.distributed.init_process_group(
                backend="gloo", init_method=init_method, rank=rank, world_size=args.num_gpus
            )
        else:
            init_method = f"file://{init_file}"
            torch.distributed.init_process_group(
                backend="nccl", init_method=init_method, rank=rank, world_size=args.num_gpus
            )

    sync_device = torch.device("cuda", rank) if args.num_gpus > 1 else None
    training_stats.init_multiprocessing(rank=rank, sync_device=sync_device)
    if rank != 0 or not args.verbose:
        custom_ops.verbosity = "none"
    if args.detector_dir is not None:
        metric_utils.set_detector_dir(args.detector_dir)  # Spawned workers do not inherit module state.

    device = metric_utils.default_device(rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # Full-precision matmuls/convolutions keep the numbers comparable with published results.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    G = copy.deepcopy(args.G).eval().requires_grad_(False).to(device)
    if rank == 0 and args.verbose:
        z = torch.empty([1, G.z_dim], device=device)
        c = torch.empty([1, G.c_dim], device=device)
        misc.print_module_summary(G, [z, c])

    for metric in args.metrics:
        if rank == 0 and args.verbose:
            print(f"Calculating {metric}...")
        progress = metric_utils.ProgressMonitor(verbose=args.verbose)
        result_dict = metric_main.calc_metric(
            metric=metric,
            G=G,
            dataset_kwargs=args.dataset_kwargs,
            num_gpus=args.num_gpus,
            rank=rank,
            device=device,
            progress=progress,
        )
        if rank == 0:
            metric_main.report_metric(result_dict, run_dir=args.run_dir, snapshot_pkl=args.network_pkl)
        if rank == 0 and args.verbose:
            print()

    if rank == 0 and args.verbose:
        print("Exiting...")


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
def calc_metrics(ctx, network_pkl, metrics, data, mirror, gpus, verbose, detector_dir):
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

    # Reject bad options before anything is loaded.
    args = dnnlib.EasyDict(metrics=metrics, num_gpus=gpus, network_pkl=network_pkl, verbose=verbose)
    if not all(metric_main.is_valid_metric(metric) for metric in args.metrics):
        ctx.fail("\n".join(["--metrics can only contain the following values:"] + metric_main.list_valid_metrics()))
    if not args.num_gpus >= 1:
        ctx.fail("--gpus must be at least 1")
    if not (dnnlib.util.is_url(network_pkl, allow_file_urls=True) or os.path.isfile(network_pkl)):
        ctx.fail("--network must point to a file or URL")
    args.detector_dir = detector_dir
    if detector_dir is not None:
        metric_utils.set_detector_dir(detector_dir)

    # Load the network.
    if args.verbose:
        print(f'Loading network from "{network_pkl}"...')
    with dnnlib.util.open_url(network_pkl, verbose=args.verbose) as f:
        network_dict = legacy.load_network_pkl(f)
        args.G = network_dict["G_ema"]

    # Dataset options: explicit --data, else whatever the snapshot recorded from training.
    if data is not None:
        args.dataset_kwargs = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path=data)
    elif network_dict["training_set_kwargs"] is not None:
        args.dataset_kwargs = dnnlib.EasyDict(network_dict["training_set_kwargs"])
    else:
        ctx.fail("Could not look up dataset options; please specify --data")
    args.dataset_kwargs.resolution = args.G.img_resolution
    args.dataset_kwargs.use_labels = args.G.c_dim != 0
    if mirror is not None:
        args.dataset_kwargs.xflip = mirror
    if args.verbose:
        print("Dataset options:")
        print(json.dumps(args.dataset_kwargs, indent=2))

    # A snapshot inside a training run directory gets its results appended there.
    args.run_dir = None
    if os.path.isfile(network_pkl):
        pkl_dir = os.path.dirname(network_pkl)
        if os.path.isfile(os.path.join(pkl_dir, "training_options.json")):
            args.run_dir = pkl_dir

    if args.verbose:
        print("Launching processes...")
    torch.multiprocessing.set_start_method("spawn", force=True)
    with tempfile.TemporaryDirectory() as temp_dir:
        if args.num_gpus == 1:
            subprocess_fn(rank=0, args=args, temp_dir=temp_dir)
        else:
            torch.multiprocessing.spawn(fn=subprocess_fn, args=(args, temp_dir), nprocs=args.num_gpus)


# ----------------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    calc_metrics()
