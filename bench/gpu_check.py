"""One-call GPU check: plugin builds and kernel tests, a short mixed-precision training run, op and training speed.

    bash bench/gpu_check.sh OUTDIR            # one CUDA GPU, about 8 minutes
    bash bench/gpu_check.sh --smoke OUTDIR    # the same steps on the CPU at tiny sizes (part of the test suite)

Steps, in order, each in a process group of its own with its own time budget (a step that overruns is killed and
reported FAILED; the next step runs anyway):

  environment   GPU model, driver, CUDA, cuDNN, nvcc, compilers, torch, Python and package versions
  plugin_build  builds upfirdn2d_plugin and bias_act_plugin in a new folder under OUTDIR, timing each build and a
                later process's load of the finished build
  plugin_tests  python -m pytest -q tests/test_ops_cuda.py tests/test_plugin_build.py
  train         train.py --cfg=paper256 for a few iterations (256x256, mixed precision) on a synthetic dataset made
                with dataset_tool.py; every Loss/* statistic and every tensor of the final snapshot must be finite
  ops           bench/ops.py's tables (native kernels vs reference vs plain PyTorch), kernels checked against 'ref'
  train_speed   bench/train_speed.py: paper256 @256 and stylegan2 @1024 (sec/kimg, img/s, peak memory, G img/s)

Everything goes under OUTDIR (which must be new or empty): one folder per step with its log and results,
environment.json, summary.txt/summary.json (rewritten after every step), gpu_check.log (the console output) and
results.tar.gz (every text file, for copying off the machine). The summary table is printed last; the exit status
is 0 when every step passed, 1 when one failed or the check was stopped (SIGTERM, Ctrl-C: the running step is
killed, the summary still written), 2 on bad usage. Nothing is downloaded (metrics are off).

This file is also the program each step runs in (`--step NAME`, internal). The orchestrating part imports neither
torch nor the project's networks (only the standard library and dnnlib.atomic), so that a step that hangs in CUDA
or crashes cannot take the report down with it.
"""

import argparse
import dataclasses
import glob
import io
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tarfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from dnnlib.atomic import atomic_write, atomic_write_bytes  # noqa: E402

OK = "ok"
FAILED = "FAILED"
SKIPPED_NO_CUDA = "skipped (no CUDA)"

