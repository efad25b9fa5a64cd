#!/usr/bin/env bash
# Quick start: install, build a tiny synthetic dataset, train a few ticks, generate images. Minutes on a CPU.
# Everything goes to ./quickstart/ (delete it to start over). A CUDA GPU is used when present.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=quickstart

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
python train.py --outdir="$OUT/runs" --data="$OUT/toy32.zip" --cfg=auto --cbase=1024 --cmax=64 --map=2 \
    --batch=8 --kimg=1 --tick=0.25 --snap=2 --workers=1
SNAPSHOT=$(ls -1 "$OUT"/runs/*/network-snapshot-*.pkl | sort | tail -n 1)
python generate.py --network="$SNAPSHOT" --seeds=0-7 --outdir="$OUT/generated"
echo
echo "Quick start done: training run in $(dirname "$SNAPSHOT"), generated images in $OUT/generated/"
