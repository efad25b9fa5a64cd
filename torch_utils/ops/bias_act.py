"""Fused bias + activation + gain + clamp: `clamp(gain * act(x + b), -clamp, +clamp)`.

The activation table and the defaults it supplies are fixed by docs/compatibility.md, "Ops".

The pure-PyTorch path (`impl='ref'`) is the normative definition; its gradients of every order come from autograd.

Native plugin contract (the CUDA sources `bias_act.cpp/.cu/.h` next to this file build `bias_act_plugin`):
`plugin.bias_act(x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp) -> Tensor`, elementwise over `x` (same
shape, dtype and memory format), with `b` broadcast along axis `dim`; empty tensors stand for "not given";
`act` is the record's `cuda_idx`; `clamp < 0` means no clamp. Let `s = xref + b` (biased input) and `y = yref`.
  - grad=0: returns `clamp(gain * act(x + b))`.
  - grad=1: `x` is an upstream gradient; returns `x * gain * act'(s)` (the derivative evaluated from `y / gain` for
    records whose `ref` is 'y', from `s` when it is 'x'), zero where `y` is not strictly inside (-clamp, clamp).
  - grad=2: `x` is an incoming gradient for the grad=1 result and `dy` the upstream gradient given to grad=1;
    returns `x * dy * gain * act''(s)` with the same clamp mask (only used when `has_2nd_grad`).
"""

import numpy as np
import torch

import dnnlib
from torch_utils import custom_ops, misc
from torch_utils.ops import fast_path

# ----------------------------------------------------------------------------
# Activation table. `def_gain` keeps NumPy float64 / int values: networks read and store it as their act_gain.

_SQRT2 = np.sqrt(2)


def _record(func, def_alpha, def_gain, cuda_idx, ref, has_2nd_grad):
    return dnnlib.EasyDict(
        func=func, def_alpha=def_alpha, def_gain=def_gain, cuda_idx=cuda_idx, ref=ref, has_2nd_grad=has_2nd_grad
    )


# Columns: func(x, alpha=...), def_alpha, def_gain, cuda_idx, ref (saved tensor the native derivative reads),
# has_2nd_grad (False for piecewise-linear activations).
activation_funcs = {
    "linear": _record(lambda x, **_: x, 0, 1, 1, "", False),
    "relu": _record(lambda x, **_: torch.nn.functional.relu(x), 0, _SQRT2, 2, "y", False),
    "lrelu": _record(lambda x, alpha, **_: torch.nn.functional.leaky_relu(x, alpha), 0.2, _SQRT2, 3, "y", False),
    "tanh": _record(lambda x, **_: torch.tanh(x), 0, 1, 4, "y", True),
    "sigmoid": _record(lambda x, **_: torch.sigmoid(x), 0, 1, 5, "y", True),
    "elu": _record(lambda x, **_: torch.nn.functional.elu(x), 0, 1, 6, "y", True),
    "selu": _record(lambda x, **_: torch.nn.functional.selu(x), 0, 1, 7, "y", True),
    "softplus": _record(lambda x, **_: torch.nn.functional.softplus(x), 0, 1, 8, "y", True),
    "swish": _record(lambda x, **_: torch.sigmoid(x) * x, 0, _SQRT2, 9, "x", True),
}


def _activation(act):
    if act not in activation_funcs:
        raise ValueError(f"bias_act: unknown activation {act!r}, expected one of {sorted(activation_funcs)}")
    return activation_funcs[act]


# ----------------------------------------------------------------------------
# Optional native plugin. CPU tensors never trigger a build; a failed or impossible build warns once and the
# reference path is used for the rest of the process.


