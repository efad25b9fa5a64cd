"""CPU fast path vs reference path, side by side: G inference at 256x256 and 1024x1024, and a training iteration.

Every case runs both paths in the same process, interleaved (reference, fast, reference, fast, ...) so that load
from other processes hits both alike, and reports medians of the wall-clock seconds, their ratio (reference / fast)
and the largest difference of the results relative to the largest reference magnitude:

  G256    paper256 generator (channel_base 16384, 8 mapping layers), one image, float32, noise_mode='const'
  G1024   StyleGAN2 config F generator (channel_base 32768), one image, float32, noise_mode='const'
  train   one training iteration with all four phases (Gmain, Greg, Dmain, Dreg) of the quick-start configuration
          (auto, 32x32, --cbase=1024 --cmax=64 --map=2 --batch=8, no augmentation) on synthetic images; the error
          is over every gradient of every phase (each relative to the largest entry of its reference tensor)

Generators run in float32 (force_fp32): a CPU emulates half precision, which the fast path leaves alone.

Usage: python bench/cpu_speed.py [--cases G256,G1024,train] [--repeats 5] [--repeats-1024 3] [--threads 2]
       [--no-nnpack] [--cpu-time] [--json cpu_speed.json]
"""

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from dnnlib.atomic import atomic_write_bytes  # noqa: E402
from torch_utils.ops import fast_path  # noqa: E402
from training import networks  # noqa: E402

GENERATORS = {"G256": (256, 16384), "G1024": (1024, 32768)}  # case -> (resolution, channel_base)
QUICKSTART = dict(cfg="auto", cbase=1024, cmax=64, map=2, batch=8, aug="noaug", fp32=True)
QUICKSTART_RES = 32
PATHS = (False, True)  # reference, fast


def relative_error(fast, ref):
    """max |fast - ref| / max |ref| (0 when both are zero)."""
    scale = float(ref.abs().max())
    return float((fast - ref).abs().max()) / scale if scale > 0 else float((fast - ref).abs().max())


# What the table measures: wall-clock seconds, or (--cpu-time) this process's CPU seconds, which other processes
# on a busy machine disturb much less (with one thread they are the wall-clock time of a quiet machine).
clock = time.perf_counter


def time_interleaved(run_one, repeats):
    """Call `run_one(fast)` for the reference and the fast path `repeats` times each, alternating; returns the
    median seconds of each path and the last results."""
    seconds = {path: [] for path in PATHS}
    results = {}
    for _ in range(repeats):
        for path in PATHS:
            with fast_path.cpu_fast_path(path):
                start = clock()
                results[path] = run_one(path)
                seconds[path].append(clock() - start)
    return {path: statistics.median(values) for path, values in seconds.items()}, results


def generator_case(name, repeats):
    resolution, channel_base = GENERATORS[name]
    torch.manual_seed(0)
    synthesis = dict(channel_base=channel_base, channel_max=512, num_fp16_res=4, conv_clamp=256)
    G = networks.Generator(512, 0, 512, resolution, 3, mapping_kwargs=dict(num_layers=8), synthesis_kwargs=synthesis)
    G.eval().requires_grad_(False)
    z = torch.randn([1, G.z_dim])

    def run_one(_fast):
        with torch.no_grad():
            return G(z, None, noise_mode="const", force_fp32=True)

    run_one(True)  # warm-up (NNPACK initialisation, allocator)
    seconds, images = time_interleaved(run_one, repeats)
    return seconds, relative_error(images[True], images[False])


def _capture_gradients(run):
    """Make every phase's optimiser step record the gradients it applies the first time, by phase name."""
    captured = {}
    for phase in run.phases:

        def step(phase=phase, original=phase.opt.step):
            params = [p for p in phase.module.parameters() if p.grad is not None]
            captured.setdefault(phase.name, [p.grad.detach().clone() for p in params])
            return original()

        phase.opt.step = step
    return captured


def training_case(repeats):
    from bench import train_speed  # training-loop machinery (imports click)

    device = torch.device("cpu")
    runs, grads = {}, {}
    for path in PATHS:
        options = train_speed.build_options("auto", QUICKSTART_RES, device, workers=1, **_train_overrides())
        runs[path] = train_speed._BenchRun(options)
        with contextlib.redirect_stdout(io.StringIO()):
            runs[path].setup()
        grads[path] = _capture_gradients(runs[path])
    # Both runs start from the same state; the first iteration of each sees the same random draws.
    rng = torch.get_rng_state()

    def run_one(fast):
        torch.set_rng_state(rng)
        runs[fast].batch_idx = 0  # every phase runs when batch_idx is a multiple of all reg intervals
        runs[fast].iteration()

    for path in PATHS:  # the compared iteration (and the warm-up)
        with fast_path.cpu_fast_path(path):
            run_one(path)
    seconds, _ = time_interleaved(run_one, repeats)
    error = 0.0
    for phase_name, ref_grads in grads[False].items():
        for ref, fast in zip(ref_grads, grads[True][phase_name], strict=True):
            error = max(error, relative_error(fast, ref))
    return seconds, error


def _train_overrides():
    overrides = dict(QUICKSTART)
    overrides.pop("cfg")
    return overrides


def format_table(rows):
    header = ["case", "reference s", "fast s", "ratio", "max rel error"]
    cells = [header] + [
        [r["case"], f"{r['ref_s']:.3f}", f"{r['fast_s']:.3f}", f"{r['ratio']:.2f}", f"{r['error']:.1e}"] for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="G256,G1024,train", help="comma-separated subset of G256,G1024,train")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per path (G256, train)")
    parser.add_argument("--repeats-1024", type=int, default=3, help="timed runs per path for G1024")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's choice]")
    parser.add_argument("--no-nnpack", action="store_true", help="fast path without NNPACK's 3x3 convolutions")
    parser.add_argument("--cpu-time", action="store_true", help="CPU seconds of this process instead of wall-clock")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    cases = [case for case in args.cases.split(",") if case]
    unknown = sorted(set(cases) - {*GENERATORS, "train"})
    if unknown:
        parser.error(f"--cases: expected names from G256,G1024,train, found {','.join(unknown)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    fast_path.use_nnpack = not args.no_nnpack
    global clock
    clock = time.process_time if args.cpu_time else time.perf_counter
    measure = "CPU seconds" if args.cpu_time else "wall-clock seconds"
    print(
        f"CPU, {torch.get_num_threads()} threads, {measure}; torch {torch.__version__}; NNPACK {fast_path.use_nnpack}"
    )

    rows = []
    for case in cases:
        if case == "train":
            seconds, error = training_case(args.repeats)
        else:
            seconds, error = generator_case(case, args.repeats_1024 if case == "G1024" else args.repeats)
        ref_s, fast_s = seconds[False], seconds[True]
        rows.append(dict(case=case, ref_s=ref_s, fast_s=fast_s, ratio=ref_s / fast_s, error=error))
        print(f"  done: {case}", file=sys.stderr)
    print(format_table(rows))
    if args.json:
        report = dict(
            threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(), rows=rows
        )
        atomic_write_bytes(args.json, (json.dumps(report, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
