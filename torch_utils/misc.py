"""Small PyTorch helpers shared by the networks, ops and training loop.

Everything here is also called by network source code embedded in reference pickles, so names, signatures and
defaults are part of the on-disk contract (foundation spec §3 and §7).
"""

import contextlib
import re
import warnings
from dataclasses import dataclass, field

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
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if device is None:
        device = torch.device("cpu")
    if memory_format is None:
        memory_format = torch.contiguous_format

    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key, None)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor, _ = torch.broadcast_tensors(tensor, torch.empty(shape))
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor


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
        if ref_size is None:
            continue
        if isinstance(ref_size, torch.Tensor):
            with suppress_tracer_warnings():
                symbolic_assert(torch.equal(torch.as_tensor(size), ref_size), f"Wrong size for dimension {idx}")
        elif isinstance(size, torch.Tensor):
            with suppress_tracer_warnings():
                symbolic_assert(
                    torch.equal(size, torch.as_tensor(ref_size)), f"Wrong size for dimension {idx}: expected {ref_size}"
                )
        elif size != ref_size:
            raise AssertionError(f"Wrong size for dimension {idx}: got {size}, expected {ref_size}")


def profiled_function(fn):
    """Decorator: run `fn` inside a profiler range named after it."""

    def decorator(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)

    decorator.__name__ = fn.__name__
    return decorator


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
        num_items = len(self.dataset)
        order = np.arange(num_items)
        rnd = None
        window = 0
        if self.shuffle:
            rnd = np.random.RandomState(self.seed)
            rnd.shuffle(order)
            window = int(np.rint(order.size * self.window_size))

        idx = 0
        while True:
            i = idx % order.size
            if idx % self.num_replicas == self.rank:
                yield order[i]
            if window >= 2:
                j = (i - rnd.randint(window)) % order.size
                order[i], order[j] = order[j], order[i]
            idx += 1


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
    src_tensors = dict(named_params_and_buffers(src_module))
    for name, tensor in named_params_and_buffers(dst_module):
        assert (name in src_tensors) or (not require_all), f"copy_params_and_buffers: source lacks '{name}'"
        if name in src_tensors:
            tensor.copy_(src_tensors[name].detach()).requires_grad_(tensor.requires_grad)


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
    """Assert that every parameter/buffer equals rank 0's copy (names matching `ignore_regex` are skipped)."""
    assert isinstance(module, torch.nn.Module), f"expected a torch.nn.Module, got {type(module).__name__}"
    for name, tensor in named_params_and_buffers(module):
        fullname = type(module).__name__ + "." + name
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        assert (tensor == other).all(), fullname


# ----------------------------------------------------------------------------
# Module summary table.


@dataclass
class _SummaryEntry:
    mod: torch.nn.Module
    outputs: list
    unique_params: list = field(default_factory=list)
    unique_buffers: list = field(default_factory=list)
    unique_outputs: list = field(default_factory=list)


def _tensor_outputs(outputs):
    """Flatten a module's return value one level and keep only the tensors."""
    outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    return [t for t in outputs if isinstance(t, torch.Tensor)]


def _dtype_name(tensor):
    return str(tensor.dtype).split(".")[-1]


def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    """Run `module(*inputs)` once and print a table of parameters, buffers and output shapes per sub-module.

    Returns the forward pass outputs. Follows the reference's table layout, including its quirk of showing the
    first output's shape on every row of a multi-output entry.
    """
    assert isinstance(module, torch.nn.Module), f"expected a torch.nn.Module, got {type(module).__name__}"
    assert not isinstance(module, torch.jit.ScriptModule), "print_module_summary cannot hook a ScriptModule"
    assert isinstance(inputs, (tuple, list)), f"inputs must be a tuple or list, got {type(inputs).__name__}"

    entries = []
    nesting = [0]

    def pre_hook(_mod, _inputs):
        nesting[0] += 1

    def post_hook(mod, _inputs, outputs):
        nesting[0] -= 1
        if nesting[0] <= max_nesting:
            entries.append(_SummaryEntry(mod=mod, outputs=_tensor_outputs(outputs)))

    hooks = [mod.register_forward_pre_hook(pre_hook) for mod in module.modules()]
    hooks += [mod.register_forward_hook(post_hook) for mod in module.modules()]
    try:
        outputs = module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()

    # Attribute each tensor to the first (deepest) entry that owns or produces it.
    tensors_seen = set()
    for e in entries:
        e.unique_params = [t for t in e.mod.parameters() if id(t) not in tensors_seen]
        e.unique_buffers = [t for t in e.mod.buffers() if id(t) not in tensors_seen]
        e.unique_outputs = [t for t in e.outputs if id(t) not in tensors_seen]
        tensors_seen |= {id(t) for t in e.unique_params + e.unique_buffers + e.unique_outputs}
    if skip_redundant:
        entries = [e for e in entries if len(e.unique_params) or len(e.unique_buffers) or len(e.unique_outputs)]

    rows = [[type(module).__name__, "Parameters", "Buffers", "Output shape", "Datatype"]]
    rows += [["---"] * len(rows[0])]
    param_total = 0
    buffer_total = 0
    submodule_names = {mod: name for name, mod in module.named_modules()}
    for e in entries:
        name = "<top-level>" if e.mod is module else submodule_names[e.mod]
        param_size = sum(t.numel() for t in e.unique_params)
        buffer_size = sum(t.numel() for t in e.unique_buffers)
        output_shapes = [str(list(e.outputs[0].shape)) for _ in e.outputs]
        output_dtypes = [_dtype_name(t) for t in e.outputs]
        rows += [
            [
                name + (":0" if len(e.outputs) >= 2 else ""),
                str(param_size) if param_size else "-",
                str(buffer_size) if buffer_size else "-",
                (output_shapes + ["-"])[0],
                (output_dtypes + ["-"])[0],
            ]
        ]
        for idx in range(1, len(e.outputs)):
            rows += [[name + f":{idx}", "-", "-", output_shapes[idx], output_dtypes[idx]]]
        param_total += param_size
        buffer_total += buffer_size
    rows += [["---"] * len(rows[0])]
    rows += [["Total", str(param_total), str(buffer_total), "-", "-"]]

    widths = [max(len(cell) for cell in column) for column in zip(*rows)]
    print()
    for row in rows:
        print("  ".join(cell + " " * (width - len(cell)) for cell, width in zip(row, widths)))
    print()
    return outputs
