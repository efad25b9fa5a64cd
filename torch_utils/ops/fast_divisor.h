// Pieces shared by the bias_act and upfirdn2d plugins. Both list this file among their headers, so it is copied
// next to their sources and counted in their build-cache hash (see custom_ops.get_plugin).

#pragma once

#include <cstdint>

// Division by a fixed divisor 1 <= d <= 2^31 as a multiply-high and a shift, exact for dividends n < 2^31:
// q = (umulhi(n, multiplier) + n) >> shift. Set up on the host, used by the 32-bit-index kernels.
struct FastDivisor {
    uint32_t divisor;
    uint32_t multiplier;
    uint32_t shift;
};

inline FastDivisor make_fast_divisor(uint32_t divisor) {
    uint32_t shift = 0;
    while ((uint64_t(1) << shift) < divisor) ++shift;
    const uint64_t multiplier = ((uint64_t(1) << 32) * ((uint64_t(1) << shift) - divisor)) / divisor + 1;
    return FastDivisor{divisor, static_cast<uint32_t>(multiplier), shift};
}

#ifdef __CUDACC__

// n / d for 0 <= n < 2^31.
__device__ __forceinline__ int32_t fast_div(int32_t n, const FastDivisor& d) {
    const uint32_t hi = __umulhi(static_cast<uint32_t>(n), d.multiplier);
    return static_cast<int32_t>((hi + static_cast<uint32_t>(n)) >> d.shift);
}

// Accumulator type of the kernels: float for half and float inputs, double for double inputs.
template <typename T>
struct AccType {
    using type = float;
};
template <>
struct AccType<double> {
    using type = double;
};

#endif  // __CUDACC__
