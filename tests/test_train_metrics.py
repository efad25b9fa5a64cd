"""train.py --metrics: every network snapshot is evaluated (docs/compatibility.md, "Training loop" and "Metrics"),
the result lines reach log.txt and metric-<name>.jsonl, and evaluating metrics leaves the run unchanged.

Two tiny CPU runs of two ticks each (one iteration of 4 images per tick, a snapshot every tick) with the same seed:
one with --metrics=kid50k_full (stand-in detectors, 64 generated images, see metrics_helpers.py), one with
--metrics=none. The CPU is forced so that the two runs can be compared bit for bit.
"""

import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO_ROOT
from metrics_helpers import save_stand_in_detectors, shrink_metrics, shrunk_driver

import dnnlib
from metrics import metric_main, metric_utils

pytestmark = pytest.mark.slow

METRIC = "kid50k_full"
NUM_TICKS = 2  # --kimg=0.008 with ticks of 0.004 kimg and batches of 4: one iteration per tick.
TINY_OPTIONS = ["--cbase=256", "--cmax=32", "--map=2", "--batch=4", "--workers=1", "--fp32=1"]
# paper256 has no EMA ramp-up (ema_kimg 20), so G_ema stays well apart from G and evaluating the wrong one shows.
RUN_OPTIONS = TINY_OPTIONS + ["--cfg=paper256", "--kimg=0.008", "--tick=0.004", "--snap=1", "--aug=ada", "--seed=3"]
SNAPSHOTS = ["network-snapshot-000000.004.pkl", "network-snapshot-000000.008.pkl"]  # ticks < 1 kimg: nnnnnn.nnn
RECORD_KEYS = ["results", "metric", "total_time", "total_time_str", "num_gpus", "snapshot_pkl", "timestamp"]


