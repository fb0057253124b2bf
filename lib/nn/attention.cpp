#include "nn/attention.hpp"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "nn/exp_bounded.hpp"

namespace vmoe::nn {

namespace {

// AVX2 register tiles (the build targets x86-64-v3): kRows query rows by at most
// kMaxVectors registers of 8 columns, so 12 accumulators + 3 loaded B registers + 1
// broadcast fill the 16 ymm registers.
constexpr int64_t kLanes = 8;
constexpr int kRows = 4;
constexpr int kMaxVectors = 3;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One thread's scratch for one (image, head), every part a multiple of 16 floats (64 B):
//   kt (Dh, Tp)     K transposed, columns T..Tp zero             Tp = T rounded up to 8
//   vp (T, Dhp)     V with columns Dh..Dhp zero, only when Dh is not a multiple of 8 (else
//                   V is read in place)                           Dhp = Dh rounded up to 8
//   p  (kRows, Tp)  one tile of score rows, then their exp(score - row max)
struct FusedScratch {
  int64_t Tp, Dhp, kt_floats, vp_floats, p_floats;
  FusedScratch(int64_t T, int64_t Dh)
      : Tp(round_up(T, kLanes)),
        Dhp(round_up(Dh, kLanes)),
        kt_floats(round_up(Dh * Tp, 16)),
        vp_floats(Dh % kLanes ? round_up(T * Dhp, 16) : 0),
        p_floats(round_up(kRows * Tp, 16)) {}
  int64_t floats() const { return kt_floats + vp_floats + p_floats; }
};

// C (R, 8 NV) = A (R, K) @ B (K, 8 NV): A's row r at a + r * lda (unit stride along K),
// B's row k at b + k * ldb. Hands each finished register to store(r, v, acc).
template <int R, int NV, class Store>
inline void tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K, Store&& store) {
  __m256 acc[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 bk[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) bk[v] = _mm256_loadu_ps(b + k * ldb + v * kLanes);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r * lda + k);
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(ar, bk[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) store(r, v * kLanes, acc[r][v]);
}

// C (R, N) = A (R, K) @ B (K, N), N a multiple of 8, in column blocks of at most
// kMaxVectors registers split as evenly as possible (4 registers: 2 + 2, not 3 + 1) so
// every tile keeps several independent FMA chains in flight. store(r, column, acc).
template <int R, class Store>
void rows_times(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K, int64_t N, Store&& store) {
  const int64_t vectors = N / kLanes, blocks = (vectors + kMaxVectors - 1) / kMaxVectors;
  int64_t c0 = 0;
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t nv = vectors / blocks + (block < vectors % blocks);
    auto at = [&](int r, int64_t c, __m256 x) { store(r, c0 + c, x); };
    if (nv == 3)
      tile<R, 3>(a, lda, b + c0, ldb, K, at);
    else if (nv == 2)
      tile<R, 2>(a, lda, b + c0, ldb, K, at);
    else
      tile<R, 1>(a, lda, b + c0, ldb, K, at);
    c0 += nv * kLanes;
  }
}

template <class Store>
void rows_times(int rows, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K, int64_t N,
                Store&& store) {
  switch (rows) {
    case 4: rows_times<4>(a, lda, b, ldb, K, N, store); break;
    case 3: rows_times<3>(a, lda, b, ldb, K, N, store); break;
    case 2: rows_times<2>(a, lda, b, ldb, K, N, store); break;
    default: rows_times<1>(a, lda, b, ldb, K, N, store); break;
  }
}

// s[j] = exp(s[j] - max s) for j < T; returns 1 / sum_j s[j]. exp's argument is clamped
// at -87 (its range); exp(-87) < 1e-37 next to the row maximum's 1.
float exp_row_minus_max(float* s, int64_t T) {
  float m = s[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < T; ++j) m = s[j] > m ? s[j] : m;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < T; ++j) {
    float z = s[j] - m;
    z = z < -87.0f ? -87.0f : z;
    s[j] = exp_bounded(z);
    sum += s[j];
  }
  return 1.0f / sum;
}

