#include "nn/primitive_cache.hpp"

#include <omp.h>

namespace vmoe::nn {

const Gemm& PrimitiveCache::gemm(const GemmSpec& s) {
  GemmKey key{s.m,
              s.k,
              s.n,
              s.runtime_m,
              s.runtime_k,
              s.trans_a,
              s.trans_b,
              s.lda,
              s.ldb,
              s.ldc,
              s.batch,
              s.batch_stride_a,
              s.batch_stride_b,
              s.batch_stride_c,
              s.outer,
              s.outer_stride_a,
              s.outer_stride_b,
              s.outer_stride_c,
              s.bias,
              s.batch_bias,
              static_cast<int>(s.activation),
              s.alpha,
              s.beta,
              omp_get_max_threads(),
              s.bf16_inputs,
              s.bf16_output,
              s.packed_b};
  auto& slot = gemms_[key];
  if (!slot) slot = std::make_unique<Gemm>(s);
  return *slot;
}

const LayerNorm& PrimitiveCache::layer_norm(int64_t rows, int64_t cols, float eps) {
  auto& slot = norms_[{rows, cols, eps, omp_get_max_threads()}];
  if (!slot) slot = std::make_unique<LayerNorm>(rows, cols, eps);
  return *slot;
}

}  // namespace vmoe::nn
