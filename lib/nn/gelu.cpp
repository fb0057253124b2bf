#include "nn/gelu.hpp"

#include "nn/exp_bounded.hpp"

namespace vmoe::nn {

namespace {
constexpr float kC = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kA = 0.044715f;

// e = exp(2s), s = c (x + 0.044715 x^3) clamped to [-43, 43].
inline float exp_two_s(float x) {
  float s = kC * (x + kA * x * x * x);
  s = s < -43.0f ? -43.0f : s;
  s = s > 43.0f ? 43.0f : s;
  return exp_bounded(2.0f * s);
}
}  // namespace

// With e = exp(2s): 1 + t = 2e / (e + 1) and 1 - t = 2 / (e + 1), so
//   a     = u e / (e + 1)
//   slope = e / (e + 1) + 2 u e / (e + 1)^2 c (1 + 3 * 0.044715 u^2),
// with no 1 - t or 1 + t cancellation in the tails. |s| is clamped at 43 to keep exp in
// range; beyond it e / (e + 1) is 1 in float, or below 1e-37.
void gelu_forward(float* a, float* slope, const float* u, int64_t count) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    const float x = u[i];
    const float e = exp_two_s(x);
    const float q = 1.0f / (e + 1.0f);
    const float half_one_plus_t = e * q;
    a[i] = x * half_one_plus_t;
    slope[i] = half_one_plus_t + 2.0f * x * (half_one_plus_t * q) * kC * (1.0f + 3.0f * kA * x * x);
  }
}

// The same forward value without the slope: a = u e / (e + 1).
void gelu_tanh_inplace(float* x, int64_t rows, int64_t cols, int64_t ld) {
#pragma omp parallel for schedule(static) if (rows * cols > 4096)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * ld;
#pragma omp simd
    for (int64_t i = 0; i < cols; ++i) {
      const float e = exp_two_s(row[i]);
      row[i] = row[i] * (e / (e + 1.0f));
    }
  }
}

void gelu_backward(float* du, const float* da, const float* slope, int64_t count) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; ++i) du[i] = da[i] * slope[i];
}

}  // namespace vmoe::nn
