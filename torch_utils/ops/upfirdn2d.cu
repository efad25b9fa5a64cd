// upfirdn2d kernel: one thread per output sample, visiting only the filter taps that land on non-zero
// (non-stuffed, non-padding) input samples. Accumulates in float for half/float and in double for double.

#include <c10/util/Half.h>

#include <algorithm>

#include "upfirdn2d.h"

namespace {

constexpr int kBlockSize = 256;
constexpr int64_t kMaxBlocks = 65535 * 16;
// Filters up to this many bytes (in the accumulator type) are staged in shared memory.
constexpr int kMaxSharedFilterBytes = 16384;

// First tap k >= 0 with (first + k) a non-negative multiple of `up`, and the input index it reads.
// `first` is the zero-stuffed coordinate (may be negative) that tap 0 of this output sample touches.
__device__ __forceinline__ void first_tap(int first, int up, int& tap, int& index) {
    const int start = max(first, 0);
    const int aligned = (start + up - 1) / up * up;
    tap = aligned - first;
    index = aligned / up;
}

// Replaces `rest` by rest / d and returns rest % d.
__device__ __forceinline__ int take_remainder(int32_t& rest, const FastDivisor& d) {
    const int32_t q = fast_div(rest, d);
    const int r = static_cast<int>(rest - q * static_cast<int32_t>(d.divisor));
    rest = q;
    return r;
}
__device__ __forceinline__ int take_remainder(int64_t& rest, const FastDivisor& d) {
    const int64_t q = rest / static_cast<int64_t>(d.divisor);
    const int r = static_cast<int>(rest - q * static_cast<int64_t>(d.divisor));
    rest = q;
    return r;
}

// FW, FH, UPX, UPY > 0 fix the filter size and up factors at compile time so the tap loops unroll (the filters
// and factors the networks use); 0 reads them from the parameters.
template <typename T, typename I, int FW, int FH, int UPX, int UPY>
__global__ void upfirdn2d_kernel(Upfirdn2dParams p, bool filter_in_shared) {
    using A = typename AccType<T>::type;
    const int fw = FW > 0 ? FW : p.fw;
    const int fh = FH > 0 ? FH : p.fh;
    const int upx = UPX > 0 ? UPX : p.upx;
    const int upy = UPY > 0 ? UPY : p.upy;
    // Upper bounds of the taps that can hit real input samples along each axis.
    const int max_taps_x = (fw + upx - 1) / upx;
    const int max_taps_y = (fh + upy - 1) / upy;
    extern __shared__ __align__(16) unsigned char shared_bytes[];

    // Taps in correlation order: reversing the flattened [fh, fw] array flips both axes at once.
    const int num_taps = fw * fh;
    A* taps = reinterpret_cast<A*>(shared_bytes);
    if (filter_in_shared) {
        for (int k = threadIdx.x; k < num_taps; k += blockDim.x)
            taps[k] = static_cast<A>(p.f[p.flip ? k : num_taps - 1 - k]);
        __syncthreads();
    }

    const T* __restrict__ x = static_cast<const T*>(p.x);
    T* __restrict__ y = static_cast<T*>(p.y);
    const A gain = static_cast<A>(p.gain);
    const I out_numel = static_cast<I>(p.out_numel);
    const I step = static_cast<I>(blockDim.x) * static_cast<I>(gridDim.x);

    for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < out_numel; i += step) {
        I rest = i;
        int ox, oy, c, n;
        if (p.channels_last) {
            c = take_remainder(rest, p.div_c);
            ox = take_remainder(rest, p.div_out_w);
            oy = take_remainder(rest, p.div_out_h);
        } else {
            ox = take_remainder(rest, p.div_out_w);
            oy = take_remainder(rest, p.div_out_h);
            c = take_remainder(rest, p.div_c);
        }
        n = static_cast<int>(rest);

        int ky0, iy0, kx0, ix0;
        first_tap(oy * p.downy - p.pady0, upy, ky0, iy0);
        first_tap(ox * p.downx - p.padx0, upx, kx0, ix0);

        const T* plane =
            x + static_cast<I>(n) * static_cast<I>(p.x_stride_n) + static_cast<I>(c) * static_cast<I>(p.x_stride_c);
        A acc = A(0);
#pragma unroll
        for (int ty = 0; ty < max_taps_y; ++ty) {
            const int ky = ky0 + ty * upy;
            const int iy = iy0 + ty;
            if (ky >= fh || iy >= p.in_h) break;
            const T* row = plane + static_cast<I>(iy) * static_cast<I>(p.x_stride_h);
#pragma unroll
            for (int tx = 0; tx < max_taps_x; ++tx) {
                const int kx = kx0 + tx * upx;
                const int ix = ix0 + tx;
                if (kx >= fw || ix >= p.in_w) break;
                const int k = ky * fw + kx;
                const A tap = filter_in_shared ? taps[k] : static_cast<A>(__ldg(&p.f[p.flip ? k : num_taps - 1 - k]));
                acc += static_cast<A>(row[static_cast<I>(ix) * static_cast<I>(p.x_stride_w)]) * tap;
            }
        }
        y[i] = static_cast<T>(acc * gain);
    }
}

template <typename T, typename I, int FW, int FH, int UPX, int UPY>
void launch_kernel(const Upfirdn2dParams& p, bool filter_in_shared, int64_t blocks, size_t shared_bytes,
                   cudaStream_t stream) {
    upfirdn2d_kernel<T, I, FW, FH, UPX, UPY>
        <<<static_cast<unsigned>(blocks), kBlockSize, shared_bytes, stream>>>(p, filter_in_shared);
}

}  // namespace

template <typename T>
cudaError_t upfirdn2d_launch(const Upfirdn2dParams& p, cudaStream_t stream) {
    if (p.out_numel == 0) return cudaSuccess;
    using A = typename AccType<T>::type;
    const int64_t filter_bytes = static_cast<int64_t>(p.fw) * p.fh * sizeof(A);
    const bool filter_in_shared = filter_bytes <= kMaxSharedFilterBytes;
    const size_t shared_bytes = filter_in_shared ? static_cast<size_t>(filter_bytes) : 0;
    const int64_t blocks = std::min<int64_t>((p.out_numel + kBlockSize - 1) / kBlockSize, kMaxBlocks);
    const bool filter_4x4 = p.fw == 4 && p.fh == 4;
    if (p.use_32bit_index) {
        if (filter_4x4 && p.upx == 1 && p.upy == 1)
            launch_kernel<T, int32_t, 4, 4, 1, 1>(p, filter_in_shared, blocks, shared_bytes, stream);
        else if (filter_4x4 && p.upx == 2 && p.upy == 2)
            launch_kernel<T, int32_t, 4, 4, 2, 2>(p, filter_in_shared, blocks, shared_bytes, stream);
        else
            launch_kernel<T, int32_t, 0, 0, 0, 0>(p, filter_in_shared, blocks, shared_bytes, stream);
    } else {
        launch_kernel<T, int64_t, 0, 0, 0, 0>(p, filter_in_shared, blocks, shared_bytes, stream);
    }
    return cudaGetLastError();
}

template cudaError_t upfirdn2d_launch<float>(const Upfirdn2dParams&, cudaStream_t);
template cudaError_t upfirdn2d_launch<double>(const Upfirdn2dParams&, cudaStream_t);
template cudaError_t upfirdn2d_launch<c10::Half>(const Upfirdn2dParams&, cudaStream_t);
