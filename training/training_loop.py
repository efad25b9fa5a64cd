"""One process's share of a StyleGAN2-ADA training run (docs/compatibility.md, "Training loop").

`training_loop(**options)` keeps the reference's keyword interface (DEFAULTS). `TrainingRun` holds one process's
state: `setup()` builds it in a fixed order, `iteration()` advances it (phases Gmain/Greg/Dmain/Dreg, G_ema, ADA)
and `end_of_tick()` does the per-tick bookkeeping. Resuming and snapshots live in training/resume.py, the console
lines, statistics files and image grids in training/reporting.py.
"""

import copy
import dataclasses
import os
import sys

import numpy as np
import torch

import dnnlib
from torch_utils import misc, training_stats
from torch_utils.launch import default_device
from torch_utils.ops import conv2d_gradfix, fast_path, grid_sample_gradfix
from training import reporting, resume
from training.dataset import DatasetError

ResumeError = resume.ResumeError  # The name train.py catches.

ADA_STAT = "Loss/signs/real"  # The statistic ADA steers: the sign of D's output on real images.
# Replacement values for non-finite gradients before the optimiser step (the reference's choice).
GRAD_NAN, GRAD_POSINF, GRAD_NEGINF = 0.0, 1e5, -1e5


def sync_gradients(params: list[torch.nn.Parameter], num_gpus: int) -> None:
    """Average the gradients of `params` over all processes with one all-reduce, then make them finite in place.

    This is what the reference gets from DistributedDataParallel on the last accumulation round followed by its
    NaN/Inf replacement; doing it by hand keeps double backward (R1, path length) free of DDP's hooks.
    """
    grads = [param.grad for param in params if param.grad is not None]
    if not grads:
        return
    if num_gpus > 1:
        flat = torch.cat([grad.flatten() for grad in grads])
        torch.distributed.all_reduce(flat)
        flat /= num_gpus
        for grad, part in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
            grad.copy_(part.reshape(grad.shape))
    for grad in grads:
        torch.nan_to_num(grad, nan=GRAD_NAN, posinf=GRAD_POSINF, neginf=GRAD_NEGINF, out=grad)


def next_batch(batches):
    """next(batches) of a DataLoader iterator, where a DatasetError raised in a worker process keeps its one-line
    message: the loader re-raises it as the same type with the worker's whole traceback as the message."""
    try:
        return next(batches)
    except DatasetError as err:
        lines = str(err).rstrip().splitlines()
        if len(lines) < 2 or "DataLoader worker" not in lines[0]:
            raise
        cls = type(err)
        original = lines[-1]
        for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
            original = original.removeprefix(prefix)
        raise cls(original) from None


def _count_nonfinite_grads(params: list[torch.nn.Parameter], device: torch.device) -> torch.Tensor:
    """How many of the gradients hold a NaN or Inf, as a device tensor (so the hot loop does not wait for it)."""
    flags = [~torch.isfinite(param.grad).all() for param in params if param.grad is not None]
    return torch.stack(flags).sum() if flags else torch.zeros([], dtype=torch.int64, device=device)


@dataclasses.dataclass
class _Phase:
    """One training phase: the network it optimises, how often it runs, and its bookkeeping for the tick."""

    name: str  # Gmain, Greg, Gboth, Dmain, Dreg or Dboth.
    module: torch.nn.Module  # G or D (all its parameters train in this phase).
    opt: torch.optim.Optimizer  # Shared by a network's main and reg phases.
    interval: int  # Runs when batch_idx % interval == 0; also the loss gain.
    timer: reporting.PhaseTimer | None  # Rank 0 only.
    nonfinite: torch.Tensor  # Count of gradients with NaN/Inf since the last tick (device tensor).

    def run(self, loss, rounds, num_gpus: int) -> None:
        """Accumulate the gradients of every round (real_img, real_c, gen_z, gen_c), average them over the
        processes, make them finite and take one optimiser step."""
        if self.timer is not None:
            self.timer.mark()
        self.opt.zero_grad(set_to_none=True)
        self.module.requires_grad_(True)
        # `sync` stays in the loss interface for losses written for the reference; nothing is wrapped in DDP: the
        # gradients are averaged over processes after the rounds (sync_gradients).
        for real_img, real_c, gen_z, gen_c in rounds:
            loss.accumulate_gradients(
                phase=self.name,
                real_img=real_img,
                real_c=real_c,
                gen_z=gen_z,
                gen_c=gen_c,
                sync=True,
                gain=self.interval,
            )
        self.module.requires_grad_(False)
        with torch.autograd.profiler.record_function(self.name + "_opt"):
            params = [param for param in self.module.parameters() if param.grad is not None]
            self.nonfinite += _count_nonfinite_grads(params, self.nonfinite.device)
            sync_gradients(params, num_gpus)
            self.opt.step()
        if self.timer is not None:
            self.timer.mark()