RESULT_FILE = "result.json"
LOG_FILE = "log.txt"
CACHE_DIR = "cache"  # Under OUTDIR: the plugin build folder and the dnnlib cache, fresh for every check.
BUNDLE_FILE = "results.tar.gz"
BUNDLED_SUFFIXES = (".txt", ".json", ".jsonl", ".log", ".xml")
KILL_GRACE_S = 2  # After SIGTERM, how long a timed-out step may take to exit before SIGKILL.
LOG_TAIL_LINES = 25  # Lines of a failed step's log repeated on the console.
PLUGINS = ("upfirdn2d_plugin", "bias_act_plugin")
PYTEST_FILES = ("tests/test_ops_cuda.py", "tests/test_plugin_build.py")
# Largest difference of the native kernels from the reference path, relative to max(1, max|ref|) (bench/ops.py's
# diff.cuda): float32 rounding, and float16 rounding of outputs up to the clamp value.
OPS_DIFF_LIMIT = {"float32": 1e-5, "float16": 1e-2}
REQUIRED_LOSSES = ("Loss/G/loss", "Loss/D/loss", "Loss/G/reg", "Loss/D/reg")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each step runs: the real sizes on a GPU, tiny ones for --smoke."""

    train_res: int
    train_images: int
    train_args: tuple[str, ...]
    ops_runs: tuple[tuple[str, tuple[str, ...]], ...]  # (name, bench/ops.py arguments)
    speed_args: tuple[str, ...]


GPU_SIZES = Sizes(
    train_res=256,
    train_images=64,
    # Batch 64: 8 iterations (both regularisation phases run), ticks at 64, 320 and 512 images.
    train_args=("--cfg=paper256", "--kimg=0.512", "--tick=0.256", "--fp32=0", "--workers=3"),
    ops_runs=(
        ("float32", ("--res=256", "--res=1024", "--batch=4", "--iters=10", "--warmup=3")),
        ("float16", ("--res=1024", "--batch=4", "--dtype=float16", "--iters=10", "--warmup=3")),
    ),
    # 16 timed iterations after one: the share of G and D regularisation passes of a long run (intervals 4, 16).
    speed_args=(
        "--runs=paper256@256,stylegan2@1024",
        "--iters=16",
        "--warmup=1",
        "--gen-batch=32",
        "--gen-iters=5",
        "--workers=3",
    ),
)

_TINY_NETWORKS = ("--cbase=512", "--cmax=32", "--map=2")
SMOKE_SIZES = Sizes(
    train_res=32,
    train_images=16,
    # Two iterations of 16 images (tick 0 ends after the first); one round of 16 also renders the 32x32 image grids
    # (1024 images each) in fewer, cheaper calls than rounds of 4. Half precision is only emulated on a CPU, several
    # times slower than float32 (train.py's CPU default), so the smoke run trains in float32.
    train_args=(
        "--cfg=paper256",
        *_TINY_NETWORKS,
        "--batch=16",
        "--batch-gpu=16",
        "--kimg=0.032",
        "--tick=1",
        "--fp32=1",
        "--workers=1",
    ),
    ops_runs=(
        ("float32", ("--res=32", "--cbase=512", "--cmax=32", "--min-res=16", "--batch=1", "--iters=1", "--warmup=1")),
    ),
    speed_args=(
        "--runs=paper256@32,stylegan2@32",
        *_TINY_NETWORKS,
        "--batch=4",
        "--fp32=1",
        "--iters=1",
        "--warmup=1",
        "--gen-batch=2",
        "--gen-iters=1",
        "--workers=1",
    ),
)


@dataclasses.dataclass
class Context:
    """What a step knows: where to write, and which sizes to run."""

    outdir: str
    step_dir: str
    smoke: bool
    keep_snapshots: bool

    @property
    def sizes(self) -> Sizes:
        return SMOKE_SIZES if self.smoke else GPU_SIZES


def _result(status: str, key: str, **details) -> dict:
    return dict(status=status, key=key, details=details)


def _write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _run_tee(cmd: list[str], merge_stderr: bool = True) -> tuple[int, list[str]]:
    """Run `cmd` from the repository root, echoing its stdout (and stderr) into this step's log; return the lines.

    No timeout of its own: the step's budget stops the whole process group.
    """
    print("$ " + " ".join(cmd), flush=True)
    stderr = subprocess.STDOUT if merge_stderr else None
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, errors="replace")
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    return proc.wait(), lines


def _first_line(cmd: list[str]) -> str | None:
    """The first output line of a version command, or None when it is missing or fails."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if out.returncode == 0 and text else None


# ----------------------------------------------------------------------------------------------------------------------
# Step: environment.

_REPORTED_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_HOME",
    "TORCH_CUDA_ARCH_LIST",
    "TORCH_EXTENSIONS_DIR",
    "DNNLIB_CACHE_DIR",
    "OMP_NUM_THREADS",
)


def _requirement_names() -> list[str]:
    names = []
    for fname in ("requirements.txt", "requirements-dev.txt"):
        path = os.path.join(REPO_ROOT, fname)
        if os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    name = re.split(r"[<>=!~\[;\s#]", line.strip(), maxsplit=1)[0]
                    if name and name not in names:
                        names.append(name)
    return names


def _package_versions() -> dict:
    import importlib.metadata

    versions = {}
    for name in ["torch", *_requirement_names()]:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _gpu_info(torch) -> list[dict]:
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            dict(
                name=props.name,
                capability=f"{props.major}.{props.minor}",
                memory_gib=round(props.total_memory / 2**30, 1),
                multiprocessors=props.multi_processor_count,
            )
        )
    return gpus


def _nvcc_release(cuda_home: str | None) -> str | None:
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else "nvcc"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release ([\d.]+)", out)
    return match.group(1) if match else None


