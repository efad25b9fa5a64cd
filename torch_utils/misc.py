"""Small PyTorch helpers shared by the networks, ops and training loop.

Everything here is also called by network source code embedded in reference pickles, so names, signatures and
defaults are part of the on-disk contract (docs/compatibility.md, "Foundation").
"""

import contextlib
import functools
import itertools
import re
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

# ----------------------------------------------------------------------------
# Cached constants.

_constant_cache = dict()


def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """Return a cached tensor holding `value` (never modify the result in place).

    The torch dtype defaults to `torch.get_default_dtype()` whatever the NumPy dtype of `value` is; when `shape` is
    given the value is broadcast to it.
    """
    array = np.asarray(value)
    spec = _ConstantSpec(
        shape=None if shape is None else tuple(shape),
        dtype=torch.get_default_dtype() if dtype is None else dtype,
        device=torch.device("cpu") if device is None else device,
        memory_format=torch.contiguous_format if memory_format is None else memory_format,
    )
    # The value is identified by its raw bytes plus NumPy shape and dtype, so equal data shares one tensor.
    key = (array.shape, array.dtype, array.tobytes(), *spec)
    cached = _constant_cache.get(key)
    if cached is None:
        cached = _constant_cache[key] = spec.materialize(array)
    return cached


class _ConstantSpec(NamedTuple):
    """How a cached constant is laid out; the field order is part of the cache key."""

    shape: tuple | None
    dtype: torch.dtype
    device: torch.device
    memory_format: torch.memory_format

    def materialize(self, array):
        # Copy first: torch.as_tensor may share memory with the caller's array.
        tensor = torch.as_tensor(array.copy(), dtype=self.dtype, device=self.device)
        if self.shape is not None:
            tensor = tensor.broadcast_to(torch.broadcast_shapes(tensor.shape, self.shape))
        return tensor.contiguous(memory_format=self.memory_format)


# ----------------------------------------------------------------------------
# Aliases kept under the names the reference code uses.

nan_to_num = torch.nan_to_num
symbolic_assert = torch._assert


# ----------------------------------------------------------------------------
# Tracing helpers.


def _notify_warning_filters_changed():
    # Invalidates per-module "already warned" registries, as warnings.filterwarnings() does; the hook is private
    # and absent on some Python versions, where skipping it only means a stale registry.
    notify = getattr(warnings, "_filters_mutated", None)
    if callable(notify):
        notify()


@contextlib.contextmanager
def suppress_tracer_warnings():
    """Ignore `torch.jit.TracerWarning` inside the block.

    Only the filter entry added here is removed on exit, so filters installed by others meanwhile survive.
    """
    entry = ("ignore", None, torch.jit.TracerWarning, None, 0)
    warnings.filters.insert(0, entry)
    _notify_warning_filters_changed()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            warnings.filters.remove(entry)
        _notify_warning_filters_changed()


def assert_shape(tensor, ref_shape):
    """Check that `tensor.shape` matches `ref_shape` (a list of ints, `None` wildcards or tensors).

    While tracing, sizes are tensors; those comparisons become symbolic assertions recorded in the graph.
    """
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f"Wrong number of dimensions: got {tensor.ndim}, expected {len(ref_shape)}")
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        traced = isinstance(size, torch.Tensor) or isinstance(ref_size, torch.Tensor)
        if ref_size is None:
            pass
        elif traced:
            _assert_traced_size(idx, size, ref_size)
        elif size != ref_size:
            raise AssertionError(f"Wrong size for dimension {idx}: got {size}, expected {ref_size}")


def _assert_traced_size(idx, size, ref_size):
    """Record `size == ref_size` in the traced graph; one of them is a tensor (the messages are the reference's)."""
    with suppress_tracer_warnings():
        if isinstance(ref_size, torch.Tensor):
            symbolic_assert(torch.equal(torch.as_tensor(size), ref_size), f"Wrong size for dimension {idx}")
        else:
            expected = torch.as_tensor(ref_size)
            symbolic_assert(torch.equal(size, expected), f"Wrong size for dimension {idx}: expected {ref_size}")


def profiled_function(fn):
    """Decorator: every call of `fn` shows up in the autograd profiler as a range named after `fn`.

    `functools.wraps` keeps the wrapped function's name (the profiler range and, for pickling by reference, its
    qualified name).
    """

    @functools.wraps(fn)
    def profiled(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)

    return profiled


# ----------------------------------------------------------------------------
# Endless, rank-aware data sampling.