def _configure_torch(o: dnnlib.EasyDict) -> None:
    """Seed this process's global generators and set the backend switches the options ask for."""
    seed = o.random_seed * o.num_gpus + o.rank
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = o.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = o.allow_tf32
    torch.backends.cudnn.allow_tf32 = o.allow_tf32
    conv2d_gradfix.enabled = True  # Cheaper double backward for R1 and path-length regularisation.
    if o.cpu_fast_path:
        fast_path.set_cpu_fast_path(True)
    grid_sample_gradfix.enabled = True


def _phase_schedule(prefix: str, opt_kwargs: dict, reg_interval: int | None) -> tuple[dnnlib.EasyDict, list]:
    """The optimiser kwargs of network `prefix` (G or D) and its phases as (name, interval in iterations)."""
    opt_kwargs = dnnlib.EasyDict(opt_kwargs)
    if reg_interval is None:
        return opt_kwargs, [(prefix + "both", 1)]
    # Lazy regularisation: rescale the optimiser so that main + reg steps match one combined step.
    mb_ratio = reg_interval / (reg_interval + 1)
    opt_kwargs.lr = opt_kwargs.lr * mb_ratio
    opt_kwargs.betas = [beta**mb_ratio for beta in opt_kwargs.betas]
    return opt_kwargs, [(prefix + "main", 1), (prefix + "reg", reg_interval)]


