"""What a training run shows and writes besides its snapshots (docs/compatibility.md, "Training loop").

The per-tick status line on the console, `stats.jsonl` and TFEvents (`StatsLog`), the image grids `reals.png`,
`fakes_init.png` and `fakes<kimg>.png` (`SampleGrid`), the self-overwriting progress line within a tick, the phase
timers, the progress in file names, and the metric evaluations of each snapshot.
"""

import contextlib
import json
import os
import sys
import time

import numpy as np
import torch

import dnnlib
from torch_utils import training_stats
from training.image_grid import save_image_grid, select_grid_items

REALS_RANGE = (0, 255)  # Value range of the dataset's uint8 images in reals.png.
FAKES_RANGE = (-1, 1)  # Value range of the generator's images in fakes*.png.


class OutputError(Exception):
    """A file of the run could not be written (a full disk, a read-only folder); the message names the file."""


@contextlib.contextmanager
def writing(path: str):
    """An OSError inside the block (only the writing of `path`: a dataset's errors are OSErrors too) becomes an
    OutputError naming the file. Every file is written atomically, so the earlier snapshots stay as they were."""
    try:
        yield
    except OSError as err:
        raise OutputError(
            f"cannot write {path}: {err.strerror or err}; training stopped (the files written before are intact)"
        ) from err


def kimg_in_names(cur_nimg: int, kimg_per_tick: float) -> str:
    """The progress in snapshot and image file names: whole kimg (NNNNNN) as in the reference, and with the images
    within the kimg as decimals (NNNNNN.nnn) when ticks are shorter than a kimg, which would otherwise give several
    snapshots the same name."""
    whole = f"{cur_nimg // 1000:06d}"
    return f"{whole}.{cur_nimg % 1000:03d}" if kimg_per_tick < 1 else whole