class InfiniteSampler(torch.utils.data.Sampler):
    """Yield dataset indices forever, shuffled within a sliding window; each rank gets an interleaved share.

    Every iterator replays the same sequence: `order` starts as a `RandomState(seed)` permutation, and after each
    global step the current slot is swapped with one up to `window - 1` slots behind it. All ranks perform the
    same swaps, so rank `r` of `n` yields exactly positions `r, r + n, r + 2n, ...` of one shared stream.
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5):
        assert len(dataset) > 0, "InfiniteSampler: the dataset is empty"
        assert num_replicas > 0, f"InfiniteSampler: num_replicas must be positive, got {num_replicas}"
        assert 0 <= rank < num_replicas, f"InfiniteSampler: rank must be in [0, {num_replicas}), got {rank}"
        assert 0 <= window_size <= 1, f"InfiniteSampler: window_size must be in [0, 1], got {window_size}"
        # Current PyTorch's Sampler.__init__ takes no data source (passing one raises TypeError).
        super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size

    def __iter__(self):
        # Each rank takes every num_replicas-th item of the shared stream, starting at its own rank.
        return itertools.islice(self._shared_stream(), self.rank, None, self.num_replicas)

    def _shared_stream(self):
        """The index stream of all ranks together (infinite generator of NumPy int64 indices)."""
        order = np.arange(len(self.dataset))
        if not self.shuffle:
            yield from itertools.cycle(order)
            return

        rnd = np.random.RandomState(self.seed)
        rnd.shuffle(order)
        window = int(np.rint(order.size * self.window_size))
        for slot in itertools.cycle(range(order.size)):
            yield order[slot]
            # Windows of 0 or 1 slots would only ever swap a slot with itself: no draws at all then.
            if window >= 2:
                partner = (slot - rnd.randint(window)) % order.size
                order[[slot, partner]] = order[[partner, slot]]


# ----------------------------------------------------------------------------
# Parameters and buffers.


def params_and_buffers(module):
    """All parameters followed by all buffers of `module` (list of tensors)."""
    assert isinstance(module, torch.nn.Module), f"expected a torch.nn.Module, got {type(module).__name__}"
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module):
    """`(dotted_name, tensor)` pairs: all named parameters followed by all named buffers of `module`."""
    assert isinstance(module, torch.nn.Module), f"expected a torch.nn.Module, got {type(module).__name__}"
    return list(module.named_parameters()) + list(module.named_buffers())


def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Copy values of same-named parameters/buffers from `src_module` into `dst_module` in place.

    With `require_all`, every destination name must exist in the source. Destinations keep their `requires_grad`.
    """
    assert isinstance(src_module, torch.nn.Module), f"expected a torch.nn.Module, got {type(src_module).__name__}"
    assert isinstance(dst_module, torch.nn.Module), f"expected a torch.nn.Module, got {type(dst_module).__name__}"
    sources = dict(named_params_and_buffers(src_module))
    for name, dst in named_params_and_buffers(dst_module):
        src = sources.get(name)
        if src is None:
            assert not require_all, f"copy_params_and_buffers: source lacks '{name}'"
            continue
        wanted_grad = dst.requires_grad
        dst.copy_(src.detach())
        dst.requires_grad_(wanted_grad)


# ----------------------------------------------------------------------------
# Distributed helpers.


@contextlib.contextmanager
def ddp_sync(module, sync):
    """Inside the block, skip DDP's gradient all-reduce unless `sync` is true (gradient accumulation)."""
    assert isinstance(module, torch.nn.Module), f"expected a torch.nn.Module, got {type(module).__name__}"
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield


def check_ddp_consistency(module, ignore_regex=None):
    """Assert that every parameter/buffer equals rank 0's copy (names matching `ignore_regex` are skipped).

    Names are reported as `<class name>.<dotted name>`, e.g. `Generator.mapping.w_avg`.
    """
    assert isinstance(module, torch.nn.Module), f"expected a torch.nn.Module, got {type(module).__name__}"
    prefix = type(module).__name__ + "."
    for name, tensor in named_params_and_buffers(module):
        fullname = prefix + name
        if ignore_regex is None or not re.fullmatch(ignore_regex, fullname):
            assert _equals_rank0_copy(tensor), fullname


def _equals_rank0_copy(tensor):
    """Broadcast rank 0's value of `tensor` and compare it elementwise with the local one (NaNs count as equal)."""
    local = tensor.detach()
    if local.is_floating_point():
        local = nan_to_num(local)
    rank0 = local.clone()
    torch.distributed.broadcast(tensor=rank0, src=0)
    return bool((local == rank0).all())


def gather_from_ranks(x, num_gpus):
    """Every process's `x` as a list in rank order; every process receives the whole list (collective).

    A tensor (equal shape and dtype on all processes, on the process group's device) is sent as it is, each rank
    broadcasting its own in turn; any other picklable object is pickled. With one process this is `[x]`.
    """
    if num_gpus == 1:
        return [x]
    if isinstance(x, torch.Tensor):
        gathered = [x.clone() for _ in range(num_gpus)]
        for src, buf in enumerate(gathered):
            torch.distributed.broadcast(buf, src=src)
        return gathered
    gathered = [None] * num_gpus
    torch.distributed.all_gather_object(gathered, x)
    return gathered


# ----------------------------------------------------------------------------
# Conditioning labels.


