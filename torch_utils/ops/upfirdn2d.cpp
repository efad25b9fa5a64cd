// PyTorch binding of the upfirdn2d kernel: argument checks, output allocation and dtype dispatch.
// Exposes upfirdn2d(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain) -> Tensor
// (see upfirdn2d.py).

#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "upfirdn2d.h"

namespace {

// Largest offset for 32-bit indexing, leaving room for the grid-stride increment.
constexpr int64_t kMax32BitOffset = (int64_t(1) << 31) - (int64_t(1) << 29);

// Output length along one axis: floor((L*up + pad0 + pad1 - taps + down) / down).
int64_t output_length(int64_t length, int64_t up, int64_t down, int64_t pad0, int64_t pad1, int64_t taps,
                      const char* axis) {
    const int64_t padded = length * up + pad0 + pad1;
    TORCH_CHECK(padded >= taps, "upfirdn2d: padded ", axis, " size ", padded, " is smaller than the filter (", taps,
                " taps)");
    return (padded - taps + down) / down;
}

// Largest element offset the kernel reads from x.
int64_t max_input_offset(const torch::Tensor& x) {
    int64_t offset = 0;
    for (int64_t d = 0; d < x.dim(); ++d) offset += (x.size(d) - 1) * x.stride(d);
    return offset;
}

torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int64_t upx, int64_t upy, int64_t downx, int64_t downy,
                        int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip, double gain) {
    TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor, found device ", x.device());
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must have shape [N, C, H, W], found ", x.sizes());
    TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble ||
                    x.scalar_type() == torch::kHalf,
                "upfirdn2d: x must be float16, float32 or float64, found ", x.scalar_type());
    TORCH_CHECK(f.device() == x.device(), "upfirdn2d: f must be on ", x.device(), ", found ", f.device());
    TORCH_CHECK(f.scalar_type() == torch::kFloat, "upfirdn2d: f must be float32, found ", f.scalar_type());
    TORCH_CHECK(f.dim() == 2 && f.size(0) >= 1 && f.size(1) >= 1, "upfirdn2d: f must have shape [fh, fw], found ",
                f.sizes());
    TORCH_CHECK(upx >= 1 && upy >= 1, "upfirdn2d: up factors must be >= 1, found [", upx, ", ", upy, "]");
    TORCH_CHECK(downx >= 1 && downy >= 1, "upfirdn2d: down factors must be >= 1, found [", downx, ", ", downy, "]");
    TORCH_CHECK(x.size(2) * upy <= INT32_MAX / 2 && x.size(3) * upx <= INT32_MAX / 2,
                "upfirdn2d: upsampled image too large for 32-bit coordinates, found ", x.sizes());
    TORCH_CHECK(x.size(0) <= INT32_MAX && x.size(1) <= INT32_MAX, "upfirdn2d: batch or channel count too large");
    for (const int64_t pad : {padx0, padx1, pady0, pady1})
        TORCH_CHECK(pad >= -INT32_MAX / 4 && pad <= INT32_MAX / 4, "upfirdn2d: padding out of range, found ", pad);

    const c10::cuda::CUDAGuard device_guard(x.device());
    f = f.contiguous();

    const int64_t fh = f.size(0);
    const int64_t fw = f.size(1);
    const int64_t out_h = output_length(x.size(2), upy, downy, pady0, pady1, fh, "height");
    const int64_t out_w = output_length(x.size(3), upx, downx, padx0, padx1, fw, "width");

    const auto memory_format = x.suggest_memory_format();
    torch::Tensor y = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options().memory_format(memory_format));

    Upfirdn2dParams p;
    p.x = x.data_ptr();
    p.f = f.data_ptr<float>();
    p.y = y.data_ptr();
    p.x_stride_n = x.stride(0);
    p.x_stride_c = x.stride(1);
    p.x_stride_h = x.stride(2);
    p.x_stride_w = x.stride(3);
    p.out_numel = y.numel();
    p.n = static_cast<int>(x.size(0));
    p.c = static_cast<int>(x.size(1));
    p.in_h = static_cast<int>(x.size(2));
    p.in_w = static_cast<int>(x.size(3));
    p.out_h = static_cast<int>(out_h);
    p.out_w = static_cast<int>(out_w);
    p.div_c = make_fast_divisor(static_cast<uint32_t>(std::max<int64_t>(x.size(1), 1)));
    p.div_out_h = make_fast_divisor(static_cast<uint32_t>(out_h));
    p.div_out_w = make_fast_divisor(static_cast<uint32_t>(out_w));
    p.upx = static_cast<int>(upx);
    p.upy = static_cast<int>(upy);
    p.downx = static_cast<int>(downx);
    p.downy = static_cast<int>(downy);
    p.padx0 = static_cast<int>(padx0);
    p.pady0 = static_cast<int>(pady0);
    p.fw = static_cast<int>(fw);
    p.fh = static_cast<int>(fh);
    p.flip = flip;
    p.channels_last = memory_format == at::MemoryFormat::ChannelsLast;
    p.use_32bit_index = y.numel() <= kMax32BitOffset && max_input_offset(x) <= kMax32BitOffset;
    p.gain = gain;

    cudaError_t err = cudaSuccess;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "upfirdn2d",
                                        [&] { err = upfirdn2d_launch<scalar_t>(p, stream); });
    TORCH_CHECK(err == cudaSuccess, "upfirdn2d: kernel launch failed: ", cudaGetErrorString(err));
    return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "Upsample, pad, FIR-filter and downsample 2-D images (CUDA)");
}
