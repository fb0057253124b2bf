// The hand-written fused attention backward tried in session 15 (attention-fused-bwd.cpp,
// compiled with -Dvmoe=vmoe_fused) against the library's oneDNN backward, interleaved.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include "nn/attention.hpp"
namespace vmoe_fused::nn {
void attention_backward(float* dqkv, const float* dout, const float* probs, const float* qkv, int64_t B, int64_t T,
                        int64_t H, int64_t Dh);
}
using namespace std::chrono;
int main(int argc, char** argv) {
  const int64_t B = 128, T = 50, H = 3, Dh = 32, D = H * Dh;
  const int rounds = argc > 1 ? atoi(argv[1]) : 60;
  std::vector<float> qkv(B * T * 3 * D), out(B * T * D), probs(B * H * T * T), dout(B * T * D), d1(B * T * 3 * D), d2(B * T * 3 * D);
  std::mt19937 g(1); std::normal_distribution<float> n;
  for (auto& x : qkv) x = n(g);
  for (auto& x : dout) x = n(g);
  vmoe::nn::attention_forward(out.data(), probs.data(), qkv.data(), B, T, H, Dh, true);
  vmoe::nn::PrimitiveCache cache;
  std::vector<float> ws(vmoe::nn::attention_backward_workspace_floats(B, T, H));
  std::vector<double> a, b, ratio;
  auto ms = [](auto f) { auto t = steady_clock::now(); f(); return duration<double, std::milli>(steady_clock::now() - t).count(); };
  for (int r = 0; r < rounds + 2; ++r) {
    double x = ms([&] { vmoe::nn::attention_backward(d1.data(), ws.data(), dout.data(), probs.data(), qkv.data(), B, T, H, Dh, cache); });
    double y = ms([&] { vmoe_fused::nn::attention_backward(d2.data(), dout.data(), probs.data(), qkv.data(), B, T, H, Dh); });
    if (r >= 2) a.push_back(x), b.push_back(y), ratio.push_back(x / y);
  }
  double diff = 0; for (size_t i = 0; i < d1.size(); ++i) diff = std::max(diff, (double)std::abs(d1[i] - d2[i]));
  std::sort(a.begin(), a.end()); std::sort(b.begin(), b.end()); std::sort(ratio.begin(), ratio.end());
  printf("attention backward, B %ld T %ld H %ld Dh %ld, %d rounds: oneDNN min %.2f median %.2f ms; fused min %.2f median %.2f ms; "
         "oneDNN/fused per round median %.2f [q1 %.2f, q3 %.2f]; max |difference| %.1e\n", B, T, H, Dh, rounds, a[0], a[a.size() / 2],
         b[0], b[b.size() / 2], ratio[ratio.size() / 2], ratio[ratio.size() / 4], ratio[3 * ratio.size() / 4], diff);
}
