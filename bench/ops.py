"""Time upfirdn2d and bias_act: native CUDA kernels vs the reference path vs plain torch.nn.functional code.

The shapes are the ones the networks use (channels(res) = min(channel_base // res, 512)) for the 256x256
(channel_base 16384) and 1024x1024 (channel_base 32768) configurations, for every resolution from the image
resolution down to --min-res:

  G.conv0.filter   upfirdn2d after the stride-2 transposed conv: [N, C(res), res+1, res+1], 4x4 filter, pad 1, gain 4
  G.img.up         upsample2d of the skip image:                 [N, 3, res/2, res/2] -> res, float32 always
  G.conv.act       bias_act lrelu, gain sqrt(2), clamp 256:       [N, C(res), res, res]
  D.conv1.filter   upfirdn2d before the stride-2 conv:            [N, C(res), res, res], 4x4 filter, pad 2
  D.skip.down      downsample2d:                                  [N, C(res), res, res] -> res/2

Each row gives the median time in milliseconds of the forward pass and of forward + backward (gradient with
respect to the input) for the three implementations, and the largest difference between them relative to the
largest output magnitude. Without CUDA (or when the plugins cannot be built) the 'cuda' columns show '-'.
--json also writes every row, with each implementation's own difference from 'ref' (diff.cuda, diff.plain).
Other resolutions (and tiny channel counts, for a quick run) need --cbase; --cmax caps the channels.

Usage: python bench/ops.py [--res 256] [--res 1024] [--batch 4] [--dtype float16] [--channels-last]
       [--min-res 64] [--iters 20] [--cbase 512 --cmax 32] [--json ops.json]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnnlib.atomic import atomic_write_bytes  # noqa: E402
from torch_utils.ops import bias_act, upfirdn2d  # noqa: E402

CHANNEL_BASE = {256: 16384, 1024: 32768}  # image resolution -> channel_base of the standard configurations
CHANNEL_MAX = 512
LRELU_GAIN = 2**0.5
CONV_CLAMP = 256.0
IMPLS = ["cuda", "ref", "plain"]


def channels(res, channel_base, channel_max=CHANNEL_MAX):
    return min(channel_base // res, channel_max)


# ----------------------------------------------------------------------------
# Plain torch.nn.functional versions of the same operations (depthwise convolutions with the [1,3,3,1] filter).


def _depthwise_weight(f, num_channels, dtype, gain=1):
    """[C, 1, fh, fw] weight for a true convolution with the 2-D filter `f` (flipped for conv2d)."""
    return (f * gain).flip([0, 1]).to(dtype).reshape(1, 1, *f.shape).repeat(num_channels, 1, 1, 1)


def plain_filter(x, f, padding, gain=1):
    w = _depthwise_weight(f, x.shape[1], x.dtype, gain)
    return torch.nn.functional.conv2d(x, w, padding=padding, groups=x.shape[1])


def plain_upsample2d(x, f):
    # Transposed convolution correlates with the unflipped filter; padding 1 matches upfirdn2d's [2, 1, 2, 1].
    w = (f * 4).to(x.dtype).reshape(1, 1, *f.shape).repeat(x.shape[1], 1, 1, 1)
    return torch.nn.functional.conv_transpose2d(x, w, stride=2, padding=1, groups=x.shape[1])


def plain_downsample2d(x, f):
    w = _depthwise_weight(f, x.shape[1], x.dtype)
    return torch.nn.functional.conv2d(x, w, stride=2, padding=1, groups=x.shape[1])


def plain_lrelu(x, b):
    y = torch.nn.functional.leaky_relu(x + b.reshape(1, -1, 1, 1), 0.2) * LRELU_GAIN
    return y.clamp(-CONV_CLAMP, CONV_CLAMP)


# ----------------------------------------------------------------------------
# Cases.


def make_cases(img_res, batch, min_res, dtype, channels_last, device, channel_base, channel_max=CHANNEL_MAX):
    """(name, input shape, input dtype, {impl: fn(x)}) for every benchmarked call of one network configuration."""
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    cases = []
    res = img_res
    while res >= min_res:
        c = channels(res, channel_base, channel_max)
        b = torch.randn([c], device=device, dtype=dtype)
        cases.append(
            (
                f"G.conv0.filter@{res}",
                [batch, c, res + 1, res + 1],
                dtype,
                {
                    "cuda": lambda x: upfirdn2d.upfirdn2d(x, f, padding=1, gain=4, impl="cuda"),
                    "ref": lambda x: upfirdn2d.upfirdn2d(x, f, padding=1, gain=4, impl="ref"),
                    "plain": lambda x: plain_filter(x, f, padding=1, gain=4),
                },
            )
        )
        cases.append(
            (
                f"G.img.up@{res}",
                [batch, 3, res // 2, res // 2],
                torch.float32,
                {
                    "cuda": lambda x: upfirdn2d.upsample2d(x, f, impl="cuda"),
                    "ref": lambda x: upfirdn2d.upsample2d(x, f, impl="ref"),
                    "plain": lambda x: plain_upsample2d(x, f),
                },
            )
        )
        cases.append(
            (
                f"G.conv.act@{res}",
                [batch, c, res, res],
                dtype,
                {
                    "cuda": lambda x, b=b: bias_act.bias_act(x, b, act="lrelu", clamp=CONV_CLAMP, impl="cuda"),
                    "ref": lambda x, b=b: bias_act.bias_act(x, b, act="lrelu", clamp=CONV_CLAMP, impl="ref"),
                    "plain": lambda x, b=b: plain_lrelu(x, b),
                },
            )
        )
        cases.append(
            (
                f"D.conv1.filter@{res}",
                [batch, c, res, res],
                dtype,
                {
                    "cuda": lambda x: upfirdn2d.upfirdn2d(x, f, padding=2, impl="cuda"),
                    "ref": lambda x: upfirdn2d.upfirdn2d(x, f, padding=2, impl="ref"),
                    "plain": lambda x: plain_filter(x, f, padding=2),
                },
            )
        )
        cases.append(
            (
                f"D.skip.down@{res}",
                [batch, c, res, res],
                dtype,
                {
                    "cuda": lambda x: upfirdn2d.downsample2d(x, f, impl="cuda"),
                    "ref": lambda x: upfirdn2d.downsample2d(x, f, impl="ref"),
                    "plain": lambda x: plain_downsample2d(x, f),
                },
            )
        )
        res //= 2
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return [(name, shape, dt, fns, memory_format) for name, shape, dt, fns in cases]


# ----------------------------------------------------------------------------
# Timing.


def median_ms(fn, device, iters, warmup):
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run_case(name, shape, dtype, fns, memory_format, impls, device, iters, warmup):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=gen, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    outputs = {impl: fns[impl](x) for impl in impls}
    dy = torch.randn(outputs["ref"].shape, generator=gen, device=device, dtype=outputs["ref"].dtype)
    reference = outputs["ref"].double()
    scale = max(1.0, reference.abs().max().item())
    diffs = {impl: (out.double() - reference).abs().max().item() / scale for impl, out in outputs.items()}
    del outputs

    xg = x.detach().requires_grad_(True)
    row = {"name": name, "shape": "x".join(map(str, shape)), "diff": max(diffs.values())}
    row.update({f"diff.{impl}": diff for impl, diff in diffs.items() if impl != "ref"})
    for impl in impls:
        fn = fns[impl]
        row[f"{impl}.fwd"] = median_ms(lambda fn=fn: fn(x), device, iters, warmup)
        row[f"{impl}.fwdbwd"] = median_ms(lambda fn=fn: torch.autograd.grad(fn(xg), xg, dy)[0], device, iters, warmup)
    return row


def format_table(rows, impls):
    columns = ["name", "shape"] + [f"{impl}.fwd" for impl in IMPLS] + [f"{impl}.fwdbwd" for impl in IMPLS] + ["diff"]
    header = [col + ("[ms]" if "." in col else "") for col in columns]
    body = []
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col)
            if col == "diff":
                cells.append(f"{value:.1e}")
            elif isinstance(value, float):
                cells.append(f"{value:.3f}")
            else:
                cells.append("-" if value is None else str(value))
        body.append(cells)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--res", type=int, action="append", help=f"image resolution [default: {sorted(CHANNEL_BASE)}]")
    parser.add_argument("--cbase", type=int, help="channel base [default: that of the standard configuration]")
    parser.add_argument("--cmax", type=int, default=CHANNEL_MAX, help="channel maximum")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="feature map dtype")
    parser.add_argument("--channels-last", action="store_true", help="feature maps in channels-last layout")
    parser.add_argument("--min-res", type=int, default=64, help="smallest block resolution to time")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 20 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 5 on CUDA, 1 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    for res in args.res or []:
        if res < 4 or res & (res - 1):
            parser.error(f"--res: expected a power of two >= 4, found {res}")
        if args.cbase is None and res not in CHANNEL_BASE:
            parser.error(f"--res {res}: expected one of {sorted(CHANNEL_BASE)}, or give --cbase for other resolutions")
    if args.min_res < 4:
        parser.error(f"--min-res: expected at least 4, found {args.min_res}")
    return args


def _write_json(path, args, device, iters, warmup, tables):
    report = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        settings=dict(dtype=args.dtype, channels_last=args.channels_last, batch=args.batch, iters=iters, warmup=warmup),
        tables=tables,
    )
    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    on_cuda = device.type == "cuda"
    iters = args.iters or (20 if on_cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)

    impls = ["ref", "plain"]
    if on_cuda:
        # impl='cuda' silently runs the reference path when a plugin is unavailable; only time real kernels.
        if upfirdn2d._plugin.available() and bias_act._plugin.available():
            impls.insert(0, "cuda")
        else:
            print("CUDA plugins unavailable: timing the reference and plain paths only.")
    if not on_cuda and dtype == torch.float16:
        print("note: float16 on the CPU is slow and only checks that the code runs.")

    torch.backends.cudnn.benchmark = True
    print(f"device={device}  dtype={args.dtype}  channels_last={args.channels_last}  batch={args.batch}  iters={iters}")
    tables = []
    for img_res in args.res or sorted(CHANNEL_BASE):
        base = args.cbase or CHANNEL_BASE[img_res]
        print(f"\n{img_res}x{img_res}, channel_base={base}, channel_max={args.cmax}")
        rows = []
        for case in make_cases(img_res, args.batch, args.min_res, dtype, args.channels_last, device, base, args.cmax):
            rows.append(run_case(*case, impls=impls, device=device, iters=iters, warmup=warmup))
        print(format_table(rows, impls))
        tables.append(dict(img_res=img_res, channel_base=base, channel_max=args.cmax, impls=impls, rows=rows))
    if args.json_path is not None:
        _write_json(args.json_path, args, device, iters, warmup, tables)


if __name__ == "__main__":
    main()
