#include "nn/attention.hpp"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "nn/exp_bounded.hpp"
#include "nn/train_ops.hpp"

namespace vmoe::nn {

namespace {

// AVX2 register tiles (the build targets x86-64-v3; AVX-512 ones below): kRows query
// rows by at most kMaxVectors registers of 8 columns, so 12 accumulators + 3 loaded B
// registers + 1 broadcast fill the 16 ymm registers.
constexpr int64_t kLanes = 8;
constexpr int kRows = 4;
constexpr int kMaxVectors = 3;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One thread's scratch for one (image, head), every part a multiple of 16 floats (64 B):
//   kt (Dh, Tp)     K transposed, columns T..Tp zero             Tp = T rounded up to 8
//   vp (T, Dhp)     V packed, columns Dh..Dhp zero                Dhp = Dh rounded up to 8
//                   (read in place at row stride 3D, V's T rows span up to T pages, more
//                   than the L1 TLB holds, and every tile of query rows walks all of them)
//   p  (kRows, Tp)  one tile of score rows, then their exp(score - row max)
struct FusedScratch {
  int64_t Tp, Dhp, kt_floats, vp_floats, p_floats;
  FusedScratch(int64_t T, int64_t Dh)
      : Tp(round_up(T, kLanes)),
        Dhp(round_up(Dh, kLanes)),
        kt_floats(round_up(Dh * Tp, 16)),
        vp_floats(round_up(T * Dhp, 16)),
        p_floats(round_up(kRows * Tp, 16)) {}
  int64_t floats() const { return kt_floats + vp_floats + p_floats; }
};

std::atomic<bool> allow_avx512{true};

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

// The same tiles with AVX-512 registers of 16 columns, up to 4 per row (16 accumulators
// of the 32 registers), for CPUs that have them: the build targets x86-64-v3, so these
// are compiled for avx512f alone and chosen at run time (`wide` below). They double the
// FMA width where Dh = 64 made the AVX2 tiles compute-bound (docs/BENCHMARKS.md).
#define VMOE_AVX512 __attribute__((target("avx512f")))
template <int R, int NV, class Store>
VMOE_AVX512 inline void tile16(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K, Store&& store) {
  __m512 acc[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 bk[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bk[v] = _mm512_loadu_ps(b + k * ldb + v * 16);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bk[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {  // as two AVX2 halves (GCC 12 warns on the extract intrinsics)
      alignas(64) float lanes[16];
      _mm512_store_ps(lanes, acc[r][v]);
      store(r, v * 16, _mm256_load_ps(lanes));
      store(r, v * 16 + 8, _mm256_load_ps(lanes + 8));
    }
}

template <int R, class Store>
VMOE_AVX512 void rows_times16(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K, int64_t N,
                              Store&& store) {
  const int64_t registers = N / 16, blocks = (registers + 3) / 4;
  int64_t c0 = 0;
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t nv = registers / blocks + (block < registers % blocks);
    auto at = [&](int r, int64_t c, __m256 x) { store(r, c0 + c, x); };
    if (nv == 4)
      tile16<R, 4>(a, lda, b + c0, ldb, K, at);
    else if (nv == 3)
      tile16<R, 3>(a, lda, b + c0, ldb, K, at);
    else if (nv == 2)
      tile16<R, 2>(a, lda, b + c0, ldb, K, at);
    else
      tile16<R, 1>(a, lda, b + c0, ldb, K, at);
    c0 += nv * 16;
  }
  if (c0 < N)  // an odd number of 8-column registers: the last is an AVX2 one
    tile<R, 1>(a, lda, b + c0, ldb, K, [&](int r, int64_t c, __m256 x) { store(r, c0 + c, x); });
}

// The horizontal maximum and sum of a register, in every lane.
inline __m256 all_lanes_max(__m256 x) {
  x = _mm256_max_ps(x, _mm256_permute2f128_ps(x, x, 1));
  x = _mm256_max_ps(x, _mm256_permute_ps(x, 0x4e));
  return _mm256_max_ps(x, _mm256_permute_ps(x, 0xb1));
}
inline __m256 all_lanes_sum(__m256 x) {
  x = _mm256_add_ps(x, _mm256_permute2f128_ps(x, x, 1));
  x = _mm256_add_ps(x, _mm256_permute_ps(x, 0x4e));
  return _mm256_add_ps(x, _mm256_permute_ps(x, 0xb1));
}

// Lanes [0, n) set, for the last, partial register of a row of n mod 8 floats.
inline __m256 first_lanes(int64_t n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane));
}

// For rows r < R of s (row stride Tp): s[j] = exp(s[j] - max s) for j < T and 0 for j in
// [T, Tp), and inv_sum[r] = 1 / sum_j s[j]. The rows are interleaved so that their
// reductions' latency chains overlap. exp's argument is clamped at -87 (its range);
// exp(-87) < 1e-37 next to the maximum's exp(0) = 1.
template <int R>
void exp_rows_minus_max(float* s, int64_t Tp, int64_t T, float* inv_sum) {
  const int64_t whole = T / kLanes * kLanes;
  const __m256 tail = first_lanes(T - whole);  // lanes of the last register that are in the row
  __m256 m[R], sum[R];
  for (int r = 0; r < R; ++r) m[r] = _mm256_set1_ps(-INFINITY), sum[r] = _mm256_setzero_ps();
  for (int64_t j = 0; j < whole; j += kLanes)
    for (int r = 0; r < R; ++r) m[r] = _mm256_max_ps(m[r], _mm256_loadu_ps(s + r * Tp + j));
  if (whole < T)
    for (int r = 0; r < R; ++r) m[r] = _mm256_max_ps(m[r], _mm256_blendv_ps(m[r], _mm256_loadu_ps(s + r * Tp + whole), tail));
  for (int r = 0; r < R; ++r) m[r] = all_lanes_max(m[r]);
  const __m256 lowest = _mm256_set1_ps(-87.0f);
  for (int64_t j = 0; j < Tp; j += kLanes)
    for (int r = 0; r < R; ++r) {
      // max(lowest, z) returns z when z is NaN, so a NaN score makes its row NaN
      __m256 e = exp_bounded(_mm256_max_ps(lowest, _mm256_sub_ps(_mm256_loadu_ps(s + r * Tp + j), m[r])));
      if (j == whole) e = _mm256_and_ps(e, tail);  // only reached when T is not a multiple of 8
      _mm256_storeu_ps(s + r * Tp + j, e);
      sum[r] = _mm256_add_ps(sum[r], e);
    }
  for (int r = 0; r < R; ++r) inv_sum[r] = 1.0f / _mm256_cvtss_f32(all_lanes_sum(sum[r]));
}

// dst (8, 8) = src (8, 8)^T, rows of src at stride lds, of dst at stride ldd.
inline void transpose8x8(float* dst, int64_t ldd, const float* src, int64_t lds) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  // t[0] = a0 b0 a1 b1 | a4 b4 a5 b5, t[1] = a2 b2 a3 b3 | a6 b6 a7 b7, likewise t[2..3] for c, d
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);      // a0 b0 c0 d0 | a4 b4 c4 d4
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);  // a1 b1 c1 d1 | a5 b5 c5 d5
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// kt (Dh, Tp) = k (T, Dh)^T with k's rows at stride ld, columns T..Tp zero.
void transpose_keys(float* kt, int64_t Tp, const float* k, int64_t ld, int64_t T, int64_t Dh) {
  const int64_t T8 = T / 8 * 8, Dh8 = Dh / 8 * 8;
  for (int64_t j = 0; j < T8; j += 8)
    for (int64_t d = 0; d < Dh8; d += 8) transpose8x8(kt + d * Tp + j, Tp, k + j * ld + d, ld);
  for (int64_t d = 0; d < Dh; ++d) {
    for (int64_t j = d < Dh8 ? T8 : 0; j < T; ++j) kt[d * Tp + j] = k[j * ld + d];
    for (int64_t j = T; j < Tp; ++j) kt[d * Tp + j] = 0.0f;
  }
}

