"""Command-line entry point for training: `python train.py --outdir=runs --data=datasets/faces256.zip`.

Options, their order and their errors follow the reference implementation (spec: training.md §5); a few options
from its successor are added (--cbase, --cmax, --map, --tick, --batch-gpu, fractional --kimg).
"""

import contextlib
import dataclasses
import json
import os
import re
import typing

import click
import torch

import dnnlib
from dnnlib import cli
from metrics import metric_main
from torch_utils import custom_ops, training_stats
from torch_utils.launch import default_device, run_processes, spawned_process_group
from training import pickles, training_loop
from training.augment import AUGPIPE_SPECS
from training.dataset import DatasetError

RESUME_SPECS = {
    "ffhq256": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl",
    "ffhq512": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res512-mirror-stylegan2-noaug.pkl",
    "ffhq1024": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res1024-mirror-stylegan2-noaug.pkl",
    "celebahq256": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl",
    "lsundog256": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/lsundog-res256-paper256-kimg100000-noaug.pkl",
}


# The --cfg presets (spec training.md §5.3). "auto" is not a fixed row: see `auto_config`.
@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Hyperparameters of one --cfg preset; the command-line overrides are applied on top of these."""

    ref_gpus: int  # GPU count the preset was tuned for; fixes the per-GPU batch, whatever --gpus is.
    kimg: int  # Training length.
    mb: int  # Total batch size.
    mbstd: int  # Minibatch-stddev group size of D.
    fmaps: float  # Capacity: channel_base = fmaps * 32768.
    lrate: float  # Adam learning rate of G and D.
    gamma: float  # R1 weight.
    ema: float  # G_ema half-life in kimg.
    ramp: float | None  # G_ema ramp-up ratio (None = off).
    map: int  # Mapping network depth.

    @property
    def batch_gpu(self) -> int:
        return self.mb // self.ref_gpus


FIXED_CONFIGS = {  # Positional fields follow the columns of the spec table.
    "stylegan2": BaseConfig(8, 25000, 32, 4, 1, 0.002, 10, 10, None, 8),
    "paper256": BaseConfig(8, 25000, 64, 8, 0.5, 0.0025, 1, 20, None, 8),
    "paper512": BaseConfig(8, 25000, 64, 8, 1, 0.0025, 0.5, 20, None, 8),
    "paper1024": BaseConfig(8, 25000, 32, 4, 1, 0.002, 2, 10, None, 8),
    "cifar": BaseConfig(2, 100000, 64, 32, 1, 0.0025, 0.01, 500, 0.05, 2),
}
CFG_CHOICES = ["auto", *FIXED_CONFIGS]


def auto_config(resolution: int, gpus: int) -> BaseConfig:
    """The 'auto' preset: batch, capacity, learning rate, R1 weight and EMA derived from resolution and GPU count."""
    mb = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
    return BaseConfig(
        ref_gpus=gpus,
        kimg=25000,
        mb=mb,
        mbstd=min(mb // gpus, 4),
        fmaps=1 if resolution >= 512 else 0.5,
        lrate=0.002 if resolution >= 1024 else 0.0025,
        gamma=0.0002 * (resolution**2) / mb,  # Spec order of evaluation: the value is compared bit for bit.
        ema=mb * 10 / 32,
        ramp=0.05,
        map=2,
    )


AUGPIPE_CHOICES = list(AUGPIPE_SPECS)

# Settings every preset shares (spec training.md §5.2 step 9).
LATENT_DIM = 512
CHANNELS_PER_FMAP = 32768
CHANNEL_MAX = 512
FP16_RESOLUTIONS = 4  # Number of highest resolutions run in float16.
CONV_CLAMP = 256
DEFAULT_LOADER_WORKERS = 3
DEFAULT_ADA_TARGET = 0.6
RESUME_ADA_KIMG = 100  # A resumed (transfer) run adapts its augmentation faster.
MIN_RESOLUTION = 8  # D's blocks go down to 4x4, so smaller images leave it with none.

# Options with a plain default: None (not given) is replaced by these before anything else.
# --aug, --augpipe and --resume are not here: whether they were given changes the run description.
OPTION_DEFAULTS = dict(
    gpus=1,
    snap=50,
    metrics=("fid50k_full",),
    seed=0,
    cond=False,
    mirror=False,
    cfg="auto",
    fp32=False,
    nhwc=False,
    nobench=False,
    allow_tf32=False,
)

# The type click gives each typed option; the numeric extensions (--kimg, --tick, ...) accept int or float.
OPTION_TYPES = dict(
    gpus=int,
    snap=int,
    metrics=list,
    seed=int,
    data=str,
    cond=bool,
    subset=int,
    mirror=bool,
    cfg=str,
    gamma=float,
    batch=int,
    aug=str,
    p=float,
    target=float,
    augpipe=str,
    resume=str,
    freezed=int,
    fp32=bool,
    nhwc=bool,
    nobench=bool,
    allow_tf32=bool,
    workers=int,
)


class UserError(Exception):
    """An invalid option or combination of options; reported as a click usage error (exit status 2)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _number(value: float) -> int | float:
    """A float option as the reference writes it: integral values as int (10, not 10.0)."""
    return int(value) if float(value).is_integer() else float(value)


