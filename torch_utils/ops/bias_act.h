// Fused bias + activation + gain + clamp (and its first/second derivatives): launch interface shared by
// bias_act.cpp (argument checking, PyTorch glue) and bias_act.cu (kernels). See bias_act.py for the contract.

#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "fast_divisor.h"

// Activation codes: the `cuda_idx` column of bias_act.activation_funcs.
enum BiasActActivation : int {
    kActLinear = 1,
    kActRelu = 2,
    kActLrelu = 3,
    kActTanh = 4,
    kActSigmoid = 5,
    kActElu = 6,
    kActSelu = 7,
    kActSoftplus = 8,
    kActSwish = 9,
};

// What the kernel computes (`grad` argument of the plugin).
enum BiasActMode : int {
    kModeForward = 0,  // y = clamp(gain * act(x + b))
    kModeGrad1 = 1,    // x is dy: returns dy * gain * act'(s), masked by the clamp
    kModeGrad2 = 2,    // x is d(dx): returns d(dx) * dy * gain * act''(s), masked by the clamp
};

// All tensors share x's sizes and strides (dense, any dimension order); null pointers mean "not given".
struct BiasActParams {
    const void* x;
    const void* b;     // 1-D bias, indexed by (linear offset / bias_stride) % bias_size
    const void* xref;  // pre-bias input of the forward pass (s = xref + b)
    const void* yref;  // output of the forward pass
    const void* dy;    // upstream gradient given to the grad=1 pass (grad=2 only)
    void* y;           // result, same layout as x
    int64_t numel;
    int64_t bias_stride;
    int64_t bias_size;
    FastDivisor bias_stride_div;  // same divisors, for the 32-bit-index kernel
    FastDivisor bias_size_div;
    int mode;
    int act;
    double alpha;
    double gain;
    double clamp;  // < 0: no clamp
    bool use_32bit_index;  // numel fits in int32
};

// Implemented for float, double and c10::Half in bias_act.cu; returns the launch status.
template <typename T>
cudaError_t bias_act_launch(const BiasActParams& p, cudaStream_t stream);
