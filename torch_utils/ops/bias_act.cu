// Elementwise kernels for bias_act: forward, first derivative (grad=1) and second derivative (grad=2).
// Arithmetic runs in float for half/float inputs and in double for double inputs; one rounding at the end.

#include <c10/util/Half.h>

#include <algorithm>

#include "bias_act.h"

namespace {

// Overloads so one template body serves float and double accumulators.
__device__ __forceinline__ float dev_exp(float v) { return expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return exp(v); }
__device__ __forceinline__ float dev_expm1(float v) { return expm1f(v); }
__device__ __forceinline__ double dev_expm1(double v) { return expm1(v); }
__device__ __forceinline__ float dev_log1p(float v) { return log1pf(v); }
__device__ __forceinline__ double dev_log1p(double v) { return log1p(v); }
// --use_fast_math turns tanhf into tanh.approx.f32 (about 11 bits); expm1f keeps full float accuracy.
__device__ __forceinline__ float dev_tanh(float v) {
    const float a = fabsf(v);
    float t = 1.0f;  // tanh(a) rounds to 1 in float for a > 9
    if (!(a > 9.0f)) {
        const float e = expm1f(2.0f * a);
        t = e / (e + 2.0f);
    }
    return copysignf(t, v);
}
__device__ __forceinline__ double dev_tanh(double v) { return tanh(v); }

// SELU constants (same as torch.nn.functional.selu).
constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
// Beyond this the exponentials under- or overflow; the limits are exact there in the working precision.
constexpr double kExpLimit = 80.0;
// torch.nn.functional.softplus switches to the identity above this (beta = 1).
constexpr double kSoftplusThreshold = 20.0;

template <typename A>
__device__ __forceinline__ A sigmoid(A s) {
    return s < A(-kExpLimit) ? A(0) : A(1) / (dev_exp(-s) + A(1));
}

// act(s).
template <typename A>
__device__ __forceinline__ A act_value(int act, A s, A alpha) {
    switch (act) {
        case kActRelu: return s < A(0) ? A(0) : s;  // NaN passes through, as in torch.relu
        case kActLrelu: return s > A(0) ? s : s * alpha;
        case kActTanh: return dev_tanh(s);
        case kActSigmoid: return sigmoid(s);
        case kActElu: return s > A(0) ? s : dev_expm1(s);
        case kActSelu: return s > A(0) ? A(kSeluScale) * s : A(kSeluScale * kSeluAlpha) * dev_expm1(s);
        case kActSoftplus: return s > A(kSoftplusThreshold) ? s : dev_log1p(dev_exp(s));
        case kActSwish: return s < A(-kExpLimit) ? A(0) : s * sigmoid(s);
        default: return s;  // linear
    }
}

// act'(s), written in terms of r = act(s) for the activations whose derivative the Python side computes from
// the saved output ('y' in the activation table), and in terms of s for swish ('x').
template <typename A>
__device__ __forceinline__ A act_first_derivative(int act, A s, A r, A alpha) {
    switch (act) {
        case kActRelu: return r > A(0) ? A(1) : A(0);
        case kActLrelu: return r > A(0) ? A(1) : alpha;
        case kActTanh: return A(1) - r * r;
        case kActSigmoid: return r * (A(1) - r);
        case kActElu: return r > A(0) ? A(1) : r + A(1);
        case kActSelu: return r > A(0) ? A(kSeluScale) : r + A(kSeluScale * kSeluAlpha);
        case kActSoftplus: return -dev_expm1(-r);  // sigmoid(s) = 1 - exp(-softplus(s))
        case kActSwish: {
            const A sg = sigmoid(s);
            return sg + s * sg * (A(1) - sg);
        }
        default: return A(1);  // linear
    }
}

// act''(s), with the same choice of variables as act_first_derivative. Piecewise-linear activations have none.
template <typename A>
__device__ __forceinline__ A act_second_derivative(int act, A s, A r) {
    switch (act) {
        case kActTanh: return A(-2) * r * (A(1) - r * r);
        case kActSigmoid: return r * (A(1) - r) * (A(1) - A(2) * r);
        case kActElu: return r > A(0) ? A(0) : r + A(1);
        case kActSelu: return r > A(0) ? A(0) : r + A(kSeluScale * kSeluAlpha);
        case kActSoftplus: {
            const A e = dev_exp(-r);  // 1 - sigmoid(s)
            return (A(1) - e) * e;
        }
        case kActSwish: {
            const A sg = sigmoid(s);
            return sg * (A(1) - sg) * (A(2) + s * (A(1) - A(2) * sg));
        }
        default: return A(0);  // linear, relu, lrelu
    }
}

// Position along the bias axis of the element at storage offset i: (i / bias_stride) % bias_size.
__device__ __forceinline__ int32_t bias_index(int32_t i, const BiasActParams& p) {
    const int32_t q = fast_div(i, p.bias_stride_div);
    return q - fast_div(q, p.bias_size_div) * static_cast<int32_t>(p.bias_size_div.divisor);
}
__device__ __forceinline__ int64_t bias_index(int64_t i, const BiasActParams& p) {
    return (i / p.bias_stride) % p.bias_size;
}

template <typename T, typename I>
__global__ void bias_act_kernel(BiasActParams p) {
    using A = typename AccType<T>::type;
    const T* __restrict__ x = static_cast<const T*>(p.x);
    const T* __restrict__ b = static_cast<const T*>(p.b);
    const T* __restrict__ xref = static_cast<const T*>(p.xref);
    const T* __restrict__ yref = static_cast<const T*>(p.yref);
    const T* __restrict__ dy = static_cast<const T*>(p.dy);
    T* __restrict__ y = static_cast<T*>(p.y);

    const A alpha = static_cast<A>(p.alpha);
    const A gain = static_cast<A>(p.gain);
    const A clamp = static_cast<A>(p.clamp);
    const I numel = static_cast<I>(p.numel);
    const I step = static_cast<I>(blockDim.x) * static_cast<I>(gridDim.x);

    for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += step) {
        const A v = static_cast<A>(x[i]);
        const A bias = b ? static_cast<A>(b[bias_index(i, p)]) : A(0);
        A out;
        if (p.mode == kModeForward) {
            out = act_value(p.act, v + bias, alpha) * gain;
            // Same as torch.clamp, NaN included.
            if (clamp >= A(0)) {
                if (out > clamp) out = clamp;
                else if (out < -clamp) out = -clamp;
            }
        } else {
            const A s = xref ? static_cast<A>(xref[i]) + bias : A(0);
            const A yv = yref ? static_cast<A>(yref[i]) : A(0);
            // The saved output carries the gain; with gain 0 every derivative term is multiplied by 0 anyway.
            const A r = gain != A(0) ? yv / gain : A(0);
            const bool inside = clamp < A(0) || (yv > -clamp && yv < clamp);
            out = A(0);
            if (inside) {
                if (p.mode == kModeGrad1)
                    out = v * gain * act_first_derivative(p.act, s, r, alpha);
                else
                    out = v * static_cast<A>(dy[i]) * gain * act_second_derivative(p.act, s, r);
            }
        }
        y[i] = static_cast<T>(out);
    }
}

constexpr int kBlockSize = 256;
constexpr int64_t kMaxBlocks = 65535 * 16;

}  // namespace

template <typename T>
cudaError_t bias_act_launch(const BiasActParams& p, cudaStream_t stream) {
    if (p.numel == 0) return cudaSuccess;
    const int64_t blocks = std::min<int64_t>((p.numel + kBlockSize - 1) / kBlockSize, kMaxBlocks);
    if (p.use_32bit_index)
        bias_act_kernel<T, int32_t><<<static_cast<unsigned>(blocks), kBlockSize, 0, stream>>>(p);
    else
        bias_act_kernel<T, int64_t><<<static_cast<unsigned>(blocks), kBlockSize, 0, stream>>>(p);
    return cudaGetLastError();
}

template cudaError_t bias_act_launch<float>(const BiasActParams&, cudaStream_t);
template cudaError_t bias_act_launch<double>(const BiasActParams&, cudaStream_t);
template cudaError_t bias_act_launch<c10::Half>(const BiasActParams&, cudaStream_t);
