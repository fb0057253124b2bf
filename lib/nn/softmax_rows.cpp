#include "nn/softmax_rows.hpp"

#include <immintrin.h>

#include <algorithm>

#include "nn/exp_bounded.hpp"

namespace vmoe::nn {

float exp_shifted(float* e, const float* x, float shift, int64_t n) {
  const __m256 lowest = _mm256_set1_ps(kLowestExponent), m = _mm256_set1_ps(shift);
  __m256 sum8 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = exp_bounded(_mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m), lowest));
    _mm256_storeu_ps(e + i, v);
    sum8 = _mm256_add_ps(sum8, v);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum8);
  float sum = 0;
  for (float lane : lanes) sum += lane;
  for (; i < n; ++i) sum += e[i] = exp_bounded(std::max(x[i] - shift, kLowestExponent));
  return sum;
}

void exp_shifted(float* e, const float* x, const float* shift, int64_t n) {
  const __m256 lowest = _mm256_set1_ps(kLowestExponent);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(e + i, exp_bounded(_mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(shift + i)), lowest)));
  for (; i < n; ++i) e[i] = exp_bounded(std::max(x[i] - shift[i], kLowestExponent));
}

void softmax_rows(float* y, const float* x, int64_t rows, int64_t cols) {
  // Small softmaxes (a Soft-MoE group's, ~2000 elements, called from inside a parallel
  // loop over groups) stay on the calling thread; 65536 is a round number, not tuned.
#pragma omp parallel for schedule(static) if (rows * cols >= 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const float inv = 1.0f / exp_shifted(yr, xr, *std::max_element(xr, xr + cols), cols);
    for (int64_t j = 0; j < cols; ++j) yr[j] *= inv;
  }
}

}  // namespace vmoe::nn
