"""Tests for torch_utils.misc (docs/compatibility.md, "Foundation")."""

import itertools
import os
import warnings

import numpy as np
import pytest
import torch

from torch_utils import misc

# ----------------------------------------------------------------------------
# constant


def test_constant_defaults_to_float32_cpu_contiguous():
    for value in (0, [1, 2], np.float64(0.1), np.array([[1, 2], [3, 4]], dtype=np.int64)):
        t = misc.constant(value)
        assert t.dtype == torch.float32
        assert t.device == torch.device("cpu")
        assert t.is_contiguous()
        assert t.shape == np.asarray(value).shape
    assert misc.constant(np.float64(0.1)).item() == np.float32(0.1)


def test_constant_is_cached_by_value_shape_dtype():
    a = misc.constant([1, 2, 3])
    assert misc.constant([1, 2, 3]) is a
    assert misc.constant(np.array([1, 2, 3], dtype=np.int64)) is a
    as_int8 = misc.constant(np.array([1, 2, 3], dtype=np.int8))  # NumPy dtype is part of the key
    assert as_int8 is not a and torch.equal(as_int8, a)
    assert misc.constant([1, 2, 4]) is not a
    assert misc.constant([1, 2, 3], dtype=torch.float64).dtype == torch.float64
    assert misc.constant([1, 2, 3], dtype=torch.float64) is not a


def test_constant_broadcasts_to_shape():
    ref = torch.zeros(2, 3)
    t = misc.constant(0.5, shape=ref.shape, device=ref.device)
    assert t.shape == (2, 3)
    assert torch.all(t == 0.5)
    row = misc.constant([1, 2, 3], shape=[4, 3])
    assert row.shape == (4, 3)
    assert torch.equal(row[3], torch.tensor([1.0, 2.0, 3.0]))


def test_constant_float64_array_rounds_to_float32():
    t = misc.constant(np.asarray([1, 1, 1, 0]) / np.sqrt(3))
    np.testing.assert_array_equal(t.numpy(), (np.asarray([1, 1, 1, 0]) / np.sqrt(3)).astype(np.float32))


def test_constant_memory_format():
    t = misc.constant(np.zeros([1, 3, 2, 2]), memory_format=torch.channels_last)
    assert t.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------
# Aliases, tracing helpers


def test_aliases():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    assert torch.equal(misc.nan_to_num(x, nan=0, posinf=1e5, neginf=-1e5), torch.tensor([0.0, 1e5, -1e5, 1.0]))
    misc.nan_to_num(x, nan=0, posinf=1e5, neginf=-1e5, out=x)
    assert torch.equal(x, torch.tensor([0.0, 1e5, -1e5, 1.0]))
    misc.symbolic_assert(True, "fine")
    with pytest.raises(AssertionError, match="boom"):
        misc.symbolic_assert(False, "boom")