// row[c, c + 8) = x, or only its columns below Dh: the lanes past the last, partial
// register of a head's row are the next head's.
inline void store_head_columns(float* row, int64_t c, int64_t Dh, __m256 x) {
  if (c + kLanes <= Dh)
    _mm256_storeu_ps(row + c, x);
  else
    _mm256_maskstore_ps(row + c, _mm256_castps_si256(first_lanes(Dh - c)), x);
}

// dst (T, Dhp) = src (T, Dh) with src's rows at stride ld, columns Dh..Dhp zero.
void pack_rows(float* dst, int64_t Dhp, const float* src, int64_t ld, int64_t T, int64_t Dh) {
  for (int64_t j = 0; j < T; ++j) {
    std::copy(src + j * ld, src + j * ld + Dh, dst + j * Dhp);
    std::fill(dst + j * Dhp + Dh, dst + (j + 1) * Dhp, 0.0f);
  }
}

// R query rows of one (image, head): scores p (R, Tp) = Q K^T / sqrt(Dh) from q (R, Dh)
// (row stride ld) and kt (Dh, Tp); exp and row sums in place; o (R, Dh) (row stride ldo)
// = P V / row sum, V (T, Dhp) with row stride ldv. wide: AVX-512 matmul tiles.
// With probs (training), the tile's probabilities are also written there, (R, T) at row
// stride T, and o = P V from those normalised rows.
template <int R>
void attend_tile(bool wide, float* o, int64_t ldo, const float* q, int64_t ld, const float* kt, const float* v,
                 int64_t ldv, float* p, int64_t T, int64_t Tp, int64_t Dh, int64_t Dhp, float* probs) {
  const __m256 scale = _mm256_set1_ps(1.0f / std::sqrt(static_cast<float>(Dh)));
  auto store_score = [&](int r, int64_t c, __m256 x) { _mm256_storeu_ps(p + r * Tp + c, _mm256_mul_ps(x, scale)); };
  if (wide)
    rows_times16<R>(q, ld, kt, Tp, Dh, Tp, store_score);
  else
    rows_times<R>(q, ld, kt, Tp, Dh, Tp, store_score);
  float inv_sum[R];
  exp_rows_minus_max<R>(p, Tp, T, inv_sum);
  if (probs)
    for (int r = 0; r < R; ++r) {
      const __m256 inv = _mm256_set1_ps(inv_sum[r]);
      for (int64_t j = 0; j < Tp; j += kLanes)
        _mm256_storeu_ps(p + r * Tp + j, _mm256_mul_ps(_mm256_loadu_ps(p + r * Tp + j), inv));
      std::copy(p + r * Tp, p + r * Tp + T, probs + r * T);
      inv_sum[r] = 1.0f;
    }
  auto store_out = [&](int r, int64_t c, __m256 x) {
    store_head_columns(o + r * ldo, c, Dh, _mm256_mul_ps(x, _mm256_set1_ps(inv_sum[r])));
  };
  if (wide)
    rows_times16<R>(p, Tp, v, ldv, T, Dhp, store_out);
  else
    rows_times<R>(p, Tp, v, ldv, T, Dhp, store_out);
}

