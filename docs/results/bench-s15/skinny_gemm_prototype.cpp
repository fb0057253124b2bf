// Prototype: C (M, N) = X (M, K) @ W (K, N) + bias for N a multiple of 24, X unpacked,
// W packed once into 24-column panels (K, 24). Against oneDNN's linear, interleaved.
#include <immintrin.h>
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include "nn/gemm.hpp"
#include "nn/primitive_cache.hpp"
using namespace std::chrono;
using namespace vmoe::nn;

void pack_w(float* wp, const float* w, int64_t K, int64_t N) {  // panels of 24 columns, each (K, 24)
  for (int64_t p = 0; p < N / 24; ++p)
    for (int64_t k = 0; k < K; ++k) std::copy(w + k * N + p * 24, w + k * N + p * 24 + 24, wp + (p * K + k) * 24);
}

template <int R>
inline void kernel(float* c, int64_t ldc, const float* x, int64_t ldx, const float* wp, const float* bias, int64_t K) {
  __m256 acc[R][3];
  for (int r = 0; r < R; ++r) for (int v = 0; v < 3; ++v) acc[r][v] = _mm256_loadu_ps(bias + v * 8);
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(wp + k * 24), b1 = _mm256_loadu_ps(wp + k * 24 + 8), b2 = _mm256_loadu_ps(wp + k * 24 + 16);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(x + r * ldx + k);
      acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(a, b2, acc[r][2]);
    }
  }
  for (int r = 0; r < R; ++r) for (int v = 0; v < 3; ++v) _mm256_storeu_ps(c + r * ldc + v * 8, acc[r][v]);
}

void skinny(float* c, const float* x, const float* wp, const float* bias, int64_t M, int64_t K, int64_t N, int64_t rows_per_task) {
  const int64_t tasks = (M + rows_per_task - 1) / rows_per_task;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t r1 = std::min(M, (t + 1) * rows_per_task);
    for (int64_t p = 0; p < N / 24; ++p)
      for (int64_t r = t * rows_per_task; r < r1; r += 4) {
        if (r + 4 <= r1) kernel<4>(c + r * N + p * 24, N, x + r * K, K, wp + p * K * 24, bias + p * 24, K);
        else for (int64_t q = r; q < r1; ++q) kernel<1>(c + q * N + p * 24, N, x + q * K, K, wp + p * K * 24, bias + p * 24, K);
      }
  }
}

int main(int argc, char** argv) {
  const int64_t M = 6400, K = argc > 1 ? atoi(argv[1]) : 384, N = argc > 2 ? atoi(argv[2]) : 96;
  const int64_t rpt = argc > 3 ? atoi(argv[3]) : 64;
  std::mt19937 g(1); std::normal_distribution<float> n;
  std::vector<float> x(M * K), w(K * N), wp(K * N), bias(N), c1(M * N), c2(M * N);
  for (auto& v : x) v = n(g); for (auto& v : w) v = n(g); for (auto& v : bias) v = n(g);
  PrimitiveCache cache;
  GemmSpec s; s.runtime_m = true, s.k = K, s.n = N, s.bias = true;
  std::vector<double> a, b, ratio;
  for (int r = 0; r < 42; ++r) {
    auto t0 = steady_clock::now(); cache.gemm(s).run(c1.data(), x.data(), w.data(), bias.data(), M);
    auto t1 = steady_clock::now(); pack_w(wp.data(), w.data(), K, N); skinny(c2.data(), x.data(), wp.data(), bias.data(), M, K, N, rpt);
    auto t2 = steady_clock::now();
    double p = duration<double, std::milli>(t1 - t0).count(), q = duration<double, std::milli>(t2 - t1).count();
    if (r >= 2) a.push_back(p), b.push_back(q), ratio.push_back(p / q);
  }
  double diff = 0; for (int64_t i = 0; i < M * N; ++i) diff = std::max(diff, (double)std::abs(c1[i] - c2[i]));
  std::sort(a.begin(), a.end()); std::sort(b.begin(), b.end()); std::sort(ratio.begin(), ratio.end());
  const double f = 2.0 * M * K * N;
  printf("%ldx%ldx%ld rows/task %ld: oneDNN min %.3f ms (%.0f GF/s), own min %.3f ms (%.0f GF/s); oneDNN/own per round median %.2f [%.2f, %.2f]; diff %.1e\n",
         M, K, N, rpt, a[0], f / a[0] / 1e6, b[0], f / b[0] / 1e6, ratio[ratio.size()/2], ratio[ratio.size()/4], ratio[3*ratio.size()/4], diff);
}
