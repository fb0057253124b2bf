// C (M, N) = X (M, K) @ W (K, N): one 2-thread oneDNN call against two 1-thread calls on
// half the rows each, run side by side in an OpenMP region. Interleaved, per-round ratios.
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include "nn/gemm.hpp"
using namespace std::chrono;
using namespace vmoe::nn;
int main(int argc, char** argv) {
  const int64_t M = 6400, K = argc > 1 ? atoi(argv[1]) : 384, N = argc > 2 ? atoi(argv[2]) : 96;
  const bool tb = argc > 3 && atoi(argv[3]);
  std::mt19937 g(1); std::normal_distribution<float> n;
  std::vector<float> x(M * K), w(K * N), c1(M * N), c2(M * N);
  for (auto& v : x) v = n(g); for (auto& v : w) v = n(g);
  GemmSpec s; s.runtime_m = true, s.k = K, s.n = N;
  if (tb) s.trans_b = true, s.ldb = K;  // W stored (N, K), as input_grad reads it
  Gemm two(s);
  omp_set_num_threads(1);
  Gemm one(s);
  omp_set_num_threads(2);
  std::vector<double> a, b, ratio;
  for (int r = 0; r < 42; ++r) {
    auto t0 = steady_clock::now(); two.run(c1.data(), x.data(), w.data(), nullptr, M);
    auto t1 = steady_clock::now();
#pragma omp parallel num_threads(2)
    {
      const int64_t half = M / 2, t = omp_get_thread_num();
      one.run(c2.data() + t * half * N, x.data() + t * half * K, w.data(), nullptr, half);
    }
    auto t2 = steady_clock::now();
    double p = duration<double, std::milli>(t1 - t0).count(), q = duration<double, std::milli>(t2 - t1).count();
    if (r >= 2) a.push_back(p), b.push_back(q), ratio.push_back(p / q);
  }
  double diff = 0; for (int64_t i = 0; i < M * N; ++i) diff = std::max(diff, (double)std::abs(c1[i] - c2[i]));
  std::sort(a.begin(), a.end()); std::sort(b.begin(), b.end()); std::sort(ratio.begin(), ratio.end());
  const double f = 2.0 * M * K * N;
  printf("%ldx%ldx%ld%s: one 2-thread call min %.3f ms (%.0f GF/s); two 1-thread halves min %.3f ms (%.0f GF/s); speed-up per round %.2f [%.2f, %.2f]; diff %.1e\n",
         M, K, N, tb ? " (B transposed)" : "", a[0], f / a[0] / 1e6, b[0], f / b[0] / 1e6, ratio[ratio.size()/2], ratio[ratio.size()/4], ratio[3*ratio.size()/4], diff);
}
