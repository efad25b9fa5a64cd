"""One process's share of a StyleGAN2-ADA training run (spec: training.md §4).

`training_loop(**options)` keeps the reference's keyword interface; the work is done by `TrainingRun`, whose
methods follow the life of a run: set-up, iterations (phases Gmain/Greg/Dmain/Dreg, G_ema, ADA), and the
end-of-tick bookkeeping (status line, image grid, snapshot, metrics, statistics).

Beyond the reference, every network snapshot also holds a `resume_state` record (optimiser states, counters,
pl_mean, the ADA statistics not yet used, and every rank's RNG states), so that `--resume` from one of our
snapshots continues the run exactly; a reference or foreign pickle only lends its weights, as in the reference.
"""

import copy
import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch

import dnnlib
from dnnlib.atomic import atomic_pickle
from torch_utils import misc, training_stats
from torch_utils.launch import default_device
from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
from training import pickles
from training.image_grid import save_image_grid, select_grid_items

RESUME_STATE_VERSION = 1
ADA_STAT = "Loss/signs/real"
# Replacement values for non-finite gradients before the optimiser step (the reference's choice).
GRAD_NAN, GRAD_POSINF, GRAD_NEGINF = 0.0, 1e5, -1e5
# Options that must match for an exact continuation from a snapshot's resume_state: the data order, the network
# and optimiser structure (the optimiser states only fit the same parameters, --freezed included, and would bring
# back their learning rates and betas). Snapshots of older versions recorded only the first five; the others are
# compared when present.
EXACT_RESUME_KEYS = (
    "training_set_kwargs",
    "batch_size",
    "batch_gpu",
    "num_gpus",
    "random_seed",
    "G_kwargs",
    "D_kwargs",
    "G_opt_kwargs",
    "D_opt_kwargs",
    "G_reg_interval",
    "D_reg_interval",
)
# Schedules that train.py resets for transfer learning whenever --resume is given (ema_rampup=None, ada_kimg=100);
# an exact continuation takes them from the snapshot's run instead.
CONTINUED_SCHEDULE_KEYS = ("ema_rampup", "ada_kimg")


class ResumeError(ValueError):
    """The --resume pickle does not fit the networks of this run."""


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


def _count_nonfinite_grads(params: list[torch.nn.Parameter], device: torch.device) -> torch.Tensor:
    """How many of the gradients hold a NaN or Inf, as a device tensor (so the hot loop does not wait for it)."""
    flags = [~torch.isfinite(param.grad).all() for param in params if param.grad is not None]
    return torch.stack(flags).sum() if flags else torch.zeros([], dtype=torch.int64, device=device)


