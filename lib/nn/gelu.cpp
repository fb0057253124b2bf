#include "nn/gelu.hpp"

#include <cstring>

namespace vmoe::nn {

namespace {

// exp(z) for z in [-87, 88]: z = n ln2 + r with |r| <= ln2/2, exp(r) by its Taylor
// series to r^7 (truncation < 2e-8 relative there), 2^n built in the exponent bits.
// Written as plain float arithmetic so the `omp simd` loops below vectorise it.
inline float exp_bounded(float z) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // ln2 split so n * kLn2Hi is exact for |n| < 2^9
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (z * kLog2e + kRound) - kRound;
  const float r = (z - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

}  // namespace

// With e = exp(2s): 1 + t = 2e / (e + 1) and 1 - t = 2 / (e + 1), so
//   a     = u e / (e + 1)
//   slope = e / (e + 1) + 2 u e / (e + 1)^2 c (1 + 3 * 0.044715 u^2),
// with no 1 - t or 1 + t cancellation in the tails. |s| is clamped at 43 to keep exp in
// range; beyond it e / (e + 1) is 1 in float, or below 1e-37.
void gelu_forward(float* a, float* slope, const float* u, int64_t count) {
  constexpr float kC = 0.7978845608028654f;  // sqrt(2/pi)
  constexpr float kA = 0.044715f;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    const float x = u[i];
    float s = kC * (x + kA * x * x * x);
    s = s < -43.0f ? -43.0f : s;
    s = s > 43.0f ? 43.0f : s;
    const float e = exp_bounded(2.0f * s);
    const float q = 1.0f / (e + 1.0f);
    const float half_one_plus_t = e * q;
    a[i] = x * half_one_plus_t;
    slope[i] = half_one_plus_t + 2.0f * x * (half_one_plus_t * q) * kC * (1.0f + 3.0f * kA * x * x);
  }
}

void gelu_backward(float* du, const float* da, const float* slope, int64_t count) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; ++i) du[i] = da[i] * slope[i];
}

}  // namespace vmoe::nn