class _DatasetFacts(typing.NamedTuple):
    name: str
    resolution: int
    channels: int
    has_labels: bool
    size: int


def _probe_dataset(dataset_kwargs: dict) -> _DatasetFacts:
    """Open the dataset once for its name, resolution, labels and size; unreadable or malformed data is a usage
    error whose message (from the dataset module) names the file and the problem."""
    try:
        with dnnlib.util.construct_class_by_name(**dataset_kwargs) as dataset:
            # The labels are read lazily, so has_labels can fail too.
            facts = _DatasetFacts(
                dataset.name, dataset.resolution, dataset.num_channels, dataset.has_labels, len(dataset)
            )
    except (OSError, ValueError) as err:
        raise UserError(f"--data: {err}") from err
    path = dataset_kwargs["path"]
    # The networks need at least two resolution levels; the image grids and PNGs need grayscale or RGB.
    _require(
        facts.resolution >= MIN_RESOLUTION,
        f"--data: the images of {path} are {facts.resolution}x{facts.resolution}; training needs at least "
        f"{MIN_RESOLUTION}x{MIN_RESOLUTION}",
    )
    _require(
        facts.channels in (1, 3),
        f"--data: the images of {path} have {facts.channels} channels; training needs 1 (grayscale) or 3 (RGB)",
    )
    return facts


def _adam(lrate: float) -> dnnlib.EasyDict:
    return dnnlib.EasyDict(class_name="torch.optim.Adam", lr=lrate, betas=[0, 0.99], eps=1e-8)


def _network_kwargs(config: BaseConfig) -> tuple[dnnlib.EasyDict, dnnlib.EasyDict]:
    """G and D constructor kwargs of a preset, keys in training_options.json order."""
    shared = dict(
        channel_base=int(config.fmaps * CHANNELS_PER_FMAP),
        channel_max=CHANNEL_MAX,
        num_fp16_res=FP16_RESOLUTIONS,
        conv_clamp=CONV_CLAMP,
    )
    G_kwargs = dnnlib.EasyDict(
        class_name="training.networks.Generator",
        z_dim=LATENT_DIM,
        w_dim=LATENT_DIM,
        mapping_kwargs=dnnlib.EasyDict(num_layers=config.map),
        synthesis_kwargs=dnnlib.EasyDict(shared),
    )
    D_kwargs = dnnlib.EasyDict(
        class_name="training.networks.Discriminator",
        block_kwargs=dnnlib.EasyDict(),
        mapping_kwargs=dnnlib.EasyDict(),
        epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=config.mbstd),
        **shared,
    )
    return G_kwargs, D_kwargs


