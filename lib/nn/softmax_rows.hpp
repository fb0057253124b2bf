#pragma once
// Softmax along contiguous rows in AVX2 registers with exp_bounded: the routers' gates
// (rows of E experts) and the Soft-MoE dispatch and combine weights. On 12800 rows of 8
// oneDNN's softmax primitive, used before, took ~0.3 ms per call (ONEDNN_VERBOSE, in the
// model); this takes ~0.1 ms on 2 threads, 0.15 ms on one (a standalone timing loop).
#include <cstdint>

namespace vmoe::nn {

// Exponents below this are clamped to it: exp_bounded's range. exp(-87) = 1.6e-38, which
// next to a softmax's largest term (1) is nothing.
constexpr float kLowestExponent = -87.0f;

// e[i] = exp(x[i] - shift) for i < n (x and e may be the same buffer); returns the sum.
float exp_shifted(float* e, const float* x, float shift, int64_t n);
// e[i] = exp(x[i] - shift[i]) for i < n, one shift per element.
void exp_shifted(float* e, const float* x, const float* shift, int64_t n);

// y[r, :] = softmax(x[r, :]) over cols, rows shared among the threads; in place allowed.
void softmax_rows(float* y, const float* x, int64_t rows, int64_t cols);

}  // namespace vmoe::nn
