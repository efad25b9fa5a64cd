"""The options of a training run: `TrainOptions` (what train.py's command line holds) and the kwargs of
`training_loop.training_loop` built from it (presets, overrides, augmentation, starting point, performance).

    options = TrainOptions.from_given({"data": "faces.zip", "gamma": 5.0})
    run_desc, loop_kwargs = build_training_config(options)   # raises UserError for bad values

The contract (option names, defaults, presets, formulas, run description, training_options.json key order) is in
docs/compatibility.md, "Training options".

Adding an option touches two places:
1. A field of `TrainOptions`, declared with `_option(...)`: its annotation (the type click converts to), its default
   (the value in effect when the option is left out; None when the preset, the dataset or the loop decides) and
   its help text, shown default and metavar. The click option of train.py, its place in --help, the keyword of
   `setup_training_loop_kwargs` and `options.is_given(name)` all follow from the field.
2. The code that uses it: a step of `_ConfigBuilder` (or training/launcher.py for an option about starting the
   run). The steps run in a fixed order, which is the order bad options are reported in and the order in which keys
   first enter training_options.json: put the option in the step where its key belongs.
Nothing else lists the options.
"""

import dataclasses
import functools
import math
import os
import types
import typing

import dnnlib
from metrics import metric_main
from training import resume as resuming
from training.augment import AUGPIPE_SPECS
from training.dataset import image_sides_problem
from training.networks import MAX_ASPECT
from training.pickles import NAMED_NETWORKS as RESUME_SPECS  # the names --resume (and every --network) knows

NO_RESUME = "noresume"
RESUME_LATEST = "latest"  # --resume=latest: the newest snapshot of any run under --outdir.


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


# The fixed --cfg presets; positional fields in the column order of the table in docs/compatibility.md, "Training
# options". "auto" is not a fixed row: see `auto_config`.
FIXED_CONFIGS = {
    "stylegan2": BaseConfig(8, 25000, 32, 4, 1, 0.002, 10, 10, None, 8),
    "paper256": BaseConfig(8, 25000, 64, 8, 0.5, 0.0025, 1, 20, None, 8),
    "paper512": BaseConfig(8, 25000, 64, 8, 1, 0.0025, 0.5, 20, None, 8),
    "paper1024": BaseConfig(8, 25000, 32, 4, 1, 0.002, 2, 10, None, 8),
    "cifar": BaseConfig(2, 100000, 64, 32, 1, 0.0025, 0.01, 500, 0.05, 2),
}
CFG_CHOICES = ["auto", *FIXED_CONFIGS]
AUG_MODES = ["noaug", "ada", "fixed"]
AUGPIPE_CHOICES = list(AUGPIPE_SPECS)


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
        gamma=0.0002 * (resolution**2) / mb,  # This order of operations: the value is compared bit for bit.
        ema=mb * 10 / 32,
        ramp=0.05,
        map=2,
    )


# Settings every preset shares.
LATENT_DIM = 512
CHANNELS_PER_FMAP = 32768
CHANNEL_MAX = 512
FP16_RESOLUTIONS = 4  # Number of highest resolutions run in float16.
CONV_CLAMP = 256
DEFAULT_LOADER_WORKERS = 3
DEFAULT_ADA_TARGET = 0.6
DEFAULT_AUGPIPE = "bgc"
RESUME_ADA_KIMG = 100  # A resumed (transfer) run adapts its augmentation faster.
MIN_RESOLUTION = 8  # D's blocks go down to 4x4 (4 x 4*a when non-square), so a shorter side below 8 leaves none.
IMAGE_CHANNELS = (1, 3, 4)  # Grayscale, RGB, RGBA: the channel counts a PNG grid can show.


class UserError(Exception):
    """An invalid option or combination of options; train.py reports it as a click usage error (exit status 2)."""


# ----------------------------------------------------------------------------------------------------------------------
# The options.


