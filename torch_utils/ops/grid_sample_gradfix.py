"""Bilinear `grid_sample` (zero padding, no corner alignment) whose input gradient is itself differentiable.

The augmentation pipeline samples images through a grid that depends only on random transform parameters; the R1
penalty then differentiates the discriminator's input gradient again, i.e. through the backward of this sampling.
With `enabled` False this is exactly `torch.nn.functional.grid_sample`. With `enabled` True (the training loop sets
it), CUDA inputs take a custom autograd function: forward = the same call; backward = PyTorch's grid-sampler
backward op, wrapped so that it can be differentiated with respect to the upstream gradient (sampling is linear in
the input, so that derivative is `grid_sample(incoming, grid)`, and nothing flows to the input). Differentiating
the grid gradient (a grid that requires grad, under `create_graph=True`) is delegated to autograd of the native op.
Values of every order equal the native function's. Inputs on other devices always take the native function, like
`conv2d_gradfix` (docs/compatibility.md, "Ops").
"""

import torch

enabled = False

# Device types whose inputs take the custom function while `enabled` is set. Tests add "cpu" to check it there.
_custom_op_devices = ("cuda",)

# Arguments of aten::grid_sampler_2d_backward for mode='bilinear', padding_mode='zeros', align_corners=False.
_BILINEAR = 0
_ZEROS = 0
_ALIGN_CORNERS = False


def grid_sample(input, grid):
    """Sample `input` `[N, C, H, W]` at `grid` `[N, Ho, Wo, 2]` (x, y in [-1, 1]) -> `[N, C, Ho, Wo]`."""
    if enabled and input.device.type in _custom_op_devices:
        return _GridSample2dForward.apply(input, grid)
    return _native_grid_sample(input, grid)


def _native_grid_sample(input, grid):
    return torch.nn.functional.grid_sample(
        input=input, grid=grid, mode="bilinear", padding_mode="zeros", align_corners=_ALIGN_CORNERS
    )


class _GridSample2dForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, grid):
        assert input.ndim == 4, f"grid_sample_gradfix: expected input [N, C, H, W], got {input.ndim}-D"
        assert grid.ndim == 4 and grid.shape[-1] == 2, (
            f"grid_sample_gradfix: expected grid [N, Ho, Wo, 2], got shape {list(grid.shape)}"
        )
        ctx.save_for_backward(input, grid)
        return _native_grid_sample(input, grid)

    @staticmethod
    def backward(ctx, grad_output):
        input, grid = ctx.saved_tensors
        if ctx.needs_input_grad[1] and torch.is_grad_enabled():
            # A differentiable grid gradient is requested (create_graph with a grid that requires grad): let
            # autograd differentiate the native op, which supports every term.
            wanted = [t for t, needed in zip([input, grid], ctx.needs_input_grad) if needed]
            with torch.enable_grad():
                output = _native_grid_sample(input, grid)
            grads = iter(torch.autograd.grad(output, wanted, grad_output, create_graph=True))
            return tuple(next(grads) if needed else None for needed in ctx.needs_input_grad)
        return _GridSample2dBackward.apply(grad_output, input, grid, *ctx.needs_input_grad)


class _GridSample2dBackward(torch.autograd.Function):
    """(grad_output, input, grid) -> (grad_input, grad_grid); differentiable with respect to grad_output."""

    @staticmethod
    def forward(ctx, grad_output, input, grid, want_input_grad, want_grid_grad):
        output_mask = [bool(want_input_grad), bool(want_grid_grad)]
        grad_input, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_output, input, grid, _BILINEAR, _ZEROS, _ALIGN_CORNERS, output_mask
        )
        ctx.save_for_backward(grid)
        ctx.set_materialize_grads(False)
        return (grad_input if output_mask[0] else None), (grad_grid if output_mask[1] else None)

    @staticmethod
    def backward(ctx, grad2_grad_input, grad2_grad_grid):
        (grid,) = ctx.saved_tensors
        # _GridSample2dForward routes every case with a differentiable grid gradient to native autograd.
        assert not ctx.needs_input_grad[2] and grad2_grad_grid is None, "grid_sample_gradfix: unexpected grid term"
        grad2_grad_output = None
        if ctx.needs_input_grad[0] and grad2_grad_input is not None:
            grad2_grad_output = _native_grid_sample(grad2_grad_input, grid)
        # The input gradient does not depend on the input (sampling is linear in it).
        return grad2_grad_output, None, None, None, None
