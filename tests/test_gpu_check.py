"""bench/gpu_check.sh: the --smoke run end to end on the CPU (summary, files, exit status), a step that overruns its
budget while the others go on, usage errors, and the checks the steps apply (losses, weights, kernels, pytest)."""

import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import torch
from conftest import REPO_ROOT

from bench import gpu_check

SMOKE_TIMEOUT_S = 600  # Far above the few minutes a smoke run takes, so a hang fails instead of blocking the suite.
STATUSES_WITHOUT_CUDA = {
    "environment": "ok",
    "plugin_build": "skipped (no CUDA)",
    "plugin_tests": "skipped (no CUDA)",
    "train": "ok",
    "ops": "ok",
    "train_speed": "ok",
}


def run_check(*args: str, timeout: float = SMOKE_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)  # The interpreter running the tests, not the first on PATH.
    return subprocess.run(
        ["bash", "bench/gpu_check.sh", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def summary_rows(stdout: str) -> dict:
    """{step: (status, key)} from the summary table printed last."""
    lines = stdout.splitlines()
    header = max(i for i, line in enumerate(lines) if line.split()[:4] == ["step", "status", "seconds", "key"])
    assert set(lines[header + 1].replace(" ", "")) == {"-"}
    rows = {}
    for line in lines[header + 2 : -1]:
        name, rest = line.split(maxsplit=1)
        status = "skipped (no CUDA)" if rest.startswith("skipped (no CUDA)") else rest.split()[0]
        seconds, key = rest[len(status) :].split(maxsplit=1)
        assert float(seconds) >= 0
        rows[name] = (status, key)
    return rows


@pytest.mark.slow
def test_smoke_run_passes_and_writes_everything(tmp_path):
    outdir = tmp_path / "check"
    result = run_check("--smoke", str(outdir))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = summary_rows(result.stdout)
    assert {name: status for name, (status, _key) in rows.items()} == STATUSES_WITHOUT_CUDA
    assert result.stdout.splitlines()[-1].startswith("all 6 steps passed")
    assert "skipped" in rows["plugin_tests"][1]  # pytest's own summary line
    assert "tensors finite" in rows["train"][1]
    assert "paper256@32" in rows["train_speed"][1] and "stylegan2@32" in rows["train_speed"][1]
    # The tables were printed before the summary.
    assert "G.conv0.filter@32" in result.stdout and "sec/kimg" in result.stdout

    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["mode"] == "smoke" and summary["passed"] is True
    assert [step["name"] for step in summary["steps"]] == list(STATUSES_WITHOUT_CUDA)
    assert (outdir / "summary.txt").read_text().splitlines()[0].split() == ["step", "status", "seconds", "key"]
    assert "all 6 steps passed" in (outdir / "gpu_check.log").read_text()

    env = json.loads((outdir / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["cuda_available"] is False
    assert env["packages"]["torch"] and env["packages"]["numpy"] and env["python"]
    assert env["environment_variables"]["TORCH_EXTENSIONS_DIR"].startswith(str(outdir))

    for step in ["environment", "plugin_tests", "train", "ops", "train_speed"]:
        assert (outdir / step / "log.txt").stat().st_size > 0
        assert json.loads((outdir / step / "result.json").read_text())["status"] == STATUSES_WITHOUT_CUDA[step]
    assert not (outdir / "plugin_build").exists()  # Not started at all without CUDA.
    assert gpu_check.junit_counts(str(outdir / "plugin_tests" / "junit.xml"))["skipped"] > 0

    (run_dir,) = (outdir / "train" / "runs").iterdir()
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 2 and all(math.isfinite(stats[-1][name]["mean"]) for name in gpu_check.REQUIRED_LOSSES)
    assert not list(run_dir.glob("*.pkl"))  # Checked, then removed.
    train = json.loads((outdir / "train" / "result.json").read_text())["details"]
    assert train["tensors_checked"] > 100 and train["nonfinite"] == []

    ops = json.loads((outdir / "ops" / "ops_float32.json").read_text())
    assert ops["tables"][0]["impls"] == ["ref", "plain"] and len(ops["tables"][0]["rows"]) == 10
    assert "G.conv0.filter@32" in (outdir / "ops" / "ops_float32.txt").read_text()
    speed = json.loads((outdir / "train_speed" / "train_speed.json").read_text())
    assert [(row["cfg"], row["res"]) for row in speed["rows"]] == [("paper256", 32), ("stylegan2", 32)]
    assert all(row["sec_per_kimg"] > 0 and row["gen_img_per_sec"] > 0 for row in speed["rows"])
    assert "stylegan2" in (outdir / "train_speed" / "train_speed.txt").read_text()

    with tarfile.open(outdir / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"gpu_check/summary.json", "gpu_check/environment.json", "gpu_check/train_speed/train_speed.json"} <= names
    assert not any(name.endswith((".png", ".zip", ".pkl")) for name in names)


def test_overrun_step_fails_and_the_others_still_run(tmp_path):
    outdir = tmp_path / "check"
    result = run_check("--smoke", "--only=ops", "--budget=environment=0.5", str(outdir), timeout=300)
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-4000:]
    rows = summary_rows(result.stdout)
    assert list(rows) == ["environment", "ops"]
    assert rows["environment"] == ("FAILED", "timed out after its budget of 0.5 s (see --budget)")
    assert rows["ops"][0] == "ok"
    assert result.stdout.splitlines()[-1].startswith("1 of 2 steps FAILED (environment)")
    assert "last lines of environment/log.txt:" in result.stdout
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["passed"] is False


def _processes_mentioning(text: str) -> list[int]:
    """Ids of the live processes whose command line contains `text` (Linux /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="looks for leftover processes in /proc")
def test_sigterm_stops_the_running_step_and_writes_the_summary(tmp_path):
    outdir = tmp_path / "check"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.Popen(
        ["bash", "bench/gpu_check.sh", "--smoke", "--only=train", str(outdir)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    train_log = outdir / "train" / "log.txt"
    deadline = time.monotonic() + 120
    while not (train_log.exists() and "train.py" in train_log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    stdout = proc.communicate(timeout=60)[0]
    assert proc.returncode == 1, stdout
    assert stdout.splitlines()[-1].startswith("interrupted after")
    rows = summary_rows(stdout)
    assert rows["environment"][0] == "ok" and rows["train"] == ("FAILED", "interrupted")
    assert json.loads((outdir / "summary.json").read_text())["steps"][-1]["key"] == "interrupted"
    assert (outdir / "results.tar.gz").exists()
    assert _processes_mentioning(str(outdir)) == []


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--smoke", "--only=trian", "OUT"], "--only: expected names from"),
        (["--smoke", "--budget=train", "OUT"], "--budget: expected STEP=SECONDS"),
        (["--smoke", "--budget=train=-3", "OUT"], "--budget train: expected a positive number"),
        (["--smoke", "--budget=train=soon", "OUT"], "--budget train: expected a number of seconds"),
    ],
)
def test_bad_options_give_one_line(tmp_path, args, expected):
    args = [str(tmp_path / "out") if arg == "OUT" else arg for arg in args]
    result = run_check(*args, timeout=60)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_refuses_a_used_output_folder(tmp_path):
    (tmp_path / "old.txt").write_text("earlier results")
    result = run_check("--smoke", str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: OUTDIR {tmp_path}: expected a new or empty folder (every check builds afresh), found files in it"
    ]
    assert sorted(os.listdir(tmp_path)) == ["old.txt"]


def test_gpu_budgets_fit_in_eight_minutes():
    assert sum(step.gpu_budget_s for step in gpu_check.STEPS) + len(gpu_check.STEPS) * gpu_check.KILL_GRACE_S <= 8 * 60


# ----------------------------------------------------------------------------------------------------------------------
# The checks inside the steps.


def _write_stats(path, ticks):
    path.write_text("".join(json.dumps(tick) + "\n" for tick in ticks))


def _loss(mean, std=0.0):
    return {"num": 4, "mean": mean, "std": std}


def test_loss_check_flags_nonfinite_and_missing_losses(tmp_path):
    complete = {name: _loss(0.5) for name in gpu_check.REQUIRED_LOSSES}
    _write_stats(tmp_path / "good.jsonl", [complete, dict(complete, **{"Timing/total_sec": _loss(math.inf)})])
    problems, info = gpu_check.loss_problems(str(tmp_path / "good.jsonl"))
    assert problems == [] and info["ticks"] == 2 and info["last_tick_loss_means"]["Loss/G/loss"] == 0.5

    bad = dict(complete, **{"Loss/G/loss": _loss(math.nan), "Loss/scores/real": _loss(0.1, math.inf)})
    del bad["Loss/D/reg"]
    _write_stats(tmp_path / "bad.jsonl", [bad])
    problems, _ = gpu_check.loss_problems(str(tmp_path / "bad.jsonl"))
    assert problems == [
        "tick 0: Loss/G/loss mean is nan",
        "tick 0: Loss/scores/real std is inf",
        "Loss/D/reg was never reported",
    ]
    (tmp_path / "empty.jsonl").write_text("")
    assert gpu_check.loss_problems(str(tmp_path / "empty.jsonl"))[0] == [
        f"{tmp_path / 'empty.jsonl'} holds no statistics"
    ]


def test_weight_check_names_every_nonfinite_tensor():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    assert gpu_check.nonfinite_tensors({"G": net, "augment_pipe": None}) == ([], 6)  # 4 params, 2 float buffers
    with torch.no_grad():
        net[0].bias[1] = math.nan
    net[1].running_var[0] = -math.inf
    bad, count = gpu_check.nonfinite_tensors({"D": net})
    assert bad == ["D.0.bias", "D.1.running_var"] and count == 6


def test_ops_verdict_checks_the_kernels_against_ref():
    rows = [
        {"name": "a", "ref.fwd": 2.0, "cuda.fwd": 1.0, "plain.fwd": 4.0, "diff.cuda": 1e-7, "diff.plain": 0.5},
        {"name": "b", "ref.fwd": 8.0, "cuda.fwd": 1.0, "plain.fwd": 4.0, "diff.cuda": 2e-3, "diff.plain": 0.0},
    ]
    report = {"tables": [{"rows": rows}]}
    problems, key = gpu_check.ops_verdict(report, "float32")
    assert problems == ["b (float32): cuda differs from ref by 2.0e-03"]
    assert key == "float32: cuda 4.00x, plain 1.00x ref"
    assert gpu_check.ops_verdict(report, "float16")[0] == []  # fp16 allows more; the plain path is never judged
    rows[0]["diff.cuda"] = math.nan
    assert gpu_check.ops_verdict(report, "float16")[0] == ["a (float16): cuda differs from ref by nan"]


def test_pytest_summary_and_junit_counts(tmp_path):
    lines = ["....s", "SKIPPED [1] tests/x.py:3: needs a CUDA device", "12 passed, 1 skipped in 3.21s", ""]
    assert gpu_check.pytest_summary(lines) == "12 passed, 1 skipped in 3.21s"
    assert gpu_check.pytest_summary(["===== 3 failed, 2 passed in 0.50s ====="]) == "3 failed, 2 passed in 0.50s"
    assert gpu_check.pytest_summary(["no tests ran"]) is None
    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/></testsuites>'
    )
    counts = gpu_check.junit_counts(str(tmp_path / "junit.xml"))
    assert counts == {"tests": 5, "failures": 1, "errors": 0, "skipped": 2, "passed": 2}
    assert gpu_check.junit_counts(str(tmp_path / "missing.xml")) is None


def test_gpu_check_script_syntax():
    result = subprocess.run(["bash", "-n", os.path.join(REPO_ROOT, "bench", "gpu_check.sh")], capture_output=True)
    assert result.returncode == 0, result.stderr