// Query rows [i0, i1) of image b, head h:
//   out[b*T + i, h*Dh : (h+1)*Dh] = softmax_j(q_i . k_j / sqrt(Dh)) V     for i in [i0, i1)
// K transposed and V packed into scratch once, then
// tiles of kRows query rows.
// With probs (training: this pair's (T, T) probabilities), they are written there too.
void attend_rows(bool wide, float* out, float* probs, const float* qkv, int64_t b, int64_t h, int64_t i0, int64_t i1,
                 int64_t B, int64_t T, int64_t H, int64_t Dh, const FusedScratch& s, float* scratch) {
  const int64_t D = H * Dh, ld = 3 * D, Tp = s.Tp;
  const float* q = qkv + b * T * ld + h * Dh;  // (T, Dh) with row stride ld, as are k and v
  const float* k = q + D;
  const float* v = q + 2 * D;
  float* kt = scratch;
  float* vp = kt + s.kt_floats;
  float* p = vp + s.vp_floats;
  transpose_keys(kt, Tp, k, ld, T, Dh);
  pack_rows(vp, s.Dhp, v, ld, T, Dh);
  // The same head's rows of the next image come H pairs later: the thread's pairs are
  // contiguous (static schedule). Prefetching them while this pair computes hides the
  // memory latency that otherwise dominates large batches, whose qkv is far beyond L2.
  const float* next = b + 1 < B ? q + T * ld : nullptr;
  for (int64_t i = i0; i < i1; i += kRows) {
    float* o = out + (b * T + i) * D + h * Dh;
    const float* qi = q + i * ld;
    if (next)
      for (int64_t r = i; r < std::min(i + kRows, i1); ++r)
        for (int64_t c = 0; c < 3 * D; c += D)
          for (int64_t d = 0; d < Dh + 16; d += 16)
            _mm_prefetch(reinterpret_cast<const char*>(next + r * ld + c + std::min(d, Dh - 1)), _MM_HINT_T0);
    float* pi = probs ? probs + i * T : nullptr;
    switch (std::min<int64_t>(kRows, i1 - i)) {
      case 4: attend_tile<4>(wide, o, D, qi, ld, kt, vp, s.Dhp, p, T, Tp, Dh, s.Dhp, pi); break;
      case 3: attend_tile<3>(wide, o, D, qi, ld, kt, vp, s.Dhp, p, T, Tp, Dh, s.Dhp, pi); break;
      case 2: attend_tile<2>(wide, o, D, qi, ld, kt, vp, s.Dhp, p, T, Tp, Dh, s.Dhp, pi); break;
      default: attend_tile<1>(wide, o, D, qi, ld, kt, vp, s.Dhp, p, T, Tp, Dh, s.Dhp, pi); break;
    }
  }
}

}  // namespace

