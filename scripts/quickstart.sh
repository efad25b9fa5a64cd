#!/usr/bin/env bash
# Quick start: install, build a tiny synthetic dataset, train on it, generate images and check that they resemble
# the data. About five minutes on a quiet 2-core CPU (KIMG=... bash scripts/quickstart.sh trains longer or shorter).
# Everything goes to ./quickstart/ (delete it to start over). A CUDA GPU is used when present.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=quickstart
KIMG=${KIMG:-10}

python -m pip install --quiet --disable-pip-version-check "torch>=2.1" -r requirements.txt

rm -rf "$OUT"
mkdir -p "$OUT"
# 64 procedural 32x32 RGB images (coloured discs on gradients): stands in for a real dataset.
python - "$OUT/toy-images" <<'PY'
import os, sys
import numpy as np
import PIL.Image
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rnd = np.random.RandomState(123)
yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
for i in range(64):
    base = rnd.uniform(0, 255, size=3) * (xx[..., None] / 31) + rnd.uniform(0, 255, size=3) * (1 - xx[..., None] / 31)
    cx, cy, r = rnd.uniform(8, 24), rnd.uniform(8, 24), rnd.uniform(4, 10)
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None]
    img = np.where(disc, rnd.uniform(0, 255, size=3), base)
    PIL.Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB").save(os.path.join(out, f"img{i:04d}.png"))
PY

python dataset_tool.py --source="$OUT/toy-images" --dest="$OUT/toy32.zip"
# The cifar preset (no style mixing, no path-length regularisation: cheaper iterations that learn faster than
# 'auto' at this size) with tiny networks, a stronger R1 penalty than its 0.01 (steadier at batch 8: with 0.01 the
# images were noisier after 15 kimg than after 10), no augmentation (64 images, a few kimg: D cannot overfit yet),
# and the CPU fast path (float32 ops within 1e-5 of the reference; nothing changes on a GPU).
python train.py --outdir="$OUT/runs" --data="$OUT/toy32.zip" --cfg=cifar --cbase=1024 --cmax=64 --map=2 \
    --batch=8 --gamma=0.1 --aug=noaug --kimg="$KIMG" --tick=1 --snap=5 --workers=1 --cpu-fast=1
RUN=$(ls -1d "$OUT"/runs/*/ | sort | tail -n 1)
SNAPSHOT=$(ls -1 "$RUN"network-snapshot-*.pkl | sort | tail -n 1)
FAKES=$(ls -1 "$RUN"fakes[0-9]*.png | sort | tail -n 1)
STYLEGAN_CPU_FAST=1 python generate.py --network="$SNAPSHOT" --seeds=0-7 --outdir="$OUT/generated"

# How close are the generated images to the training images? Three simple statistics (64 images each): the
# fraction of pixels within 0.05 of their column's median (the toy backgrounds change along x only, so the reals
# score high and noise scores near 0), the mean RMS distance from each image to its nearest training image, and a
# Frechet distance between Gaussians fitted to 4x4-pixel RGB thumbnails (reals: one half against the other).
python - "$OUT/toy-images" "$RUN"fakes_init.png "$FAKES" <<'PY'
import glob, os, sys
import numpy as np
import PIL.Image

def grid_tiles(path, size=32, count=64):
    a = np.asarray(PIL.Image.open(path).convert("RGB"), dtype=np.float64) / 255
    rows, cols = a.shape[0] // size, a.shape[1] // size
    a = a[: rows * size, : cols * size].reshape(rows, size, cols, size, 3).transpose(0, 2, 1, 3, 4)
    return a.reshape(-1, size, size, 3)[:count]

def column_constant(x):
    return float((np.abs(x - np.median(x, axis=1, keepdims=True)).max(axis=-1) < 0.05).mean())

def nearest_rms(x, reals, skip_self=False):
    d = np.sqrt(((x[:, None] - reals[None]) ** 2).mean(axis=(2, 3, 4)))
    if skip_self:
        np.fill_diagonal(d, np.inf)
    return float(d.min(axis=1).mean())

def frechet(a, b):
    fa, fb = (t.reshape(len(t), 4, 8, 4, 8, 3).mean(axis=(2, 4)).reshape(len(t), -1) for t in (a, b))
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    root = np.sqrt(np.clip(np.linalg.eigvals(ca @ cb).real, 0, None)).sum()
    return float(((fa.mean(0) - fb.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * root)

files = sorted(glob.glob(os.path.join(sys.argv[1], "*.png")))
reals = np.stack([np.asarray(PIL.Image.open(f).convert("RGB"), dtype=np.float64) / 255 for f in files])
rows = [("training images", column_constant(reals), nearest_rms(reals, reals, True), frechet(reals[:32], reals[32:]))]
for path in sys.argv[2:]:
    x = grid_tiles(path)
    rows.append((os.path.basename(path), column_constant(x), nearest_rms(x, reals), frechet(x, reals)))
print()
print(f"{'images':22}  {'column-constant pixels':>22}  {'nearest-real RMS':>16}  {'Frechet (thumbnails)':>20}")
for name, constant, rms, fd in rows:
    print(f"{name:22}  {constant:22.3f}  {rms:16.3f}  {fd:20.3f}")
PY
echo
echo "Quick start done. Look at, side by side:"
echo "  ${RUN}reals.png         the training images"
echo "  ${RUN}fakes_init.png    the generator before training"
echo "  ${FAKES}    the generator after $KIMG kimg"
echo "  $OUT/generated/               eight images from the last snapshot ($SNAPSHOT)"
