"""Training speed: sec/kimg, peak GPU memory and generator inference images/s for given configs, on synthetic data.

The networks, optimisers, loss, phases, augmentation and data loading are those of a real `train.py` run with the
same options (the options are built by train.py itself); only the images are synthetic, so no dataset is needed.
Nothing is written to disk except the optional --json file. One table row per (cfg, resolution) pair: every
--cfg at every --res, or exactly the pairs of --runs:

    python bench/train_speed.py --cfg=auto,stylegan2 --res=256,1024 --iters=20
    python bench/train_speed.py --runs=paper256@256,stylegan2@1024 --iters=16 --warmup=1 --json=speed.json
    python bench/train_speed.py --res=16 --cbase=256 --cmax=32 --map=2 --batch=4 --iters=2 --warmup=1   # CPU smoke
"""

import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time

import click
import numpy as np
import PIL.Image
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import dnnlib  # noqa: E402
from dnnlib.atomic import atomic_write_bytes  # noqa: E402
from torch_utils import training_stats  # noqa: E402
from training import config, training_loop  # noqa: E402
from training.dataset import Dataset  # noqa: E402

SYNTHETIC_POOL = 16  # Distinct random images; item i shows image i mod SYNTHETIC_POOL.


class SyntheticDataset(Dataset):
    """`num_images` random RGB images (uint8 [C, H, W]) of one resolution, without labels, held in memory."""

    def __init__(self, resolution: int, num_images: int = 1024, num_channels: int = 3, seed: int = 0, **base_kwargs):
        rng = np.random.default_rng(seed)
        pool_size = min(SYNTHETIC_POOL, num_images)
        self._pool = rng.integers(0, 256, size=[pool_size, num_channels, resolution, resolution], dtype=np.uint8)
        base_kwargs.setdefault("name", "synthetic")
        super().__init__(raw_shape=[num_images, num_channels, resolution, resolution], **base_kwargs)

    def _load_raw_image(self, raw_idx):
        return self._pool[raw_idx % len(self._pool)]

    def _load_raw_labels(self):
        return None


class _BenchRun(training_loop.TrainingRun):
    """A training run without its files: no image grids, statistics files or snapshots."""

    def _setup_grid(self):
        self.grid_shape = self.grid_z = self.grid_c = None

    def _setup_logs(self):
        self.stats = training_stats.Collector(regex=".*")
        self.stats_jsonl = None
        self.tensorboard = None


def _synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_options(cfg: str, res: int, device: torch.device, workers: int, **overrides) -> dnnlib.EasyDict:
    """train.py's options for `cfg` at resolution `res` (probing a one-image folder), with synthetic data."""
    with tempfile.TemporaryDirectory() as probe_dir:
        PIL.Image.fromarray(np.zeros([res, res, 3], dtype=np.uint8)).save(os.path.join(probe_dir, "probe.png"))
        _desc, args = config.setup_training_loop_kwargs(
            data=probe_dir, cfg=cfg, metrics=[], workers=workers, **overrides
        )
    args.training_set_kwargs = dnnlib.EasyDict(
        class_name="bench.train_speed.SyntheticDataset", resolution=res, num_images=1024
    )
    args.data_loader_kwargs.pin_memory = device.type == "cuda"
    args.run_dir = "."
    args.device = device
    return training_loop.make_options(rank=0, **args)