void attention_allow_avx512(bool allow) { allow_avx512.store(allow); }

int64_t attention_workspace_floats(int64_t B, int64_t T, int64_t H, int64_t Dh, bool keep_probs) {
  if (keep_probs) return B * H * T * T;
  return omp_get_max_threads() * FusedScratch(T, Dh).floats();
}

void attention_forward(float* out, float* scores, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Dh,
                       bool keep_probs) {
  static const bool cpu_has_avx512 = __builtin_cpu_supports("avx512f");
  const bool wide = cpu_has_avx512 && allow_avx512.load(std::memory_order_relaxed);
  const FusedScratch s(T, Dh);
  // Work items are (image, head) pairs; when there are too few to keep every thread busy
  // (small batches), each pair's rows are split into parts, each packing its own K and V.
  const int64_t pairs = B * H, threads = omp_get_max_threads();
  const int64_t row_tiles = (T + kRows - 1) / kRows;
  const int64_t parts = std::clamp<int64_t>((2 * threads + pairs - 1) / pairs, 1, row_tiles);
  const int64_t rows_per_part = (row_tiles + parts - 1) / parts * kRows;
  // With keep_probs, scores holds the probabilities, and the scratch is our own.
  std::vector<float> own_scratch(keep_probs ? threads * s.floats() : 0);
  float* scratch = keep_probs ? own_scratch.data() : scores;
#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < pairs * parts; ++item) {
    const int64_t pair = item / parts, i0 = item % parts * rows_per_part, i1 = std::min(T, i0 + rows_per_part);
    if (i0 >= i1) continue;
    float* probs = keep_probs ? scores + pair * T * T : nullptr;
    attend_rows(wide, out, probs, qkv, pair / H, pair % H, i0, i1, B, T, H, Dh, s,
                scratch + omp_get_thread_num() * s.floats());
  }
}

int64_t attention_backward_workspace_floats(int64_t B, int64_t T, int64_t H) { return 2 * B * H * T * T; }

void attention_backward(float* dqkv, float* workspace, const float* dout, const float* probs, const float* qkv,
                        int64_t B, int64_t T, int64_t H, int64_t Dh, PrimitiveCache& cache) {
  const int64_t D = H * Dh, img_qkv = T * 3 * D, img_probs = H * T * T, img_out = T * D;  // per-image strides
  GemmSpec dp;  // dP (T, T) = dO (T, Dh) @ V^T, V stored (T, Dh) with row stride 3D
  dp.outer = B, dp.outer_stride_a = img_out, dp.outer_stride_b = img_qkv, dp.outer_stride_c = img_probs;
  dp.batch = H, dp.m = T, dp.k = Dh, dp.n = T, dp.lda = D, dp.batch_stride_a = Dh;
  dp.trans_b = true, dp.ldb = 3 * D, dp.batch_stride_b = Dh, dp.batch_stride_c = T * T;
  GemmSpec dv;  // dV (T, Dh) = P^T @ dO, written into its head's columns of dqkv
  dv.outer = B, dv.outer_stride_a = img_probs, dv.outer_stride_b = img_out, dv.outer_stride_c = img_qkv;
  dv.batch = H, dv.m = T, dv.k = T, dv.n = Dh, dv.trans_a = true, dv.lda = T, dv.batch_stride_a = T * T;
  dv.ldb = D, dv.batch_stride_b = Dh, dv.ldc = 3 * D, dv.batch_stride_c = Dh;
  GemmSpec dq;  // dQ (T, Dh) = s dS @ K
  dq.outer = B, dq.outer_stride_a = img_probs, dq.outer_stride_b = img_qkv, dq.outer_stride_c = img_qkv;
  dq.batch = H, dq.m = T, dq.k = T, dq.n = Dh, dq.batch_stride_a = T * T, dq.ldb = 3 * D, dq.batch_stride_b = Dh;
  dq.ldc = 3 * D, dq.batch_stride_c = Dh, dq.alpha = 1.0f / std::sqrt(static_cast<float>(Dh));
  GemmSpec dk = dq;  // dK (T, Dh) = s dS^T @ Q
  dk.trans_a = true, dk.lda = T;
  float* dP = workspace;
  float* dS = workspace + B * H * T * T;
  cache.gemm(dp).run(dP, dout, qkv + 2 * D);
  cache.gemm(dv).run(dqkv + 2 * D, probs, dout);
  SoftmaxBackward(B * H * T, T).run(dS, dP, probs);
  cache.gemm(dq).run(dqkv, dS, qkv + D);
  cache.gemm(dk).run(dqkv + D, dS, qkv);
}

}  // namespace vmoe::nn
