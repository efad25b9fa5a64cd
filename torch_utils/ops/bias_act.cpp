// PyTorch binding of the bias_act kernels: argument checks, layout handling and dtype dispatch.
// Exposes bias_act(x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp) -> Tensor (see bias_act.py).

#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "bias_act.h"

namespace {

// Largest element count for 32-bit indexing, leaving room for the grid-stride increment.
constexpr int64_t kMax32BitNumel = (int64_t(1) << 31) - (int64_t(1) << 29);

bool needs_output_for_derivative(int act) {
    return act >= kActRelu && act <= kActSoftplus;
}

// An optional tensor ("not given" when empty) brought to x's device, dtype, sizes and strides.
torch::Tensor match_layout(const torch::Tensor& t, const torch::Tensor& x, const char* name) {
    if (t.numel() == 0) return t;
    TORCH_CHECK(t.device() == x.device(), "bias_act: ", name, " must be on ", x.device(), ", found ", t.device());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "bias_act: ", name, " must have dtype ", x.scalar_type(),
                ", found ", t.scalar_type());
    TORCH_CHECK(t.sizes() == x.sizes(), "bias_act: ", name, " must have shape ", x.sizes(), ", found ", t.sizes());
    if (t.strides() == x.strides()) return t;
    torch::Tensor copy = torch::empty_like(x);
    copy.copy_(t);
    return copy;
}

torch::Tensor bias_act(torch::Tensor x, torch::Tensor b, torch::Tensor xref, torch::Tensor yref, torch::Tensor dy,
                       int64_t grad, int64_t dim, int64_t act, double alpha, double gain, double clamp) {
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor, found device ", x.device());
    TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble ||
                    x.scalar_type() == torch::kHalf,
                "bias_act: x must be float16, float32 or float64, found ", x.scalar_type());
    TORCH_CHECK(grad >= kModeForward && grad <= kModeGrad2, "bias_act: grad must be 0, 1 or 2, found ", grad);
    TORCH_CHECK(act >= kActLinear && act <= kActSwish, "bias_act: act must be a cuda_idx in [1, 9], found ", act);

    const c10::cuda::CUDAGuard device_guard(x.device());

    // The kernels walk x in storage order; a dense tensor in any dimension order is used as is.
    if (!x.is_non_overlapping_and_dense()) x = x.contiguous();
    xref = match_layout(xref, x, "xref");
    yref = match_layout(yref, x, "yref");
    dy = match_layout(dy, x, "dy");

    int64_t bias_stride = 1;
    int64_t bias_size = 1;
    if (b.numel() > 0) {
        TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim must be in [0, ", x.dim(), "), found ", dim);
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: b must have shape [", x.size(dim),
                    "] (x.shape[", dim, "]), found ", b.sizes());
        TORCH_CHECK(b.device() == x.device(), "bias_act: b must be on ", x.device(), ", found ", b.device());
        TORCH_CHECK(b.scalar_type() == x.scalar_type(), "bias_act: b must have dtype ", x.scalar_type(), ", found ",
                    b.scalar_type());
        b = b.contiguous();
        bias_stride = std::max<int64_t>(x.stride(dim), 1);
        bias_size = b.size(0);
    }

    const bool clamped = clamp >= 0;
    if (grad != kModeForward) {
        const bool has_derivative = grad == kModeGrad1 || act >= kActTanh;
        TORCH_CHECK(!(has_derivative && act == kActSwish) || xref.numel() > 0,
                    "bias_act: swish derivatives need xref (the forward input)");
        TORCH_CHECK(!(has_derivative && needs_output_for_derivative(static_cast<int>(act))) || yref.numel() > 0,
                    "bias_act: derivatives of activation ", act, " need yref (the forward output)");
        TORCH_CHECK(!clamped || yref.numel() > 0, "bias_act: derivatives with a clamp need yref (the forward output)");
        TORCH_CHECK(grad != kModeGrad2 || !has_derivative || dy.numel() > 0,
                    "bias_act: grad=2 needs dy (the upstream gradient of the grad=1 pass)");
    }

    torch::Tensor y = torch::empty_like(x);  // keeps x's strides since x is dense
    BiasActParams p;
    p.x = x.data_ptr();
    p.b = b.numel() > 0 ? b.data_ptr() : nullptr;
    p.xref = xref.numel() > 0 ? xref.data_ptr() : nullptr;
    p.yref = yref.numel() > 0 ? yref.data_ptr() : nullptr;
    p.dy = dy.numel() > 0 ? dy.data_ptr() : nullptr;
    p.y = y.data_ptr();
    p.numel = x.numel();
    p.bias_stride = bias_stride;
    p.bias_size = bias_size;
    p.mode = static_cast<int>(grad);
    p.act = static_cast<int>(act);
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;
    p.use_32bit_index = x.numel() <= kMax32BitNumel;
    if (p.use_32bit_index) {
        // Within a dense tensor of < 2^31 elements every stride and size fits the 32-bit divisors.
        const int64_t stride32 = std::min<int64_t>(bias_stride, kMax32BitNumel);  // only a size-1 axis exceeds it
        p.bias_stride_div = make_fast_divisor(static_cast<uint32_t>(stride32));
        p.bias_size_div = make_fast_divisor(static_cast<uint32_t>(bias_size));
    }

    cudaError_t err = cudaSuccess;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "bias_act",
                                        [&] { err = bias_act_launch<scalar_t>(p, stream); });
    TORCH_CHECK(err == cudaSuccess, "bias_act: kernel launch failed: ", cudaGetErrorString(err));
    return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act, "Fused bias, activation, gain and clamp, or their first/second derivative (CUDA)");
}
