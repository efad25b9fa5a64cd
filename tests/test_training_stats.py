"""Tests for torch_utils.training_stats (docs/compatibility.md, "Foundation"), single process."""

import json
import math

import numpy as np
import pytest
import torch

import dnnlib
from torch_utils import training_stats


@pytest.fixture(autouse=True)
def fresh_stats_state(monkeypatch):
    """Each test starts with empty global statistics (the module keeps process-wide state)."""
    monkeypatch.setattr(training_stats, "_rank", 0)
    monkeypatch.setattr(training_stats, "_sync_device", None)
    monkeypatch.setattr(training_stats, "_sync_called", False)
    monkeypatch.setattr(training_stats, "_counters", dict())
    monkeypatch.setattr(training_stats, "_cumulative", dict())


def test_spec_example_and_jsonl_line():
    collector = training_stats.Collector("Loss/.*")
    training_stats.report("Loss/a", torch.tensor([1, 2, 3]))
    training_stats.report("Loss/a", 4)
    training_stats.report("Loss/b", [])
    training_stats.report("Other/c", 1.0)
    collector.update()

    assert collector.names() == ["Loss/a", "Loss/b"]
    assert collector.num("Loss/a") == 4 and collector.mean("Loss/a") == 2.5
    assert collector.std("Loss/a") == 1.118033988749895
    assert collector["Loss/a"] == 2.5
    assert collector.num("Loss/b") == 0 and math.isnan(collector.mean("Loss/b")) and math.isnan(collector.std("Loss/b"))

    stats = collector.as_dict()
    assert type(stats) is dnnlib.EasyDict and type(stats["Loss/a"]) is dnnlib.EasyDict
    assert list(stats["Loss/a"]) == ["num", "mean", "std"]
    line = json.dumps(dict(stats, timestamp=1.5))
    assert line == (
        '{"Loss/a": {"num": 4, "mean": 2.5, "std": 1.118033988749895}, '
        '"Loss/b": {"num": 0, "mean": NaN, "std": NaN}, "timestamp": 1.5}'
    )


def test_report_returns_value_and_accepts_many_types():
    values = [3, 2.5, [1, 2], (4,), np.array([[1.0, 2.0]]), torch.ones(2, requires_grad=True)]
    for value in values:
        assert training_stats.report("Mixed", value) is value
    collector = training_stats.Collector("Mixed")  # created after: sees none of those
    assert collector.num("Mixed") == 0
    training_stats.report("Mixed", np.float32(7))
    collector.update()
    assert collector.num("Mixed") == 1 and collector.mean("Mixed") == 7.0 and collector.std("Mixed") == 0.0


def test_counters_accumulate_float64_per_device():
    training_stats.report("A", torch.tensor([1.0, 2.0]))
    counter = training_stats._counters["A"][torch.device("cpu")]
    assert counter.dtype == torch.float64 and counter.tolist() == [2.0, 3.0, 5.0]
    training_stats.report("A", [3.0])
    assert counter.tolist() == [3.0, 6.0, 14.0]
    training_stats.report("B", [])
    assert training_stats._counters["B"] == {}
    assert list(training_stats._counters) == ["A", "B"]


def test_moments_match_numpy():
    rng = np.random.RandomState(0)
    values = rng.randn(1000).astype(np.float32) * 3 + 1
    collector = training_stats.Collector()
    for chunk in np.split(values, 10):
        training_stats.report("X", torch.from_numpy(chunk))
    collector.update()
    assert collector.num("X") == 1000
    assert collector.mean("X") == pytest.approx(float(values.astype(np.float64).mean()), rel=1e-6)
    assert collector.std("X") == pytest.approx(float(values.astype(np.float64).std()), rel=1e-5)


def test_keep_previous_semantics():
    keep = training_stats.Collector("S")
    forget = training_stats.Collector("S", keep_previous=False)
    training_stats.report("S", [1.0, 3.0])
    keep.update()
    forget.update()
    assert keep.mean("S") == forget.mean("S") == 2.0
    keep.update()
    forget.update()
    assert keep.mean("S") == 2.0 and keep.num("S") == 2
    assert forget.num("S") == 0 and math.isnan(forget.mean("S"))
    training_stats.report("S", 10.0)
    keep.update()
    assert keep.num("S") == 1 and keep.mean("S") == 10.0


