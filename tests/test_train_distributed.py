"""Several processes on the CPU (gloo): the manual gradient all-reduce, a whole `train.py --gpus=2` run whose
snapshots pass the cross-rank consistency check, and its exact continuation from a snapshot."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import torch
from conftest import REPO_ROOT

from training import training_loop

WORLD_SIZE = 2
SNAPSHOT_4, SNAPSHOT_8 = "network-snapshot-000000.004.pkl", "network-snapshot-000000.008.pkl"  # ticks < 1 kimg


def per_rank_gradients(rank: int) -> list[torch.Tensor | None]:
    """The gradients rank `rank` holds before the all-reduce: distinct values per rank, some non-finite, one None."""
    gen = torch.Generator().manual_seed(100 + rank)
    first = torch.randn([3, 4], generator=gen)
    second = torch.randn([5], generator=gen)
    if rank == 1:
        second[0] = float("nan")  # The mean is NaN too, and becomes 0.
        second[1] = float("inf")  # inf + finite = inf -> 1e5.
        second[2] = -float("inf")  # -> -1e5.
    return [first, None, second]


def expected_gradients() -> list[torch.Tensor | None]:
    grads = [per_rank_gradients(rank) for rank in range(WORLD_SIZE)]
    result = []
    for parts in zip(*grads, strict=True):
        if parts[0] is None:
            result.append(None)
            continue
        mean = torch.stack(parts).sum(dim=0) / WORLD_SIZE
        result.append(torch.nan_to_num(mean, nan=0.0, posinf=1e5, neginf=-1e5))
    return result


def sync_worker(rank: int, init_file: str, out_dir: str):
    torch.distributed.init_process_group(
        backend="gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        params = []
        for grad in per_rank_gradients(rank):
            param = torch.nn.Parameter(torch.zeros([3, 4] if grad is None else grad.shape))
            param.grad = None if grad is None else grad.clone()
            params.append(param)
        training_loop.sync_gradients(params, num_gpus=WORLD_SIZE)
        torch.save([param.grad for param in params], os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_sync_gradients_averages_over_processes(tmp_path):
    torch.multiprocessing.spawn(sync_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    expected = expected_gradients()
    for rank in range(WORLD_SIZE):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result[1] is None
        for actual, wanted in [(result[0], expected[0]), (result[2], expected[2])]:
            assert torch.equal(actual, wanted), (rank, actual, wanted)
    assert expected[2][0] == 0 and expected[2][1] == 1e5 and expected[2][2] == -1e5


def test_sync_gradients_single_process_only_cleans():
    param = torch.nn.Parameter(torch.zeros([3]))
    param.grad = torch.tensor([1.5, float("nan"), -float("inf")])
    training_loop.sync_gradients([param, torch.nn.Parameter(torch.zeros([2]))], num_gpus=1)
    assert param.grad.tolist() == [1.5, 0.0, -1e5]


def run_two_processes(outdir, data, *extra) -> str:
    """A tiny `train.py --gpus=2` run on the CPU; returns its run directory."""
    result = subprocess.run(
        [sys.executable, "train.py", f"--outdir={outdir}", f"--data={data}", "--gpus=2", "--cbase=256", "--cmax=32",
         "--map=2", "--batch=4", "--workers=1", "--metrics=none", "--fp32=1", "--tick=0.004", "--snap=1", *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_name,) = os.listdir(outdir)
    return os.path.join(outdir, run_name)


def test_train_two_processes_on_cpu(tmp_path):
    data = tmp_path / "data16"
    os.makedirs(data)
    rng = np.random.default_rng(0)
    for idx in range(16):
        pixels = rng.integers(0, 256, size=[16, 16, 3], dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(data / f"img{idx:03d}.png")
    outdir = tmp_path / "runs"
    # Two iterations of 4 images (2 per process), a snapshot with the consistency check after each.
    run_name = os.path.basename(run_two_processes(outdir, data, "--kimg=0.008"))
    assert run_name == "00000-data16-auto2-kimg0.008-batch4"
    run_dir = outdir / run_name
    with open(run_dir / "training_options.json") as f:
        options = json.load(f)
    assert (options["num_gpus"], options["batch_size"], options["batch_gpu"]) == (2, 4, 2)
    log = (run_dir / "log.txt").read_text()
    assert "Distributing across 2 " in log and log.count("Exiting...") == 1
    assert [line.split()[1] for line in log.splitlines() if line.startswith("tick ")] == ["0", "1"]
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    # The losses of both processes are merged: 4 fake scores per iteration from 2 x 2 samples.
    assert [entry["Loss/G/loss"]["num"] for entry in stats] == [4, 4]
    assert [entry["Progress/tick"]["num"] for entry in stats] == [1, 1]  # report0: only rank 0 contributes.
    assert (run_dir / SNAPSHOT_4).is_file()
    with open(run_dir / SNAPSHOT_8, "rb") as f:
        snapshot = pickle.load(f)
    state = snapshot["resume_state"]
    assert (state["cur_nimg"], state["batch_idx"], len(state["rng"]), len(state["pl_mean"])) == (8, 2, 2, 2)
    # Each rank draws its own random numbers (seed = random_seed * num_gpus + rank).
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])

    # The first iteration alone, then resumed for the second: the same weights, bit for bit, on both ranks.
    first_part = run_two_processes(tmp_path / "first", data, "--kimg=0.004")
    continued = run_two_processes(
        tmp_path / "continued", data, "--kimg=0.008", f"--resume={os.path.join(first_part, SNAPSHOT_4)}"
    )
    with open(os.path.join(continued, "log.txt")) as f:
        log = f.read()
    assert "Continuing the earlier run at kimg 0.004, tick 1." in log
    with open(os.path.join(continued, SNAPSHOT_8), "rb") as f:
        resumed = pickle.load(f)
    for key in ["G", "D", "G_ema"]:
        expected, actual = snapshot[key].state_dict(), resumed[key].state_dict()
        assert all(torch.equal(actual[name], expected[name]) for name in expected), key
    assert resumed["resume_state"]["pl_mean"] == state["pl_mean"]
