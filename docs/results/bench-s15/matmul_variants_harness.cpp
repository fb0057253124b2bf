// Training matmul shapes of vit-fmnist at batch 128 (6400 rows), variants, interleaved.
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>
#include "nn/gemm.hpp"
#include "nn/primitive_cache.hpp"
using namespace std::chrono;
using namespace vmoe::nn;
struct Case { std::string name; double flops; std::function<void()> run; std::vector<double> t; };
int main(int argc, char** argv) {
  const int rounds = argc > 1 ? atoi(argv[1]) : 15;
  const int64_t N = 6400, D = 96, M = 384;
  std::mt19937 g(1); std::normal_distribution<float> n;
  auto buf = [&](int64_t size) { std::vector<float> v(size); for (auto& x : v) x = n(g) * 0.1f; return v; };
  auto x = buf(N * M), y = buf(N * M), w = buf(M * D), wt = buf(M * D), bias = buf(M), tmp = buf(N * M), out = buf(N * M);
  auto big_a = buf(3136 * 768), big_b = buf(768 * 3072), big_c = buf(3136 * 3072);
  PrimitiveCache cache;
  std::vector<Case> cases;
  auto add = [&](std::string name, double flops, std::function<void()> f) { cases.push_back({name, flops, f, {}}); };
  { GemmSpec s; s.m = 3136, s.k = 768, s.n = 3072;
    add("ceiling 3136x768x3072", 2.0 * 3136 * 768 * 3072, [&, s] { cache.gemm(s).run(big_c.data(), big_a.data(), big_b.data()); }); }
  { GemmSpec s; s.m = N, s.k = M, s.n = D, s.bias = true, s.beta = 1.0f;
    add("fc2 fwd fixed m, bias, beta 1", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data()); }); }
  { GemmSpec s; s.m = N, s.k = M, s.n = D, s.bias = true;
    add("fc2 fwd fixed m, bias, beta 0", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data()); }); }
  { GemmSpec s; s.runtime_m = true, s.k = M, s.n = D, s.bias = true;
    add("fc2 fwd runtime m, bias, beta 0", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data(), N); }); }
  { GemmSpec s; s.m = N, s.k = M, s.n = D;
    add("fc2 fwd fixed m, plain", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data()); }); }
  { GemmSpec s; s.runtime_m = true, s.k = M, s.n = D, s.trans_b = true, s.ldb = M;
    add("fc1 dx runtime m, trans_b", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), wt.data(), nullptr, N); }); }
  { GemmSpec s; s.runtime_m = true, s.k = M, s.n = D;
    add("fc1 dx runtime m, W^T copy", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), wt.data(), nullptr, N); }); }
  { GemmSpec s; s.runtime_m = true, s.k = D, s.n = M, s.bias = true;
    add("fc1 fwd runtime m, bias", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data(), N); }); }
  { GemmSpec s; s.m = N, s.k = D, s.n = M, s.bias = true;
    add("fc1 fwd fixed m, bias", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data()); }); }
  { GemmSpec s; s.runtime_m = true, s.k = D, s.n = M, s.trans_b = true, s.ldb = D;
    add("fc2 dx runtime m, trans_b", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), nullptr, N); }); }
  { GemmSpec s; s.m = M, s.runtime_k = true, s.n = D, s.trans_a = true, s.lda = M, s.ldb = D, s.beta = 1.0f;
    add("fc2 dW (384x6400x96) trans_a beta 1", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(w.data(), x.data(), y.data(), nullptr, -1, N); }); }
  { GemmSpec s; s.m = D, s.runtime_k = true, s.n = M, s.trans_a = true, s.lda = D, s.ldb = M, s.beta = 1.0f;
    add("fc1 dW (96x6400x384) trans_a beta 1", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(w.data(), x.data(), y.data(), nullptr, -1, N); }); }
  auto resid = buf(N * D);
  auto add_into = [](float* y, const float* x, int64_t n) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  };
  { GemmSpec s; s.m = N, s.k = M, s.n = D, s.bias = true, s.beta = 1.0f;
    add("fc2+resid: memcpy, beta 1 (now)", 2.0 * N * M * D, [&, s] { std::copy(resid.begin(), resid.end(), out.begin()); cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data()); }); }
  { GemmSpec s; s.m = N, s.k = M, s.n = D, s.bias = true;
    add("fc2+resid: beta 0, add pass", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data()); add_into(out.data(), resid.data(), N * D); }); }
  { GemmSpec s; s.m = N, s.k = D, s.n = D, s.bias = true, s.beta = 1.0f;
    add("out+resid: memcpy, beta 1 (now)", 2.0 * N * D * D, [&, s] { std::copy(resid.begin(), resid.end(), out.begin()); cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data()); }); }
  { GemmSpec s; s.m = N, s.k = D, s.n = D, s.bias = true;
    add("out+resid: beta 0, add pass", 2.0 * N * D * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data()); add_into(out.data(), resid.data(), N * D); }); }
  { GemmSpec s; s.m = D, s.runtime_k = true, s.n = M, s.trans_a = true, s.lda = D, s.ldb = M;
    add("fc2 dW^T = dy^T h (96x6400x384) + T-add", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(tmp.data(), y.data(), x.data(), nullptr, -1, N);
      for (int64_t i = 0; i < M; ++i) for (int64_t j = 0; j < D; ++j) w[i * D + j] += tmp[j * M + i]; }); }
  { GemmSpec s; s.m = N, s.k = M, s.n = D, s.beta = 1.0f;
    add("fc2 fwd fixed m, no bias, beta 1", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data()); }); }
  { GemmSpec s; s.runtime_m = true, s.k = M, s.n = D, s.beta = 1.0f;
    add("fc2 fwd runtime m, no bias, beta 1", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), nullptr, N); }); }
  { GemmSpec s; s.runtime_m = true, s.k = M, s.n = D, s.bias = true, s.beta = 1.0f;
    add("fc2 fwd runtime m, bias, beta 1", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data(), N); }); }
  { GemmSpec s; s.m = N, s.k = M, s.n = D, s.bias = true, s.beta = 1.0f;
    add("inf fc2 in place beta 1", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data()); }); }
  { GemmSpec s; s.m = N, s.k = M, s.n = D, s.bias = true;
    add("inf fc2 beta 0 to temp, add", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(tmp.data(), x.data(), w.data(), bias.data()); add_into(out.data(), tmp.data(), N * D); }); }
  { GemmSpec s; s.m = N, s.k = D, s.n = D, s.bias = true, s.beta = 1.0f;
    add("inf out in place beta 1", 2.0 * N * D * D, [&, s] { cache.gemm(s).run(out.data(), x.data(), w.data(), bias.data()); }); }
  { GemmSpec s; s.m = N, s.k = D, s.n = D, s.bias = true;
    add("inf out beta 0 to temp, add", 2.0 * N * D * D, [&, s] { cache.gemm(s).run(tmp.data(), x.data(), w.data(), bias.data()); add_into(out.data(), tmp.data(), N * D); }); }
  { GemmSpec s; s.m = D, s.runtime_k = true, s.n = M, s.trans_a = true, s.lda = D, s.ldb = M;
    add("fc2 dW again, as dy^T h + T-add", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(tmp.data(), y.data(), x.data(), nullptr, -1, N);
      for (int64_t i = 0; i < M; ++i) for (int64_t j = 0; j < D; ++j) w[i * D + j] += tmp[j * M + i]; }); }
  { GemmSpec s; s.m = M, s.runtime_k = true, s.n = D, s.trans_a = true, s.lda = M, s.ldb = D, s.beta = 1.0f;
    add("fc2 dW again (384x6400x96) trans_a beta 1", 2.0 * N * M * D, [&, s] { cache.gemm(s).run(w.data(), x.data(), y.data(), nullptr, -1, N); }); }
  const char* only = getenv("ONLY");  // substring filter on case names
  std::vector<Case> kept;
  for (auto& c : cases) if (!only || c.name.find(only) != std::string::npos || c.name.find("ceiling") == 0) kept.push_back(c);
  for (int r = 0; r < rounds + 2; ++r)
    for (auto& c : kept) { auto a = steady_clock::now(); c.run(); double ms = duration<double, std::milli>(steady_clock::now() - a).count(); if (r >= 2) c.t.push_back(ms); }
  for (size_t k = 0; k < kept.size(); ++k) {
    auto& c = kept[k];
    std::vector<double> ratio;  // this case's time over the previous case's, round by round
    if (k > 1) for (size_t r = 0; r < c.t.size(); ++r) ratio.push_back(kept[k - 1].t[r] / c.t[r]);
    std::vector<double> s = c.t; std::sort(s.begin(), s.end());
    std::sort(ratio.begin(), ratio.end());
    printf("%-40s min %6.3f ms %6.1f GF/s  median %6.3f ms", c.name.c_str(), s[0], c.flops / s[0] / 1e6, s[s.size() / 2]);
    if (!ratio.empty()) printf("   prev/this per round: median %.3f  [q1 %.3f, q3 %.3f]", ratio[ratio.size() / 2], ratio[ratio.size() / 4], ratio[3 * ratio.size() / 4]);
    printf("\n");
  }
}
