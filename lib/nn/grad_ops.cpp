#include "nn/grad_ops.hpp"

namespace vmoe::nn {

void accumulate_weight_grad(float* dW, const float* x, const float* dy, int64_t rows, int64_t in, int64_t out,
                            PrimitiveCache& cache) {
  GemmSpec s;
  s.m = in, s.runtime_k = true, s.n = out, s.trans_a = true, s.lda = in, s.ldb = out, s.beta = 1.0f;
  cache.gemm(s).run(dW, x, dy, nullptr, -1, rows);
}

void accumulate_bias_grad(float* db, const float* dy, int64_t rows, int64_t cols, const float* ones,
                          int64_t ones_capacity, PrimitiveCache& cache) {
  GemmSpec s;
  s.m = 1, s.runtime_k = true, s.n = cols, s.lda = ones_capacity, s.ldb = cols, s.beta = 1.0f;
  cache.gemm(s).run(db, ones, dy, nullptr, -1, rows);
}

void input_grad(float* dx, const float* dy, const float* W, int64_t rows, int64_t in, int64_t out, float beta,
                PrimitiveCache& cache) {
  GemmSpec s;
  s.runtime_m = true, s.k = out, s.n = in, s.trans_b = true, s.ldb = out, s.beta = beta;
  cache.gemm(s).run(dx, dy, W, nullptr, rows);
}

void linear(float* y, const float* x, const float* W, const float* b, int64_t rows, int64_t in, int64_t out,
            PrimitiveCache& cache) {
  GemmSpec s;
  s.runtime_m = true, s.k = in, s.n = out, s.bias = b != nullptr;
  cache.gemm(s).run(y, x, W, b, rows);
}

}  // namespace vmoe::nn
