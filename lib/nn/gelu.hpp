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

// x = gelu(x) in place, tanh form, over `rows` rows of `cols` values `ld` apart: the
// inference pass that replaces oneDNN's gelu_tanh post-op where that post-op is slow
// (AVX2: 2.6 ms against a 1.5 ms matmul for 3200x384 values, docs/BENCHMARKS.md).
void gelu_tanh_inplace(float* x, int64_t rows, int64_t cols, int64_t ld);

// du = da * slope (slope from gelu_forward). `du` may be `da`.
void gelu_backward(float* du, const float* da, const float* slope, int64_t count);

}  // namespace vmoe::nn