def _cpu_mem_gb() -> float:
    """Resident memory of this process in GiB (from /proc on Linux; peak resident memory elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _rng_state(device: torch.device) -> dict:
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state())
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _recorded_options(options: dict) -> dict:
    """The EXACT_RESUME_KEYS options as plain JSON values (no EasyDict, lists for tuples), as a snapshot keeps them."""
    return json.loads(json.dumps({key: options[key] for key in EXACT_RESUME_KEYS}))


def _to_cpu(obj):
    """Nested containers with every tensor copied to the CPU (optimiser states may live on the GPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {key: _to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(value) for value in obj)
    return obj


class _SkipSampler(torch.utils.data.Sampler):
    """An infinite sampler with its first `skip` indices dropped, to carry on a run's data order after resume."""

    def __init__(self, sampler, skip: int):
        super().__init__()
        self.sampler = sampler
        self.skip = skip

    def __iter__(self):
        indices = iter(self.sampler)
        for _ in range(self.skip):
            next(indices)
        yield from indices


class _PhaseTimer:
    """Time of the latest execution of one phase: CUDA events on a GPU, a perf counter on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.marks: list = []

    def mark(self):
        if len(self.marks) == 2:
            self.marks = []
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def elapsed_ms(self):
        """Milliseconds of the latest completed execution, or [] (an empty report) if it never ran."""
        if len(self.marks) != 2:
            return []
        start, end = self.marks
        if self.device.type == "cuda":
            end.synchronize()
            return start.elapsed_time(end)
        return (end - start) * 1e3


class _LiveProgress:
    """A self-overwriting line with the progress inside the current tick, only when the console is a terminal."""

    def __init__(self, enabled: bool):
        self.stream = sys.__stdout__
        self.enabled = enabled and self.stream is not None and self.stream.isatty()
        self.shown_at = 0.0
        self.visible = False

    def show(self, text: str):
        if self.enabled and time.time() - self.shown_at >= 1.0:
            self.shown_at = time.time()
            self.stream.write("\r" + text + "\033[K")
            self.stream.flush()
            self.visible = True

    def clear(self):
        if self.visible:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.visible = False


@dataclasses.dataclass
class _Phase:
    name: str  # Gmain, Greg, Gboth, Dmain, Dreg or Dboth.
    module: torch.nn.Module
    opt: torch.optim.Optimizer
    interval: int
    timer: _PhaseTimer | None
    nonfinite: torch.Tensor  # Count of gradients with NaN/Inf since the last tick (device tensor).


class TrainingRun:
    """The state of one process in a training run and the steps that advance it."""

    def __init__(self, options: dnnlib.EasyDict):
        self.o = options
        self.rank = options.rank
        self.num_gpus = options.num_gpus
        self.device = options.device
        self.is_main = self.rank == 0
        self.start_time = time.time()
        self.cur_nimg = 0
        self.cur_tick = 0
        self.batch_idx = 0
        self.metric_values: dict = {}

    def log(self, *args, **kwargs):
        if self.is_main:
            print(*args, **kwargs)

    # --- set-up --------------------------------------------------------------------------------------------------

    def setup(self):
        o = self.o
        np.random.seed(o.random_seed * self.num_gpus + self.rank)
        torch.manual_seed(o.random_seed * self.num_gpus + self.rank)
        torch.backends.cudnn.benchmark = o.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = o.allow_tf32
        torch.backends.cudnn.allow_tf32 = o.allow_tf32
        conv2d_gradfix.enabled = True  # Cheaper double backward for R1 and path-length regularisation.
        grid_sample_gradfix.enabled = True

        self.resume_data, self.resume_state = self._load_resume_source()
        self._setup_data()
        self._setup_networks()
        self._setup_augmentation()
        self._broadcast_from_rank0()
        self._setup_phases()
        self._setup_grid()
        self._setup_logs()
        self._restore_progress()

    def _load_resume_source(self):
        if self.o.resume_pkl is None:
            return None, None
        # Rank 0 fetches first, so that a URL is downloaded once and the other ranks read the cached copy.
        if self.num_gpus > 1 and not self.is_main:
            torch.distributed.barrier()
        # Loaded before the networks are built (its resume_state decides the set-up), so keep the draws that
        # converting a TF-era pickle makes from shifting the networks' initialisation.
        with dnnlib.util.open_url(self.o.resume_pkl) as f, torch.random.fork_rng(devices=[]):
            data = pickles.load_network_pkl(f)
        if self.num_gpus > 1 and self.is_main:
            torch.distributed.barrier()
        state = data.get("resume_state")
        if state is not None and not self._can_continue_exactly(state):
            state = None
        if state is not None:
            for key, value in state.get("schedule", {}).items():
                if self.o[key] != value:
                    self.log(f"Continuing the earlier run's schedule: {key} = {value} (instead of {self.o[key]}).")
                    self.o[key] = value
        return data, state

    def _can_continue_exactly(self, state: dict) -> bool:
        if state.get("version") != RESUME_STATE_VERSION:
            reason = f"its resume_state has version {state.get('version')}, this code writes {RESUME_STATE_VERSION}"
        else:
            saved = state["training_options"]
            current = _recorded_options(self.o)
            differing = [key for key in EXACT_RESUME_KEYS if key in saved and saved[key] != current[key]]
            if not differing:
                return True
            reason = "these options differ from the snapshot's run: " + ", ".join(differing)
        if self.is_main:
            print(
                f"Warning: cannot continue the earlier run exactly ({reason}); taking only its network weights "
                "and counting from kimg 0.",
                file=sys.stderr,
            )
        return False

    def _setup_data(self):
        o = self.o
        self.log("Loading training set...")
        self.training_set = dnnlib.util.construct_class_by_name(**o.training_set_kwargs)
        sampler = misc.InfiniteSampler(
            dataset=self.training_set, rank=self.rank, num_replicas=self.num_gpus, seed=o.random_seed
        )
        if self.resume_state is not None:
            sampler = _SkipSampler(sampler, skip=self.resume_state["batch_idx"] * (o.batch_size // self.num_gpus))
        loader_kwargs = dict(o.data_loader_kwargs)
        if self.device.type != "cuda":
            loader_kwargs["pin_memory"] = False
        if loader_kwargs.get("num_workers", 0) == 0:
            loader_kwargs.pop("prefetch_factor", None)
        loader = torch.utils.data.DataLoader(
            dataset=self.training_set, sampler=sampler, batch_size=o.batch_size // self.num_gpus, **loader_kwargs
        )
        # Creating the iterator draws the loader's base seed from the CPU generator; keep the reference's order.
        self.batches = iter(loader)
        self.log()
        self.log("Num images: ", len(self.training_set))
        self.log("Image shape:", self.training_set.image_shape)
        self.log("Label shape:", self.training_set.label_shape)
        self.log()

    def _setup_networks(self):
        o = self.o
        self.log("Constructing networks...")
        dataset_kwargs = dict(
            c_dim=self.training_set.label_dim,
            img_resolution=self.training_set.resolution,
            img_channels=self.training_set.num_channels,
        )

        def build(kwargs):
            net = dnnlib.util.construct_class_by_name(**kwargs, **dataset_kwargs)
            return net.train().requires_grad_(False).to(self.device)

        self.G = build(o.G_kwargs)
        self.D = build(o.D_kwargs)
        self.G_ema = copy.deepcopy(self.G).eval()

        if self.resume_data is not None and self.is_main:
            self.log(f'Resuming from "{o.resume_pkl}"')
            self._copy_resume_weights()

        if self.is_main:
            z = torch.zeros([o.batch_gpu, self.G.z_dim], device=self.device)
            c = torch.zeros([o.batch_gpu, self.G.c_dim], device=self.device)
            img = misc.print_module_summary(self.G, [z, c])
            misc.print_module_summary(self.D, [img, c])
            if self.resume_state is not None:
                self._copy_resume_weights()  # The summary pass moved w_avg; an exact continuation needs it back.

    def _copy_resume_weights(self):
        for name, net in [("G", self.G), ("D", self.D), ("G_ema", self.G_ema)]:
            source = self.resume_data[name]
            if not isinstance(source, torch.nn.Module):
                raise ResumeError(f"--resume {self.o.resume_pkl}: '{name}' is a {type(source).__name__}, not a network")
            # copy_() would broadcast some mismatched shapes silently and fail cryptically on others.
            source_shapes = {key: tuple(t.shape) for key, t in misc.named_params_and_buffers(source)}
            targets = list(misc.named_params_and_buffers(net))
            for key, tensor in targets:
                if key in source_shapes and source_shapes[key] != tuple(tensor.shape):
                    raise ResumeError(
                        f"--resume {self.o.resume_pkl}: {name}.{key} has shape {list(source_shapes[key])} in the "
                        f"pickle but {list(tensor.shape)} in this run; the network options (--cfg, --cbase, --cmax, "
                        "--map) or the dataset's labels/channels differ from the pickle's"
                    )
            misc.copy_params_and_buffers(source, net, require_all=False)
            missing = [key for key, _ in targets if key not in source_shapes]
            if missing and self.resume_state is None:
                self.log(
                    f"  {name}: {len(targets) - len(missing)} of {len(targets)} tensors taken from the pickle; the "
                    f"others (e.g. {missing[0]}) keep their initial values."
                )

    def _setup_augmentation(self):
        o = self.o
        self.log("Setting up augmentation...")
        self.augment_pipe = None
        self.ada_stats = None
        if o.augment_kwargs is None or not (o.augment_p > 0 or o.ada_target is not None):
            return
        pipe = dnnlib.util.construct_class_by_name(**o.augment_kwargs).train().requires_grad_(False).to(self.device)
        pipe.p.copy_(torch.as_tensor(o.augment_p))
        # ADA continues from the strength it had reached; a fixed strength (--aug=fixed --p) is what was asked.
        if o.ada_target is not None and self.resume_state is not None:
            if self.resume_data.get("augment_pipe") is not None:
                pipe.p.copy_(self.resume_data["augment_pipe"].p)
        self.augment_pipe = pipe
        if o.ada_target is not None:
            self.ada_stats = training_stats.Collector(regex=ADA_STAT)
            if self.resume_state is not None and self.resume_state.get("ada_pending") is not None:
                self.ada_stats.add_pending(ADA_STAT, self.resume_state["ada_pending"])

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
        self.loss = dnnlib.util.construct_class_by_name(
            device=self.device,
            G_mapping=self.G.mapping,
            G_synthesis=self.G.synthesis,
            D=self.D,
            augment_pipe=self.augment_pipe,
            **o.loss_kwargs,
        )
        self.phases: list[_Phase] = []
        self.optimizers = {}
        for prefix, net, opt_kwargs, reg_interval in [
            ("G", self.G, o.G_opt_kwargs, o.G_reg_interval),
            ("D", self.D, o.D_opt_kwargs, o.D_reg_interval),
        ]:
            opt_kwargs = dnnlib.EasyDict(opt_kwargs)
            if reg_interval is None:
                schedule = [(prefix + "both", 1)]
            else:
                # Lazy regularisation: rescale the optimiser so that main + reg steps match one combined step.
                mb_ratio = reg_interval / (reg_interval + 1)
                opt_kwargs.lr = opt_kwargs.lr * mb_ratio
                opt_kwargs.betas = [beta**mb_ratio for beta in opt_kwargs.betas]
                schedule = [(prefix + "main", 1), (prefix + "reg", reg_interval)]
            opt = dnnlib.util.construct_class_by_name(net.parameters(), **opt_kwargs)
            self.optimizers[prefix] = opt
            for name, interval in schedule:
                timer = _PhaseTimer(self.device) if self.is_main else None
                zero = torch.zeros([], dtype=torch.int64, device=self.device)
                self.phases.append(_Phase(name, net, opt, interval, timer, zero))

    def _setup_grid(self):
        self.grid_shape = self.grid_z = self.grid_c = None
        if not self.is_main:
            return
        self.log("Exporting sample images...")
        self.grid_shape, images, labels = select_grid_items(self.training_set)
        self.grid_z = torch.randn([labels.shape[0], self.G.z_dim], device=self.device).split(self.o.batch_gpu)
        self.grid_c = torch.from_numpy(labels).to(self.device).split(self.o.batch_gpu)
        save_image_grid(images, self._path("reals.png"), (0, 255), self.grid_shape)
        save_image_grid(self._render_grid(), self._path("fakes_init.png"), (-1, 1), self.grid_shape)

    def _setup_logs(self):
        self.log("Initializing logs...")
        self.stats = training_stats.Collector(regex=".*")
        self.stats_jsonl = None
        self.tensorboard = None
        if self.is_main:
            self.stats_jsonl = open(self._path("stats.jsonl"), "w")
            try:
                import torch.utils.tensorboard as tensorboard

                self.tensorboard = tensorboard.SummaryWriter(self.o.run_dir)
            except ImportError as err:
                print("Skipping tfevents export:", err)
        self.log(f"Training for {self.o.total_kimg} kimg...")
        self.log()

    def _restore_progress(self):
        state = self.resume_state
        if state is not None:
            self.cur_nimg = state["cur_nimg"]
            self.cur_tick = state["cur_tick"]
            self.batch_idx = state["batch_idx"]
            for key, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][key])
            self.loss.pl_mean.copy_(torch.as_tensor(state["pl_mean"][self.rank]))
            _restore_rng_state(state["rng"][self.rank], self.device)
            self.log(f"Continuing the earlier run at kimg {self.cur_nimg / 1e3:g}, tick {self.cur_tick}.")
            self.log()
        self.tick_start_nimg = self.cur_nimg
        self.tick_start_time = time.time()
        self.maintenance_time = self.tick_start_time - self.start_time

    def _path(self, name: str) -> str:
        return os.path.join(self.o.run_dir, name)

    def _kimg_in_names(self) -> str:
        """The progress in snapshot and image file names: whole kimg (NNNNNN) as in the reference, and with the
        images within the kimg as decimals (NNNNNN.nnn) when ticks are shorter than a kimg, which would otherwise
        give several snapshots the same name."""
        whole = f"{self.cur_nimg // 1000:06d}"
        return f"{whole}.{self.cur_nimg % 1000:03d}" if self.o.kimg_per_tick < 1 else whole

    def _render_grid(self) -> np.ndarray:
        """G_ema on the fixed grid latents, constant noise: float32 [N, C, H, W] on the CPU."""
        with torch.no_grad():
            parts = [
                self.G_ema(z=z, c=c, noise_mode="const").cpu() for z, c in zip(self.grid_z, self.grid_c, strict=True)
            ]
        return torch.cat(parts).numpy()

    # --- one iteration -------------------------------------------------------------------------------------------

    def _draw_inputs(self):
        """Real images for this iteration and the latents/labels of every phase (drawn even for skipped phases)."""
        o = self.o
        num_phases = len(self.phases)
        real_img, real_c = next(self.batches)
        real_img = (real_img.to(self.device).to(torch.float32) / 127.5 - 1).split(o.batch_gpu)
        real_c = real_c.to(self.device).split(o.batch_gpu)
        gen_z = torch.randn([num_phases * o.batch_size, self.G.z_dim], device=self.device)
        gen_z = [block.split(o.batch_gpu) for block in gen_z.split(o.batch_size)]
        gen_c = misc.sample_labels(self.training_set, num_phases * o.batch_size, self.device)
        gen_c = [block.split(o.batch_gpu) for block in gen_c.split(o.batch_size)]
        return real_img, real_c, gen_z, gen_c

    def _run_phase(self, phase: _Phase, real_img, real_c, gen_z, gen_c):
        o = self.o
        if phase.timer is not None:
            phase.timer.mark()
        phase.opt.zero_grad(set_to_none=True)
        phase.module.requires_grad_(True)
        rounds = o.batch_size // (o.batch_gpu * self.num_gpus)
        for index, chunk in enumerate(zip(real_img, real_c, gen_z, gen_c, strict=False)):
            self.loss.accumulate_gradients(
                phase=phase.name,
                real_img=chunk[0],
                real_c=chunk[1],
                gen_z=chunk[2],
                gen_c=chunk[3],
                sync=(index == rounds - 1),
                gain=phase.interval,
            )
        phase.module.requires_grad_(False)
        with torch.autograd.profiler.record_function(phase.name + "_opt"):
            params = [param for param in phase.module.parameters() if param.grad is not None]
            phase.nonfinite += _count_nonfinite_grads(params, self.device)
            sync_gradients(params, self.num_gpus)
            phase.opt.step()
        if phase.timer is not None:
            phase.timer.mark()

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
                self._run_phase(phase, real_img, real_c, phase_z, phase_c)
        with torch.autograd.profiler.record_function("Gema"):
            self._update_ema()
        self.cur_nimg += self.o.batch_size
        self.batch_idx += 1
        if self.ada_stats is not None and self.batch_idx % self.o.ada_interval == 0:
            self._adjust_augment_p()

    # --- end of tick ---------------------------------------------------------------------------------------------

    def _status_line(self, tick_end_time: float) -> str:
        report = training_stats.report0
        total_sec = tick_end_time - self.start_time
        tick_sec = tick_end_time - self.tick_start_time
        sec_per_kimg = tick_sec / (self.cur_nimg - self.tick_start_nimg) * 1e3
        peak_gpu_gb = 0.0
        if self.device.type == "cuda":
            peak_gpu_gb = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        augment_p = float(self.augment_pipe.p.cpu()) if self.augment_pipe is not None else 0
        fields = [
            f"tick {report('Progress/tick', self.cur_tick):<5d}",
            f"kimg {report('Progress/kimg', self.cur_nimg / 1e3):<8.1f}",
            f"time {dnnlib.util.format_time(report('Timing/total_sec', total_sec)):<12s}",
            f"sec/tick {report('Timing/sec_per_tick', tick_sec):<7.1f}",
            f"sec/kimg {report('Timing/sec_per_kimg', sec_per_kimg):<7.2f}",
            f"maintenance {report('Timing/maintenance_sec', self.maintenance_time):<6.1f}",
            f"cpumem {report('Resources/cpu_mem_gb', _cpu_mem_gb()):<6.2f}",
            f"gpumem {report('Resources/peak_gpu_mem_gb', peak_gpu_gb):<6.2f}",
            f"augment {report('Progress/augment', augment_p):.3f}",
        ]
        report("Timing/total_hours", total_sec / (60 * 60))
        report("Timing/total_days", total_sec / (24 * 60 * 60))
        return " ".join(fields)

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

    def _resume_record(self) -> dict:
        """What an exact continuation needs beyond the networks (collective: every rank must call it)."""
        pending = None
        if self.ada_stats is not None:
            pending = self.ada_stats.pending(ADA_STAT).tolist()
        return dict(
            version=RESUME_STATE_VERSION,
            cur_nimg=self.cur_nimg,
            cur_tick=self.cur_tick + 1,
            batch_idx=self.batch_idx,
            optimizers={key: _to_cpu(opt.state_dict()) for key, opt in self.optimizers.items()},
            pl_mean=misc.gather_from_ranks(float(self.loss.pl_mean.cpu()), self.num_gpus),
            ada_pending=pending,
            rng=misc.gather_from_ranks(_rng_state(self.device), self.num_gpus),
            # Plain JSON values (no EasyDict), so that any code base can unpickle the snapshot.
            training_options=_recorded_options(self.o),
            schedule={key: self.o[key] for key in CONTINUED_SCHEDULE_KEYS},
        )

    def _write_snapshot(self) -> tuple[str, dict]:
        """Pickle G, D, G_ema and the augment pipe (CPU copies, eval mode) plus our resume record."""
        snapshot = dict(training_set_kwargs=dict(self.o.training_set_kwargs))
        for name, net in [("G", self.G), ("D", self.D), ("G_ema", self.G_ema), ("augment_pipe", self.augment_pipe)]:
            if net is not None:
                if self.num_gpus > 1:
                    misc.check_ddp_consistency(net, ignore_regex=r".*\.w_avg")
                net = copy.deepcopy(net).eval().requires_grad_(False).cpu()
            snapshot[name] = net
        record = self._resume_record()
        path = self._path(f"network-snapshot-{self._kimg_in_names()}.pkl")
        if self.is_main:
            atomic_pickle(path, dict(snapshot, resume_state=record))
        return path, snapshot

    def _evaluate_metrics(self, snapshot_pkl: str, snapshot: dict):
        """Compute the requested metrics on the snapshot's G_ema, on an RNG stream of their own."""
        from metrics import metric_main

        self.log("Evaluating metrics...")
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            numpy_state = np.random.get_state()
            for metric in self.o.metrics:
                result = metric_main.calc_metric(
                    metric=metric,
                    G=snapshot["G_ema"],
                    dataset_kwargs=self.o.training_set_kwargs,
                    num_gpus=self.num_gpus,
                    rank=self.rank,
                    device=self.device,
                    **self.o.metrics_kwargs,
                )
                if self.is_main:
                    metric_main.report_metric(result, run_dir=self.o.run_dir, snapshot_pkl=snapshot_pkl)
                self.metric_values.update(result.results)
            np.random.set_state(numpy_state)

    def _write_stats(self):
        for phase in self.phases:
            training_stats.report0("Timing/" + phase.name, phase.timer.elapsed_ms() if phase.timer else [])
        self.stats.update()
        stats = self.stats.as_dict()
        timestamp = time.time()
        if self.stats_jsonl is not None:
            self.stats_jsonl.write(json.dumps(dict(stats, timestamp=timestamp)) + "\n")
            self.stats_jsonl.flush()
        if self.tensorboard is not None:
            step = int(self.cur_nimg / 1e3)
            walltime = timestamp - self.start_time
            for name, value in stats.items():
                self.tensorboard.add_scalar(name, value.mean, global_step=step, walltime=walltime)
            for name, value in self.metric_values.items():
                self.tensorboard.add_scalar(f"Metrics/{name}", value, global_step=step, walltime=walltime)
            self.tensorboard.flush()

    def end_of_tick(self, done: bool) -> bool:
        """The per-tick bookkeeping; returns whether the run is over."""
        o = self.o
        tick_end_time = time.time()
        line = self._status_line(tick_end_time)
        self.log(line)
        self._check_finite()

        if not done and o.abort_fn is not None and o.abort_fn():
            done = True
            self.log()
            self.log("Aborting...")

        due = lambda interval: interval is not None and (done or self.cur_tick % interval == 0)  # noqa: E731
        if self.is_main and due(o.image_snapshot_ticks):
            name = f"fakes{self._kimg_in_names()}.png"
            save_image_grid(self._render_grid(), self._path(name), (-1, 1), self.grid_shape)
        if due(o.network_snapshot_ticks):
            snapshot_pkl, snapshot = self._write_snapshot()
            if o.metrics:
                self._evaluate_metrics(snapshot_pkl, snapshot)
            del snapshot

        self._write_stats()
        if o.progress_fn is not None:
            o.progress_fn(self.cur_nimg // 1000, o.total_kimg)

        self.cur_tick += 1
        self.tick_start_nimg = self.cur_nimg
        self.tick_start_time = time.time()
        self.maintenance_time = self.tick_start_time - tick_end_time
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
            live = _LiveProgress(enabled=self.is_main)
            while True:
                self.iteration()
                done = self.cur_nimg >= total_nimg
                tick_over = self.cur_nimg >= self.tick_start_nimg + tick_nimg
                if not done and self.cur_tick != 0 and not tick_over:  # Tick 0 ends after one iteration.
                    tick_kimg = (self.cur_nimg - self.tick_start_nimg) / 1e3
                    total_kimg = self.cur_nimg / 1e3
                    live.show(
                        f"tick {self.cur_tick}: {tick_kimg:.2f}/{o.kimg_per_tick:g} kimg, "
                        f"total {total_kimg:.2f}/{o.total_kimg:g} kimg"
                    )
                    continue
                live.clear()
                if self.end_of_tick(done):
                    break
        if self.stats_jsonl is not None:
            self.stats_jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.log()
        self.log("Exiting...")


DEFAULTS = dnnlib.EasyDict(
    run_dir=".",
    training_set_kwargs={},
    data_loader_kwargs={},
    G_kwargs={},
    D_kwargs={},
    G_opt_kwargs={},
    D_opt_kwargs={},
    augment_kwargs=None,
    loss_kwargs={},
    metrics=[],
    random_seed=0,
    num_gpus=1,
    rank=0,
    batch_size=4,
    batch_gpu=4,
    ema_kimg=10,
    ema_rampup=None,
    G_reg_interval=4,
    D_reg_interval=16,
    augment_p=0,
    ada_target=None,
    ada_interval=4,
    ada_kimg=500,
    total_kimg=25000,
    kimg_per_tick=4,
    image_snapshot_ticks=50,
    network_snapshot_ticks=50,
    resume_pkl=None,
    cudnn_benchmark=True,
    allow_tf32=False,
    abort_fn=None,
    progress_fn=None,
    device=None,
    metrics_kwargs={},
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
    """Run one process's share of a training run.

    Keyword arguments and defaults are those of spec training.md §4.1 (see DEFAULTS), plus `device` (default:
    cuda:<rank> when CUDA is available, else the CPU) and `metrics_kwargs` (extra arguments for the metrics).
    """
    run = TrainingRun(make_options(**kwargs))
    run.setup()
    run.run()
