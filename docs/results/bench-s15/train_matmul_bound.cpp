// How fast could a vit-fmnist training step be if it were nothing but its matmuls, each
// run alone? Times every matmul of one block's forward and backward (the shapes and
// GemmSpecs of lib/model/vit_train.cpp and nn/grad_ops.cpp at batch 128), the fused
// attention forward and oneDNN attention backward, interleaved with the ceiling matmul,
// and prints the bound on "% of the ceiling" a step can reach.
//   g++ -O2 -march=x86-64-v3 -fopenmp -std=c++20 -I lib bound.cpp build/lib/libvmoe_lib.a -ldnnl -lfmt
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>
#include "nn/attention.hpp"
#include "nn/gemm.hpp"
#include "nn/primitive_cache.hpp"
using namespace std::chrono;
using namespace vmoe::nn;
struct Op { std::string name; double flops; std::function<void()> run; std::vector<double> t; };
int main(int argc, char** argv) {
  const int rounds = argc > 1 ? atoi(argv[1]) : 20;
  const int64_t B = 128, T = 50, N = B * T, D = 96, M = 384, H = 3, Dh = 32, L = 6;
  const double step_flops = 3 * 0.0723e9 * B;  // what `vmoe bench --train` divides by
  std::mt19937 g(1); std::normal_distribution<float> n;
  auto buf = [&](int64_t size) { std::vector<float> v(size); for (auto& x : v) x = n(g) * 0.1f; return v; };
  auto x = buf(N * M), y = buf(N * M), c = buf(N * M), w = buf(M * D), bias = buf(M), ones = std::vector<float>(N, 1.0f);
  auto qkv = buf(N * 3 * D), probs = buf(B * H * T * T), ws = buf(attention_backward_workspace_floats(B, T, H));
  auto big_a = buf(3136 * 768), big_b = buf(768 * 3072), big_c = buf(3136 * 3072);
  PrimitiveCache cache;
  std::vector<Op> ops;
  auto mm = [&](std::string name, GemmSpec s, int64_t m, int64_t k) {
    const double f = 2.0 * (s.runtime_m ? m : s.m) * (s.runtime_k ? k : s.k) * s.n;
    ops.push_back({name, f, [&, s, m, k] { cache.gemm(s).run(c.data(), x.data(), y.data(), s.bias ? bias.data() : nullptr, m, k); }, {}});
  };
  auto linear = [&](std::string name, int64_t in, int64_t out) {
    GemmSpec s; s.runtime_m = true, s.k = in, s.n = out, s.bias = true; mm(name, s, N, -1); };
  auto fixed = [&](std::string name, int64_t in, int64_t out) {
    GemmSpec s; s.m = N, s.k = in, s.n = out, s.bias = true; mm(name, s, -1, -1); };
  auto input_grad = [&](std::string name, int64_t in, int64_t out) {
    GemmSpec s; s.runtime_m = true, s.k = out, s.n = in, s.trans_b = true, s.ldb = out; mm(name, s, N, -1); };
  auto weight_grad = [&](std::string name, int64_t in, int64_t out) {
    GemmSpec s; s.m = in, s.runtime_k = true, s.n = out, s.trans_a = true, s.lda = in, s.ldb = out, s.beta = 1.0f; mm(name, s, -1, N); };
  auto bias_grad = [&](std::string name, int64_t cols) {
    GemmSpec s; s.m = 1, s.runtime_k = true, s.n = cols, s.lda = N, s.ldb = cols, s.beta = 1.0f;
    ops.push_back({name, 2.0 * N * cols, [&, s] { cache.gemm(s).run(c.data(), ones.data(), y.data(), nullptr, -1, N); }, {}}); };
  { GemmSpec s; s.m = 3136, s.k = 768, s.n = 3072;
    ops.push_back({"ceiling 3136x768x3072", 2.0 * 3136 * 768 * 3072, [&, s] { cache.gemm(s).run(big_c.data(), big_a.data(), big_b.data()); }, {}}); }
  linear("fwd qkv 6400x96x288", D, 3 * D);
  ops.push_back({"fwd attention core (fused)", 2.0 * 2 * B * H * T * T * Dh, [&] { attention_forward(c.data(), probs.data(), qkv.data(), B, T, H, Dh, true); }, {}});
  fixed("fwd out 6400x96x96", D, D);
  linear("fwd fc1 6400x96x384", D, M);
  linear("fwd fc2 6400x384x96", M, D);
  input_grad("bwd fc2 dx", M, D);
  weight_grad("bwd fc2 dW 384x6400x96", M, D);
  bias_grad("bwd fc2 db", D);
  weight_grad("bwd fc1 dW 96x6400x384", D, M);
  bias_grad("bwd fc1 db", M);
  input_grad("bwd fc1 dx", D, M);
  weight_grad("bwd out dW 96x6400x96", D, D);
  bias_grad("bwd out db", D);
  input_grad("bwd out dx", D, D);
  ops.push_back({"bwd attention core (oneDNN)", 4 * 2.0 * B * H * T * T * Dh, [&] {
    attention_backward(c.data(), ws.data(), x.data(), probs.data(), qkv.data(), B, T, H, Dh, cache); }, {}});
  weight_grad("bwd qkv dW 96x6400x288", D, 3 * D);
  bias_grad("bwd qkv db", 3 * D);
  input_grad("bwd qkv dx", D, 3 * D);
  for (int r = 0; r < rounds + 2; ++r)
    for (auto& o : ops) { auto a = steady_clock::now(); o.run(); double ms = duration<double, std::milli>(steady_clock::now() - a).count(); if (r >= 2) o.t.push_back(ms); }
  double ceiling = 0, block_min = 0, block_med = 0, block_flops = 0;
  for (auto& o : ops) {
    std::vector<double> s = o.t; std::sort(s.begin(), s.end());
    const double best = s[0], med = s[s.size() / 2];
    if (o.name.rfind("ceiling", 0) == 0) { ceiling = o.flops / best / 1e6; printf("%-32s %7.3f ms  %6.1f GF/s (best)\n", o.name.c_str(), best, ceiling); continue; }
    printf("%-32s best %6.3f ms %6.1f GF/s %4.0f%% of ceiling   median %6.3f ms\n", o.name.c_str(), best, o.flops / best / 1e6, 100 * o.flops / best / 1e6 / ceiling, med);
    block_min += best, block_med += med, block_flops += o.flops;
  }
  printf("one block's matmuls: %.2f ms best, %.2f ms median; %.1f%% of the step's nominal FLOPs\n", block_min, block_med, 100 * L * block_flops / step_flops);
  printf("a step of only these, x%ld blocks: %.1f ms best -> at most %.0f%% of the ceiling (median: %.1f ms, %.0f%%)\n", L,
         L * block_min, 100 * step_flops / (L * block_min) / 1e6 / ceiling, L * block_med, 100 * step_flops / (L * block_med) / 1e6 / ceiling);
}