class _OptionsBuilder:
    """Collects training_loop kwargs and run-description parts, one option group per method.

    The methods must be called in spec order (training.md §5.2): that is the order in which bad options are
    reported, and every key is first inserted where training_options.json lists it.
    """

    def __init__(self):
        self.args = dnnlib.EasyDict()
        self.desc_parts: list[str] = []

    @property
    def desc(self) -> str:
        return "-".join(self.desc_parts)

    def _set_in_G_and_D(self, **values) -> None:
        """Settings that G's synthesis network and D always share."""
        self.args.G_kwargs.synthesis_kwargs.update(values)
        self.args.D_kwargs.update(values)

    def run_settings(self, gpus: int, snap: int, metrics: list, seed: int) -> None:
        _require(gpus >= 1 and gpus & (gpus - 1) == 0, "--gpus must be a power of two")
        _require(snap >= 1, "--snap must be at least 1")
        # Each process seeds NumPy with seed * gpus + rank, which must fit in 32 bits.
        _require(0 <= seed and seed * gpus + gpus - 1 < 2**32, f"--seed must be between 0 and {2**32 // gpus - 1}")
        valid = metric_main.list_valid_metrics()
        _require(
            all(metric_main.is_valid_metric(name) for name in metrics),
            "\n".join(["--metrics can only contain the following values:", *valid]),
        )
        self.args.update(
            num_gpus=gpus,
            image_snapshot_ticks=snap,
            network_snapshot_ticks=snap,
            metrics=list(metrics),
            random_seed=seed,
        )

    def dataset(self, data: str, cond: bool, subset: int | None, mirror: bool) -> int:
        """Training set and loader settings; returns the resolution, which the 'auto' preset needs."""
        probe_kwargs = dnnlib.EasyDict(
            class_name="training.dataset.ImageFolderDataset", path=data, use_labels=True, max_size=None, xflip=False
        )
        facts = _probe_dataset(probe_kwargs)
        self.desc_parts.append(facts.name)
        if cond:
            _require(facts.has_labels, "--cond=True requires labels specified in dataset.json")
            self.desc_parts.append("cond")
        if subset is not None:
            _require(1 <= subset <= facts.size, f"--subset must be between 1 and {facts.size}")
            self.desc_parts.append(f"subset{subset}")
        if mirror:
            self.desc_parts.append("mirror")

        # Updating the probe's kwargs keeps their key order; resolution (and the subset seed) come last.
        training_set = dnnlib.EasyDict(
            probe_kwargs,
            use_labels=cond,
            max_size=facts.size if subset is None else subset,
            xflip=mirror,
            resolution=facts.resolution,
        )
        if subset is not None and subset < facts.size:
            training_set.random_seed = self.args.random_seed  # Which images form the subset.
        self.args.training_set_kwargs = training_set
        self.args.data_loader_kwargs = dnnlib.EasyDict(
            pin_memory=True, num_workers=DEFAULT_LOADER_WORKERS, prefetch_factor=2
        )
        return facts.resolution

    def preset(self, cfg: str, gpus: int, resolution: int) -> None:
        if cfg == "auto":
            config = auto_config(resolution, gpus)
            self.desc_parts.append(f"{cfg}{gpus:d}")
        else:
            config = FIXED_CONFIGS[cfg]
            self.desc_parts.append(cfg)
        G_kwargs, D_kwargs = _network_kwargs(config)
        loss_kwargs = dnnlib.EasyDict(class_name="training.loss.StyleGAN2Loss", r1_gamma=config.gamma)
        if cfg == "cifar":
            # The paper's CIFAR-10 setup: no path-length regularisation or style mixing, and D without residuals.
            loss_kwargs.update(pl_weight=0, style_mixing_prob=0)
            D_kwargs.architecture = "orig"
        self.args.update(
            G_kwargs=G_kwargs,
            D_kwargs=D_kwargs,
            G_opt_kwargs=_adam(config.lrate),
            D_opt_kwargs=_adam(config.lrate),
            loss_kwargs=loss_kwargs,
            total_kimg=config.kimg,
            batch_size=config.mb,
            batch_gpu=config.batch_gpu,
            ema_kimg=config.ema,
            ema_rampup=config.ramp,
        )

    def overrides(self, gamma: float | None, kimg: float | None, batch: int | None, gpus: int) -> None:
        if gamma is not None:
            _require(gamma >= 0, "--gamma must be non-negative")
            self.desc_parts.append(f"gamma{gamma:g}")
            self.args.loss_kwargs.r1_gamma = gamma
        if kimg is not None:
            _require(kimg > 0, "--kimg must be positive")
            self.desc_parts.append(f"kimg{_number(kimg)}")
            self.args.total_kimg = _number(kimg)
        if batch is not None:
            _require(batch >= 1 and batch % gpus == 0, "--batch must be at least 1 and divisible by --gpus")
            self.desc_parts.append(f"batch{batch}")
            self.args.update(batch_size=batch, batch_gpu=batch // gpus)

    def augmentation(self, aug: str | None, p: float | None, target: float | None, augpipe: str | None) -> None:
        mode = "ada" if aug is None else aug
        if aug is not None:
            self.desc_parts.append(aug)  # Even "ada": only the default leaves no trace.
        _require(mode in ("ada", "noaug", "fixed"), f"--aug={aug} not supported")
        _require(mode != "fixed" or p is not None, f"--aug={aug} requires specifying --p")
        for name, value, needed_mode in (("p", p, "fixed"), ("target", target, "ada")):
            if value is not None:
                _require(mode == needed_mode, f"--{name} can only be specified with --aug={needed_mode}")
                _require(0 <= value <= 1, f"--{name} must be between 0 and 1")
                self.desc_parts.append(f"{name}{value:g}")
        if augpipe is not None:
            _require(mode != "noaug", "--augpipe cannot be specified with --aug=noaug")
            self.desc_parts.append(augpipe)

        # ada_target and augment_p exclude each other, so either takes the same key position.
        if mode == "ada":
            self.args.ada_target = DEFAULT_ADA_TARGET if target is None else target
        if mode == "fixed":
            self.args.augment_p = p
        if mode != "noaug":
            pipe = AUGPIPE_SPECS["bgc" if augpipe is None else augpipe]
            self.args.augment_kwargs = dnnlib.EasyDict(class_name="training.augment.AugmentPipe", **pipe)

    def starting_point(self, resume: str | None, freezed: int | None) -> None:
        resume_pkl = None
        if resume == "noresume":
            self.desc_parts.append("noresume")
        elif resume is not None:
            self.desc_parts.append(f"resume{resume}" if resume in RESUME_SPECS else "resumecustom")
            resume_pkl = RESUME_SPECS.get(resume, resume)
        if resume_pkl is not None:
            # Transfer learning: G_ema starts from trained weights, so its ramp-up would only slow it down.
            self.args.update(resume_pkl=resume_pkl, ada_kimg=RESUME_ADA_KIMG, ema_rampup=None)
        if freezed is not None:
            _require(freezed >= 0, "--freezed must be non-negative")
            self.desc_parts.append(f"freezed{freezed:d}")
            self.args.D_kwargs.block_kwargs.freeze_layers = freezed

    def performance(self, fp32: bool, nhwc: bool, nobench: bool, allow_tf32: bool, workers: int | None) -> None:
        if fp32:
            self._set_in_G_and_D(num_fp16_res=0, conv_clamp=None)
        if nhwc:
            self.args.G_kwargs.synthesis_kwargs.fp16_channels_last = True
            self.args.D_kwargs.block_kwargs.fp16_channels_last = True
        if nobench:
            self.args.cudnn_benchmark = False
        if allow_tf32:
            self.args.allow_tf32 = True
        if workers is not None:
            _require(workers >= 1, "--workers must be at least 1")
            self.args.data_loader_kwargs.num_workers = workers

    def extensions(self, cbase, cmax, map, tick, batch_gpu, gpus: int) -> None:
        """Options beyond the reference; they never change the run description."""
        if cbase is not None:
            _require(cbase >= 1, "--cbase must be at least 1")
            self._set_in_G_and_D(channel_base=cbase)
        if cmax is not None:
            _require(cmax >= 1, "--cmax must be at least 1")
            self._set_in_G_and_D(channel_max=cmax)
        if map is not None:
            _require(map >= 1, "--map must be at least 1")
            self.args.G_kwargs.mapping_kwargs.num_layers = map
        if tick is not None:
            _require(tick > 0, "--tick must be positive")
            self.args.kimg_per_tick = _number(tick)
        batch_size = self.args.batch_size
        if batch_gpu is not None:
            _require(
                batch_gpu >= 1 and batch_size % (batch_gpu * gpus) == 0,
                f"--batch-gpu must be at least 1 and divide --batch/--gpus ({batch_size // gpus})",
            )
            self.args.batch_gpu = batch_gpu
        elif batch_size % gpus == 0 and 1 <= batch_size // gpus < self.args.batch_gpu:
            # A config's batch_gpu assumes its reference GPU count; on more GPUs each one gets fewer images per
            # iteration, all in one round. (The reference keeps the larger value, and then no round is the one
            # it synchronises gradients on: sync = (r == batch // (batch_gpu * gpus) - 1) = (r == -1).)
            self.args.batch_gpu = batch_size // gpus
        rounds_of = self.args.batch_gpu
        _require(
            rounds_of >= 1 and batch_size % (rounds_of * gpus) == 0,
            f"the batch of {batch_size} cannot be split into {gpus} processes x rounds of {rounds_of}; use --batch-gpu",
        )


def _check_option_types(options: dict) -> None:
    """Programming errors (the command line cannot produce them): a missing --data or a value of the wrong type."""
    if options["data"] is None:
        raise TypeError("setup_training_loop_kwargs: data (the dataset path) is required")
    for name, expected in OPTION_TYPES.items():
        value = options[name]
        if value is not None and not isinstance(value, expected):
            raise TypeError(f"setup_training_loop_kwargs: {name} must be {expected.__name__}, not {value!r}")


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
    given = dict(locals())  # Exactly the parameters: nothing else is bound yet.
    _check_option_types(given)
    o = dnnlib.EasyDict(given)
    o.update({name: default for name, default in OPTION_DEFAULTS.items() if given[name] is None})

    builder = _OptionsBuilder()
    builder.run_settings(o.gpus, o.snap, o.metrics, o.seed)
    resolution = builder.dataset(o.data, o.cond, o.subset, o.mirror)
    builder.preset(o.cfg, o.gpus, resolution)
    builder.overrides(o.gamma, o.kimg, o.batch, o.gpus)
    builder.augmentation(o.aug, o.p, o.target, o.augpipe)
    builder.starting_point(o.resume, o.freezed)
    builder.performance(o.fp32, o.nhwc, o.nobench, o.allow_tf32, o.workers)
    builder.extensions(o.cbase, o.cmax, o.map, o.tick, o.batch_gpu, o.gpus)
    return builder.desc, builder.args


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


_LEADING_DIGITS = re.compile(r"\d+")


def _taken_run_ids(outdir: str) -> list[int]:
    """The leading numbers of outdir's subdirectory names; files, and names not starting with a digit, are ignored."""
    if not os.path.isdir(outdir):
        return []
    with os.scandir(outdir) as entries:
        numbered = [_LEADING_DIGITS.match(entry.name) for entry in entries if entry.is_dir()]
    return [int(match.group()) for match in numbered if match is not None]


def _next_run_dir(outdir: str, desc: str) -> str:
    """`outdir/<id>-<desc>` with an id one past every taken one, zero-padded to 5 digits (spec training.md §5.6)."""
    run_id = max(_taken_run_ids(outdir), default=-1) + 1
    run_dir = os.path.join(outdir, f"{run_id:05d}-{desc}")
    assert not os.path.exists(run_dir), f"{run_dir} already exists"
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
    _check_paths(outdir, args)
    dnnlib.util.Logger(should_flush=True)  # Only now: click reports usage errors on the real stderr.

    if torchrun is None:
        args.run_dir = _next_run_dir(outdir, run_desc)
        launch_local(args, dry_run)
    else:
        launch_torchrun(args, outdir, run_desc, dry_run, torchrun)


def _check_paths(outdir: str, args: dnnlib.EasyDict) -> None:
    """Paths that would otherwise fail only after the run directory exists."""
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise click.UsageError(f"--outdir {outdir} exists and is not a directory")
    resume = args.get("resume_pkl")
    if resume is not None and not dnnlib.util.is_url(resume, allow_file_urls=True) and not os.path.isfile(resume):
        raise click.UsageError(f"--resume: no such file: {resume}")


@contextlib.contextmanager
def _report_run_errors():
    """Errors about the user's data or pickle, raised once training has started: one line instead of a traceback.

    (With several local processes, torch.multiprocessing reports a worker's error with its traceback instead.)"""
    try:
        yield
    except DatasetError as err:
        raise click.ClickException(f"--data: {err}") from err
    except (training_loop.ResumeError, pickles.UnsupportedPickleError, dnnlib.util.DownloadError) as err:
        raise click.ClickException(str(err)) from err


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
    with _report_run_errors():
        run_processes(subprocess_fn, args, args.num_gpus)


def launch_torchrun(args: dnnlib.EasyDict, outdir: str, run_desc: str, dry_run: bool, env: dict) -> None:
    """Join a torchrun job (one process per GPU, any number of nodes); rank 0 names the run directory."""
    device = default_device(env["local_rank"])
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
        _start_log(args)  # Only now: the run directory is agreed on through the process group.
        _init_process(env["rank"], args, device)
        with _report_run_errors():
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
@click.option("--cfg", help="Base config [default: auto]", type=click.Choice(CFG_CHOICES))
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
