"""Metric registry, evaluation (`calc_metric`) and reporting (`report_metric`).

The names, their listing order, the result keys and the JSON line format are a compatibility contract: see
docs/compatibility.md, "Metrics".
"""

import json
import os
import time
from functools import partial

import torch

import dnnlib
from metrics import (
    frechet_inception_distance,
    inception_score,
    kernel_inception_distance,
    metric_utils,
    perceptual_path_length,
    precision_recall,
)

RESULT_FILE_PATTERN = "metric-{}.jsonl"  # In the run directory, one file per metric name; one JSON line per result.

# ----------------------------------------------------------------------------------------------------------------------
# Registry.

_metric_dict = dict()  # name -> fn(opts) -> dict of results; insertion order is the documented listing order.


def register_metric(fn):
    """Make `fn(opts) -> dict of results` available under its own `__name__`; returns `fn` (usable as decorator)."""
    assert callable(fn), f"a metric must be callable, got {fn!r}"
    _metric_dict[fn.__name__] = fn
    return fn


def is_valid_metric(metric):
    return metric in _metric_dict


def list_valid_metrics():
    return list(_metric_dict.keys())


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation and reporting.


def _rank0_values(results, opts):
    """The metric's results as rank 0 computed them, on every process (the other ranks hold NaN placeholders).

    With one process the values are kept as returned; otherwise all of them travel in one float64 broadcast.
    """
    if opts.num_gpus == 1:
        return dnnlib.EasyDict(results)
    shared = torch.tensor([float(value) for value in results.values()], dtype=torch.float64, device=opts.device)
    torch.distributed.broadcast(shared, src=0)
    return dnnlib.EasyDict(zip(results.keys(), shared.tolist()))


def calc_metric(metric, **kwargs):
    """Evaluate one registered metric. Keywords are those of `metric_utils.MetricOptions`.

    Returns an EasyDict with keys in this order: results, metric, total_time (seconds of the metric function alone),
    total_time_str, num_gpus. The results are rank 0's on every process.
    """
    assert is_valid_metric(metric), f"unknown metric {metric!r}; valid metrics: {', '.join(list_valid_metrics())}"
    opts = metric_utils.MetricOptions(**kwargs)
    metric_fn = _metric_dict[metric]
    started = time.time()
    results = metric_fn(opts)
    seconds = time.time() - started

    summary = dnnlib.EasyDict(results=_rank0_values(results, opts), metric=metric)
    summary.total_time = seconds
    summary.total_time_str = dnnlib.util.format_time(seconds)
    summary.num_gpus = opts.num_gpus
    return summary


def report_metric(result_dict, run_dir=None, snapshot_pkl=None):
    """Print the result as one JSON line and append it to `<run_dir>/metric-<name>.jsonl` when run_dir exists.

    The line holds the entries of `result_dict` in order, then `snapshot_pkl` (relative to run_dir when both are
    given) and `timestamp` (seconds since the epoch).
    """
    name = result_dict["metric"]
    assert is_valid_metric(name), f"unknown metric {name!r}"
    record = dict(result_dict)
    relative = run_dir is not None and snapshot_pkl is not None
    record["snapshot_pkl"] = os.path.relpath(snapshot_pkl, run_dir) if relative else snapshot_pkl
    record["timestamp"] = time.time()

    line = json.dumps(record)
    print(line)
    if run_dir is not None and os.path.isdir(run_dir):
        # Appending keeps the earlier results; the file is never rewritten.
        with open(os.path.join(run_dir, RESULT_FILE_PATTERN.format(name)), "a") as f:
            f.write(line + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# The registered metrics.

NUM_GENERATED = 50000  # Generated images (FID, KID, PR, IS) or path samples (PPL) of every registered metric.
WHOLE_UNMIRRORED = dict(max_size=None, xflip=False)  # ADA paper: every dataset image, never mirrored.
WHOLE_AS_CONFIGURED = dict(max_size=None)  # StyleGAN/StyleGAN2 papers: the run's x-flip setting is kept.


def _fid(opts, max_real):
    return frechet_inception_distance.compute_fid(opts, max_real=max_real, num_gen=NUM_GENERATED)


def _kid(opts, max_real):
    return kernel_inception_distance.compute_kid(
        opts, max_real=max_real, num_gen=NUM_GENERATED, num_subsets=100, max_subset_size=1000
    )


def _pr(opts, max_real):
    return precision_recall.compute_pr(
        opts, max_real=max_real, num_gen=NUM_GENERATED, nhood_size=3, row_batch_size=10000, col_batch_size=10000
    )


def _is(opts):
    return inception_score.compute_is(opts, num_gen=NUM_GENERATED, num_splits=10)


def _ppl(opts, space, sampling, crop):
    return perceptual_path_length.compute_ppl(
        opts, num_samples=NUM_GENERATED, epsilon=1e-4, space=space, sampling=sampling, crop=crop, batch_size=2
    )


def _define_metric(name, compute, dataset_overrides=None, result_suffixes=None):
    """Register metric `name`: update opts.dataset_kwargs with `dataset_overrides`, then `compute(opts)`.

    A single value is reported as `name`; a tuple as `name + suffix` for each of `result_suffixes`, in order.
    The `compute_*` functions are looked up when the metric runs, so that tests can shrink their sample counts.
    """

    def metric(opts):
        if dataset_overrides is not None:
            opts.dataset_kwargs.update(dataset_overrides)
        value = compute(opts)
        if result_suffixes is None:
            return {name: value}
        return {name + suffix: part for suffix, part in zip(result_suffixes, value, strict=True)}

    metric.__name__ = metric.__qualname__ = name
    return register_metric(metric)


_PR_KEYS = ("_precision", "_recall")
_IS_KEYS = ("_mean", "_std")

# Registration order is the listing order of list_valid_metrics(). First the ADA paper's metrics ...
fid50k_full = _define_metric("fid50k_full", partial(_fid, max_real=None), WHOLE_UNMIRRORED)
kid50k_full = _define_metric("kid50k_full", partial(_kid, max_real=1000000), WHOLE_UNMIRRORED)
pr50k3_full = _define_metric("pr50k3_full", partial(_pr, max_real=200000), WHOLE_UNMIRRORED, _PR_KEYS)
ppl2_wend = _define_metric("ppl2_wend", partial(_ppl, space="w", sampling="end", crop=False))
is50k = _define_metric("is50k", _is, WHOLE_UNMIRRORED, _IS_KEYS)
# ... then those of the StyleGAN and StyleGAN2 papers: 50k real images, cropped path lengths.
fid50k = _define_metric("fid50k", partial(_fid, max_real=50000), WHOLE_AS_CONFIGURED)
kid50k = _define_metric("kid50k", partial(_kid, max_real=50000), WHOLE_AS_CONFIGURED)
pr50k3 = _define_metric("pr50k3", partial(_pr, max_real=50000), WHOLE_AS_CONFIGURED, _PR_KEYS)
ppl_zfull = _define_metric("ppl_zfull", partial(_ppl, space="z", sampling="full", crop=True))
ppl_wfull = _define_metric("ppl_wfull", partial(_ppl, space="w", sampling="full", crop=True))
ppl_zend = _define_metric("ppl_zend", partial(_ppl, space="z", sampling="end", crop=True))
ppl_wend = _define_metric("ppl_wend", partial(_ppl, space="w", sampling="end", crop=True))