def _self_check(device="cuda"):
    """Compare the installed plugin with the reference path on a small input (values and first derivatives).

    Uses a private generator so that the global RNG streams of a training run are not touched, and turns autograd
    on for itself: the first CUDA call, which triggers this check, may come from inside `torch.no_grad()` (e.g.
    generate.py) or `torch.inference_mode()`.
    """
    with torch.inference_mode(False), torch.enable_grad():
        gen = torch.Generator().manual_seed(0)
        x = (torch.randn([2, 8, 5, 5], generator=gen) * 3).to(device)
        b = torch.randn([8], generator=gen).to(device)
        dy = torch.randn([2, 8, 5, 5], generator=gen).to(device)
        for act in activation_funcs:
            for clamp in [None, 2.5]:
                results = []
                for use_plugin in [False, True]:
                    xi = x.clone().requires_grad_(True)
                    if use_plugin:
                        y = _bias_act_cuda(dim=1, act=act, alpha=None, gain=None, clamp=clamp).apply(xi, b)
                    else:
                        y = _bias_act_ref(x=xi, b=b, dim=1, act=act, alpha=None, gain=None, clamp=clamp)
                    (dx,) = torch.autograd.grad(y, xi, dy)
                    results.append((y.detach(), dx))
                for name, ref, out in zip(["y", "dx"], results[0], results[1], strict=True):
                    worst = float((out - ref).abs().max())
                    if worst > 1e-4 * max(1.0, float(ref.abs().max())):
                        return f"act={act} clamp={clamp}: max |{name} - ref| = {worst:g}"
    return None


_plugin = custom_ops.op_plugin("bias_act", __file__, self_check=_self_check)