def sample_labels(dataset, count, device):
    """Labels of `count` random items of `dataset` as float32 `[count, label_dim]` on `device`.

    One `np.random.randint(len(dataset))` per item, from the global NumPy RNG, in order: the training loop and
    the metrics draw generator labels this way, and the draws are part of their reproducible random streams.
    They are drawn even for unconditional networks (zero-width labels), which keeps the streams the same.
    """
    labels = [dataset.get_label(np.random.randint(len(dataset))) for _ in range(count)]
    labels = torch.from_numpy(np.stack(labels))
    if torch.device(device).type == "cuda":
        labels = labels.pin_memory()
    return labels.to(device)


# ----------------------------------------------------------------------------
# Module summary table.


class _ForwardRecorder:
    """Forward hooks that log `(module, tensor outputs)` for every module at most `max_depth` calls deep.

    The root call is depth 0. Modules are logged when their forward returns, so children precede their parents.
    """

    def __init__(self, max_depth):
        self.max_depth = max_depth
        self.depth = 0
        self.log = []

    def attach(self, root, stack):
        """Hook every module under `root` (itself included); the hooks go away when `stack` closes."""
        for mod in root.modules():
            stack.enter_context(mod.register_forward_pre_hook(self._on_enter))
            stack.enter_context(mod.register_forward_hook(self._on_exit))

    def _on_enter(self, _mod, _inputs):
        self.depth += 1

    def _on_exit(self, mod, _inputs, result):
        self.depth -= 1
        if self.depth <= self.max_depth:
            self.log.append((mod, _tensor_outputs(result)))


def _tensor_outputs(result):
    """Flatten a module's return value one level and keep only the tensors."""
    items = result if isinstance(result, (tuple, list)) else [result]
    return [item for item in items if isinstance(item, torch.Tensor)]


@dataclass
class _SummaryItem:
    """One logged module call, with the element counts of the tensors first seen there."""

    mod: torch.nn.Module
    outputs: list
    num_params: int
    num_buffers: int
    adds_tensors: bool  # False when every parameter, buffer and output was already shown by an earlier item


def _attribute_tensors(log):
    """Turn the forward log into summary items, crediting each tensor to the first logged call that has it.

    Since children are logged first, parameters land on the deepest logged owner, and an output passed up
    unchanged from a child is not counted again for the parent.
    """
    seen = set()
    items = []
    for mod, outputs in log:
        params = [t for t in mod.parameters() if id(t) not in seen]
        buffers = [t for t in mod.buffers() if id(t) not in seen]
        fresh_outputs = [t for t in outputs if id(t) not in seen]
        seen.update(id(t) for t in itertools.chain(params, buffers, fresh_outputs))
        items.append(
            _SummaryItem(
                mod=mod,
                outputs=outputs,
                num_params=sum(t.numel() for t in params),
                num_buffers=sum(t.numel() for t in buffers),
                adds_tensors=bool(params or buffers or fresh_outputs),
            )
        )
    return items


def _count_cell(count):
    return str(count) if count else "-"


def _item_rows(name, item):
    """Table rows of one item: one per output (at least one).

    As in the reference, every row shows the shape of the entry's first output; the dtype is per output.
    """
    outputs = item.outputs
    shape = str(list(outputs[0].shape)) if outputs else "-"
    dtypes = [str(t.dtype).removeprefix("torch.") for t in outputs] or ["-"]
    first_name = f"{name}:0" if len(outputs) > 1 else name
    rows = [[first_name, _count_cell(item.num_params), _count_cell(item.num_buffers), shape, dtypes[0]]]
    rows += [[f"{name}:{k}", "-", "-", shape, dtypes[k]] for k in range(1, len(outputs))]
    return rows


def _aligned_lines(rows):
    """Left-align every column to its widest cell; columns are separated by two spaces."""
    widths = [max(len(cell) for cell in column) for column in zip(*rows)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]


def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    """Run `module(*inputs)` once and print a table of parameters, buffers and output shapes per sub-module.

    Returns the forward pass outputs. Follows the reference's table layout, including its quirk of showing the
    first output's shape on every row of a multi-output entry.
    """
    assert isinstance(module, torch.nn.Module), f"expected a torch.nn.Module, got {type(module).__name__}"
    assert not isinstance(module, torch.jit.ScriptModule), "print_module_summary cannot hook a ScriptModule"
    assert isinstance(inputs, (tuple, list)), f"inputs must be a tuple or list, got {type(inputs).__name__}"

    recorder = _ForwardRecorder(max_depth=max_nesting)
    with contextlib.ExitStack() as hooks:
        recorder.attach(module, hooks)
        outputs = module(*inputs)

    items = _attribute_tensors(recorder.log)
    if skip_redundant:
        items = [item for item in items if item.adds_tensors]

    names = {mod: name for name, mod in module.named_modules()}
    names[module] = "<top-level>"
    separator = ["---"] * 5
    rows = [[type(module).__name__, "Parameters", "Buffers", "Output shape", "Datatype"], separator]
    for item in items:
        rows += _item_rows(names[item.mod], item)
    total_params = sum(item.num_params for item in items)
    total_buffers = sum(item.num_buffers for item in items)
    rows += [separator, ["Total", str(total_params), str(total_buffers), "-", "-"]]

    print()
    for line in _aligned_lines(rows):
        print(line)
    print()
    return outputs
