// Old (oneDNN batched matmuls + softmax passes) against new (fused) training attention,
// interleaved in one process: min and median ms of each over many rounds.
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include "nn/attention.hpp"
#include "nn/gemm.hpp"
#include "nn/primitive_cache.hpp"
#include "nn/softmax_rows.hpp"
#include "nn/train_ops.hpp"
using namespace std::chrono;
using namespace vmoe::nn;
int main(int argc, char** argv) {
  const int64_t B = argc > 1 ? atoi(argv[1]) : 128, T = 50, H = 3, Dh = 32, D = H * Dh;
  const int rounds = argc > 2 ? atoi(argv[2]) : 40;
  std::vector<float> qkv(B * T * 3 * D), out(B * T * D), probs(B * H * T * T), dout(B * T * D), dqkv(B * T * 3 * D);
  std::vector<float> dP(B * H * T * T), dS(B * H * T * T);
  std::mt19937 g(1); std::normal_distribution<float> n;
  for (auto& x : qkv) x = n(g);
  for (auto& x : dout) x = n(g);
  PrimitiveCache cache;
  SoftmaxBackward smb(B * H * T, T);
  const float s = 1.0f / std::sqrt(float(Dh));
  GemmSpec qk; qk.outer = B, qk.outer_stride_a = qk.outer_stride_b = T * 3 * D, qk.outer_stride_c = H * T * T;
  qk.batch = H, qk.m = T, qk.k = Dh, qk.n = T; qk.lda = 3 * D, qk.batch_stride_a = Dh;
  qk.trans_b = true, qk.ldb = 3 * D, qk.batch_stride_b = Dh; qk.batch_stride_c = T * T; qk.alpha = s;
  GemmSpec pv; pv.outer = B, pv.outer_stride_a = H * T * T, pv.outer_stride_b = T * 3 * D, pv.outer_stride_c = T * D;
  pv.batch = H, pv.m = T, pv.k = T, pv.n = Dh; pv.batch_stride_a = T * T; pv.ldb = 3 * D, pv.batch_stride_b = Dh;
  pv.ldc = D, pv.batch_stride_c = Dh;
  const int64_t img_qkv = T * 3 * D, img_probs = H * T * T, img_out = T * D;
  GemmSpec dp; dp.outer = B, dp.outer_stride_a = img_out, dp.outer_stride_b = img_qkv, dp.outer_stride_c = img_probs;
  dp.batch = H, dp.m = T, dp.k = Dh, dp.n = T, dp.lda = D, dp.batch_stride_a = Dh;
  dp.trans_b = true, dp.ldb = 3 * D, dp.batch_stride_b = Dh, dp.batch_stride_c = T * T;
  GemmSpec dv; dv.outer = B, dv.outer_stride_a = img_probs, dv.outer_stride_b = img_out, dv.outer_stride_c = img_qkv;
  dv.batch = H, dv.m = T, dv.k = T, dv.n = Dh, dv.trans_a = true, dv.lda = T, dv.batch_stride_a = T * T;
  dv.ldb = D, dv.batch_stride_b = Dh, dv.ldc = 3 * D, dv.batch_stride_c = Dh;
  GemmSpec dq; dq.outer = B, dq.outer_stride_a = img_probs, dq.outer_stride_b = img_qkv, dq.outer_stride_c = img_qkv;
  dq.batch = H, dq.m = T, dq.k = T, dq.n = Dh, dq.batch_stride_a = T * T, dq.ldb = 3 * D, dq.batch_stride_b = Dh;
  dq.ldc = 3 * D, dq.batch_stride_c = Dh, dq.alpha = s;
  GemmSpec dk = dq; dk.trans_a = true, dk.lda = T;
  auto old_fwd = [&] { cache.gemm(qk).run(probs.data(), qkv.data(), qkv.data() + D); softmax_rows(probs.data(), probs.data(), B * H * T, T);
                       cache.gemm(pv).run(out.data(), probs.data(), qkv.data() + 2 * D); };
  auto old_bwd = [&] { cache.gemm(dp).run(dP.data(), dout.data(), qkv.data() + 2 * D);
                       cache.gemm(dv).run(dqkv.data() + 2 * D, probs.data(), dout.data());
                       smb.run(dS.data(), dP.data(), probs.data());
                       cache.gemm(dq).run(dqkv.data(), dS.data(), qkv.data() + D);
                       cache.gemm(dk).run(dqkv.data() + D, dS.data(), qkv.data()); };
  auto new_fwd = [&] { attention_forward(out.data(), probs.data(), qkv.data(), B, T, H, Dh, true); };
  std::vector<float> ws(attention_backward_workspace_floats(B, T, H));
  auto new_bwd = [&] { attention_backward(dqkv.data(), ws.data(), dout.data(), probs.data(), qkv.data(), B, T, H, Dh, cache); };
  std::vector<double> t[4];
  auto time = [](auto f) { auto a = steady_clock::now(); f(); return duration<double, std::milli>(steady_clock::now() - a).count(); };
  for (int r = 0; r < rounds + 2; ++r) {
    double a = time(old_fwd), b = time(old_bwd), c = time(new_fwd), d = time(new_bwd);
    if (r >= 2) t[0].push_back(a), t[1].push_back(b), t[2].push_back(c), t[3].push_back(d);
  }
  const char* names[] = {"old fwd", "old bwd", "new fwd", "new bwd"};
  for (int i = 0; i < 4; ++i) { std::sort(t[i].begin(), t[i].end()); printf("%s  min %.2f  median %.2f ms\n", names[i], t[i][0], t[i][t[i].size() / 2]); }
}
