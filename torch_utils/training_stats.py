"""Cheap collection of scalar statistics from anywhere in the code, merged across devices and processes.

`report(name, value)` adds `[count, sum, sum of squares]` of the value's elements to a per-device float64 counter.
A `Collector` periodically moves those counters into process-wide running totals (all-reduced across processes
when a sync device is configured) and exposes per-interval num/mean/std as differences of the running totals.
"""

import re

import numpy as np
import torch

import dnnlib

from . import misc

# ----------------------------------------------------------------------------

_num_moments = 3  # [count, sum, sum of squares]
_reduce_dtype = torch.float32  # dtype of the per-call reduction
_counter_dtype = torch.float64  # dtype of all accumulators

_rank = 0  # rank of this process
_sync_device = None  # device used for all-reduce; None in a single process
_sync_called = False  # set once the first synchronisation has happened
_counters = dict()  # name => device => float64 tensor [_num_moments], not yet synchronised
_cumulative = dict()  # name => float64 CPU tensor [_num_moments], running totals since start

# ----------------------------------------------------------------------------


def init_multiprocessing(rank, sync_device):
    """Configure multi-process merging: call after torch.distributed init and before the first `Collector.update()`.

    `sync_device` is the device all-reduce runs on (typically `torch.device('cuda', rank)`), or None for a single
    process.
    """
    global _rank, _sync_device
    assert not _sync_called, "training_stats.init_multiprocessing() must be called before the first update()"
    _rank = rank
    _sync_device = sync_device


@misc.profiled_function
def report(name, value):
    """Accumulate the elements of `value` (scalar, list, array or tensor on any device) under `name`.

    Returns `value` unchanged, so it can wrap an expression. An empty value only registers the name; every process
    must report the same names in the same first-report order (use `[]` when there is nothing to report).
    """
    per_device = _counters.setdefault(name, dict())
    values = torch.as_tensor(value)
    if values.numel() != 0:
        moments = _moments_of(values)
        if moments.device not in per_device:
            per_device[moments.device] = torch.zeros_like(moments)
        per_device[moments.device].add_(moments)
    return value


def _moments_of(values):
    """`[count, sum, sum of squares]` of all elements, each summed in float32, as a float64 tensor `[3]`.

    Keeping the per-call reduction in float32 and only the accumulation in float64 is what fixes the rounding of
    reported statistics (the reference behaves the same).
    """
    flat = values.detach().flatten().to(_reduce_dtype)
    terms = (torch.ones_like(flat), flat, flat.square())  # one term per moment, in moment order
    moments = torch.stack([term.sum() for term in terms])
    misc.assert_shape(moments, [_num_moments])
    return moments.to(_counter_dtype)


def report0(name, value):
    """Like `report`, but only rank 0 contributes data (other ranks register the name with no data)."""
    report(name, value if _rank == 0 else [])
    return value


# ----------------------------------------------------------------------------


