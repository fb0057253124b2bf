#include "nn/attention.hpp"

#include <cmath>

namespace vmoe::nn {

void attention_forward(float* out, float* scores, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Dh,
                       PrimitiveCache& cache, bool keep_probs) {
  const int64_t D = H * Dh;
  GemmSpec qk;  // per head: scores (T, T) = Q (T, Dh) @ K^T, K stored (T, Dh) with row stride 3D
  qk.batch = H, qk.m = T, qk.k = Dh, qk.n = T;
  qk.lda = 3 * D, qk.batch_stride_a = Dh;
  qk.trans_b = true, qk.ldb = 3 * D, qk.batch_stride_b = Dh;
  qk.batch_stride_c = T * T;
  qk.alpha = 1.0f / std::sqrt(static_cast<float>(Dh));
  GemmSpec pv;  // per head: out (T, Dh) = P (T, T) @ V (T, Dh), written into its head's columns
  pv.batch = H, pv.m = T, pv.k = T, pv.n = Dh;
  pv.batch_stride_a = T * T;
  pv.ldb = 3 * D, pv.batch_stride_b = Dh;
  pv.ldc = D, pv.batch_stride_c = Dh;
  const Gemm& scores_gemm = cache.gemm(qk);
  const Gemm& values_gemm = cache.gemm(pv);
  const Softmax& softmax = cache.softmax(H * T, T);
  for (int64_t b = 0; b < B; ++b) {
    const float* q = qkv + b * T * 3 * D;
    float* p = keep_probs ? scores + b * H * T * T : scores;
    scores_gemm.run(p, q, q + D);
    softmax.run(p, p);
    values_gemm.run(out + b * T * D, p, q + 2 * D);
  }
}

}  // namespace vmoe::nn
