#pragma once
// Plain-loop twins of every kernel the engine uses, written from DESIGN §4 with double
// accumulation and no oneDNN, no lib/moe routing code: the reference the tests compare
// the engine against. Slow and obvious on purpose.
#include <cstdint>
#include <vector>

#include "spec/config.hpp"
#include "spec/params.hpp"

namespace naive {

enum class Act { none, gelu_tanh, gelu_erf, tanh };

// C[b] = act(alpha * op(A[b]) @ op(B[b]) + bias + beta * C[b]) for b < batch.
// op(A) is (m, k): A stored (m, k) with row stride lda, or (k, m) when trans_a.
// op(B) is (k, n): B stored (k, n) with row stride ldb, or (n, k) when trans_b.
// C is (m, n) with row stride ldc. Batch b starts at b * stride_{a,b,c}.
// abs_sum (optional, same layout as C) receives sum |alpha a b| + |bias| + |beta c|, for
// error bounds.
struct MatmulSpec {
  int64_t m = 0, k = 0, n = 0;
  bool trans_a = false, trans_b = false;
  int64_t lda = 0, ldb = 0, ldc = 0;  // 0 = packed
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
  int64_t stride_bias = 0;  // n for one bias row per batch entry, 0 for one shared row
  double alpha = 1.0, beta = 0.0;
  Act act = Act::none;
};
void matmul(float* c, const float* a, const float* b, const float* bias, const MatmulSpec& s,
            double* abs_sum = nullptr);

double gelu_tanh(double x);  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
double gelu_tanh_slope(double x);  // its derivative
double activate(double x, Act act);

// y = (x - mean) / sqrt(var + eps) * scale + bias per row (population variance).
void layer_norm(float* y, const float* x, int64_t rows, int64_t cols, const float* scale, const float* bias,
                double eps);
// y[r] = softmax(x[r]) over cols.
void softmax_rows(float* y, const float* x, int64_t rows, int64_t cols);
// dx[r] = y[r] * (dy[r] - sum(dy[r] * y[r])), in double.
void softmax_backward_rows(double* dx, const float* dy, const float* y, int64_t rows, int64_t cols);

// Multi-head attention over packed QKV: qkv (B*T, 3D) = [q heads | k heads | v heads],
// out (B*T, D), query scaled by 1/sqrt(Dh).
void attention(float* out, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Dh);
// Its backward in double, the probabilities recomputed from qkv: dqkv (B*T, 3D) laid out
// as qkv, from dout (B*T, D). bound (B*T, 3D) gets each output's magnitude bound, the
// same sums over absolute values (|dP| bounded by sum_d |dO_d V_d|), for tolerances.
void attention_backward(double* dqkv, double* bound, const float* dout, const float* qkv, int64_t B, int64_t T,
                        int64_t H, int64_t Dh);

// ---- routing, one group of S tokens ------------------------------------------------

// ceil (or round) of tokens*factor/E in double, then up to a multiple of multiple_of.
int64_t capacity(int64_t tokens, int E, double factor, vmoe::CapacityRounding rounding, int multiple_of);

struct TopK {
  std::vector<int> expert;  // (S, k)
  std::vector<float> gate;  // (S, k)
  std::vector<int> slot;  // (S, k), -1 dropped
  std::vector<int> order;  // (S) processing order
  std::vector<int> load;  // (E)
};
// gates (S, E): top-k per token (ties to the lower expert), vanilla or BPR order, all
// first choices then all second choices..., each taking the next free slot. select (S, E),
// when given, ranks the experts instead of the gates (balance "bias"); gates stay gates.
TopK top_k(const float* gates, int S, int E, int k, int capacity, bool bpr, const float* select = nullptr);

// Top-k with every option of docs/ROUTING.md section 4: the priority scorers, gating
// topk_softmax, overflow next, the balance-bias select. `learned` (S): the learned scorer.
struct TopKFull {
  std::vector<int> choice, expert;  // (S, k)
  std::vector<float> gate;  // (S, k)
  std::vector<int> slot;  // (S, k), -1 dropped
  std::vector<float> priority;  // (S)
  std::vector<int> order;  // (S)
  std::vector<int> load;  // (E)
};
struct TopKRules {
  int k = 2, capacity = 1;
  bool bpr = true;
  vmoe::Priority priority = vmoe::Priority::max_gate;
  bool topk_softmax = false;  // gating: renormalise the kept weights over the top-k
  bool overflow_next = false;
  const float* select = nullptr;  // (S, E) or null
};
TopKFull top_k_full(const float* probs, const float* learned, int S, int E, const TopKRules& rules);

struct ExpertsChoice {
  int capacity = 0;  // min(capacity, S)
  std::vector<int> token;  // (E, c) in descending gate order, ties to the lower token
  std::vector<float> gate;  // (E, c)
};
ExpertsChoice experts_choice(const float* gates, int S, int E, int capacity);

// Soft-MoE weights of one group: logits (S, slots); dispatch softmax over tokens per slot,
// combine softmax over slots per token.
void soft_weights(float* dispatch, float* combine, const float* logits, int S, int slots);
// logits (S, E*P) = xn . (scale * mun), with x and mu each normalised by rsqrt(sum sq + 1e-6).
// mu is (D, E, P) as in the file.
void soft_logits(float* logits, const float* x, const float* mu, float scale, int S, int D, int slots);

// One expert's MLP: y = GELU(x @ w0 + b0) @ w1 + b1, w0 (D, M), w1 (M, D).
void expert_mlp(float* y, const float* x, const float* w0, const float* b0, const float* w1, const float* b1, int D,
                int M);

// What a naive MoE layer did, per token of the whole batch.
struct LayerRouting {
  std::vector<uint8_t> kept;  // top-k: (N, k)
  std::vector<int> expert;  // top-k: (N, k)
  std::vector<int> times_taken;  // (N) kept choices / experts that took it
  std::vector<int> group_capacity;
};

// y (N, D) = MoE(h): h grouped as DESIGN §4 (group_tokens consecutive tokens, the last
// group possibly shorter). w0 (E, D, M), b0 (E, M), w1 (E, M, D), b1 (E, D); router (D, E)
// for top-k / experts-choice; mu (D, E, P) and scale for soft. M is the experts' size.
// balance_bias (E) with moe.balance "bias": top-k ranks experts by logits + bias.
// Shared experts (moe.num_shared_experts Sh): shared_w0 (Sh, D, M) ... added for every token.
struct MoeParams {
  const float *w0, *b0, *w1, *b1;
  const float* router = nullptr;
  const float* mu = nullptr;
  float scale = 1.0f;
  const float* balance_bias = nullptr;
  const float *shared_w0 = nullptr, *shared_b0 = nullptr, *shared_w1 = nullptr, *shared_b1 = nullptr;
};
void moe_layer(float* y, const float* h, int64_t N, int group_tokens, int D, int M, const vmoe::MoeConfig& moe,
               const MoeParams& p, LayerRouting* routing = nullptr);

// ---- whole model ---------------------------------------------------------------------

struct ForwardInfo {
  std::vector<LayerRouting> layers;  // one per MoE block, in block order
};

// logits (B, classes) of images (B, H, W, C), from the DESIGN §2-4 text alone.
std::vector<float> naive_forward(const vmoe::Model& model, const float* images, int B,
                                 const vmoe::RoutingOverrides& overrides = {}, ForwardInfo* info = nullptr);

}  // namespace naive
