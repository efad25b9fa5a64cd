"""Fused multiply-add `a * b + c` with broadcasting (docs/compatibility.md, "Ops")."""

import torch


def fma(a, b, c):
    """Return `a * b + c` (computed as `torch.addcmul(c, a, b)`); gradients are reduced to each input's shape."""
    return _FusedMultiplyAdd.apply(a, b, c)


class _FusedMultiplyAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c):
        out = torch.addcmul(c, a, b)
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return out

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved_tensors
        da = db = dc = None
        if ctx.needs_input_grad[0]:
            da = _sum_to_shape(dout * b, a.shape)
        if ctx.needs_input_grad[1]:
            db = _sum_to_shape(dout * a, b.shape)
        if ctx.needs_input_grad[2]:
            dc = _sum_to_shape(dout, ctx.c_shape)
        return da, db, dc


def _sum_to_shape(x, shape):
    """Undo broadcasting: sum `x` over leading extra axes and over axes where `shape` has size 1."""
    extra_dims = x.ndim - len(shape)
    assert extra_dims >= 0, f"fma: cannot reduce a gradient of shape {list(x.shape)} to {list(shape)}"
    if extra_dims > 0:
        x = x.sum(dim=list(range(extra_dims)))
    size_one_dims = [i for i, size in enumerate(shape) if size == 1 and x.shape[i] != 1]
    if size_one_dims:
        x = x.sum(dim=size_one_dims, keepdim=True)
    assert x.shape == shape, f"fma: reduced gradient has shape {list(x.shape)}, expected {list(shape)}"
    return x
