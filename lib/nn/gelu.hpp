#pragma once
// GELU (tanh form) for training, hand-written. oneDNN 2.6's AVX2 eltwise GELU forward and
// backward cost about twice the matmul that feeds them (docs/BENCHMARKS.md); this pass
// evaluates tanh once per value and keeps the slope, so the backward is one multiply.
#include <cstdint>

namespace vmoe::nn {

// a = 0.5 u (1 + t), t = tanh(s), s = c (u + 0.044715 u^3), c = sqrt(2/pi);
// slope = da/du = 0.5 (1 + t) + 0.5 u (1 - t^2) c (1 + 3 * 0.044715 u^2).
// `slope` may be `u` itself (each value is read before its slope is written).
void gelu_forward(float* a, float* slope, const float* u, int64_t count);

// du = da * slope (slope from gelu_forward). `du` may be `da`.
void gelu_backward(float* du, const float* da, const float* slope, int64_t count);

}  // namespace vmoe::nn
