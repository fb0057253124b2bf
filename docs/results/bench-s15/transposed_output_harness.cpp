// C (M, N) = X (M, K) @ W (K, N) two ways: oneDNN linear; oneDNN computing C^T = W^T X^T
// (M' = N) then an 8x8-block transpose into C. Interleaved, per-round ratios.
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
int main(int argc, char** argv) {
  const int64_t M = 6400, K = argc > 1 ? atoi(argv[1]) : 384, N = argc > 2 ? atoi(argv[2]) : 96;
  std::mt19937 g(1); std::normal_distribution<float> n;
  std::vector<float> x(M * K), w(K * N), c1(M * N), c2(M * N), ct(M * N);
  for (auto& v : x) v = n(g); for (auto& v : w) v = n(g);
  PrimitiveCache cache;
  GemmSpec s; s.runtime_m = true, s.k = K, s.n = N;
  GemmSpec t; t.m = N, t.k = K, t.n = M, t.trans_a = true, t.lda = N, t.trans_b = true, t.ldb = K;
  std::vector<double> a, b, bg, ratio;
  for (int r = 0; r < 42; ++r) {
    auto t0 = steady_clock::now(); cache.gemm(s).run(c1.data(), x.data(), w.data(), nullptr, M);
    auto t1 = steady_clock::now(); cache.gemm(t).run(ct.data(), w.data(), x.data());
    auto t2 = steady_clock::now();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) c2[i * N + j] = ct[j * M + i];
    auto t3 = steady_clock::now();
    double p = duration<double, std::milli>(t1 - t0).count(), q = duration<double, std::milli>(t3 - t1).count();
    if (r >= 2) a.push_back(p), b.push_back(q), bg.push_back(duration<double, std::milli>(t2 - t1).count()), ratio.push_back(p / q);
  }
  double diff = 0; for (int64_t i = 0; i < M * N; ++i) diff = std::max(diff, (double)std::abs(c1[i] - c2[i]));
  std::sort(a.begin(), a.end()); std::sort(b.begin(), b.end()); std::sort(bg.begin(), bg.end()); std::sort(ratio.begin(), ratio.end());
  const double f = 2.0 * M * K * N;
  printf("%ldx%ldx%ld: plain min %.3f ms (%.0f GF/s); transposed gemm min %.3f ms (%.0f GF/s), +transpose %.3f; plain/transposed per round %.2f [%.2f, %.2f]; diff %.1e\n",
         M, K, N, a[0], f / a[0] / 1e6, bg[0], f / bg[0] / 1e6, b[0], ratio[ratio.size()/2], ratio[ratio.size()/4], ratio[3*ratio.size()/4], diff);
}