def test_collectors_are_independent():
    early = training_stats.Collector()
    training_stats.report("T", 1.0)
    early.update()
    late = training_stats.Collector()  # consumes nothing new; its baseline includes the first report
    training_stats.report("T", 5.0)
    early.update()
    late.update()
    assert early.mean("T") == 5.0 and late.mean("T") == 5.0
    training_stats.report("T", 7.0)
    late.update()
    assert late.mean("T") == 7.0 and early.mean("T") == 5.0  # early has not updated yet
    early.update()
    assert early.mean("T") == 7.0
    assert training_stats._cumulative["T"].tolist() == [3.0, 13.0, 75.0]


def test_regex_filtering():
    collector = training_stats.Collector(r"Loss/.*")
    training_stats.report("Loss/G", 1.0)
    training_stats.report("Timing/x", 1.0)
    training_stats.report("MyLoss/G", 1.0)
    collector.update()
    assert collector.names() == ["Loss/G"]
    assert list(collector.as_dict()) == ["Loss/G"]
    with pytest.raises(AssertionError):
        collector.num("Timing/x")
    assert collector.num("Loss/unknown") == 0  # matching but never reported: zero moments


def test_std_edge_cases():
    collector = training_stats.Collector()
    training_stats.report("Inf", [1.0, float("inf")])
    training_stats.report("Const", [2.0, 2.0, 2.0])
    collector.update()
    assert math.isnan(collector.std("Inf")) and collector.mean("Inf") == float("inf")
    assert collector.std("Const") == 0.0
    assert isinstance(collector.std("Const"), float)


def test_report0_only_counts_on_rank0(monkeypatch):
    collector = training_stats.Collector()
    assert training_stats.report0("R", 4.0) == 4.0
    monkeypatch.setattr(training_stats, "_rank", 1)
    value = [9.0]
    assert training_stats.report0("R", value) is value
    assert training_stats.report0("OnlyRank1", 1.0) == 1.0
    collector.update()
    assert collector.num("R") == 1 and collector.mean("R") == 4.0
    assert "OnlyRank1" in collector.names() and collector.num("OnlyRank1") == 0


def test_init_multiprocessing_single_process():
    training_stats.init_multiprocessing(rank=0, sync_device=None)
    collector = training_stats.Collector()
    training_stats.report("M", [1.0, 2.0])
    collector.update()
    assert collector.num("M") == 2
    assert training_stats._sync_called
    with pytest.raises(AssertionError):
        training_stats.init_multiprocessing(rank=0, sync_device=None)


def test_sync_with_nothing_registered_does_not_mark_sync():
    collector = training_stats.Collector()
    collector.update()
    assert collector.names() == [] and not training_stats._sync_called
    training_stats.init_multiprocessing(rank=0, sync_device=None)


def test_pending_moments_carry_over_to_a_new_collector():
    """An interval interrupted by a snapshot continues in a resumed process with the same result."""
    from torch_utils import training_stats

    first = training_stats.Collector(regex="Resume/x")
    training_stats.report("Resume/x", [1.0, -1.0, 1.0])
    first.update()
    training_stats.report("Resume/x", [1.0, 1.0])
    pending = first.pending("Resume/x")
    assert pending.tolist() == [2.0, 2.0, 2.0]
    training_stats.report("Resume/x", [-1.0])
    first.update()  # The pending values were not captured by pending(): they count here.
    assert first.num("Resume/x") == 3 and first.mean("Resume/x") == 1 / 3

    resumed = training_stats.Collector(regex="Resume/x")
    resumed.add_pending("Resume/x", [2.0, 2.0, 2.0])
    training_stats.report("Resume/x", [-1.0])
    resumed.update()
    assert resumed.num("Resume/x") == 3 and resumed.mean("Resume/x") == 1 / 3