class Collector:
    """Per-interval view of the statistics whose names fullmatch `regex`.

    Each `update()` captures what was reported since the previous one. With `keep_previous`, a name that received
    nothing keeps its previous values; otherwise it reads as "no data" (num 0, mean/std NaN). Statistics reported
    before the collector was created are not counted by it.
    """

    def __init__(self, regex=".*", keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._cumulative = dict()  # name => snapshot of the global running totals
        self._moments = dict()  # name => float64 CPU tensor [_num_moments] of the last interval
        self.update()
        self._moments.clear()

    def names(self):
        """Registered names (first-report order) that match the regex."""
        return [name for name in _counters if self._regex.fullmatch(name)]

    def update(self):
        """Synchronise and capture the statistics reported since the previous update."""
        if not self._keep_previous:
            self._moments.clear()
        for name, totals in _sync(self.names()):
            snapshot = self._cumulative.setdefault(name, torch.zeros([_num_moments], dtype=_counter_dtype))
            # A difference of float64 running totals (not a sum of per-interval values): this fixes the rounding.
            delta = totals - snapshot
            snapshot.copy_(totals)
            if float(delta[0]) != 0:
                self._moments[name] = delta

    def _get_delta(self, name):
        assert self._regex.fullmatch(name), f"statistic {name!r} does not match the collector's regex"
        if name not in self._moments:
            self._moments[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        return self._moments[name]

    def _interval(self, name):
        """`(count, sum, sum of squares)` of the last interval as Python floats (float64, exactly)."""
        return tuple(self._get_delta(name).tolist())

    def num(self, name):
        """Number of scalars reported for `name` in the last interval."""
        count, _, _ = self._interval(name)
        return int(count)

    def mean(self, name):
        """Mean of the scalars reported for `name` in the last interval (NaN if none)."""
        count, total, _ = self._interval(name)
        return total / count if int(count) != 0 else float("nan")

    def std(self, name):
        """Population standard deviation of the last interval's scalars (NaN if none or non-finite; 0 for one).

        Computed in float64 as sqrt(E[x^2] - E[x]^2), floored at 0 against rounding; a NumPy float64.
        """
        count, total, total_of_squares = self._interval(name)
        if int(count) == 0 or not np.isfinite(total):
            return float("nan")
        if int(count) == 1:
            return 0.0
        mean = total / count
        variance = total_of_squares / count - np.square(mean)
        return np.sqrt(max(variance, 0))

    def as_dict(self):
        """`EasyDict` name => `EasyDict(num, mean, std)` for every matching name."""
        stats = dnnlib.EasyDict()
        for name in self.names():
            stats[name] = dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
        return stats

    def __getitem__(self, name):
        return self.mean(name)

    def pending(self, name):
        """Moments `[count, sum, sum of squares]` of `name` reported since this collector's last `update()`.

        Synchronises `name` (a collective call in multi-process mode, like `update()`) without capturing it, so
        the next `update()` still sees these values. Used to carry an interrupted interval over to a resumed run.
        """
        assert self._regex.fullmatch(name), f"statistic {name!r} does not match the collector's regex"
        totals = dict(_sync([name])) if name in _counters else {}
        zeros = torch.zeros([_num_moments], dtype=_counter_dtype)
        return totals.get(name, zeros) - self._cumulative.get(name, zeros)

    def add_pending(self, name, moments):
        """Count `moments` (as returned by `pending()`) as reported for `name` since the last `update()`."""
        assert self._regex.fullmatch(name), f"statistic {name!r} does not match the collector's regex"
        seen = self._cumulative.setdefault(name, torch.zeros([_num_moments], dtype=_counter_dtype))
        seen.sub_(torch.as_tensor(moments, dtype=_counter_dtype))


# ----------------------------------------------------------------------------


def _sync(names):
    """Move the per-device counters of `names` into the global running totals; return `(name, totals)` pairs.

    In multi-process mode this is a collective call: every process must pass the same names in the same order.
    """
    global _sync_called
    if len(names) == 0:
        return []
    _sync_called = True

    device = torch.device("cpu") if _sync_device is None else _sync_device
    fresh = torch.stack([_drain_counters(name, device) for name in names])  # [len(names), _num_moments]
    misc.assert_shape(fresh, [len(names), _num_moments])
    if _sync_device is not None:
        torch.distributed.all_reduce(fresh)

    for name, moments in zip(names, fresh.cpu()):
        _cumulative.setdefault(name, torch.zeros([_num_moments], dtype=_counter_dtype)).add_(moments)
    return [(name, _cumulative[name]) for name in names]


def _drain_counters(name, device):
    """Sum of all per-device counters of `name` on `device` (float64 `[_num_moments]`); resets them to zero."""
    total = torch.zeros([_num_moments], dtype=_counter_dtype, device=device)
    for counter in _counters[name].values():
        total.add_(counter.to(device))
        counter.zero_()
    return total