def _option(default=dataclasses.MISSING, help: str = "", *, factory=dataclasses.MISSING, **cli) -> typing.Any:
    """A TrainOptions field: `default` (or `factory()`) when the option is not given; `help` and `cli` (show_default,
    metavar, choices, required, is_flag, short) declare the command-line option, see dnnlib.cli.options_from_dataclass.
    """
    return dataclasses.field(default=default, default_factory=factory, metadata={"cli": dict(help=help, **cli)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """train.py's command line, one field per option in --help order.

    A field holds the option's value, or its default when the option was left out; None means that the preset
    (--cfg), the dataset or the training loop decides. `given` names the options the user gave: leaving an option out
    and giving its default are not always the same (the run description, the keys of training_options.json, the
    defaults on a machine without CUDA), so the code asks `is_given`, never whether a value is None.
    """

    # Run-wide settings. (--outdir is required on the command line; building the config does not need it.)
    outdir: str | None = _option(None, "Where to save the results", metavar="DIR", required=True)
    gpus: int = _option(1, "Number of GPUs to use", show_default=True, metavar="INT")
    snap: int = _option(50, "Snapshot interval", show_default="50 ticks", metavar="INT")
    metrics: list[str] = _option(
        factory=lambda: ["fid50k_full"], help='Comma-separated list or "none"', show_default=True
    )
    seed: int = _option(0, "Random seed", show_default=True, metavar="INT")
    dry_run: bool = _option(False, "Print training options and exit", is_flag=True, short="-n")
    # Training data.
    data: str = _option(help="Training data (directory or zip)", metavar="PATH", required=True)
    cond: bool = _option(False, "Train conditional model based on dataset labels", show_default=True, metavar="BOOL")
    subset: int | None = _option(None, "Train with only N images", show_default="all", metavar="INT")
    mirror: bool = _option(False, "Enable dataset x-flips", show_default=True, metavar="BOOL")
    # Hyperparameter preset and overrides.
    cfg: str = _option("auto", "Base config", show_default=True, choices=CFG_CHOICES)
    gamma: float | None = _option(None, "Override R1 gamma")
    kimg: float | None = _option(None, "Override training duration (fractions allowed, e.g. 0.5)", metavar="KIMG")
    batch: int | None = _option(None, "Override batch size", metavar="INT")
    # Augmentation.
    aug: str = _option("ada", "Augmentation mode", show_default=True, choices=AUG_MODES)
    p: float | None = _option(None, "Augmentation probability for --aug=fixed")
    target: float = _option(DEFAULT_ADA_TARGET, "ADA target value for --aug=ada")
    augpipe: str = _option(DEFAULT_AUGPIPE, "Augmentation pipeline", show_default=True, choices=AUGPIPE_CHOICES)
    # Starting weights.
    resume: str = _option(NO_RESUME, "Resume training", show_default=True, metavar="PKL")
    freezed: int = _option(0, "Freeze-D", show_default="0 layers", metavar="INT")
    # Speed and memory.
    fp32: bool = _option(False, "Disable mixed-precision training", metavar="BOOL")
    nhwc: bool = _option(False, "Use NHWC memory format with FP16", metavar="BOOL")
    nobench: bool = _option(False, "Disable cuDNN benchmarking", metavar="BOOL")
    allow_tf32: bool = _option(False, "Allow PyTorch to use TF32 internally", metavar="BOOL")
    workers: int = _option(DEFAULT_LOADER_WORKERS, "Override number of DataLoader workers", metavar="INT")
    # Options beyond the reference.
    cbase: int | None = _option(None, "Override channel base (capacity)", show_default="from --cfg", metavar="INT")
    cmax: int = _option(CHANNEL_MAX, "Override max channels per layer", show_default=True, metavar="INT")
    map: int | None = _option(None, "Override mapping network depth", show_default="from --cfg", metavar="INT")
    # The loop's default kimg_per_tick (4) applies when --tick is not given.
    tick: float | None = _option(None, "Progress print interval in kimg", show_default="4", metavar="KIMG")
    batch_gpu: int | None = _option(None, "Samples per GPU per round", show_default="from --cfg", metavar="INT")
    trust_pickle: bool = _option(
        False,
        "Run the code embedded in the --resume pickle (only for files you trust)",
        is_flag=True,
        show_default="rebuild the networks from this project's classes",
    )
    cpu_fast: bool = _option(False, "Faster CPU ops, results within 1e-5 of the reference", metavar="BOOL")

    given: frozenset[str] = frozenset()

    @classmethod
    def from_given(cls, values: dict) -> "TrainOptions":
        """The options with `values` (option name -> value) given and every other option at its default."""
        return cls(**values, given=frozenset(values))

    def is_given(self, name: str) -> bool:
        if name not in OPTION_NAMES:
            raise KeyError(f"TrainOptions has no option {name!r}")
        return name in self.given

    def __post_init__(self):
        _check_types(self)


OPTION_NAMES = tuple(field.name for field in dataclasses.fields(TrainOptions) if "cli" in field.metadata)


@functools.cache
def _annotations() -> dict:
    return typing.get_type_hints(TrainOptions)


def _check_types(options: TrainOptions) -> None:
    """Programming errors (the command line cannot produce them): a value of the wrong type or an unknown given name.
    A float option also takes an int; an int or float option never takes a bool."""
    unknown = sorted(options.given - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"TrainOptions: given names no option: {', '.join(unknown)}")
    for name, annotation in _annotations().items():
        value = getattr(options, name)
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        accepted = typing.get_args(annotation) if union else (annotation,)
        if value is None and type(None) in accepted:
            continue
        expected = next(arg for arg in accepted if arg is not type(None))
        if expected in (int, float):
            ok = isinstance(value, int | float if expected is float else int) and not isinstance(value, bool)
        elif typing.get_origin(expected) in (list, frozenset):
            ok = isinstance(value, typing.get_origin(expected)) and all(isinstance(item, str) for item in value)
        else:
            ok = isinstance(value, expected)
        if not ok:
            raise TypeError(f"TrainOptions: {name} must be {getattr(expected, '__name__', expected)}, not {value!r}")


def cpu_defaults(options: TrainOptions) -> tuple[TrainOptions, list[str]]:
    """The defaults of a machine without CUDA for the options the user did not give (float32, no metrics), and a
    note for each default that changed."""
    changes, notes = {}, []
    if not options.is_given("fp32"):
        # Half precision is emulated on a CPU, several times slower than float32, and gains nothing there.
        changes["fp32"] = True
        notes.append("--fp32 defaults to true")
    if not options.is_given("metrics"):
        # The reference default (FID on 50k images at every snapshot, tick 0 included) would take hours on a CPU.
        changes["metrics"] = []
        notes.append("--metrics defaults to none")
    return dataclasses.replace(options, **changes), notes


def setup_training_loop_kwargs(**options) -> tuple[str, dnnlib.EasyDict]:
    """Keyword interface of the reference: each keyword is a TrainOptions field (a train.py option, e.g. batch_gpu),
    None meaning "not given"; `data` is required. Returns (run description, training_loop kwargs), raises UserError
    for bad values. outdir and dry_run are accepted and change nothing here."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"setup_training_loop_kwargs: unexpected keyword arguments: {', '.join(unknown)}")
    if options.get("data") is None:
        raise TypeError("setup_training_loop_kwargs: data (the dataset path) is required")
    return build_training_config(TrainOptions.from_given({k: v for k, v in options.items() if v is not None}))


# ----------------------------------------------------------------------------------------------------------------------
# From options to training_loop kwargs.


def build_training_config(options: TrainOptions, notes: list[str] | None = None) -> tuple[str, dnnlib.EasyDict]:
    """(run description, kwargs of training_loop.training_loop) of `options`; raises UserError for bad values.

    The keys are inserted in the order of training_options.json; the dataset is opened once to probe it. What the
    user should know about the run (labels left unused, which snapshot --resume=latest found) is appended to
    `notes`, one line each, for the launcher to print."""
    builder = _ConfigBuilder(options)
    builder.build()
    if notes is not None:
        notes.extend(builder.notes)
    return "-".join(builder.desc_parts), builder.args


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _require_finite(name: str, value: float) -> None:
    """inf and nan pass the range checks of some options (inf > 0) and fail only once training runs."""
    _require(math.isfinite(value), f"--{name} must be a finite number, not {value}")


def _number(value: float) -> int | float:
    """A float option as the reference writes it: integral values as int (10, not 10.0)."""
    return int(value) if float(value).is_integer() else float(value)


class _DatasetFacts(typing.NamedTuple):
    name: str
    resolution: int  # The larger side: the networks' img_resolution; the auto preset is derived from it.
    height: int
    width: int
    channels: int
    has_labels: bool
    size: int


def _probe_dataset(dataset_kwargs: dict) -> _DatasetFacts:
    """Open the dataset once for its name, resolution, labels and size; unreadable or malformed data is a UserError
    whose message (from the dataset module) names the file and the problem."""
    try:
        with dnnlib.util.construct_class_by_name(**dataset_kwargs) as dataset:
            # The labels are read lazily, so has_labels can fail too.
            _channels, height, width = dataset.image_shape
            facts = _DatasetFacts(
                dataset.name, max(height, width), height, width, dataset.num_channels, dataset.has_labels, len(dataset)
            )
    except (OSError, ValueError) as err:
        raise UserError(f"--data: {err}") from err
    path = dataset_kwargs["path"]
    # The networks need at least two resolution levels; the image grids and PNGs need grayscale, RGB or RGBA.
    _require(
        min(height, width) >= MIN_RESOLUTION,
        f"--data: the images of {path} are {width}x{height}; training needs at least {MIN_RESOLUTION}x{MIN_RESOLUTION}",
    )
    _require(
        image_sides_problem(width=width, height=height) is None,
        f"--data: the images of {path} are {width}x{height}; training needs power-of-two width and height with an "
        f"aspect ratio between 1:{MAX_ASPECT} and {MAX_ASPECT}:1",
    )
    _require(
        facts.channels in IMAGE_CHANNELS,
        f"--data: the images of {path} have {facts.channels} channels; training needs 1 (grayscale), 3 (RGB) "
        "or 4 (RGBA)",
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


class _ConfigBuilder:
    """Builds training_loop kwargs (`args`) and the run description (`desc_parts`) from TrainOptions, one group of
    options per step.

    `build` runs the steps in a fixed order: it is the order in which bad options are reported, and every key is
    first inserted where training_options.json lists it (docs/compatibility.md, "Training options").
    """

    def __init__(self, options: TrainOptions):
        self.o = options
        self.args = dnnlib.EasyDict()
        self.desc_parts: list[str] = []
        self.notes: list[str] = []  # Lines for the user; see build_training_config.
        self.resolution: int | None = None  # Known after the dataset step; the 'auto' preset needs it.

    def build(self) -> None:
        self.run_settings()
        self.dataset()
        self.preset()
        self.overrides()
        self.augmentation()
        self.starting_point()
        self.performance()
        self.extensions()

    def _set_in_G_and_D(self, **values) -> None:
        """Settings that G's synthesis network and D always share."""
        self.args.G_kwargs.synthesis_kwargs.update(values)
        self.args.D_kwargs.update(values)

    def run_settings(self) -> None:
        o = self.o
        _require(o.gpus >= 1 and o.gpus & (o.gpus - 1) == 0, "--gpus must be a power of two")
        _require(o.snap >= 1, "--snap must be at least 1")
        # Each process seeds NumPy with seed * gpus + rank, which must fit in 32 bits.
        _require(
            0 <= o.seed and o.seed * o.gpus + o.gpus - 1 < 2**32, f"--seed must be between 0 and {2**32 // o.gpus - 1}"
        )
        _require(
            all(metric_main.is_valid_metric(name) for name in o.metrics),
            "\n".join(["--metrics can only contain the following values:", *metric_main.list_valid_metrics()]),
        )
        self.args.update(
            num_gpus=o.gpus,
            image_snapshot_ticks=o.snap,
            network_snapshot_ticks=o.snap,
            metrics=list(o.metrics),
            random_seed=o.seed,
        )

    def dataset(self) -> None:
        """Training set and loader settings."""
        o = self.o
        probe_kwargs = dnnlib.EasyDict(
            class_name="training.dataset.ImageFolderDataset", path=o.data, use_labels=True, max_size=None, xflip=False
        )
        facts = _probe_dataset(probe_kwargs)
        self.resolution = facts.resolution
        self.desc_parts.append(facts.name)
        if o.cond:
            _require(facts.has_labels, "--cond=True requires labels specified in dataset.json")
            self.desc_parts.append("cond")
        elif facts.has_labels:
            self.notes.append(
                f"Warning: {o.data} has labels (dataset.json) but --cond is off: the labels are ignored; "
                "give --cond=1 to train a conditional model."
            )
        if o.is_given("subset"):
            _require(1 <= o.subset <= facts.size, f"--subset must be between 1 and {facts.size}")
            self.desc_parts.append(f"subset{o.subset}")
        if o.mirror:
            self.desc_parts.append("mirror")

        # Updating the probe's kwargs keeps their key order; resolution (and the subset seed) come last.
        max_size = o.subset if o.is_given("subset") else facts.size
        training_set = dnnlib.EasyDict(
            probe_kwargs, use_labels=o.cond, max_size=max_size, xflip=o.mirror, resolution=facts.resolution
        )
        if max_size < facts.size:
            training_set.random_seed = o.seed  # Which images form the subset.
        self.args.training_set_kwargs = training_set
        self.args.data_loader_kwargs = dnnlib.EasyDict(
            pin_memory=True, num_workers=DEFAULT_LOADER_WORKERS, prefetch_factor=2
        )

    def preset(self) -> None:
        o = self.o
        if o.cfg == "auto":
            config = auto_config(self.resolution, o.gpus)
            self.desc_parts.append(f"{o.cfg}{o.gpus:d}")
        else:
            config = FIXED_CONFIGS[o.cfg]
            self.desc_parts.append(o.cfg)
        G_kwargs, D_kwargs = _network_kwargs(config)
        loss_kwargs = dnnlib.EasyDict(class_name="training.loss.StyleGAN2Loss", r1_gamma=config.gamma)
        if o.cfg == "cifar":
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

    def overrides(self) -> None:
        o = self.o
        if o.is_given("gamma"):
            _require_finite("gamma", o.gamma)
            _require(o.gamma >= 0, "--gamma must be non-negative")
            self.desc_parts.append(f"gamma{o.gamma:g}")
            self.args.loss_kwargs.r1_gamma = o.gamma
        if o.is_given("kimg"):
            _require_finite("kimg", o.kimg)
            _require(o.kimg > 0, "--kimg must be positive")
            self.desc_parts.append(f"kimg{_number(o.kimg)}")
            self.args.total_kimg = _number(o.kimg)
        if o.is_given("batch"):
            _require(o.batch >= 1 and o.batch % o.gpus == 0, "--batch must be at least 1 and divisible by --gpus")
            self.desc_parts.append(f"batch{o.batch}")
            self.args.update(batch_size=o.batch, batch_gpu=o.batch // o.gpus)

    def augmentation(self) -> None:
        o = self.o
        if o.is_given("aug"):
            self.desc_parts.append(o.aug)  # Even "ada": only leaving --aug out leaves no trace.
        _require(o.aug in AUG_MODES, f"--aug={o.aug} not supported")
        _require(o.aug != "fixed" or o.is_given("p"), f"--aug={o.aug} requires specifying --p")
        for name, needed_mode in (("p", "fixed"), ("target", "ada")):
            if o.is_given(name):
                value = getattr(o, name)
                _require(o.aug == needed_mode, f"--{name} can only be specified with --aug={needed_mode}")
                _require(0 <= value <= 1, f"--{name} must be between 0 and 1")
                self.desc_parts.append(f"{name}{value:g}")
        if o.is_given("augpipe"):
            _require(o.aug != "noaug", "--augpipe cannot be specified with --aug=noaug")
            self.desc_parts.append(o.augpipe)

        # ada_target and augment_p exclude each other, so either takes the same key position.
        if o.aug == "ada":
            self.args.ada_target = o.target
        if o.aug == "fixed":
            self.args.augment_p = o.p
        if o.aug != "noaug":
            pipe = AUGPIPE_SPECS[o.augpipe]
            self.args.augment_kwargs = dnnlib.EasyDict(class_name="training.augment.AugmentPipe", **pipe)

    def starting_point(self) -> None:
        o = self.o
        resume = self._newest_snapshot() if o.is_given("resume") else None
        if o.is_given("resume") and o.resume == NO_RESUME:
            self.desc_parts.append(NO_RESUME)
        elif resume is not None:
            self.desc_parts.append(f"resume{resume}" if resume in RESUME_SPECS else "resumecustom")
            # Transfer learning: G_ema starts from trained weights, so its ramp-up would only slow it down.
            resume_pkl = RESUME_SPECS.get(resume, resume)
            self.args.update(resume_pkl=resume_pkl, ada_kimg=RESUME_ADA_KIMG, ema_rampup=None)
            if o.trust_pickle:
                self.args.resume_allow_code = True
        _require(
            not o.trust_pickle or o.is_given("resume"), "--trust-pickle applies to the --resume pickle; give --resume"
        )
        if o.is_given("freezed"):
            _require(o.freezed >= 0, "--freezed must be non-negative")
            self.desc_parts.append(f"freezed{o.freezed:d}")
            self.args.D_kwargs.block_kwargs.freeze_layers = o.freezed

    def _newest_snapshot(self) -> str | None:
        """--resume as a pickle path, URL or name; --resume=latest and --resume=RUN_DIR become the newest complete
        snapshot there (None, and a fresh start, when there is none)."""
        o = self.o
        named = o.resume == NO_RESUME or o.resume in RESUME_SPECS
        if named or (o.resume != RESUME_LATEST and not os.path.isdir(o.resume)):
            return o.resume
        what = f"--resume={o.resume}"
        if o.resume == RESUME_LATEST:
            _require(o.outdir is not None, "--resume=latest looks for snapshots under --outdir; give --outdir")
            found, passed_over = resuming.newest_snapshot(o.outdir, whole_outdir=True)
        else:
            found, passed_over = resuming.newest_snapshot(o.resume, whole_outdir=False)
        for path in passed_over:
            self.notes.append(f"{what}: passing over {path} (the partial file of an interrupted write)")
        if found is None:
            where = o.outdir if o.resume == RESUME_LATEST else o.resume
            self.notes.append(f"{what}: no complete network-snapshot-*.pkl in {where}; starting a new run.")
        else:
            self.notes.append(f"{what}: continuing from {found}")
        return found

    def performance(self) -> None:
        o = self.o
        if o.fp32:
            self._set_in_G_and_D(num_fp16_res=0, conv_clamp=None)
        if o.nhwc:
            self.args.G_kwargs.synthesis_kwargs.fp16_channels_last = True
            self.args.D_kwargs.block_kwargs.fp16_channels_last = True
        if o.nobench:
            self.args.cudnn_benchmark = False
        if o.allow_tf32:
            self.args.allow_tf32 = True
        if o.is_given("workers"):
            _require(o.workers >= 1, "--workers must be at least 1")
            self.args.data_loader_kwargs.num_workers = o.workers

    def extensions(self) -> None:
        """Options beyond the reference; they never change the run description."""
        o = self.o
        if o.is_given("cbase"):
            _require(o.cbase >= 1, "--cbase must be at least 1")
            self._set_in_G_and_D(channel_base=o.cbase)
        if o.is_given("cmax"):
            _require(o.cmax >= 1, "--cmax must be at least 1")
            self._set_in_G_and_D(channel_max=o.cmax)
        if o.is_given("map"):
            _require(o.map >= 1, "--map must be at least 1")
            self.args.G_kwargs.mapping_kwargs.num_layers = o.map
        if o.is_given("tick"):
            _require_finite("tick", o.tick)
            _require(o.tick > 0, "--tick must be positive")
            self.args.kimg_per_tick = _number(o.tick)
        self._split_batch()
        # Only a run that asks for it records the key: other runs keep their training_options.json as it was.
        if o.is_given("cpu_fast") and o.cpu_fast:
            self.args.cpu_fast_path = True

    def _split_batch(self) -> None:
        """batch_gpu: --batch-gpu, or the preset's value shrunk to one round per GPU; the batch must split evenly."""
        o, batch_size = self.o, self.args.batch_size
        if o.is_given("batch_gpu"):
            _require(
                o.batch_gpu >= 1 and batch_size % (o.batch_gpu * o.gpus) == 0,
                f"--batch-gpu must be at least 1 and divide --batch/--gpus ({batch_size // o.gpus})",
            )
            self.args.batch_gpu = o.batch_gpu
        elif batch_size % o.gpus == 0 and 1 <= batch_size // o.gpus < self.args.batch_gpu:
            # A config's batch_gpu assumes its reference GPU count; on more GPUs each one gets fewer images per
            # iteration, all in one round. (The reference keeps the larger value, and then no round is the one
            # it synchronises gradients on: sync = (r == batch // (batch_gpu * gpus) - 1) = (r == -1).)
            self.args.batch_gpu = batch_size // o.gpus
        rounds_of = self.args.batch_gpu
        _require(
            rounds_of >= 1 and batch_size % (rounds_of * o.gpus) == 0,
            f"the batch of {batch_size} cannot be split into {o.gpus} processes x rounds of {rounds_of}; "
            "use --batch-gpu",
        )
        self._check_mbstd_groups()

    def _check_mbstd_groups(self) -> None:
        """D's minibatch-stddev layer splits each round's images into groups of min(group size, round) images, so a
        larger round must be a multiple of the group size (--batch=7 would otherwise fail in D's first forward)."""
        o, round_size = self.o, self.args.batch_gpu
        group = self.args.D_kwargs.epilogue_kwargs.get("mbstd_group_size")
        if group is None or round_size <= group or round_size % group == 0:
            return
        if o.is_given("batch_gpu"):
            raise UserError(
                f"--batch-gpu={round_size} does not fit the discriminator's minibatch-std groups of {group} images; "
                f"use a multiple of {group} (or at most {group})"
            )
        raise UserError(
            f"--batch={self.args.batch_size} gives rounds of {round_size} images per GPU, which the discriminator's "
            f"minibatch-std groups of {group} images do not divide; use a batch per GPU that is a multiple of "
            f"{group}, or --batch-gpu"
        )
