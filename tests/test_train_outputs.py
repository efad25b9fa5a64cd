"""train.py end to end on tiny CPU runs: a full disk while writing a snapshot, an image grid or stats.jsonl ends with
one `Error:` line naming the file and leaves the earlier snapshots loadable (issue 12); RGBA data trains and its
grids are RGBA PNGs, and a snapshot records the dataset's class names (issue 14)."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
from conftest import REPO_ROOT
from test_train import TINY_OPTIONS, write_image_folder

from training.dataset import ImageFolderDataset

# Runs train.py with os.fsync (every atomic write: snapshots, PNGs) failing for files whose name starts with
# argv[1], and stats.jsonl's second flush failing when argv[1] is stats.jsonl: a disk that fills up mid-run.
FULL_DISK = """
import errno, os, runpy, sys
target = sys.argv.pop(1)
real_fsync = os.fsync

def fsync(fd):
    if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_fsync(fd)

class FillingFile:
    def __init__(self, f):
        self.f, self.flushes = f, 0
    def write(self, text):
        return self.f.write(text)
    def flush(self):
        self.flushes += 1
        if self.flushes == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.f.flush()
    def close(self):
        self.f.close()

import training.reporting as reporting
reporting.open = lambda path, *args: (FillingFile if path.endswith(target) else lambda f: f)(open(path, *args))
os.fsync = fsync
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "data16", count=16, resolution=16)


@pytest.mark.parametrize("target", ["reals.png", "network-snapshot-000000.008.pkl", "stats.jsonl"])
def test_a_full_disk_is_one_error_line_and_earlier_snapshots_stay(tmp_path, data16, target):
    # Ticks of one iteration: tick 0 writes fakes/snapshot/stats for kimg 0.004, tick 1 for kimg 0.008.
    outdir = tmp_path / "runs"
    command = [sys.executable, "-c", FULL_DISK, target, f"--outdir={outdir}", f"--data={data16}"]
    command += ["--kimg=0.008", "--tick=0.004", "--snap=1", *TINY_OPTIONS]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    (run_name,) = os.listdir(outdir)
    run_dir = outdir / run_name
    assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert output.splitlines()[-1] == (
        f"Error: cannot write {run_dir / target}: No space left on device; training stopped (the files written "
        "before are intact)"
    )
    assert not [name for name in os.listdir(run_dir) if name.endswith(".tmp")]
    if target != "reals.png":
        with open(run_dir / "network-snapshot-000000.004.pkl", "rb") as f:
            assert pickle.load(f)["resume_state"]["cur_nimg"] == 4


def write_rgba_folder(path, count: int, resolution: int) -> str:
    """RGBA noise whose alpha differs per image, labelled 0/1 with class names in dataset.json."""
    rng = np.random.default_rng(1)
    os.makedirs(path)
    for idx in range(count):
        pixels = rng.integers(0, 256, size=[resolution, resolution, 4], dtype=np.uint8)
        pixels[..., 3] = idx * 255 // (count - 1)
        PIL.Image.fromarray(pixels, mode="RGBA").save(os.path.join(path, f"img{idx:03d}.png"))
    labels = [[f"img{idx:03d}.png", idx % 2] for idx in range(count)]
    with open(os.path.join(path, "dataset.json"), "w") as f:
        json.dump({"labels": labels, "class_names": ["cat", "dog"]}, f)
    return str(path)


def test_rgba_data_trains_with_rgba_grids_and_class_names(tmp_path):
    data = write_rgba_folder(tmp_path / "rgba", count=8, resolution=16)
    outdir = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "train.py", f"--outdir={outdir}", f"--data={data}", "--cond=1", "--aug=noaug",
         "--kimg=0.004", "--snap=1", *TINY_OPTIONS],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_name,) = os.listdir(outdir)
    run_dir = outdir / run_name
    with open(run_dir / "log.txt") as f:
        assert "Image shape: [4, 16, 16]" in f.read()
    for name in ["reals.png", "fakes_init.png", "fakes000000.png"]:
        with PIL.Image.open(run_dir / name) as image:
            assert (image.size, image.mode) == ((512, 512), "RGBA"), name
            if name == "reals.png":
                assert len(np.unique(np.asarray(image)[..., 3])) == 8  # Each image's own alpha.
    with open(run_dir / "network-snapshot-000000.pkl", "rb") as f:
        snapshot = pickle.load(f)
    assert snapshot["G_ema"].img_channels == 4 and snapshot["D"].img_channels == 4
    assert snapshot["training_set_kwargs"]["use_labels"] is True
    # The names the dataset reader gives (training.dataset reads "class_names" from dataset.json).
    class_names = getattr(ImageFolderDataset(path=data, use_labels=True), "class_names", None)
    assert snapshot.get("class_names") == (None if class_names is None else list(class_names))
