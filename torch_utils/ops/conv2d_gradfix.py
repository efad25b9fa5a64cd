"""Drop-in `conv2d` / `conv_transpose2d` with arbitrarily differentiable gradients and optional weight-gradient skip.

With `enabled` False (the default) both functions are exactly `torch.nn.functional.conv2d` / `conv_transpose2d`.
With `enabled` True (the training loop sets it), CUDA inputs run a custom autograd function whose backward is built
from the same convolution ops, so gradients of any order are available, and whose weight gradient is skipped
(returned as None) while `no_weight_gradients()` is active. The R1 and path-length penalties wrap their inner
`torch.autograd.grad(..., inputs=[images or ws])` calls in that context: the weight gradient is never requested
there, so skipping it saves time without changing any number; second-order terms flowing through the input gradient
(which depends on the weights) are still produced. Forward values are identical in both modes.

Inputs on any other device always take plain `torch.nn.functional` autograd, as in the reference, whose custom op is
CUDA-only: its backward rounds differently from PyTorch's own convolution backward, and on the CPU a training run
must round exactly like the reference's (docs/compatibility.md, "Ops").
"""

import contextlib

import torch

enabled = False
weight_gradients_disabled = False

# Device types whose inputs take the custom op while `enabled` is set. Tests add "cpu" to check the op on the CPU.
_custom_op_devices = ("cuda",)


@contextlib.contextmanager
def no_weight_gradients(disable=True):
    """Skip weight gradients of the custom op for backward passes run inside the block (`disable=False`: no-op)."""
    global weight_gradients_disabled
    previous = weight_gradients_disabled
    if disable:
        weight_gradients_disabled = True
    try:
        yield
    finally:
        weight_gradients_disabled = previous


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Same arguments and result as `torch.nn.functional.conv2d`."""
    if _should_use_custom_op(input, stride, padding, dilation):
        op = _conv2d_gradfix(
            transpose=False,
            weight_shape=weight.shape,
            stride=stride,
            padding=padding,
            output_padding=0,
            dilation=dilation,
            groups=groups,
        )
        return op.apply(input, weight, bias)
    return torch.nn.functional.conv2d(
        input=input, weight=weight, bias=bias, stride=stride, padding=padding, dilation=dilation, groups=groups
    )


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Same arguments (note the order of the last two) and result as `torch.nn.functional.conv_transpose2d`."""
    if _should_use_custom_op(input, stride, padding, dilation, output_padding):
        op = _conv2d_gradfix(
            transpose=True,
            weight_shape=weight.shape,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
        )
        return op.apply(input, weight, bias)
    return torch.nn.functional.conv_transpose2d(
        input=input,
        weight=weight,
        bias=bias,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        groups=groups,
        dilation=dilation,
    )


def _should_use_custom_op(input, *geometry):
    """Custom op only when enabled, for 4-D inputs on a `_custom_op_devices` device with integer geometry
    (e.g. padding='same' goes native)."""
    if not enabled or not isinstance(input, torch.Tensor) or input.ndim != 4:
        return False
    if input.device.type not in _custom_op_devices:
        return False
    for value in geometry:
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, int) for v in values):
            return False
    return True


def _tuple_of_ints(value, ndim):
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim
    assert len(values) == ndim, f"conv2d_gradfix: expected {ndim} values, got {value!r}"
    assert all(isinstance(v, int) for v in values), f"conv2d_gradfix: expected ints, got {value!r}"
    return values


def _backward_output_padding(input_shape, output_shape, weight_shape, stride, padding, dilation):
    """Output padding that makes the opposite-direction op of a regular conv reproduce the input's size exactly."""
    return [
        input_shape[i + 2]
        - (output_shape[i + 2] - 1) * stride[i]
        - (1 - 2 * padding[i])
        - dilation[i] * (weight_shape[i + 2] - 1)
        for i in range(2)
    ]


_conv2d_gradfix_cache = dict()


def _conv2d_gradfix(transpose, weight_shape, stride, padding, output_padding, dilation, groups):
    """Autograd function for one convolution geometry (cached); its backward ops are themselves such functions."""
    ndim = 2
    weight_shape = tuple(int(s) for s in weight_shape)
    stride = _tuple_of_ints(stride, ndim)
    padding = _tuple_of_ints(padding, ndim)
    output_padding = _tuple_of_ints(output_padding, ndim)
    dilation = _tuple_of_ints(dilation, ndim)

    key = (transpose, weight_shape, stride, padding, output_padding, dilation, groups)
    if key not in _conv2d_gradfix_cache:
        _check_geometry(transpose, weight_shape, stride, padding, output_padding, dilation, groups)
        _conv2d_gradfix_cache[key] = _make_conv_function(key)
    return _conv2d_gradfix_cache[key]