def write_image_folder(path: str, count: int = 16, resolution: int = 16) -> str:
    rng = np.random.default_rng(0)
    os.makedirs(path)
    for idx in range(count):
        pixels = rng.integers(0, 256, size=[resolution, resolution, 3], dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(os.path.join(path, f"img{idx:03d}.png"))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directories of the two training runs: `with_metrics` and `without`, plus the shared folders."""
    root = str(tmp_path_factory.mktemp("train_metrics"))
    detector_dir = save_stand_in_detectors(os.path.join(root, "detectors"))
    data = write_image_folder(os.path.join(root, "data16"))
    cache_dir = os.path.join(root, "cache")
    child_env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES="",  # Bitwise comparison of two runs needs the deterministic CPU path.
        DNNLIB_CACHE_DIR=cache_dir,
        STYLEGAN_DETECTOR_DIR=detector_dir,
        PYTHONPATH=REPO_ROOT,
        OMP_NUM_THREADS="1",
    )
    run_dirs = {}
    for name, metrics in [("with_metrics", METRIC), ("without", "none")]:
        outdir = os.path.join(root, name)
        cmd = [sys.executable, "-c", shrunk_driver("train.py"), f"--outdir={outdir}", f"--data={data}"]
        proc = subprocess.run(
            cmd + RUN_OPTIONS + [f"--metrics={metrics}"],
            cwd=REPO_ROOT,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        [run_name] = os.listdir(outdir)
        run_dirs[name] = os.path.join(outdir, run_name)
    return dnnlib.EasyDict(run_dirs, root=root, detector_dir=detector_dir, cache_dir=cache_dir)


def read_text(run_dir: str, name: str) -> str:
    with open(os.path.join(run_dir, name)) as f:
        return f.read()


def load_snapshot(run_dir: str) -> dict:
    with open(os.path.join(run_dir, SNAPSHOTS[-1]), "rb") as f:
        return pickle.load(f)


def test_every_snapshot_is_evaluated_and_reported(runs):
    run_dir = runs.with_metrics
    with open(os.path.join(run_dir, "training_options.json")) as f:
        assert json.load(f)["metrics"] == [METRIC]

    # log.txt: after each tick's status line, "Evaluating metrics..." and then the JSON result line.
    log_lines = read_text(run_dir, "log.txt").splitlines()
    tick_idx = [i for i, line in enumerate(log_lines) if line.startswith("tick ")]
    assert len(tick_idx) == NUM_TICKS
    assert log_lines.count("Evaluating metrics...") == NUM_TICKS
    printed = []
    for i in tick_idx:
        assert log_lines[i + 1] == "Evaluating metrics...", log_lines[i : i + 3]
        assert log_lines[i + 2].startswith('{"results": '), log_lines[i : i + 3]
        printed.append(log_lines[i + 2])
    assert not any("features" in line for line in log_lines), "evaluation during training is silent"

    # metric-kid50k_full.jsonl: the same lines, one per snapshot, keys in the order of docs/compatibility.md, "Metrics".
    jsonl_lines = read_text(run_dir, f"metric-{METRIC}.jsonl").splitlines()
    assert jsonl_lines == printed
    records = [json.loads(line) for line in jsonl_lines]
    assert [record["snapshot_pkl"] for record in records] == SNAPSHOTS  # Relative to the run directory.
    for record in records:
        assert list(record) == RECORD_KEYS
        assert list(record["results"]) == [METRIC]
        assert math.isfinite(record["results"][METRIC])
        assert record["metric"] == METRIC
        assert record["total_time_str"] == dnnlib.util.format_time(record["total_time"])
        assert record["num_gpus"] == 1
        assert os.path.isfile(os.path.join(run_dir, record["snapshot_pkl"]))
    assert records[0]["timestamp"] < records[1]["timestamp"]
    assert records[0]["results"] != records[1]["results"], "each snapshot's own G_ema is evaluated"

    # Without metrics: no evaluation and no metric file.
    assert "Evaluating metrics..." not in read_text(runs.without, "log.txt")
    assert not [name for name in os.listdir(runs.without) if name.startswith("metric-")]


def test_reported_value_is_that_of_the_final_snapshot(runs, monkeypatch):
    # The snapshot's resume record holds the RNG states at snapshot time, which is where the metric's own forked
    # stream starts; replaying from them in this process must give the value the run reported.
    snapshot = load_snapshot(runs.with_metrics)
    reported = json.loads(read_text(runs.with_metrics, f"metric-{METRIC}.jsonl").splitlines()[-1])
    rng = snapshot["resume_state"]["rng"][0]

    monkeypatch.setenv(metric_utils.DETECTOR_DIR_ENV, runs.detector_dir)
    monkeypatch.setenv("DNNLIB_CACHE_DIR", runs.cache_dir)  # The run cached the real features at its first snapshot.
    monkeypatch.setattr(metric_utils, "_feature_detector_cache", dict())
    shrink_metrics(monkeypatch.setattr)

    def replay(G) -> float:
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        result = metric_main.calc_metric(
            METRIC,
            G=G,
            dataset_kwargs=snapshot["training_set_kwargs"],
            num_gpus=1,
            rank=0,
            device=torch.device("cpu"),
        )
        return result.results[METRIC]

    expected = reported["results"][METRIC]
    assert replay(snapshot["G_ema"]) == pytest.approx(expected, rel=1e-5)
    assert replay(snapshot["G"]) != pytest.approx(expected, rel=1e-3)  # The check can tell the networks apart.


def assert_bitwise_equal(a, b, where: str = "snapshot") -> None:
    """Recursive equality of snapshot contents; tensors and arrays must match bit for bit (NaN included)."""
    if isinstance(a, torch.nn.Module):
        # Each unpickling may rebuild the persistent classes, so compare what defines the module, not the class object.
        assert (repr(a), getattr(a, "init_kwargs", None)) == (repr(b), getattr(b, "init_kwargs", None)), where
        a, b = a.state_dict(), b.state_dict()
    if isinstance(a, torch.Tensor | np.ndarray):
        a, b = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x for x in (a, b))
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), f"{where} differs"
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for idx, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{where}[{idx}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def test_metrics_do_not_perturb_training(runs):
    # The pickle bytes themselves differ (torch names storages by memory address); their contents may not.
    with_metrics, without = load_snapshot(runs.with_metrics), load_snapshot(runs.without)
    assert list(with_metrics) == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe", "resume_state"]
    assert with_metrics["augment_pipe"] is not None  # ADA's draws are among those a leaking metric would shift.
    assert_bitwise_equal(with_metrics, without)

    # The losses of every tick agree as well (timings of course do not); dumping compares NaN as text.
    stats = [
        [json.loads(line) for line in read_text(run_dir, "stats.jsonl").splitlines()]
        for run_dir in (runs.with_metrics, runs.without)
    ]
    assert len(stats[0]) == len(stats[1]) == NUM_TICKS
    for tick_a, tick_b in zip(*stats, strict=True):
        names = [name for name in tick_a if name.startswith(("Loss/", "Progress/"))]
        assert names and json.dumps([tick_a[n] for n in names]) == json.dumps([tick_b[n] for n in names])
