#pragma once
// Small building blocks of the backward pass, each a oneDNN matmul from the cache:
// weight gradients, bias gradients and input gradients of y = x @ W + b.
#include <cstdint>

#include "nn/primitive_cache.hpp"

namespace vmoe::nn {

// dW (in, out) += x^T (in, rows) @ dy (rows, out); rows may vary between calls.
void accumulate_weight_grad(float* dW, const float* x, const float* dy, int64_t rows, int64_t in, int64_t out,
                            PrimitiveCache& cache);
// db (cols) += column sums of dy (rows, cols), as ones (1, rows) @ dy. `ones` holds >= rows ones
// and ones_capacity is its length.
void accumulate_bias_grad(float* db, const float* dy, int64_t rows, int64_t cols, const float* ones,
                          int64_t ones_capacity, PrimitiveCache& cache);
// dx (rows, in) = dy (rows, out) @ W^T with W (in, out); beta 1 accumulates into dx.
void input_grad(float* dx, const float* dy, const float* W, int64_t rows, int64_t in, int64_t out, float beta,
                PrimitiveCache& cache);
// y (rows, out) = x (rows, in) @ W + b (b may be null); rows may vary between calls.
void linear(float* y, const float* x, const float* W, const float* b, int64_t rows, int64_t in, int64_t out,
            PrimitiveCache& cache);

}  // namespace vmoe::nn