def step_environment(ctx: Context) -> dict:
    import torch
    import torch.utils.cpp_extension

    cuda_home = torch.utils.cpp_extension.CUDA_HOME
    smi = _first_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    if smi is not None:
        _run_tee(["nvidia-smi"])
    info = dict(
        cuda_available=torch.cuda.is_available(),
        gpus=_gpu_info(torch) if torch.cuda.is_available() else [],
        driver=smi,
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        cuda_home=cuda_home,
        nvcc=_nvcc_release(cuda_home),
        gcc=_first_line(["gcc", "--version"]),
        ninja=_first_line(["ninja", "--version"]),
        python=sys.version.split()[0],
        python_executable=sys.executable,
        platform=platform.platform(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        git_commit=_first_line(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"]),
        packages=_package_versions(),
        environment_variables={name: os.environ.get(name) for name in _REPORTED_VARIABLES},
    )
    print(json.dumps(info, indent=2))
    _write_json(os.path.join(ctx.outdir, "environment.json"), info)
    if info["gpus"]:
        gpu = info["gpus"][0]["name"]
        key = f"{gpu}, driver {info['driver']}, CUDA {info['torch_cuda']}, torch {info['torch']}"
    else:
        key = f"no CUDA device; torch {info['torch']}, Python {info['python']}"
    return _result(OK, key, **info)


# ----------------------------------------------------------------------------------------------------------------------
# Step: plugin builds.

# A later process loading the finished builds: prints the seconds each op's first CUDA call took, as JSON.
_RELOAD_SCRIPT = """
import json, sys, time, warnings
sys.path.insert(0, {repo!r})
import torch
from torch_utils.ops import bias_act, upfirdn2d
x = torch.ones([1, 1, 8, 8], device="cuda")
f = upfirdn2d.setup_filter([1, 3, 3, 1], device="cuda")
b = torch.zeros([1], device="cuda")
times = {{}}
for name, call in [("upfirdn2d_plugin", lambda: upfirdn2d.upfirdn2d(x, f, impl="cuda")),
                   ("bias_act_plugin", lambda: bias_act.bias_act(x, b, act="lrelu", impl="cuda"))]:
    start = time.perf_counter()
    call()
    torch.cuda.synchronize()
    times[name] = time.perf_counter() - start
print("RELOAD " + json.dumps(times))
"""


def _built_libraries(outdir: str) -> list[str]:
    pattern = os.path.join(outdir, CACHE_DIR, "**", "*.so")
    return sorted(glob.glob(pattern, recursive=True) + glob.glob(pattern[:-3] + ".pyd", recursive=True))


def step_plugin_build(ctx: Context) -> dict:
    import warnings

    import torch

    from torch_utils.ops import bias_act, upfirdn2d

    x = torch.ones([1, 1, 8, 8], device="cuda")
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device="cuda")
    b = torch.zeros([1], device="cuda")
    first_calls = [
        ("upfirdn2d_plugin", lambda: upfirdn2d.upfirdn2d(x, f, impl="cuda")),
        ("bias_act_plugin", lambda: bias_act.bias_act(x, b, act="lrelu", impl="cuda")),
    ]
    build_s, problems = {}, []
    for name, call in first_calls:
        print(f"Building {name} in {os.environ.get('TORCH_EXTENSIONS_DIR')}", flush=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            call()
            torch.cuda.synchronize()
            build_s[name] = round(time.perf_counter() - start, 1)
        for warning in caught:
            print(f"warning: {warning.message}", flush=True)
            if "CUDA kernels" in str(warning.message):  # The ops' fallback warnings (build failure, self-check).
                problems.append(f"{name}: {str(warning.message).splitlines()[0]}")
    libraries = _built_libraries(ctx.outdir)
    for name in PLUGINS:
        if not any(os.path.basename(lib).startswith(name) for lib in libraries):
            problems.append(f"{name}: no built library under {os.path.join(ctx.outdir, CACHE_DIR)}")
    reload_s = None
    if not problems:
        code, lines = _run_tee([sys.executable, "-c", _RELOAD_SCRIPT.format(repo=REPO_ROOT)])
        reloads = [json.loads(line[len("RELOAD ") :]) for line in lines if line.startswith("RELOAD ")]
        if code != 0 or not reloads:
            problems.append(f"a second process could not load the builds (exit status {code})")
        else:
            reload_s = {name: round(sec, 2) for name, sec in reloads[0].items()}
    details = dict(build_s=build_s, reload_s=reload_s, libraries=libraries, problems=problems)
    if problems:
        return _result(FAILED, problems[0], **details)
    key = ", ".join(f"{name} {sec:.1f} s" for name, sec in build_s.items())
    key += f"; reload {sum(reload_s.values()):.1f} s"
    return _result(OK, key, **details)


# ----------------------------------------------------------------------------------------------------------------------
# Step: plugin tests.

_PYTEST_OUTCOME = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def pytest_summary(lines: list[str]) -> str | None:
    """pytest's final "N passed, M skipped in Xs" line (without the '=' padding), or None."""
    for line in reversed(lines):
        text = line.strip().strip("=").strip()
        if _PYTEST_OUTCOME.search(text) and " in " in text:
            return text
    return None


def junit_counts(path: str) -> dict | None:
    """{tests, failures, errors, skipped, passed} summed over the test suites of a JUnit XML report, or None."""
    if not os.path.isfile(path):
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {
        key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors", "skipped")
    }
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def step_plugin_tests(ctx: Context) -> dict:
    import torch

    junit = os.path.join(ctx.step_dir, "junit.xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += [f"--basetemp={os.path.join(ctx.step_dir, 'tmp')}", f"--junitxml={junit}", *PYTEST_FILES]
    code, lines = _run_tee(cmd)
    summary = pytest_summary(lines) or f"pytest exited with status {code} and no summary line"
    counts = junit_counts(junit)
    details = dict(exit_status=code, summary=summary, counts=counts)
    if code != 0 or counts is None:
        return _result(FAILED, summary, **details)
    if counts["passed"] == 0 and not torch.cuda.is_available():
        return _result(SKIPPED_NO_CUDA, summary, **details)
    if counts["passed"] == 0:
        return _result(FAILED, f"nothing ran on a CUDA machine: {summary}", **details)
    return _result(OK, summary, **details)


# ----------------------------------------------------------------------------------------------------------------------
# Step: a short training run.


def make_images(folder: str, res: int, count: int, seed: int = 0) -> None:
    """`count` RGB PNGs of `res` x `res`: a horizontal two-colour gradient with a disc of a third colour."""
    import numpy as np
    import PIL.Image

    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32) / (res - 1)
    for index in range(count):
        left, right, disc_colour = rng.uniform(0, 255, size=[3, 3])
        image = left * (1 - xx[..., None]) + right * xx[..., None]
        cx, cy, radius = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.1, 0.3)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = disc_colour
        PIL.Image.fromarray(image.round().astype(np.uint8), "RGB").save(os.path.join(folder, f"img{index:04d}.png"))


def loss_problems(stats_path: str) -> tuple[list[str], dict]:
    """Non-finite or missing Loss/* statistics in a stats.jsonl; also the last tick's loss means."""
    with open(stats_path) as f:
        ticks = [json.loads(line) for line in f if line.strip()]
    if not ticks:
        return [f"{stats_path} holds no statistics"], {}
    problems, seen = [], set()
    for tick, stats in enumerate(ticks):
        for name, value in stats.items():
            if not name.startswith("Loss/"):
                continue
            seen.add(name)
            for field in ("mean", "std"):
                if not math.isfinite(value[field]):
                    problems.append(f"tick {tick}: {name} {field} is {value[field]}")
    problems += [f"{name} was never reported" for name in REQUIRED_LOSSES if name not in seen]
    last = {name: value["mean"] for name, value in ticks[-1].items() if name.startswith("Loss/")}
    return problems, dict(ticks=len(ticks), last_tick_loss_means=last)


def nonfinite_tensors(nets: dict) -> tuple[list[str], int]:
    """Names ('G.mapping.fc0.weight', ...) of the floating-point parameters and buffers of `nets` that hold a NaN
    or an infinity, and how many such tensors there are in all."""
    import torch

    bad, count = [], 0
    for key, net in nets.items():
        if net is None:
            continue
        for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
            if tensor.is_floating_point():
                count += 1
                if not bool(torch.isfinite(tensor).all()):
                    bad.append(f"{key}.{name}")
    return bad, count


def _check_snapshot(run_dir: str, keep: bool) -> tuple[list[str], dict]:
    from training.pickles import load_network_pkl

    snapshots = sorted(glob.glob(os.path.join(run_dir, "network-snapshot-*.pkl")), key=os.path.getmtime)
    if not snapshots:
        return [f"no network snapshot in {run_dir}"], {}
    with open(snapshots[-1], "rb") as f:  # The last one written: the end of the run.
        data = load_network_pkl(f)
    nets = {key: data.get(key) for key in ("G", "D", "G_ema", "augment_pipe")}
    bad, count = nonfinite_tensors(nets)
    details = dict(snapshot=os.path.basename(snapshots[-1]), tensors_checked=count, nonfinite=bad)
    if not keep:
        for path in snapshots:  # Hundreds of MB at 256x256; the check needs only the verdict.
            os.remove(path)
        details["snapshots_removed"] = len(snapshots)
    return [f"non-finite {name}" for name in bad], details


def _train_command(ctx: Context, data_zip: str) -> list[str]:
    runs_dir = os.path.join(ctx.step_dir, "runs")
    cmd = [sys.executable, "train.py", f"--outdir={runs_dir}", f"--data={data_zip}", *ctx.sizes.train_args]
    # --snap only at the end (and at tick 0, which is always due); no metrics, nothing downloaded.
    return cmd + ["--snap=1000", "--metrics=none", "--seed=0"]


def step_train(ctx: Context) -> dict:
    sizes = ctx.sizes
    images = os.path.join(ctx.step_dir, "images")
    data_zip = os.path.join(ctx.step_dir, f"synthetic{sizes.train_res}.zip")
    make_images(images, sizes.train_res, sizes.train_images)
    code, _ = _run_tee([sys.executable, "dataset_tool.py", f"--source={images}", f"--dest={data_zip}"])
    if code != 0:
        return _result(FAILED, f"dataset_tool.py exited with status {code}")
    code, lines = _run_tee(_train_command(ctx, data_zip))
    nonfinite_grads = [line for line in lines if "non-finite gradient" in line]
    run_dirs = [path for path in glob.glob(os.path.join(ctx.step_dir, "runs", "*")) if os.path.isdir(path)]
    if code != 0 or len(run_dirs) != 1:
        last = next((line for line in reversed(lines) if line.strip()), "")
        return _result(FAILED, f"train.py exited with status {code}: {last[-150:]}", nonfinite_grads=nonfinite_grads)
    run_dir = run_dirs[0]
    with open(os.path.join(run_dir, "training_options.json")) as f:
        options = json.load(f)
    fp16_res = options["G_kwargs"]["synthesis_kwargs"]["num_fp16_res"]
    problems, stats = loss_problems(os.path.join(run_dir, "stats.jsonl"))
    snapshot_problems, snapshot = _check_snapshot(run_dir, ctx.keep_snapshots)
    problems += snapshot_problems
    if not ctx.smoke and fp16_res == 0:
        problems.append("the run was not in mixed precision (num_fp16_res is 0)")
    details = dict(run_dir=run_dir, num_fp16_res=fp16_res, nonfinite_grads=nonfinite_grads, **stats, **snapshot)
    if problems:
        return _result(FAILED, "; ".join(problems[:3]), problems=problems, **details)
    losses = stats["last_tick_loss_means"]
    precision = f"mixed ({fp16_res} fp16 resolutions)" if fp16_res else "float32"
    key = (
        f"{stats['ticks']} ticks, {precision}; G/loss {losses['Loss/G/loss']:.3g} "
        f"D/loss {losses['Loss/D/loss']:.3g}; {snapshot['tensors_checked']} tensors finite"
    )
    if nonfinite_grads:
        key += f"; {len(nonfinite_grads)} non-finite-gradient warnings"
    return _result(OK, key, **details)


# ----------------------------------------------------------------------------------------------------------------------
# Steps: bench/ops.py and bench/train_speed.py.


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def ops_verdict(report: dict, dtype: str) -> tuple[list[str], str]:
    """Kernels that differ from the reference beyond OPS_DIFF_LIMIT, and "impl N.Nx" forward speed-ups over 'ref'."""
    rows = [row for table in report["tables"] for row in table["rows"]]
    problems = [
        f"{row['name']} ({dtype}): cuda differs from ref by {row['diff.cuda']:.1e}"
        for row in rows
        if "diff.cuda" in row and not row["diff.cuda"] <= OPS_DIFF_LIMIT[dtype]
    ]
    speedups = []
    for impl in ("cuda", "plain"):
        ratios = [row["ref.fwd"] / row[f"{impl}.fwd"] for row in rows if row.get(f"{impl}.fwd")]
        if ratios:
            speedups.append(f"{impl} {_geomean(ratios):.2f}x")
    return problems, f"{dtype}: " + ", ".join(speedups) + " ref"


def step_ops(ctx: Context) -> dict:
    problems, keys, tables = [], [], []
    for name, args in ctx.sizes.ops_runs:
        json_path = os.path.join(ctx.step_dir, f"ops_{name}.json")
        text_path = os.path.join(ctx.step_dir, f"ops_{name}.txt")
        code, lines = _run_tee([sys.executable, "bench/ops.py", *args, f"--json={json_path}"], merge_stderr=False)
        atomic_write_bytes(text_path, ("\n".join(lines) + "\n").encode())
        tables.append(os.path.relpath(text_path, ctx.outdir))
        if code != 0 or not os.path.isfile(json_path):
            problems.append(f"bench/ops.py ({name}) exited with status {code}")
            continue
        with open(json_path) as f:
            run_problems, key = ops_verdict(json.load(f), name)
        problems += run_problems
        keys.append(key)
    if problems:
        return _result(FAILED, "; ".join(problems[:2]), problems=problems, tables=tables)
    return _result(OK, "fwd speed-up over ref (geomean) " + "; ".join(keys), tables=tables)


def step_train_speed(ctx: Context) -> dict:
    json_path = os.path.join(ctx.step_dir, "train_speed.json")
    text_path = os.path.join(ctx.step_dir, "train_speed.txt")
    cmd = [sys.executable, "bench/train_speed.py", *ctx.sizes.speed_args, f"--json={json_path}"]
    code, lines = _run_tee(cmd, merge_stderr=False)
    atomic_write_bytes(text_path, ("\n".join(lines) + "\n").encode())
    tables = [os.path.relpath(text_path, ctx.outdir)]
    if code != 0 or not os.path.isfile(json_path):
        return _result(FAILED, f"bench/train_speed.py exited with status {code}", tables=tables)
    with open(json_path) as f:
        rows = json.load(f)["rows"]
    bad = [f"{row['cfg']}@{row['res']}" for row in rows if not math.isfinite(row["sec_per_kimg"])]
    if bad:
        return _result(FAILED, f"no timing for {', '.join(bad)}", tables=tables, rows=rows)
    key = "; ".join(f"{row['cfg']}@{row['res']} {row['sec_per_kimg']:.2f} sec/kimg" for row in rows)
    return _result(OK, key, tables=tables, rows=rows)


# ----------------------------------------------------------------------------------------------------------------------
# The steps and their budgets (seconds). The GPU budgets add up to 465 s; with every step's kill grace they stay
# inside the 8 minutes of the whole check.


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Context], dict]
    gpu_budget_s: int
    smoke_budget_s: int
    needs_cuda: bool  # Not started at all without CUDA (reported as skipped).