def _check_geometry(transpose, weight_shape, stride, padding, output_padding, dilation, groups):
    ndim = len(stride)
    assert groups >= 1, f"conv2d_gradfix: groups must be >= 1, got {groups}"
    assert len(weight_shape) == ndim + 2, f"conv2d_gradfix: expected a 4-D weight, got shape {list(weight_shape)}"
    assert all(s >= 1 for s in stride), f"conv2d_gradfix: stride must be >= 1, got {stride}"
    assert all(p >= 0 for p in padding), f"conv2d_gradfix: padding must be >= 0, got {padding}"
    assert all(d >= 0 for d in dilation), f"conv2d_gradfix: dilation must be >= 0, got {dilation}"
    if transpose:
        assert all(0 <= output_padding[i] < max(stride[i], dilation[i]) for i in range(ndim)), (
            f"conv2d_gradfix: output_padding {output_padding} must be in [0, max(stride, dilation))"
        )
    else:
        assert all(p == 0 for p in output_padding), "conv2d_gradfix: output_padding is only valid when transposed"


def _make_conv_function(key):
    """The autograd function pair (convolution, and its weight gradient as a differentiable function) of `key`."""
    transpose, weight_shape, stride, padding, output_padding, dilation, groups = key
    common_kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def opposite_op(input_shape, output_shape):
        """The opposite-direction function mapping a tensor shaped like this op's output (`output_shape`) back to
        `input_shape`: it gives the input gradient, and the gradient of the weight gradient w.r.t. the input."""
        if transpose:
            back_padding = [0, 0]
        else:
            back_padding = _backward_output_padding(input_shape, output_shape, weight_shape, stride, padding, dilation)
        return _conv2d_gradfix(
            transpose=not transpose, weight_shape=weight_shape, output_padding=back_padding, **common_kwargs
        )

    def run_forward(input, weight, bias):
        if transpose:
            return torch.nn.functional.conv_transpose2d(
                input=input, weight=weight, bias=bias, output_padding=output_padding, **common_kwargs
            )
        return torch.nn.functional.conv2d(input=input, weight=weight, bias=bias, **common_kwargs)

    class GradfixConv2d(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, weight, bias):
            assert tuple(weight.shape) == weight_shape, (
                f"conv2d_gradfix: weight shape {list(weight.shape)} differs from the cached {list(weight_shape)}"
            )
            wants_input_grad, wants_weight_grad = ctx.needs_input_grad[:2]
            # Each gradient reads the other operand only.
            ctx.save_for_backward(input if wants_weight_grad else None, weight if wants_input_grad else None)
            ctx.input_shape = input.shape
            return run_forward(input, weight, bias)

        @staticmethod
        def backward(ctx, grad_output):
            input, weight = ctx.saved_tensors
            wants_input_grad, wants_weight_grad, wants_bias_grad = ctx.needs_input_grad
            grad_input = grad_weight = grad_bias = None
            if wants_input_grad:
                grad_input = opposite_op(ctx.input_shape, grad_output.shape).apply(grad_output, weight, None)
                assert grad_input.shape == ctx.input_shape, "conv2d_gradfix: input gradient has the wrong shape"
            # The flag is read when the backward pass runs, not when the forward pass did.
            if wants_weight_grad and not weight_gradients_disabled:
                grad_weight = GradfixWeightGrad.apply(grad_output, input)
                assert tuple(grad_weight.shape) == weight_shape, "conv2d_gradfix: weight gradient has the wrong shape"
            if wants_bias_grad:
                grad_bias = grad_output.sum([0, 2, 3])
            return grad_input, grad_weight, grad_bias

    class GradfixWeightGrad(torch.autograd.Function):
        """dL/dweight as a function of (grad_output, input); bilinear, hence cheaply differentiable."""

        @staticmethod
        def forward(ctx, grad_output, input):
            wants_grad_output_grad, wants_input_grad = ctx.needs_input_grad
            ctx.save_for_backward(
                grad_output if wants_input_grad else None,
                input if wants_grad_output_grad else None,
            )
            ctx.grad_output_shape = grad_output.shape
            ctx.input_shape = input.shape
            # Only the weight's shape, dtype and device are read when just the weight gradient is requested.
            weight_like = grad_output.new_empty(weight_shape)
            _, grad_weight, _ = torch.ops.aten.convolution_backward(
                grad_output,
                input,
                weight_like,
                None,
                list(stride),
                list(padding),
                list(dilation),
                transpose,
                list(output_padding),
                groups,
                [False, True, False],
            )
            return grad_weight

        @staticmethod
        def backward(ctx, grad2_grad_weight):
            grad_output, input = ctx.saved_tensors
            grad2_grad_output = grad2_input = None
            # <G, dW(x, dy)> = <dy, op(x, G)> = <opposite_op(dy, G), x> since the conv is bilinear in (x, w).
            if ctx.needs_input_grad[0]:
                grad2_grad_output = GradfixConv2d.apply(input, grad2_grad_weight, None)
                assert grad2_grad_output.shape == ctx.grad_output_shape
            if ctx.needs_input_grad[1]:
                back = opposite_op(ctx.input_shape, ctx.grad_output_shape)
                grad2_input = back.apply(grad_output, grad2_grad_weight, None)
                assert grad2_input.shape == ctx.input_shape
            return grad2_grad_output, grad2_input

    return GradfixConv2d
