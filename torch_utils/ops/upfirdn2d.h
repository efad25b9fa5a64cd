// Upsample / pad / FIR-filter / downsample of [N, C, H, W] images: launch interface shared by upfirdn2d.cpp
// (argument checking, PyTorch glue) and upfirdn2d.cu (kernels). See upfirdn2d.py for the contract.

#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "fast_divisor.h"

struct Upfirdn2dParams {
    const void* x;   // input, arbitrary strides (in elements) below
    const float* f;  // contiguous [fh, fw] float32 taps, not flipped, not scaled
    void* y;         // dense output [N, C, out_h, out_w], NCHW or channels-last order
    int64_t x_stride_n, x_stride_c, x_stride_h, x_stride_w;
    int64_t out_numel;
    int n, c, in_h, in_w, out_h, out_w;
    FastDivisor div_c, div_out_w, div_out_h;  // for splitting the output index
    int upx, upy, downx, downy;
    int padx0, pady0;  // the trailing paddings only determine out_w / out_h
    int fw, fh;
    bool flip;              // true: correlation with f; false: true convolution
    bool channels_last;     // output element order
    bool use_32bit_index;   // all offsets fit in int32
    double gain;
};

// Implemented for float, double and c10::Half in upfirdn2d.cu; returns the launch status.
template <typename T>
cudaError_t upfirdn2d_launch(const Upfirdn2dParams& p, cudaStream_t stream);