// Query rows [i0, i1) of image b, head h:
//   out[b*T + i, h*Dh : (h+1)*Dh] = softmax_j(q_i . k_j / sqrt(Dh)) V     for i in [i0, i1)
// a tile of kRows rows at a time: scores (rows, Tp) = Q K^T, exp and row sums in place,
// then (rows, Dh) = P V scaled by each row's 1 / sum.
void attend_rows(float* out, const float* qkv, int64_t b, int64_t h, int64_t i0, int64_t i1, int64_t T, int64_t H,
                 int64_t Dh, const FusedScratch& s, float* scratch) {
  const int64_t D = H * Dh, ld = 3 * D, Tp = s.Tp;
  const float* q = qkv + b * T * ld + h * Dh;  // (T, Dh) with row stride ld, as are k and v
  const float* k = q + D;
  const float* v = q + 2 * D;
  float* kt = scratch;
  float* vp = kt + s.kt_floats;
  float* p = vp + s.vp_floats;
  for (int64_t d = 0; d < Dh; ++d) {
    for (int64_t j = 0; j < T; ++j) kt[d * Tp + j] = k[j * ld + d];
    for (int64_t j = T; j < Tp; ++j) kt[d * Tp + j] = 0.0f;
  }
  const float* vb = v;
  int64_t ldv = ld;
  if (s.vp_floats) {
    for (int64_t j = 0; j < T; ++j)
      for (int64_t d = 0; d < s.Dhp; ++d) vp[j * s.Dhp + d] = d < Dh ? v[j * ld + d] : 0.0f;
    vb = vp, ldv = s.Dhp;
  }
  const __m256 scale = _mm256_set1_ps(1.0f / std::sqrt(static_cast<float>(Dh)));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  float inv_sum[kRows];
  for (int64_t i = i0; i < i1; i += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, i1 - i));
    rows_times(rows, q + i * ld, ld, kt, Tp, Dh, Tp,
               [&](int r, int64_t c, __m256 x) { _mm256_storeu_ps(p + r * Tp + c, _mm256_mul_ps(x, scale)); });
    for (int r = 0; r < rows; ++r) inv_sum[r] = exp_row_minus_max(p + r * Tp, T);
    float* o = out + (b * T + i) * D + h * Dh;
    rows_times(rows, p, Tp, vb, ldv, T, s.Dhp, [&](int r, int64_t c, __m256 x) {
      x = _mm256_mul_ps(x, _mm256_set1_ps(inv_sum[r]));
      if (c + kLanes <= Dh)
        _mm256_storeu_ps(o + r * D + c, x);
      else  // the last, partial register of a row: its other lanes are the next head's
        _mm256_maskstore_ps(o + r * D + c, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(Dh - c)), lane), x);
    });
  }
}

// Training: oneDNN batched matmuls over images (outer) and heads (batch) at once, the
// probabilities (B, H, T, T) kept in `probs`.
void attention_keep_probs(float* out, float* probs, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Dh,
                          PrimitiveCache& cache) {
  const int64_t D = H * Dh;
  GemmSpec qk;  // scores (T, T) = Q (T, Dh) @ K^T, K stored (T, Dh) with row stride 3D
  qk.outer = B, qk.outer_stride_a = qk.outer_stride_b = T * 3 * D, qk.outer_stride_c = H * T * T;
  qk.batch = H, qk.m = T, qk.k = Dh, qk.n = T;
  qk.lda = 3 * D, qk.batch_stride_a = Dh;
  qk.trans_b = true, qk.ldb = 3 * D, qk.batch_stride_b = Dh;
  qk.batch_stride_c = T * T;
  qk.alpha = 1.0f / std::sqrt(static_cast<float>(Dh));
  GemmSpec pv;  // out (T, Dh) = P (T, T) @ V (T, Dh), written into its head's columns
  pv.outer = B, pv.outer_stride_a = H * T * T, pv.outer_stride_b = T * 3 * D, pv.outer_stride_c = T * D;
  pv.batch = H, pv.m = T, pv.k = T, pv.n = Dh;
  pv.batch_stride_a = T * T;
  pv.ldb = 3 * D, pv.batch_stride_b = Dh;
  pv.ldc = D, pv.batch_stride_c = Dh;
  cache.gemm(qk).run(probs, qkv, qkv + D);
  cache.softmax(B * H * T, T).run(probs, probs);
  cache.gemm(pv).run(out, probs, qkv + 2 * D);
}

}  // namespace

int64_t attention_workspace_floats(int64_t B, int64_t T, int64_t H, int64_t Dh, bool keep_probs) {
  if (keep_probs) return B * H * T * T;
  return omp_get_max_threads() * FusedScratch(T, Dh).floats();
}

void attention_forward(float* out, float* scores, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Dh,
                       PrimitiveCache& cache, bool keep_probs) {
  if (keep_probs) return attention_keep_probs(out, scores, qkv, B, T, H, Dh, cache);
  const FusedScratch s(T, Dh);
  // Work items are (image, head) pairs; when there are too few to keep every thread busy
  // (small batches), each pair's rows are split into parts, each packing its own K and V.
  const int64_t pairs = B * H, threads = omp_get_max_threads();
  const int64_t row_tiles = (T + kRows - 1) / kRows;
  const int64_t parts = std::clamp<int64_t>((2 * threads + pairs - 1) / pairs, 1, row_tiles);
  const int64_t rows_per_part = (row_tiles + parts - 1) / parts * kRows;
#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < pairs * parts; ++item) {
    const int64_t pair = item / parts, i0 = item % parts * rows_per_part, i1 = std::min(T, i0 + rows_per_part);
    if (i0 >= i1) continue;
    attend_rows(out, qkv, pair / H, pair % H, i0, i1, T, H, Dh, s, scores + omp_get_thread_num() * s.floats());
  }
}

}  // namespace vmoe::nn
