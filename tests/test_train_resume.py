"""--resume: continuing from one of our snapshots reproduces the uninterrupted run bit for bit, even after SIGKILL;
a pickle without a resume_state lends only its weights and the run counts from kimg 0."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO_ROOT

# Ticks of 16 images with batch 4: tick 0 = iteration 1, tick 1 = iterations 2-5, tick 2 = 6-9, tick 3 = 10-13.
# ADA updates after iterations 4, 8 and 12, so the resumed part starts with ADA statistics pending; G regularises
# every 4 iterations; the EMA ramp-up (auto config) changes beta every iteration.
RUN_OPTIONS = [
    "--cbase=256", "--cmax=32", "--map=2", "--batch=4", "--workers=1", "--metrics=none", "--fp32=1", "--aug=ada",
    "--snap=1", "--kimg=0.052", "--tick=0.016",
]  # fmt: skip


def snapshot_name(nimg: int) -> str:
    """Ticks shorter than a kimg put the images within the kimg into the names: network-snapshot-000000.020.pkl."""
    return f"network-snapshot-{nimg // 1000:06d}.{nimg % 1000:03d}.pkl"


def write_image_folder(path, count: int, resolution: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    for idx in range(count):
        pixels = rng.integers(0, 256, size=[resolution, resolution, 3], dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(os.path.join(path, f"img{idx:03d}.png"))
    return str(path)


def train_command(outdir, data, *extra) -> list[str]:
    return [sys.executable, "train.py", f"--outdir={outdir}", f"--data={data}", *RUN_OPTIONS, *extra]


def run_to_end(outdir, data, *extra) -> str:
    result = subprocess.run(train_command(outdir, data, *extra), cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_name,) = os.listdir(outdir)
    return os.path.join(outdir, run_name)


def stats_lines(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "stats.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line.endswith("}")]


# log.txt of the uninterrupted run, line for line: the module summary tables (their rows name layers) stand as
# <table>, the timings and resources of the tick lines as <timings>. TensorBoard may or may not be installed.
EXPECTED_LOG = [
    "Loading training set...", "", "Num images:  16", "Image shape: [3, 16, 16]", "Label shape: [0]", "",
    "Constructing networks...", "", "<table>", "", "", "<table>", "", "Setting up augmentation...",
    "Distributing across 1 processes...", "Setting up training phases...", "Exporting sample images...",
    "Initializing logs...", "Training for 0.052 kimg...", "",
    "tick 0     kimg 0.0      <timings> augment 0.000", "tick 1     kimg 0.0      <timings> augment 0.000",
    "tick 2     kimg 0.0      <timings> augment 0.000", "tick 3     kimg 0.1      <timings> augment 0.000",
    "", "Exiting...",
]  # fmt: skip
TICK_TIMINGS = (
    r"time \S+( \S+)?\s* sec/tick [0-9. ]{7} sec/kimg [0-9. ]{7} maintenance [0-9. ]{6} cpumem [0-9. ]{6} "
    r"gpumem 0\.00  "
)


def masked_log(run_dir: str) -> list[str]:
    with open(os.path.join(run_dir, "log.txt")) as f:
        text = f.read()
    text = re.sub(r"^(Generator|Discriminator) .*?^Total [^\n]*", "<table>", text, flags=re.S | re.M)
    lines = [line for line in text.splitlines() if not line.startswith("Skipping tfevents export: ")]
    return [re.sub(TICK_TIMINGS, "<timings>", line) if line.startswith("tick ") else line for line in lines]


def assert_same_files(actual_dir: str, expected_dir: str, names: list[str]):
    """PNG files byte for byte; snapshots tensor for tensor (pickles embed class sources, not worth comparing)."""
    for name in names:
        if name.endswith(".png"):
            with open(os.path.join(actual_dir, name), "rb") as a, open(os.path.join(expected_dir, name), "rb") as e:
                assert a.read() == e.read(), f"{name} differs"
        else:
            actual = load_snapshot(os.path.join(actual_dir, name))
            expected = load_snapshot(os.path.join(expected_dir, name))
            assert list(actual) == list(expected), name
            for key in ["G", "D", "G_ema", "augment_pipe"]:
                assert_same_tensors(actual[key].state_dict(), expected[key].state_dict(), f"{name} {key}")
            assert_same_tensors(actual["resume_state"], expected["resume_state"], f"{name} resume_state")


def load_snapshot(path: str) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def assert_same_tensors(actual, expected, what: str):
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and actual.dtype == expected.dtype, what
        assert torch.equal(actual, expected), f"{what} differs"
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), what
        for key in expected:
            assert_same_tensors(actual[key], expected[key], f"{what}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), what
        for idx, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_tensors(a, e, f"{what}[{idx}]")
    elif isinstance(expected, np.ndarray):
        assert np.array_equal(actual, expected), f"{what} differs"
    else:
        assert actual == expected, f"{what}: {actual!r} != {expected!r}"


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "data16", count=16, resolution=16)


def test_resume_after_sigkill_is_bitwise_identical(tmp_path, data16):
    uninterrupted = run_to_end(tmp_path / "a", data16)
    assert masked_log(uninterrupted) == EXPECTED_LOG

    # The same run, killed with SIGKILL early in tick 2 (after tick 1's snapshot and statistics were written).
    os.makedirs(tmp_path / "b")
    process = subprocess.Popen(
        train_command(tmp_path / "b", data16), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            run_dirs = os.listdir(tmp_path / "b")
            if run_dirs and len(stats_lines(os.path.join(tmp_path / "b", run_dirs[0]))) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be interrupted"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    (killed_name,) = os.listdir(tmp_path / "b")
    killed = os.path.join(tmp_path / "b", killed_name)
    assert len(stats_lines(killed)) == 2, "the kill came too late: tick 2 had already finished"
    assert not [name for name in os.listdir(killed) if name.endswith(".tmp")], "a torn temporary file was left"
    assert os.path.isfile(os.path.join(killed, snapshot_name(4))), "tick 0's snapshot must not be overwritten"
    # Up to the kill, the same command wrote the same files, bit for bit.
    before_kill = ["reals.png", "fakes_init.png", "fakes000000.004.png", "fakes000000.020.png"]
    assert_same_files(killed, uninterrupted, before_kill + [snapshot_name(4), snapshot_name(20)])
    resume_from = load_snapshot(os.path.join(killed, snapshot_name(20)))
    assert (resume_from["resume_state"]["cur_nimg"], resume_from["resume_state"]["cur_tick"]) == (20, 2)

    resumed = run_to_end(tmp_path / "c", data16, f"--resume={os.path.join(killed, snapshot_name(20))}")
    assert resumed.endswith("-resumecustom")
    with open(os.path.join(resumed, "log.txt")) as f:
        log = f.read()
    assert "Continuing the earlier run at kimg 0.02, tick 2." in log
    assert "Continuing the earlier run's schedule: ema_rampup = 0.05" in log
    assert [line.split()[1] for line in log.splitlines() if line.startswith("tick ")] == ["2", "3"]
    assert [entry["Progress/tick"]["mean"] for entry in stats_lines(resumed)] == [2, 3]
    assert [entry["Progress/tick"]["mean"] for entry in stats_lines(uninterrupted)] == [0, 1, 2, 3]
    for name in ["reals.png", "fakes_init.png", "fakes000000.036.png", "fakes000000.052.png"]:
        assert os.path.exists(os.path.join(resumed, name)), name
    # The images of the continued ticks are those of the uninterrupted run (fakes_init shows the resumed G_ema).
    assert_same_files(resumed, uninterrupted, ["reals.png", "fakes000000.036.png", "fakes000000.052.png"])

    expected = load_snapshot(os.path.join(uninterrupted, snapshot_name(52)))
    actual = load_snapshot(os.path.join(resumed, snapshot_name(52)))
    for key in ["G", "D", "G_ema"]:
        assert_same_tensors(actual[key].state_dict(), expected[key].state_dict(), key)
    assert_same_tensors(actual["augment_pipe"].p, expected["augment_pipe"].p, "augment_pipe.p")
    expected_state, actual_state = expected["resume_state"], actual["resume_state"]
    assert (expected_state["cur_nimg"], expected_state["cur_tick"], expected_state["batch_idx"]) == (52, 4, 13)
    for key in ["cur_nimg", "cur_tick", "batch_idx", "pl_mean", "ada_pending", "schedule", "optimizers"]:
        assert_same_tensors(actual_state[key], expected_state[key], key)
    assert_same_tensors(actual_state["rng"][0]["torch"], expected_state["rng"][0]["torch"], "torch RNG")
    assert_same_tensors(list(actual_state["rng"][0]["numpy"]), list(expected_state["rng"][0]["numpy"]), "numpy RNG")
    # The run really trained: the weights moved away from the snapshot it resumed from.
    assert not torch.equal(
        actual["G"].state_dict()["mapping.fc0.weight"], resume_from["G"].state_dict()["mapping.fc0.weight"]
    )

    # A pickle without resume_state (e.g. the reference's) gives only its weights: the run starts at kimg 0.
    foreign = {key: value for key, value in resume_from.items() if key != "resume_state"}
    foreign_path = tmp_path / "foreign.pkl"
    with open(foreign_path, "wb") as f:
        pickle.dump(foreign, f)
    transfer = run_to_end(tmp_path / "d", data16, f"--resume={foreign_path}", "--kimg=0.004")
    with open(os.path.join(transfer, "log.txt")) as f:
        log = f.read()
    assert f'Resuming from "{foreign_path}"' in log and "Continuing the earlier run" not in log
    assert [line.split()[1] for line in log.splitlines() if line.startswith("tick ")] == ["0"]
    with open(os.path.join(transfer, "training_options.json")) as f:
        options = json.load(f)
    assert (options["ada_kimg"], options["ema_rampup"]) == (100, None)
    assert load_snapshot(os.path.join(transfer, snapshot_name(4)))["resume_state"]["cur_nimg"] == 4


def test_changed_structure_falls_back_and_fixed_p_is_kept(tmp_path, data16):
    # Any positive --kimg trains at least one iteration (0.0001 kimg rounds to 0 images).
    first = run_to_end(tmp_path / "a", data16, "--kimg=0.0001")
    snapshot_path = os.path.join(first, snapshot_name(4))
    snapshot = load_snapshot(snapshot_path)
    assert snapshot["resume_state"]["cur_nimg"] == 4

    # Frozen D layers change D's parameters, which its optimiser state no longer fits: weights only, from kimg 0.
    result = subprocess.run(
        train_command(tmp_path / "b", data16, f"--resume={snapshot_path}", "--freezed=1", "--kimg=0.004"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # (train.py's Logger sends stderr to stdout and log.txt.)
    assert "cannot continue the earlier run exactly (these options differ from the snapshot's run: D_kwargs)" in (
        result.stdout
    )
    assert "Continuing the earlier run" not in result.stdout

    # An exact continuation under a fixed augmentation strength uses the --p given, not the snapshot's ADA p.
    assert float(snapshot["augment_pipe"].p) != 0.25
    fixed = run_to_end(tmp_path / "c", data16, f"--resume={snapshot_path}", "--aug=fixed", "--p=0.25", "--kimg=0.008")
    with open(os.path.join(fixed, "log.txt")) as f:
        assert "Continuing the earlier run at kimg 0.004, tick 1." in f.read()
    assert float(load_snapshot(os.path.join(fixed, snapshot_name(8)))["augment_pipe"].p) == 0.25


def test_resume_latest_continues_a_killed_run_exactly(tmp_path, data16):
    """The same command in a pre-empted cluster job: `--resume=latest` first starts a new run (no snapshot yet), and
    after the job is killed, continues the newest snapshot; the result is the uninterrupted run's, bit for bit.

    The killed run is the uninterrupted run's files up to the end of tick 1 (what test_resume_after_sigkill shows a
    SIGKILL early in tick 2 leaves), plus the torn temporary file of a snapshot being written when the kill came."""
    latest = ("--resume=latest",)
    uninterrupted = run_to_end(tmp_path / "a", data16, *latest)
    run_name = os.path.basename(uninterrupted)
    assert run_name == "00000-data16-auto1-kimg0.052-batch4-ada"  # A new run is named as one without --resume.
    assert masked_log(uninterrupted) == EXPECTED_LOG

    killed = tmp_path / "b" / run_name
    os.makedirs(killed)
    written = ["training_options.json", "reals.png", "fakes_init.png", "fakes000000.004.png", "fakes000000.020.png"]
    for name in [*written, snapshot_name(4), snapshot_name(20)]:
        with open(os.path.join(uninterrupted, name), "rb") as src, open(killed / name, "wb") as dst:
            dst.write(src.read())
    with open(os.path.join(uninterrupted, snapshot_name(36)), "rb") as src:
        (killed / f"{snapshot_name(36)}.k1ll3d.tmp").write_bytes(src.read()[:1000])

    result = subprocess.run(
        train_command(tmp_path / "b", data16, *latest), cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"--resume=latest: continuing from {killed / snapshot_name(20)}" in result.stdout.splitlines()
    assert f"--resume=latest: passing over {killed / snapshot_name(36)}.k1ll3d.tmp" in result.stdout
    continued = tmp_path / "b" / "00001-data16-auto1-kimg0.052-batch4-ada-resumecustom"
    with open(continued / "log.txt") as f:
        assert "Continuing the earlier run at kimg 0.02, tick 2." in f.read()
    assert_same_files(
        str(continued),
        uninterrupted,
        ["fakes000000.036.png", "fakes000000.052.png", snapshot_name(36), snapshot_name(52)],
    )