class TrainingRun:
    """The state of one process in a training run and the steps that advance it."""

    def __init__(self, options: dnnlib.EasyDict):
        self.o = options
        self.rank, self.num_gpus, self.device = options.rank, options.num_gpus, options.device
        self.is_main = self.rank == 0
        self.clock = reporting.TickClock()
        # Progress: images shown, ticks and iterations done; an exact continuation starts from the snapshot's.
        self.cur_nimg = self.cur_tick = self.batch_idx = 0
        self.tick_start_nimg = 0
        self.metric_values: dict = {}  # Latest value of every metric, for TFEvents.

    def log(self, *args, **kwargs):
        if self.is_main:
            print(*args, **kwargs)

    def _path(self, name: str) -> str:
        return os.path.join(self.o.run_dir, name)

    def _kimg_in_names(self) -> str:
        return reporting.kimg_in_names(self.cur_nimg, self.o.kimg_per_tick)

    # --- set-up --------------------------------------------------------------------------------------------------

    def setup(self):
        """Build the run state. The order is part of the contract: it fixes the random draws and the log lines."""
        _configure_torch(self.o)
        self.resume_source = resume.load(self.o, self.log)  # Decides the steps below.
        self.training_set, self.batches = self._setup_data()
        self.G, self.D, self.G_ema = self._setup_networks()
        self.augment_pipe, self.ada_stats = self._setup_augmentation()
        self._broadcast_from_rank0()
        self.loss, self.optimizers, self.phases = self._setup_phases()
        self.grid = self._setup_grid()  # reals.png, fakes_init.png (rank 0; None elsewhere).
        self.stats_log = self._setup_logs()  # stats.jsonl, TFEvents.
        counters = self.resume_source.restore(self.optimizers, self.loss.pl_mean, self.o, self.log)
        if counters is not None:
            self.cur_nimg, self.cur_tick, self.batch_idx = counters
        self.tick_start_nimg = self.cur_nimg
        self.clock.start_tick()

    def _setup_data(self):
        o = self.o
        self.log("Loading training set...")
        training_set = dnnlib.util.construct_class_by_name(**o.training_set_kwargs)
        per_rank_batch = o.batch_size // self.num_gpus
        sampler = misc.InfiniteSampler(
            dataset=training_set, rank=self.rank, num_replicas=self.num_gpus, seed=o.random_seed
        )
        sampler = self.resume_source.sampler(sampler, per_rank_batch)
        loader_kwargs = dict(o.data_loader_kwargs)
        if self.device.type != "cuda":
            loader_kwargs["pin_memory"] = False
        if loader_kwargs.get("num_workers", 0) == 0:
            loader_kwargs.pop("prefetch_factor", None)
        loader = torch.utils.data.DataLoader(
            dataset=training_set, sampler=sampler, batch_size=per_rank_batch, **loader_kwargs
        )
        # Creating the iterator draws the loader's base seed from the CPU generator; keep the reference's order.
        batches = iter(loader)
        self.log()
        self.log("Num images: ", len(training_set))
        self.log("Image shape:", training_set.image_shape)
        self.log("Label shape:", training_set.label_shape)
        self.log()
        return training_set, batches

    def _setup_networks(self):
        o = self.o
        self.log("Constructing networks...")
        channels, height, width = self.training_set.image_shape
        shape = dict(c_dim=self.training_set.label_dim, img_resolution=max(height, width), img_channels=channels)
        if height != width:
            shape.update(img_height=height, img_width=width)  # Only non-square networks record their shape.
        G, D = [
            dnnlib.util.construct_class_by_name(**kwargs, **shape).train().requires_grad_(False).to(self.device)
            for kwargs in (o.G_kwargs, o.D_kwargs)
        ]
        G_ema = copy.deepcopy(G).eval()
        if self.is_main:
            networks = dict(G=G, D=D, G_ema=G_ema)
            self.resume_source.copy_weights(networks, self.log)
            z = torch.zeros([o.batch_gpu, G.z_dim], device=self.device)
            c = torch.zeros([o.batch_gpu, G.c_dim], device=self.device)
            img = misc.print_module_summary(G, [z, c])
            misc.print_module_summary(D, [img, c])
            self.resume_source.copy_weights_again(networks)
        return G, D, G_ema

    def _setup_augmentation(self):
        o = self.o
        self.log("Setting up augmentation...")
        if o.augment_kwargs is None or not (o.augment_p > 0 or o.ada_target is not None):
            return None, None
        pipe = dnnlib.util.construct_class_by_name(**o.augment_kwargs).train().requires_grad_(False).to(self.device)
        pipe.p.copy_(torch.as_tensor(o.augment_p))
        ada_stats = None
        if o.ada_target is not None:
            ada_stats = training_stats.Collector(regex=ADA_STAT)
            self.resume_source.continue_ada(pipe, ada_stats, ADA_STAT)
        return pipe, ada_stats

    def _broadcast_from_rank0(self):
        unit = "GPUs" if self.device.type == "cuda" else "processes"
        self.log(f"Distributing across {self.num_gpus} {unit}...")
        if self.num_gpus == 1:
            return
        for net in [self.G.mapping, self.G.synthesis, self.D, self.G_ema, self.augment_pipe]:
            if net is not None:
                for tensor in misc.params_and_buffers(net):
                    torch.distributed.broadcast(tensor, src=0)

    def _setup_phases(self):
        o = self.o
        self.log("Setting up training phases...")
        modules = dict(G_mapping=self.G.mapping, G_synthesis=self.G.synthesis, D=self.D, augment_pipe=self.augment_pipe)
        loss = dnnlib.util.construct_class_by_name(device=self.device, **modules, **o.loss_kwargs)
        optimizers, phases = {}, []
        for prefix, net in [("G", self.G), ("D", self.D)]:
            opt_kwargs, schedule = _phase_schedule(prefix, o[prefix + "_opt_kwargs"], o[prefix + "_reg_interval"])
            optimizers[prefix] = opt = dnnlib.util.construct_class_by_name(net.parameters(), **opt_kwargs)
            for name, interval in schedule:
                timer = reporting.PhaseTimer(self.device) if self.is_main else None
                nonfinite = torch.zeros([], dtype=torch.int64, device=self.device)
                phases.append(_Phase(name, net, opt, interval, timer, nonfinite))
        return loss, optimizers, phases

    def _setup_grid(self) -> reporting.SampleGrid | None:
        if not self.is_main:
            return None
        self.log("Exporting sample images...")
        return reporting.SampleGrid(self.training_set, self.G_ema, self.o.batch_gpu, self.device, self.o.run_dir)

    def _setup_logs(self) -> reporting.StatsLog:
        self.log("Initializing logs...")
        stats_log = reporting.StatsLog(self.o.run_dir, self.is_main, self.clock.start_time)
        self.log(f"Training for {self.o.total_kimg} kimg...")
        self.log()
        return stats_log

    # --- one iteration -------------------------------------------------------------------------------------------

    def _draw_inputs(self):
        """Real images for this iteration and the latents/labels of every phase (drawn even for skipped phases)."""
        o = self.o
        num_phases = len(self.phases)
        real_img, real_c = next_batch(self.batches)
        real_img = (real_img.to(self.device).to(torch.float32) / 127.5 - 1).split(o.batch_gpu)
        real_c = real_c.to(self.device).split(o.batch_gpu)
        gen_z = torch.randn([num_phases * o.batch_size, self.G.z_dim], device=self.device)
        gen_z = [block.split(o.batch_gpu) for block in gen_z.split(o.batch_size)]
        gen_c = misc.sample_labels(self.training_set, num_phases * o.batch_size, self.device)
        gen_c = [block.split(o.batch_gpu) for block in gen_c.split(o.batch_size)]
        return real_img, real_c, gen_z, gen_c

    def _update_ema(self):
        o = self.o
        ema_nimg = o.ema_kimg * 1000
        if o.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.cur_nimg * o.ema_rampup)
        beta = 0.5 ** (o.batch_size / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.copy_(p.lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    def _adjust_augment_p(self):
        o = self.o
        self.ada_stats.update()
        step = np.sign(self.ada_stats[ADA_STAT] - o.ada_target) * (o.batch_size * o.ada_interval) / (o.ada_kimg * 1000)
        p = self.augment_pipe.p
        p.copy_((p + step).max(misc.constant(0, device=self.device)))

    def iteration(self):
        with torch.autograd.profiler.record_function("data_fetch"):
            real_img, real_c, gen_z, gen_c = self._draw_inputs()
        for phase, phase_z, phase_c in zip(self.phases, gen_z, gen_c, strict=True):
            if self.batch_idx % phase.interval == 0:
                phase.run(self.loss, zip(real_img, real_c, phase_z, phase_c, strict=False), self.num_gpus)
        with torch.autograd.profiler.record_function("Gema"):
            self._update_ema()
        self.cur_nimg += self.o.batch_size
        self.batch_idx += 1
        if self.ada_stats is not None and self.batch_idx % self.o.ada_interval == 0:
            self._adjust_augment_p()

    # --- end of tick ---------------------------------------------------------------------------------------------

    def _check_finite(self):
        """Warn about replaced non-finite gradients; stop before a non-finite G can reach G_ema or a snapshot."""
        for phase in self.phases:
            count = int(phase.nonfinite.cpu())
            phase.nonfinite.zero_()
            if count and self.is_main:
                print(
                    f"Warning: {count} non-finite gradient tensors in phase {phase.name} during tick {self.cur_tick} "
                    f"(kimg {self.tick_start_nimg / 1e3:g} to {self.cur_nimg / 1e3:g}); NaN was set to 0 and "
                    "Inf to +-1e5 before the optimiser step.",
                    file=sys.stderr,
                )
        if not all(bool(torch.isfinite(param).all()) for param in self.G.parameters()):
            raise FloatingPointError(
                f"the generator weights became non-finite by kimg {self.cur_nimg / 1e3:g}; stopping. Snapshots "
                f"written before this tick in {self.o.run_dir} are intact."
            )

    def _write_snapshot(self) -> tuple[str, dict]:
        """network-snapshot-<kimg>.pkl: the reference's dict plus our resume_state (collective: every rank)."""
        modules = dict(G=self.G, D=self.D, G_ema=self.G_ema, augment_pipe=self.augment_pipe)
        class_names = getattr(self.training_set, "class_names", None) if self.training_set.has_labels else None
        snapshot = resume.snapshot_networks(modules, self.o, class_names)
        pending = self.ada_stats.pending(ADA_STAT).tolist() if self.ada_stats is not None else None
        progress = (self.cur_nimg, self.cur_tick, self.batch_idx)
        record = resume.resume_record(self.o, *progress, self.optimizers, self.loss.pl_mean, pending)
        path = self._path(f"network-snapshot-{self._kimg_in_names()}.pkl")
        if self.is_main:
            with reporting.writing(path):
                resume.save_snapshot(path, snapshot, record)
        return path, snapshot

    def end_of_tick(self, done: bool) -> bool:
        """The per-tick bookkeeping; returns whether the run is over."""
        o = self.o
        self.clock.end_tick()
        progress = (self.cur_tick, self.cur_nimg, self.tick_start_nimg)
        self.log(reporting.status_line(self.clock, *progress, self.device, self.augment_pipe))
        self._check_finite()
        if not done and o.abort_fn is not None and o.abort_fn():
            done = True
            self.log()
            self.log("Aborting...")

        due = lambda interval: interval is not None and (done or self.cur_tick % interval == 0)  # noqa: E731
        if self.grid is not None and due(o.image_snapshot_ticks):
            self.grid.save_fakes(self.G_ema, self._path(f"fakes{self._kimg_in_names()}.png"))
        if due(o.network_snapshot_ticks):
            snapshot_pkl, snapshot = self._write_snapshot()
            if o.metrics:
                self.metric_values.update(reporting.evaluate_metrics(o, snapshot_pkl, snapshot["G_ema"], self.log))
            del snapshot
        self.stats_log.write(self.cur_nimg, {phase.name: phase.timer for phase in self.phases}, self.metric_values)
        if o.progress_fn is not None:
            o.progress_fn(self.cur_nimg // 1000, o.total_kimg)

        self.cur_tick += 1
        self.tick_start_nimg = self.cur_nimg
        self.clock.start_tick()
        return done

    # --- the whole run -------------------------------------------------------------------------------------------

    def run(self):
        o = self.o
        # Image counts are whole numbers; rounding keeps fractional kimg exact (0.007 * 1000 is 7.000000000000001),
        # and any positive length means at least one image.
        total_nimg = max(round(o.total_kimg * 1000), 1)
        tick_nimg = max(round(o.kimg_per_tick * 1000), 1)
        if self.cur_nimg >= total_nimg:
            self.log(f"The snapshot is already at kimg {self.cur_nimg / 1e3:g}, the run length is {o.total_kimg:g}.")
        else:
            if o.progress_fn is not None:
                o.progress_fn(self.cur_nimg // 1000, o.total_kimg)
            live = reporting.LiveProgress(enabled=self.is_main)
            while True:
                self.iteration()
                done = self.cur_nimg >= total_nimg
                if not done and self.cur_tick != 0 and self.cur_nimg < self.tick_start_nimg + tick_nimg:
                    # Within a tick (tick 0 ends after one iteration).
                    live.show_tick(self.cur_tick, self.cur_nimg - self.tick_start_nimg, self.cur_nimg, o)
                    continue
                live.clear()
                if self.end_of_tick(done):
                    break
        self.stats_log.close()
        self.log()
        self.log("Exiting...")


# The loop's options: the reference's names and defaults, plus `device` and `metrics_kwargs`. "Class name and
# kwargs" means a dict whose `class_name` (a dotted path) names the class built from the other entries.
DEFAULTS = dnnlib.EasyDict(
    run_dir=".",  # Output folder of the run (snapshots, images, stats.jsonl, TFEvents).
    training_set_kwargs={},  # Dataset: class name and kwargs.
    data_loader_kwargs={},  # Extra torch DataLoader kwargs (pin_memory, num_workers, prefetch_factor).
    G_kwargs={},  # Generator: class name and kwargs (c_dim, img_resolution, img_channels come from the data).
    D_kwargs={},  # Discriminator: class name and kwargs (the same three come from the data).
    G_opt_kwargs={},  # G optimiser: class name and kwargs (lr, betas before the lazy-regularisation rescale).
    D_opt_kwargs={},  # D optimiser: class name and kwargs.
    augment_kwargs=None,  # Augmentation pipe: class name and kwargs; None: no augmentation.
    loss_kwargs={},  # Loss: class name and kwargs.
    metrics=[],  # Metric names evaluated on every network snapshot.
    random_seed=0,  # Global seed; process `rank` seeds torch and NumPy with random_seed * num_gpus + rank.
    num_gpus=1,  # Number of processes taking part in the run.
    rank=0,  # This process's index, 0..num_gpus-1; rank 0 prints and writes the files.
    batch_size=4,  # Images per iteration over all processes.
    batch_gpu=4,  # Images per process per accumulation round.
    ema_kimg=10,  # Half-life of G_ema, in thousands of images.
    ema_rampup=None,  # G_ema half-life at most cur_nimg * ema_rampup (images); None: no ramp-up.
    G_reg_interval=4,  # Iterations between path-length regularisation steps; None: regularise in every G step.
    D_reg_interval=16,  # Iterations between R1 regularisation steps; None: regularise in every D step.
    augment_p=0,  # Initial augmentation probability, 0..1.
    ada_target=None,  # ADA target for the mean sign of D on reals; None: augment_p stays fixed.
    ada_interval=4,  # Iterations between ADA adjustments of p.
    ada_kimg=500,  # Thousands of images for ADA to change p by 1.
    total_kimg=25000,  # Length of the run, in thousands of real images shown.
    kimg_per_tick=4,  # Length of a tick (status line, stats.jsonl entry), in thousands of images.
    image_snapshot_ticks=50,  # Ticks between fakes*.png grids; None: none.
    network_snapshot_ticks=50,  # Ticks between network snapshots (and metric evaluations); None: none.
    resume_pkl=None,  # Path or URL of a network pickle to start from; None: fresh networks.
    resume_allow_code=False,  # Let the resume_pkl run the code it carries (pickles.load_network_from allow_code).
    cudnn_benchmark=True,  # torch.backends.cudnn.benchmark.
    allow_tf32=False,  # TF32 matmuls and convolutions (torch.backends.cuda.matmul / cudnn .allow_tf32).
    abort_fn=None,  # Callable returning True to stop after the current tick; must agree across ranks.
    progress_fn=None,  # Callable (cur_kimg: int, total_kimg), called at the start and after every tick.
    device=None,  # torch device of this process; None: cuda:<rank> when CUDA is available, else the CPU.
    metrics_kwargs={},  # Extra kwargs for metric_main.calc_metric (MetricOptions: G_kwargs, progress, cache).
    cpu_fast_path=False,  # torch_utils.ops.fast_path on (float32 CPU ops within 1e-5 of the reference); False: as is.
)


def make_options(**kwargs) -> dnnlib.EasyDict:
    """The complete option set of a run: DEFAULTS overridden by `kwargs` (unknown names are a TypeError)."""
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"training_loop() got unexpected keyword arguments: {', '.join(unknown)}")
    options = dnnlib.EasyDict(copy.deepcopy({k: v for k, v in DEFAULTS.items() if k not in kwargs}))
    options.update(kwargs)
    if options.device is None:
        options.device = default_device(options.rank)
    options.device = torch.device(options.device)
    return options


def training_loop(**kwargs):
    """Run one process's share of a training run. Keyword arguments and defaults: DEFAULTS."""
    run = TrainingRun(make_options(**kwargs))
    run.setup()
    run.run()