# ----------------------------------------------------------------------------
# The operation.


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="cuda"):
    """Add a bias along axis `dim`, apply an activation, scale by `gain` and clamp to [-clamp, +clamp].

    Args:
        x: tensor of any shape.
        b: None or a 1-D tensor of length `x.shape[dim]` with `x`'s dtype.
        dim: the axis `b` runs along (0 <= dim < x.ndim).
        act: a key of `activation_funcs`.
        alpha, gain: None selects the activation's default.
        clamp: None (no clamp) or a value >= 0.
        impl: 'cuda' (native kernels for CUDA tensors when available, the CPU fast path for float32 CPU tensors when
            `fast_path` is on, else the reference) or 'ref' (always the reference).

    Returns:
        Tensor with `x`'s shape and dtype.
    """
    assert isinstance(x, torch.Tensor), f"bias_act: x must be a tensor, got {type(x).__name__}"
    assert impl in ["ref", "cuda"], f"bias_act: impl must be 'ref' or 'cuda', got {impl!r}"
    if impl == "cuda" and x.device.type == "cuda" and _plugin.available():
        # Layout changes happen outside the autograd function so the tensors it saves stay in the graph.
        x = x.contiguous(memory_format=_memory_format_of(x))
        b = b.contiguous() if b is not None else None
        return _bias_act_cuda(dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp).apply(x, b)
    if impl == "cuda" and fast_path.applies(x) and not fast_path.needs_grad(x, b):
        return _bias_act_in_place(x=x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    return _bias_act_ref(x=x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


def _memory_format_of(x):
    """Channels-last for a 4-D tensor stored that way (stride 1 on axis 1); every other tensor is kept contiguous."""
    return torch.channels_last if x.ndim == 4 and x.stride(1) == 1 else torch.contiguous_format


def _resolve_args(act, alpha, gain, clamp):
    """Defaults from the activation record; all numbers as Python floats, clamp -1 meaning "none"."""
    assert clamp is None or clamp >= 0, f"bias_act: clamp must be None or >= 0, got {clamp}"
    spec = _activation(act)
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    return spec, alpha, gain, clamp


def _check_bias(x, b, dim):
    assert isinstance(b, torch.Tensor) and b.ndim == 1, "bias_act: b must be None or a 1-D tensor"
    assert 0 <= dim < x.ndim, f"bias_act: dim must be in [0, {x.ndim}), got {dim}"
    assert b.shape[0] == x.shape[dim], f"bias_act: b has {b.shape[0]} entries but x.shape[{dim}] is {x.shape[dim]}"


@misc.profiled_function
def _bias_act_ref(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """Pure-PyTorch bias_act as separate elementwise ops (each rounds to x's dtype)."""
    assert isinstance(x, torch.Tensor), f"bias_act: x must be a tensor, got {type(x).__name__}"
    spec, alpha, gain, clamp = _resolve_args(act, alpha, gain, clamp)

    if b is not None:
        _check_bias(x, b, dim)
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha=alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# In-place versions of the activations that have one (the others run out of place).
_IN_PLACE_ACTIVATIONS = {
    "relu": lambda x, **_: torch.nn.functional.relu_(x),
    "lrelu": lambda x, alpha, **_: torch.nn.functional.leaky_relu_(x, alpha),
    "tanh": lambda x, **_: x.tanh_(),
    "sigmoid": lambda x, **_: x.sigmoid_(),
    "elu": lambda x, **_: torch.nn.functional.elu_(x),
}


@misc.profiled_function
def _bias_act_in_place(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """`_bias_act_ref` (same ops, same rounding, bitwise equal) with every step after the first in place, for
    the CPU fast path when no gradient is recorded: one new tensor instead of up to four."""
    spec, alpha, gain, clamp = _resolve_args(act, alpha, gain, clamp)
    y = x
    if b is not None:
        _check_bias(x, b, dim)
        y = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    # The caller's tensor is never written: the first step that makes a new tensor runs out of place.
    if act in _IN_PLACE_ACTIVATIONS and y is not x:
        y = _IN_PLACE_ACTIVATIONS[act](y, alpha=alpha)
    else:
        y = spec.func(y, alpha=alpha)
    if gain != 1:
        y = y.mul_(gain) if y is not x else y * gain
    if clamp >= 0:
        y = y.clamp_(-clamp, clamp) if y is not x else y.clamp(-clamp, clamp)
    return y


_bias_act_cuda_cache = dict()


def _bias_act_cuda(dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """Autograd functions (cached per configuration) running the native plugin, differentiable to any order."""
    spec, alpha, gain, clamp = _resolve_args(act, alpha, gain, clamp)
    key = (dim, act, alpha, gain, clamp)
    if key in _bias_act_cuda_cache:
        return _bias_act_cuda_cache[key]

    is_identity = act == "linear" and gain == 1 and clamp < 0
    needs_x = "x" in spec.ref or spec.has_2nd_grad
    needs_y = "y" in spec.ref or clamp >= 0  # the clamp mask of the gradient is read from the output

    def reduce_to_bias(t):
        dims = [i for i in range(t.ndim) if i != dim]
        return t.sum(dims) if dims else t  # An empty list would make sum() reduce over every dimension.

    class BiasActCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            null = x.new_empty([0])
            ctx.memory_format = _memory_format_of(x)
            assert x.is_contiguous(memory_format=ctx.memory_format), "bias_act: x must be dense in its layout"
            if b is not None:
                _check_bias(x, b, dim)
                assert b.is_contiguous(), "bias_act: b must be contiguous"
            else:
                b = null
            y = x
            if not is_identity or b.numel() > 0:
                y = _plugin.module.bias_act(x, b, null, null, null, 0, dim, spec.cuda_idx, alpha, gain, clamp)
            ctx.save_for_backward(
                x if needs_x else null,
                b if needs_x else null,
                y if needs_y else null,
            )
            return y

        @staticmethod
        def backward(ctx, dy):
            dy = dy.contiguous(memory_format=ctx.memory_format)
            x, b, y = ctx.saved_tensors
            dx = db = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                dx = dy if is_identity else BiasActCudaGrad.apply(dy, x, b, y)
            if ctx.needs_input_grad[1]:
                db = reduce_to_bias(dx)
            return dx, db

    class BiasActCudaGrad(torch.autograd.Function):
        """dx as a function of (dy, x, b, y); its own backward gives the second-order terms."""

        @staticmethod
        def forward(ctx, dy, x, b, y):
            null = dy.new_empty([0])
            ctx.memory_format = _memory_format_of(dy)
            dx = _plugin.module.bias_act(dy, b, x, y, null, 1, dim, spec.cuda_idx, alpha, gain, clamp)
            ctx.save_for_backward(dy if spec.has_2nd_grad else null, x, b, y)
            return dx

        @staticmethod
        def backward(ctx, d_dx):
            d_dx = d_dx.contiguous(memory_format=ctx.memory_format)
            dy, x, b, y = ctx.saved_tensors
            d_dy = d_x = d_b = None
            if ctx.needs_input_grad[0]:
                d_dy = BiasActCudaGrad.apply(d_dx, x, b, y)
            # The grad=2 kernel returns the full derivative with respect to x (including the path through y),
            # so y itself receives no gradient.
            if spec.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
                d_x = _plugin.module.bias_act(d_dx, b, x, y, dy, 2, dim, spec.cuda_idx, alpha, gain, clamp)
            if spec.has_2nd_grad and ctx.needs_input_grad[2]:
                d_b = reduce_to_bias(d_x)
            return d_dy, d_x, d_b, None

    _bias_act_cuda_cache[key] = BiasActCuda
    return BiasActCuda