STEPS = (
    Step("environment", step_environment, 15, 60, needs_cuda=False),
    Step("plugin_build", step_plugin_build, 75, 60, needs_cuda=True),
    Step("plugin_tests", step_plugin_tests, 150, 90, needs_cuda=False),
    Step("train", step_train, 75, 150, needs_cuda=False),
    Step("ops", step_ops, 35, 60, needs_cuda=False),
    Step("train_speed", step_train_speed, 115, 120, needs_cuda=False),
)
STEP_NAMES = [step.name for step in STEPS]


def run_step_here(name: str, outdir: str, smoke: bool, keep_snapshots: bool) -> int:
    """The body of a step process: run the step and write its result.json (also when it raised)."""
    step = STEPS[STEP_NAMES.index(name)]
    ctx = Context(outdir=outdir, step_dir=os.path.join(outdir, name), smoke=smoke, keep_snapshots=keep_snapshots)
    try:
        result = step.run(ctx)
    except Exception as err:
        traceback.print_exc()
        result = _result(FAILED, f"{type(err).__name__}: {err}"[:200])
    _write_json(os.path.join(ctx.step_dir, RESULT_FILE), result)
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# The orchestrator (standard library only).


class Console:
    """Prints to stdout and keeps a copy in OUTDIR/gpu_check.log."""

    def __init__(self, path: str):
        self._file = open(path, "a")

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self._file.write(text + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def step_environment_variables(outdir: str, smoke: bool) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["TORCH_EXTENSIONS_DIR"] = os.path.join(outdir, CACHE_DIR, "torch_extensions")
    env["DNNLIB_CACHE_DIR"] = os.path.join(outdir, CACHE_DIR, "dnnlib")
    if smoke:
        # The CPU even where a GPU exists; one thread, since tiny ops on a shared CPU lose far more to thread
        # hand-offs than they gain.
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop every process of the step's process group (its own id), politely first."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


def run_step_process(step: Step, outdir: str, smoke: bool, budget_s: float, keep: bool, env: dict) -> dict:
    """Run one step in a new process group under its budget; return its result with 'seconds' added."""
    step_dir = os.path.join(outdir, step.name)
    os.makedirs(step_dir)
    cmd = [sys.executable, os.path.abspath(__file__), "--step", step.name, *(["--smoke"] if smoke else [])]
    cmd += [*(["--keep-snapshots"] if keep else []), outdir]
    start = time.monotonic()
    with open(os.path.join(step_dir, LOG_FILE), "w") as log:
        # A process group of its own (in the caller's session, so that whoever stops the caller's session stops it).
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0)
        try:
            proc.wait(timeout=budget_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)  # Also whatever a finished step left behind (DataLoader workers, compilers).
    seconds = time.monotonic() - start
    result_path = os.path.join(step_dir, RESULT_FILE)
    if timed_out:
        result = _result(FAILED, f"timed out after its budget of {budget_s:g} s (see --budget)")
    elif os.path.isfile(result_path):
        with open(result_path) as f:
            result = json.load(f)
    else:
        result = _result(FAILED, f"the step process exited with status {proc.returncode} without a result")
    return dict(result, name=step.name, seconds=round(seconds, 1), budget_s=budget_s)