def cpu_mem_gb() -> float:
    """Resident memory of this process in GiB (from /proc on Linux; peak resident memory elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class PhaseTimer:
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


class LiveProgress:
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

    def show_tick(self, cur_tick: int, tick_nimg: int, cur_nimg: int, options) -> None:
        """Images done in the current tick and in the whole run, against their lengths (in kimg)."""
        self.show(
            f"tick {cur_tick}: {tick_nimg / 1e3:.2f}/{options.kimg_per_tick:g} kimg, "
            f"total {cur_nimg / 1e3:.2f}/{options.total_kimg:g} kimg"
        )

    def clear(self):
        if self.visible:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.visible = False


class TickClock:
    """Wall-clock times (seconds since the epoch) of the run's start and of the current tick.

    The maintenance time of a tick is the time between the end of the previous tick (for tick 0: the start of the
    run, so that the set-up counts) and the start of this one.
    """

    def __init__(self):
        self.start_time = time.time()
        self.tick_end_time = self.start_time
        self.tick_start_time = self.start_time
        self.maintenance_sec = 0.0

    def start_tick(self):
        self.tick_start_time = time.time()
        self.maintenance_sec = self.tick_start_time - self.tick_end_time

    def end_tick(self):
        self.tick_end_time = time.time()


def status_line(clock: TickClock, cur_tick: int, cur_nimg: int, tick_start_nimg: int, device, augment_pipe) -> str:
    """The console line of a tick; every value is also reported (rank 0) under its statistic name, in this order."""
    report = training_stats.report0
    total_sec = clock.tick_end_time - clock.start_time
    tick_sec = clock.tick_end_time - clock.tick_start_time
    sec_per_kimg = tick_sec / (cur_nimg - tick_start_nimg) * 1e3
    peak_gpu_gb = 0.0
    if device.type == "cuda":
        peak_gpu_gb = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    augment_p = float(augment_pipe.p.cpu()) if augment_pipe is not None else 0
    fields = [
        f"tick {report('Progress/tick', cur_tick):<5d}",
        f"kimg {report('Progress/kimg', cur_nimg / 1e3):<8.1f}",
        f"time {dnnlib.util.format_time(report('Timing/total_sec', total_sec)):<12s}",
        f"sec/tick {report('Timing/sec_per_tick', tick_sec):<7.1f}",
        f"sec/kimg {report('Timing/sec_per_kimg', sec_per_kimg):<7.2f}",
        f"maintenance {report('Timing/maintenance_sec', clock.maintenance_sec):<6.1f}",
        f"cpumem {report('Resources/cpu_mem_gb', cpu_mem_gb()):<6.2f}",
        f"gpumem {report('Resources/peak_gpu_mem_gb', peak_gpu_gb):<6.2f}",
        f"augment {report('Progress/augment', augment_p):.3f}",
    ]
    report("Timing/total_hours", total_sec / (60 * 60))
    report("Timing/total_days", total_sec / (24 * 60 * 60))
    return " ".join(fields)


class SampleGrid:
    """The grid shown in reals.png and rendered into fakes*.png: dataset items chosen once (image_grid.py) and
    latents drawn once, so that every fakes file shows the same samples."""

    def __init__(self, training_set, G_ema, batch_gpu: int, device: torch.device, run_dir: str):
        """Choose the items, write reals.png, draw the latents ([cols*rows, z_dim] on `device`, one draw on its
        generator), and write fakes_init.png."""
        self.shape, images, labels = select_grid_items(training_set)
        self.z = torch.randn([labels.shape[0], G_ema.z_dim], device=device).split(batch_gpu)
        self.c = torch.from_numpy(labels).to(device).split(batch_gpu)
        reals_path = os.path.join(run_dir, "reals.png")
        with writing(reals_path):
            save_image_grid(images, reals_path, REALS_RANGE, self.shape)
        self.save_fakes(G_ema, os.path.join(run_dir, "fakes_init.png"))

    def render(self, G_ema) -> np.ndarray:
        """G_ema on the grid latents, constant noise: float32 [N, C, H, W] on the CPU."""
        with torch.no_grad():
            parts = [G_ema(z=z, c=c, noise_mode="const").cpu() for z, c in zip(self.z, self.c, strict=True)]
        return torch.cat(parts).numpy()

    def save_fakes(self, G_ema, path: str) -> None:
        images = self.render(G_ema)
        with writing(path):
            save_image_grid(images, path, FAKES_RANGE, self.shape)


class StatsLog:
    """Every statistic once per tick: one line of stats.jsonl and the TFEvents scalars, both written by rank 0.

    Every rank keeps the collector (its update sums over the ranks); only rank 0 opens the files.
    """

    def __init__(self, run_dir: str, is_main: bool, start_time: float):
        self.start_time = start_time
        self.collector = training_stats.Collector(regex=".*")
        self.jsonl = None
        self.tensorboard = None
        self.jsonl_path = os.path.join(run_dir, "stats.jsonl")
        self.run_dir = run_dir
        if is_main:
            with writing(self.jsonl_path):
                self.jsonl = open(self.jsonl_path, "w")
            try:
                import torch.utils.tensorboard as tensorboard

                with writing(os.path.join(run_dir, "events.out.tfevents.*")):
                    self.tensorboard = tensorboard.SummaryWriter(run_dir)
            except ImportError as err:
                print("Skipping tfevents export:", err)

    def write(self, cur_nimg: int, phase_timers: dict, metric_values: dict) -> None:
        """Report each phase's latest time (Timing/<phase>), then write everything reported since the last tick.
        `phase_timers`: phase name -> PhaseTimer (None on ranks other than 0); `metric_values`: name -> value."""
        for name, timer in phase_timers.items():
            training_stats.report0("Timing/" + name, timer.elapsed_ms() if timer else [])
        self.collector.update()
        stats = self.collector.as_dict()
        timestamp = time.time()
        if self.jsonl is not None:
            with writing(self.jsonl_path):
                self.jsonl.write(json.dumps(dict(stats, timestamp=timestamp)) + "\n")
                self.jsonl.flush()
        if self.tensorboard is not None:
            step = int(cur_nimg / 1e3)
            walltime = timestamp - self.start_time
            for name, value in stats.items():
                self.tensorboard.add_scalar(name, value.mean, global_step=step, walltime=walltime)
            for name, value in metric_values.items():
                self.tensorboard.add_scalar(f"Metrics/{name}", value, global_step=step, walltime=walltime)
            self.tensorboard.flush()

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def evaluate_metrics(options: dnnlib.EasyDict, snapshot_pkl: str, G_ema, log) -> dict:
    """Compute options.metrics on the snapshot's G_ema (every rank; rank 0 writes metric-<name>.jsonl) on an RNG
    stream of their own, so that evaluating them leaves the training run unchanged. Returns name -> value."""
    from metrics import metric_main  # Only runs with metrics pay for importing them.

    log("Evaluating metrics...")
    values = {}
    device = options.device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        numpy_state = np.random.get_state()
        for metric in options.metrics:
            result = metric_main.calc_metric(
                metric=metric,
                G=G_ema,
                dataset_kwargs=options.training_set_kwargs,
                num_gpus=options.num_gpus,
                rank=options.rank,
                device=device,
                **options.metrics_kwargs,
            )
            if options.rank == 0:
                metric_main.report_metric(result, run_dir=options.run_dir, snapshot_pkl=snapshot_pkl)
            values.update(result.results)
        np.random.set_state(numpy_state)
    return values