def test_suppress_tracer_warnings_only_ignores_tracer_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        num_filters = len(warnings.filters)
        with misc.suppress_tracer_warnings():
            assert len(warnings.filters) == num_filters + 1
            warnings.warn("hidden", torch.jit.TracerWarning, stacklevel=1)
            warnings.warn("shown", UserWarning, stacklevel=1)
        assert len(warnings.filters) == num_filters
        warnings.warn("shown after", torch.jit.TracerWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert messages == ["shown", "shown after"]


def test_suppress_tracer_warnings_keeps_filters_added_inside():
    with warnings.catch_warnings():
        with misc.suppress_tracer_warnings():
            warnings.filterwarnings("ignore", message="added inside")
        assert any(f[1] is not None and f[1].pattern == "added inside" for f in warnings.filters)
        assert not any(f[2] is torch.jit.TracerWarning and f[0] == "ignore" for f in warnings.filters)


def test_assert_shape():
    x = torch.zeros(2, 3, 4, 5)
    misc.assert_shape(x, [2, 3, 4, 5])
    misc.assert_shape(x, [None, 3, None, 5])
    misc.assert_shape(x, [torch.tensor(2), 3, None, x.shape[3]])
    with pytest.raises(AssertionError, match=r"^Wrong number of dimensions: got 4, expected 3$"):
        misc.assert_shape(x, [2, 3, 4])
    with pytest.raises(AssertionError, match=r"^Wrong size for dimension 1: got 3, expected 4$"):
        misc.assert_shape(x, [None, 4, 4, 5])
    with pytest.raises(AssertionError, match=r"^Wrong size for dimension 0$"):
        misc.assert_shape(x, [torch.tensor(7), 3, 4, 5])


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*is deprecated:DeprecationWarning")
def test_assert_shape_while_tracing():
    def fn(x):
        misc.assert_shape(x, [None, 3])
        return x * 2

    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(fn, (torch.ones(2, 3),))
    assert torch.equal(traced(torch.ones(5, 3)), torch.full([5, 3], 2.0))


def test_profiled_function():
    def my_helper(a, b=1):
        return a + b

    wrapped = misc.profiled_function(my_helper)
    assert wrapped.__name__ == "my_helper"
    assert wrapped(1, b=2) == 3
    with torch.autograd.profiler.profile() as prof:
        wrapped(torch.ones(2), b=1)
    assert any(evt.name == "my_helper" for evt in prof.function_events)


# ----------------------------------------------------------------------------
# InfiniteSampler


def _take(sampler, count):
    return [int(i) for i in itertools.islice(iter(sampler), count)]


def test_infinite_sampler_reference_sequences():
    expected = "2 8 4 9 1 6 2 3 0 9 7 8 1 5 6 4 3 8 2 1 9 6 7 5 8"
    assert _take(misc.InfiniteSampler(range(10)), 25) == [int(v) for v in expected.split()]
    assert _take(misc.InfiniteSampler(range(10), rank=1, num_replicas=2), 12) == [8, 9, 6, 3, 9, 8, 5, 4, 8, 1, 6, 5]
    assert _take(misc.InfiniteSampler(range(3)), 12) == [2, 1, 2, 0, 2, 0, 2, 0, 2, 0, 2, 1]
    assert _take(misc.InfiniteSampler(range(5), shuffle=False), 12) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


def test_infinite_sampler_is_deterministic_and_restarts():
    sampler = misc.InfiniteSampler(range(37), seed=123)
    first = _take(sampler, 200)
    assert _take(sampler, 200) == first
    assert _take(misc.InfiniteSampler(range(37), seed=123), 200) == first
    assert _take(misc.InfiniteSampler(range(37), seed=124), 200) != first
    values = list(itertools.islice(iter(sampler), 3))
    assert all(isinstance(v, np.int64) for v in values)


def test_infinite_sampler_ranks_interleave_one_global_stream():
    n, replicas, steps = 17, 3, 40
    global_stream = _take(misc.InfiniteSampler(range(n), seed=5), steps * replicas)
    for rank in range(replicas):
        ranked = _take(misc.InfiniteSampler(range(n), rank=rank, num_replicas=replicas, seed=5), steps)
        assert ranked == global_stream[rank::replicas]


def test_infinite_sampler_without_window_repeats_one_permutation():
    n = 20
    for kwargs in (dict(window_size=0), dict(window_size=0.05)):  # rint(20 * 0.05) = 1 < 2: no swaps
        seq = _take(misc.InfiniteSampler(range(n), seed=3, **kwargs), 3 * n)
        perm = np.arange(n)
        np.random.RandomState(3).shuffle(perm)
        assert seq[:n] == perm.tolist()
        assert seq[n : 2 * n] == seq[:n] and seq[2 * n :] == seq[:n]


def test_infinite_sampler_window_swaps_stay_within_window():
    # Replay the documented algorithm independently: each step swaps slot i with one of the `window - 1` slots
    # before it.
    n, window_size, seed = 16, 0.25, 9
    window = int(np.rint(n * window_size))
    rnd = np.random.RandomState(seed)
    order = np.arange(n)
    rnd.shuffle(order)
    expected = []
    for idx in range(5 * n):
        i = idx % n
        expected.append(int(order[i]))
        r = rnd.randint(window)
        assert 0 <= r < window
        j = (i - r) % n
        order[i], order[j] = order[j], order[i]
    assert sorted(order.tolist()) == list(range(n))
    seq = _take(misc.InfiniteSampler(range(n), seed=seed, window_size=window_size), 5 * n)
    assert seq == expected
    # Shuffling changes the order from one pass to the next, but every pass still draws from all items.
    assert seq[:n] != seq[n : 2 * n]
    counts = np.bincount(seq, minlength=n)
    assert counts.sum() == 5 * n and counts.min() >= 1


def test_infinite_sampler_arguments():
    sampler = misc.InfiniteSampler([0, 1, 2], rank=1, num_replicas=2, shuffle=False, seed=7, window_size=0.3)
    assert (sampler.rank, sampler.num_replicas, sampler.shuffle, sampler.seed, sampler.window_size) == (
        1,
        2,
        False,
        7,
        0.3,
    )
    assert not hasattr(misc.InfiniteSampler, "__len__")
    for kwargs in (dict(rank=2, num_replicas=2), dict(num_replicas=0), dict(window_size=1.5), dict(rank=-1)):
        with pytest.raises(AssertionError):
            misc.InfiniteSampler(range(4), **kwargs)
    with pytest.raises(AssertionError):
        misc.InfiniteSampler([])


def test_infinite_sampler_with_dataloader():
    dataset = torch.utils.data.TensorDataset(torch.arange(10))
    loader = torch.utils.data.DataLoader(dataset, sampler=misc.InfiniteSampler(dataset), batch_size=5)
    batches = [b[0].tolist() for b in itertools.islice(iter(loader), 3)]
    assert batches == [[2, 8, 4, 9, 1], [6, 2, 3, 0, 9], [7, 8, 1, 5, 6]]


# ----------------------------------------------------------------------------
# Parameters and buffers


class _Net(torch.nn.Module):
    def __init__(self, extra=False):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.register_buffer("counter", torch.zeros([2]))
        if extra:
            self.extra = torch.nn.Parameter(torch.ones([1]))


def test_params_and_buffers():
    net = _Net()
    assert [n for n, _ in misc.named_params_and_buffers(net)] == ["fc.weight", "fc.bias", "counter"]
    tensors = misc.params_and_buffers(net)
    assert [t is u for t, u in zip(tensors, [net.fc.weight, net.fc.bias, net.counter])] == [True] * 3
    with pytest.raises(AssertionError):
        misc.params_and_buffers(torch.zeros(1))


def test_copy_params_and_buffers():
    torch.manual_seed(0)
    src = _Net(extra=True)
    src.counter += 5
    dst = _Net().requires_grad_(False)
    dst.fc.bias.requires_grad_(True)
    with torch.no_grad():
        misc.copy_params_and_buffers(src, dst, require_all=True)
    assert torch.equal(dst.fc.weight, src.fc.weight) and torch.equal(dst.counter, src.counter)
    assert dst.fc.weight is not src.fc.weight
    assert not dst.fc.weight.requires_grad and dst.fc.bias.requires_grad

    with pytest.raises(AssertionError, match="extra"):
        misc.copy_params_and_buffers(_Net(), _Net(extra=True).requires_grad_(False), require_all=True)
    partial = _Net(extra=True).requires_grad_(False)
    misc.copy_params_and_buffers(src, partial)  # extra exists in src too; no error
    missing = _Net(extra=True).requires_grad_(False)
    before = missing.extra.clone()
    misc.copy_params_and_buffers(_Net(), missing)
    assert torch.equal(missing.extra, before)


def test_ddp_sync_is_noop_without_ddp():
    net = _Net()
    for sync in (True, False):
        with misc.ddp_sync(net, sync):
            net.fc(torch.ones(1, 3)).sum().backward()
    assert net.fc.weight.grad is not None


def test_check_ddp_consistency_single_process(tmp_path):
    import torch.distributed as dist

    init_file = os.path.join(tmp_path, "pg_init")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
    try:
        net = _Net()
        net.counter.fill_(float("nan"))  # NaN must compare equal after nan_to_num
        misc.check_ddp_consistency(net)
        misc.check_ddp_consistency(net, ignore_regex=r".*\.counter")
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------
# print_module_summary


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.register_buffer("scale", torch.ones([4]))

    def forward(self, x):
        y = self.conv(x) * self.scale.reshape(1, -1, 1, 1)
        return y, y.mean(dim=1, keepdim=True).half()


class _Top(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.b0 = _Block()
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        y, img = self.b0(x)
        y = self.act(y)
        return self.fc(y.flatten(1)), img


def _table(capsys, module, inputs, **kwargs):
    out = misc.print_module_summary(module, inputs, **kwargs)
    text = capsys.readouterr().out
    lines = text.split("\n")
    assert lines[0] == "" and lines[-1] == "" and lines[-2] == ""
    return out, lines[1:-2]


def test_print_module_summary_table(capsys):
    torch.manual_seed(0)
    net = _Top()
    x = torch.randn(2, 2, 4, 4)
    out, lines = _table(capsys, net, [x])
    assert torch.equal(out[0], net(x)[0])

    rows = [line.split() for line in lines]
    assert rows[0] == ["_Top", "Parameters", "Buffers", "Output", "shape", "Datatype"]
    assert rows[1] == ["---"] * 5
    by_name = {line.split("  ")[0].strip(): line for line in lines[2:-2]}
    # The top level produces nothing new (its outputs come from fc and b0) and owns no tensors: skipped.
    assert list(by_name) == ["b0.conv", "b0:0", "b0:1", "act", "fc"]
    conv_params = 4 * 2 * 3 * 3 + 4
    assert by_name["b0.conv"].split()[:6] == ["b0.conv", str(conv_params), "-", "[2,", "4,", "4,"]
    # b0's outputs are new tensors (conv's output is rescaled), and it owns the buffer.
    assert by_name["b0:0"].split()[1:3] == ["-", "4"]
    assert by_name["b0:1"].split()[-1] == "float16"
    assert by_name["b0:0"].split()[-1] == "float32"
    # Reference quirk: the first output's shape is shown for every output of the entry.
    assert "[2, 4, 4, 4]" in by_name["b0:1"]
    assert by_name["fc"].split()[1] == str(64 * 3 + 3)
    assert rows[-2] == ["---"] * 5
    assert rows[-1] == ["Total", str(conv_params + 64 * 3 + 3), "4", "-", "-"]

    # Columns are padded to a common width and joined by two spaces (trailing padding kept).
    widths = {len(line) for line in lines}
    assert len(widths) == 1


def test_print_module_summary_nesting_and_redundancy(capsys):
    net = _Top()
    x = torch.randn(2, 2, 4, 4)
    _, lines = _table(capsys, net, (x,), max_nesting=1)
    names = [line.split("  ")[0].strip() for line in lines[2:-2]]
    assert names == ["b0:0", "b0:1", "act", "fc"]  # b0.conv is at depth 2: its parameters go to b0
    assert lines[-1].split()[:3] == ["Total", str(4 * 2 * 9 + 4 + 64 * 3 + 3), "4"]

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    wrapper = torch.nn.Sequential(Identity())
    _, lines = _table(capsys, wrapper, [torch.ones(1)])
    assert [line.split()[0] for line in lines[2:-2]] == ["0"]  # top level adds nothing new: skipped
    _, lines = _table(capsys, wrapper, [torch.ones(1)], skip_redundant=False)
    assert [line.split()[0] for line in lines[2:-2]] == ["0", "<top-level>"]
    assert lines[-1].split() == ["Total", "0", "0", "-", "-"]


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*is deprecated:DeprecationWarning")
def test_print_module_summary_rejects_bad_arguments():
    with pytest.raises(AssertionError):
        misc.print_module_summary(_Top(), torch.ones(1))
    with pytest.raises(AssertionError):
        misc.print_module_summary(torch.jit.script(torch.nn.ReLU()), [torch.ones(1)])


def test_sample_labels_draws_one_randint_per_item_in_order():
    class Labels:
        def __len__(self):
            return 5

        def get_label(self, idx):
            return np.array([idx, -idx], dtype=np.float32)

    np.random.seed(7)
    labels = misc.sample_labels(Labels(), 4, "cpu")
    np.random.seed(7)
    expected = [np.random.randint(5) for _ in range(4)]
    assert labels.dtype == torch.float32 and labels.shape == (4, 2)
    assert labels[:, 0].tolist() == expected and labels[:, 1].tolist() == [-i for i in expected]


def test_gather_from_ranks_single_process_is_the_value_itself():
    value = torch.arange(3)
    assert misc.gather_from_ranks(value, 1)[0] is value
    assert misc.gather_from_ranks({"a": 1}, 1) == [{"a": 1}]