def _skipped(step: Step, budget_s: float, why: str) -> dict:
    return dict(_result(SKIPPED_NO_CUDA, why), name=step.name, seconds=0.0, budget_s=budget_s)


def format_summary(results: list[dict]) -> str:
    rows = [("step", "status", "seconds", "key")]
    rows += [(r["name"], r["status"], f"{r['seconds']:.1f}", r["key"]) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _bundle(outdir: str) -> None:
    """results.tar.gz: every text result under OUTDIR (not the builds, datasets, images or test temp folders)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for folder, dirs, files in os.walk(outdir):
            dirs[:] = sorted(d for d in dirs if d not in (CACHE_DIR, "tmp", "images"))
            for fname in sorted(files):
                if fname.endswith(BUNDLED_SUFFIXES):
                    path = os.path.join(folder, fname)
                    tar.add(path, arcname=os.path.join("gpu_check", os.path.relpath(path, outdir)))
    atomic_write_bytes(os.path.join(outdir, BUNDLE_FILE), buffer.getvalue())


def _write_summary(outdir: str, smoke: bool, results: list[dict], total_s: float) -> None:
    passed = all(r["status"] == OK or (smoke and r["status"] == SKIPPED_NO_CUDA) for r in results)
    summary = dict(mode="smoke" if smoke else "gpu", passed=passed, total_s=round(total_s, 1), steps=results)
    _write_json(os.path.join(outdir, "summary.json"), summary)
    atomic_write(os.path.join(outdir, "summary.txt"), lambda f: f.write((format_summary(results) + "\n").encode()))


def _report_step(console: Console, outdir: str, result: dict) -> None:
    console.say(f"    {result['status']} in {result['seconds']:.1f} s: {result['key']}")
    for table in result.get("details", {}).get("tables", []):
        path = os.path.join(outdir, table)
        if os.path.isfile(path):
            console.say(f"\n{table}:")
            with open(path) as f:
                console.say(f.read().rstrip())
            console.say()
    if result["status"] == FAILED:
        log_path = os.path.join(outdir, result["name"], LOG_FILE)
        if os.path.isfile(log_path):
            with open(log_path, errors="replace") as f:
                tail = f.read().splitlines()[-LOG_TAIL_LINES:]
            console.say(f"    last lines of {os.path.relpath(log_path, outdir)}:")
            for line in tail:
                console.say("    | " + line)


class _Terminated(Exception):
    """SIGTERM arrived: the running step's process group is stopped and the summary written before exiting."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _run_steps(console: Console, steps: list[Step], outdir: str, smoke: bool, budgets: dict, keep: bool) -> list:
    """Run `steps` in order, reporting each; an interruption is recorded as the running step's result and re-raised."""
    env = step_environment_variables(outdir, smoke)
    # The smoke run hides every GPU from its steps; otherwise the environment step tells.
    results, cuda, start = [], (False if smoke else None), time.monotonic()
    for index, step in enumerate(steps):
        budget_s = budgets.get(step.name, step.smoke_budget_s if smoke else step.gpu_budget_s)
        console.say(f"[{index + 1}/{len(steps)}] {step.name} (budget {budget_s:g} s)")
        step_start = time.monotonic()
        try:
            if cuda is False and (step.needs_cuda or not smoke):
                why = "no CUDA device" if smoke else "not run: the GPU check needs CUDA"
                result = _skipped(step, budget_s, why)
            else:
                result = run_step_process(step, outdir, smoke, budget_s, keep, env)
        except (_Terminated, KeyboardInterrupt):
            seconds = round(time.monotonic() - step_start, 1)
            results.append(dict(_result(FAILED, "interrupted"), name=step.name, seconds=seconds, budget_s=budget_s))
            _write_summary(outdir, smoke, results, time.monotonic() - start)
            raise
        if step.name == "environment" and not smoke:
            cuda = result["details"].get("cuda_available")
            if cuda is False:
                result.update(status=FAILED, key="no CUDA device: the GPU check needs one (--smoke runs on a CPU)")
        results.append(result)
        _report_step(console, outdir, result)
        _write_summary(outdir, smoke, results, time.monotonic() - start)
    return results


def run_check(outdir: str, smoke: bool, only: list[str], budgets: dict, keep: bool) -> int:
    os.makedirs(outdir, exist_ok=True)
    console = Console(os.path.join(outdir, "gpu_check.log"))
    mode = "smoke (CPU, tiny sizes)" if smoke else "GPU"
    console.say(f"GPU check, {mode} mode, results in {outdir}")
    steps = [step for step in STEPS if step.name == "environment" or not only or step.name in only]
    start = time.monotonic()
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    interrupted = False
    try:
        results = _run_steps(console, steps, outdir, smoke, budgets, keep)
    except (_Terminated, KeyboardInterrupt):
        interrupted = True
        summary_path = os.path.join(outdir, "summary.json")
        results = []
        if os.path.isfile(summary_path):
            with open(summary_path) as f:
                results = json.load(f)["steps"]
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    _bundle(outdir)
    failed = [r["name"] for r in results if r["status"] == FAILED or (not smoke and r["status"] != OK)]
    console.say()
    console.say(format_summary(results))
    total = time.monotonic() - start
    if interrupted:
        console.say(f"interrupted after {total:.0f} s; results so far in {outdir}")
    elif failed:
        console.say(f"{len(failed)} of {len(results)} steps FAILED ({', '.join(failed)}) in {total:.0f} s")
    else:
        console.say(f"all {len(results)} steps passed in {total:.0f} s; results in {outdir}")
    console.close()
    return 1 if failed or interrupted else 0


# ----------------------------------------------------------------------------------------------------------------------
# Command line.


def _parse_budgets(items: list[str], parser: argparse.ArgumentParser) -> dict:
    budgets = {}
    for item in items:
        name, sep, seconds = item.partition("=")
        if not sep or name not in STEP_NAMES:
            parser.error(f"--budget: expected STEP=SECONDS with STEP one of {', '.join(STEP_NAMES)}, found {item!r}")
        try:
            budgets[name] = float(seconds)
        except ValueError:
            parser.error(f"--budget {name}: expected a number of seconds, found {seconds!r}")
        if not budgets[name] > 0:
            parser.error(f"--budget {name}: expected a positive number of seconds, found {seconds!r}")
    return budgets


def _outdir_problem(outdir: str) -> str | None:
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        return f"OUTDIR {outdir}: expected a new or empty folder, found a file"
    if os.path.isdir(outdir) and os.listdir(outdir):
        return f"OUTDIR {outdir}: expected a new or empty folder (every check builds afresh), found files in it"
    return None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("outdir", metavar="OUTDIR", help="new or empty folder for all results")
    parser.add_argument("--smoke", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument(
        "--only", metavar="STEPS", help=f"comma-separated subset of: {', '.join(STEP_NAMES)} (environment always runs)"
    )
    parser.add_argument(
        "--budget", action="append", default=[], metavar="STEP=SECONDS", help="override a step's time budget"
    )
    parser.add_argument("--keep-snapshots", action="store_true", help="keep the training run's network pickles")
    parser.add_argument("--step", choices=STEP_NAMES, help=argparse.SUPPRESS)  # Internal: run one step here.
    args = parser.parse_args(argv)
    args.only_list = [name for name in (args.only or "").split(",") if name]
    unknown = [name for name in args.only_list if name not in STEP_NAMES]
    if unknown:
        parser.error(f"--only: expected names from {', '.join(STEP_NAMES)}, found {', '.join(unknown)}")
    args.budgets = _parse_budgets(args.budget, parser)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    outdir = os.path.abspath(args.outdir)
    if args.step is not None:
        return run_step_here(args.step, outdir, args.smoke, args.keep_snapshots)
    problem = _outdir_problem(outdir)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return run_check(outdir, args.smoke, args.only_list, args.budgets, args.keep_snapshots)


if __name__ == "__main__":
    sys.exit(main())
