#include "nn/attention.hpp"

#include <algorithm>
#include <cmath>

namespace vmoe::nn {

namespace {
constexpr int64_t kMaxScoreFloats = int64_t{8} << 20;  // 32 MB of scores per chunk of images
}

int64_t attention_chunk_images(int64_t B, int64_t T, int64_t H) {
  return std::clamp<int64_t>(kMaxScoreFloats / (H * T * T), 1, B);
}

void attention_forward(float* out, float* scores, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Dh,
                       PrimitiveCache& cache, bool keep_probs) {
  const int64_t D = H * Dh;
  const int64_t chunk = keep_probs ? B : attention_chunk_images(B, T, H);
  for (int64_t b0 = 0; b0 < B; b0 += chunk) {
    const int64_t nb = std::min(chunk, B - b0);
    // Over images (outer) and heads (batch) at once:
    GemmSpec qk;  // scores (T, T) = Q (T, Dh) @ K^T, K stored (T, Dh) with row stride 3D
    qk.outer = nb, qk.outer_stride_a = qk.outer_stride_b = T * 3 * D, qk.outer_stride_c = H * T * T;
    qk.batch = H, qk.m = T, qk.k = Dh, qk.n = T;
    qk.lda = 3 * D, qk.batch_stride_a = Dh;
    qk.trans_b = true, qk.ldb = 3 * D, qk.batch_stride_b = Dh;
    qk.batch_stride_c = T * T;
    qk.alpha = 1.0f / std::sqrt(static_cast<float>(Dh));
    GemmSpec pv;  // out (T, Dh) = P (T, T) @ V (T, Dh), written into its head's columns
    pv.outer = nb, pv.outer_stride_a = H * T * T, pv.outer_stride_b = T * 3 * D, pv.outer_stride_c = T * D;
    pv.batch = H, pv.m = T, pv.k = T, pv.n = Dh;
    pv.batch_stride_a = T * T;
    pv.ldb = 3 * D, pv.batch_stride_b = Dh;
    pv.ldc = D, pv.batch_stride_c = Dh;
    const float* q = qkv + b0 * T * 3 * D;
    float* p = keep_probs ? scores + b0 * H * T * T : scores;
    cache.gemm(qk).run(p, q, q + D);
    cache.softmax(nb * H * T, T).run(p, p);
    cache.gemm(pv).run(out + b0 * T * D, p, q + 2 * D);
  }
}

}  // namespace vmoe::nn