def measure(options: dnnlib.EasyDict, iters: int, warmup: int, gen_batch: int, gen_iters: int) -> dict:
    """Time `iters` training iterations after `warmup` ones, then G_ema inference; returns the table fields."""
    device = options.device
    run = _BenchRun(options)
    with contextlib.redirect_stdout(io.StringIO()):
        run.setup()
    for _ in range(warmup):
        run.iteration()
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        run.iteration()
    _synchronize(device)
    train_sec = time.perf_counter() - start
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    z = torch.randn([gen_batch, run.G_ema.z_dim], device=device)
    c = torch.zeros([gen_batch, run.G_ema.c_dim], device=device)
    with torch.no_grad():
        run.G_ema(z, c, noise_mode="const")  # Warm-up (kernel selection, plugin loading).
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(gen_iters):
            run.G_ema(z, c, noise_mode="const")
        _synchronize(device)
    gen_sec = time.perf_counter() - start

    images = iters * options.batch_size
    result = dict(
        sec_per_kimg=train_sec / images * 1e3,
        train_img_per_sec=images / train_sec,
        peak_gb=peak_gb,
        gen_img_per_sec=gen_batch * gen_iters / gen_sec,
    )
    del run
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _format_table(rows: list[dict]) -> str:
    columns = [
        ("cfg", "cfg", "{}"),
        ("res", "res", "{}"),
        ("batch", "batch", "{}"),
        ("batch_gpu", "batch/gpu", "{}"),
        ("precision", "precision", "{}"),
        ("sec_per_kimg", "sec/kimg", "{:.2f}"),
        ("train_img_per_sec", "train img/s", "{:.1f}"),
        ("peak_gb", "peak GPU GiB", "{:.2f}"),
        ("gen_img_per_sec", "G img/s", "{:.1f}"),
    ]
    cells = [[title for _key, title, _fmt in columns]]
    for row in rows:
        cells.append(["-" if row[key] is None else fmt.format(row[key]) for key, _title, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError as err:
        raise click.BadParameter(f"expected comma-separated integers, found {text!r}") from err


def _run_pairs(cfgs: str, resolutions: str, runs: str | None) -> list[tuple[str, int]]:
    """The (cfg, resolution) pairs to measure: those of `runs` ("cfg@res,..."), else every cfg at every res."""
    if runs is None:
        return [(cfg, res) for cfg in cfgs.split(",") if cfg for res in _int_list(resolutions)]
    pairs = []
    for item in runs.split(","):
        cfg, sep, res = item.partition("@")
        if not sep or not cfg or not res.isdigit():
            expected = f"expected cfg@res items such as paper256@256, found {item!r}"
            raise click.BadParameter(expected, param_hint="--runs")
        pairs.append((cfg, int(res)))
    return pairs


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def _write_json(path: str, device: torch.device, settings: dict, rows: list[dict]) -> None:
    report = dict(
        device=_device_description(device),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        settings=settings,
        rows=rows,
    )
    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())


@click.command()
@click.option("--cfg", "cfgs", help="Base configs, comma-separated [default: auto]", default="auto", metavar="LIST")
@click.option("--res", "resolutions", help="Resolutions, comma-separated [default: 256]", default="256", metavar="LIST")
@click.option("--runs", help="Exact cfg@res pairs, comma-separated (instead of --cfg x --res)", metavar="LIST")
@click.option("--batch", help="Override total batch [default: from --cfg]", type=int, metavar="INT")
@click.option("--batch-gpu", help="Override samples per round [default: from --cfg]", type=int, metavar="INT")
@click.option("--cbase", help="Override channel base [default: from --cfg]", type=int, metavar="INT")
@click.option("--cmax", help="Override max channels [default: 512]", type=int, metavar="INT")
@click.option("--map", help="Override mapping depth [default: from --cfg]", type=int, metavar="INT")
@click.option("--fp32", help="Disable mixed precision [default: false]", type=bool, default=False, metavar="BOOL")
@click.option("--aug", help="Augmentation mode [default: ada]", type=click.Choice(["ada", "noaug"]), default="ada")
@click.option("--iters", help="Timed training iterations [default: 20]", type=int, default=20, metavar="INT")
@click.option("--warmup", help="Untimed iterations first [default: 5]", type=int, default=5, metavar="INT")
@click.option("--gen-batch", help="Batch for G inference [default: 32]", type=int, default=32, metavar="INT")
@click.option("--gen-iters", help="Timed G inference batches [default: 10]", type=int, default=10, metavar="INT")
@click.option("--workers", help="DataLoader workers [default: 3]", type=int, default=3, metavar="INT")
@click.option("--device", help="Device [default: cuda if available, else cpu]", metavar="STR")
@click.option("--json", "json_path", help="Also write the rows and the settings to this JSON file", metavar="FILE")
def main(
    cfgs, resolutions, runs, fp32, aug, iters, warmup, gen_batch, gen_iters, workers, device, json_path, **overrides
):
    """Measure training and generation speed of StyleGAN2-ADA configs on synthetic data."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    overrides = {key: value for key, value in overrides.items() if value is not None}
    pairs = _run_pairs(cfgs, resolutions, runs)
    print(
        f"Device: {_device_description(device)}; torch {torch.__version__}; {iters} timed iterations after {warmup} "
        "warm-up ones."
    )
    rows = []
    for cfg, res in pairs:
        try:
            options = build_options(cfg, res, device, workers, fp32=fp32, aug=aug, **overrides)
        except config.UserError as err:
            raise click.UsageError(f"cfg {cfg}, res {res}: {err}") from err
        fields = measure(options, iters=iters, warmup=warmup, gen_batch=gen_batch, gen_iters=gen_iters)
        fp16 = options.G_kwargs.synthesis_kwargs.num_fp16_res > 0
        rows.append(
            dict(
                cfg=cfg,
                res=res,
                batch=options.batch_size,
                batch_gpu=options.batch_gpu,
                precision="mixed" if fp16 else "fp32",
                **fields,
            )
        )
        print(f"  done: cfg {cfg}, res {res}", file=sys.stderr)
    print(_format_table(rows))
    if json_path is not None:
        settings = dict(
            iters=iters, warmup=warmup, gen_batch=gen_batch, gen_iters=gen_iters, workers=workers, aug=aug, **overrides
        )
        _write_json(json_path, device, settings, rows)


if __name__ == "__main__":
    main()
