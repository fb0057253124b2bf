#pragma once
// Forward of one MoE block's MLP: route the (N, D) tokens in groups, run each expert's
// MLP on the tokens it received from every group at once, and add the weighted expert
// outputs to the residual stream.
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/stage_times.hpp"
#include "moe/routers.hpp"
#include "nn/packed_weights.hpp"
#include "nn/primitive_cache.hpp"
#include "spec/config.hpp"
#include "spec/router.hpp"
#include "spec/routing_trace.hpp"
#include "tensor/tensor.hpp"

namespace vmoe {

// M below is the experts' hidden size (config expert_mlp_dim, mlp_dim when absent).
struct MoeWeights {
  const float* w0;  // (E, D, M)
  const float* b0;  // (E, M)
  const float* w1;  // (E, M, D)
  const float* b1;  // (E, D)
  const float* router;  // (D, E)      top_k, experts_choice
  const float* mu;  // (D, E*P)    soft: mu normalised over D per slot, times scale
  nn::Activation gelu = nn::Activation::gelu_tanh;  // the experts' GELU (config "gelu")
  const float* priority_kernel = nullptr;  // (D)   learned scorer (priority "learned" models only)
  const float* priority_bias = nullptr;  // ()
  bool scorer_scales_output = true;  // learned: yes; fitted (an importance head): no
  const float* balance_bias = nullptr;  // (E)  balance "bias" (top_k): selection logits = logits + bias
  // num_shared_experts Sh > 0: experts every token passes through with weight 1.
  const float* shared_w0 = nullptr;  // (Sh, D, M)
  const float* shared_b0 = nullptr;  // (Sh, M)
  const float* shared_w1 = nullptr;  // (Sh, M, D)
  const float* shared_b1 = nullptr;  // (Sh, D)
  const float* oracle_priority = nullptr;  // (N) the tokens' importance, for priority "oracle"
  // The engine's precision for the experts: bf16 rounds their input to bf16, writes their
  // hidden layer in bf16 and reads bf16 kernels; the output (and so the combine) stays f32.
  bool bf16 = false;
  // Set: the expert kernels are read packed (GemmSpec::packed_b) from here, every expert
  // matmul then has a fixed row count. Required with bf16.
  nn::PackedWeights* packed = nullptr;
};

// Buffers reused across calls; they only ever grow.
struct MoeWorkspace {
  Scratch logits, gates, scores, expert_in, expert_hidden, expert_out, xn, dispatch, combine, slot_in, slot_out;
  Scratch select;  // (N, E) logits + balance bias, what top-k chooses by (balance "bias" only)
  Scratch expert_in_bf16;  // expert_in rounded to bf16 (MoeWeights::bf16)
  std::vector<TopKRouting> top_k;  // per group
  std::vector<ExpertsChoiceRouting> experts_choice;  // per group
  std::vector<int64_t> rows_of_expert, first_row, group_expert_base;
  struct Entry {
    int64_t token, row;  // token n of the batch goes to expert-major row `row`
    float weight;  // its combine weight: the gate, times the learned scorer's 2 sigmoid(s) if any
    float gate;  // the router's gate alone
    int expert;
  };
  std::vector<Entry> entries;
  const float* oracle_priority = nullptr;  // (N) MoeWeights::oracle_priority of the pass being planned
  bool scorer_scales_output = true;  // MoeWeights::scorer_scales_output of the pass being planned
  std::vector<int64_t> by_token;  // indices of entries bucketed by token (CSR with token_begin (N+1))
  std::vector<int64_t> token_begin, cursor;
  // Bounds of the last plan_routing whatever the gates: rows in all (the router's
  // max_rows summed over groups) and rows of one expert (its capacity, at most S, summed
  // over groups). The engine sizes its expert buffers by them once per batch size.
  int64_t max_rows = 0, max_expert_rows = 0;
  // Index into the router logits (N, E) of the first NaN or infinity of the last forward
  // and its value, -1 when all were finite (routers with gates: top-k, experts-choice).
  // Such logits give finite nonsense gates that route to nothing and can leave the
  // model's logits finite, so the engine looks here (D10).
  int64_t first_bad_gate = -1;
  float bad_gate_value = 0;
};

struct MoeShape {
  int64_t tokens;  // N = B * T
  int tokens_per_image;  // T
  int hidden, mlp;  // D, M (the experts' hidden size)
};

struct Group {
  int64_t first, size;  // tokens [first, first + size) of the flattened batch
};
// Consecutive groups of group_tokens tokens; the last one may be smaller.
std::vector<Group> make_groups(int64_t N, int64_t group_tokens);
// (first group, count) runs of consecutive groups of the same size, so per-group matmuls
// can run batched: all full groups, then the smaller last group if there is one.
std::vector<std::pair<int64_t, int64_t>> equal_size_runs(const std::vector<Group>& groups);

// The learned priority scorer: s (N) = h (N, D) . kernel (D) + bias. The token's MoE
// output is scaled by learned_output_scale(s) = 2 sigmoid(s), which is exactly 1 at the
// zero initialisation, so the scorer learns from how much the kept tokens' outputs help.
void learned_priority(float* s, const float* h, const float* kernel, float bias, int64_t N, int D);
inline float learned_output_scale(float s) { return 2.0f / (1.0f + std::exp(-s)); }

// Lays out expert rows expert-major (all groups' tokens of expert 0, then expert 1...)
// from load (G, E), the rows each group sends each expert: fills ws.rows_of_expert,
// ws.first_row and ws.group_expert_base[g*E + e], the first row of group g at expert e.
void plan_rows(MoeWorkspace& ws, const std::vector<int64_t>& load, size_t G, int E);
// Runs expert e's MLP on its rows ws.expert_in -> ws.expert_out:
// out = GELU(in @ w0[e] + b0[e]) @ w1[e] + b1[e].
// An expert with at least kExpertRowsFixedFrom rows runs as matmuls of a fixed row count,
// its rows padded up to a multiple of kExpertRowQuantum, when the padding costs less than
// it saves and the hidden size D is at most kExpertFixedMaxHidden: oneDNN 2.6 serves a
// fixed shape with its brgemm kernel, which fuses bias and GELU almost for free, but rows
// given at run time with gemm:jit, whose separate GELU pass cost a quarter of vmoe-fmnist's
// expert time. Other experts run at their exact row count. The expert input, hidden and
// output buffers keep kExpertRowSlack rows beyond the last expert's.
constexpr int64_t kExpertRowQuantum = 16, kExpertRowsFixedFrom = 64, kExpertRowSlack = kExpertRowQuantum;
constexpr int64_t kExpertFixedMaxHidden = 256;
// Experts that all have the same R rows, one after the other (Soft-MoE), run batched
// instead when R is below kExpertBatchedBelowRows (AVX-512) or
// kExpertBatchedBelowRowsAvx2 (below it), as many at a time as keep their hidden
// activations under kExpertBatchHiddenFloats floats.
constexpr int64_t kExpertBatchHiddenFloats = int64_t{1} << 21, kExpertBatchedBelowRows = 64,
                  kExpertBatchedBelowRowsAvx2 = 512;
// Experts per batched call when every expert has `rows` rows of hidden size `mlp`, or 0
// when they run one call pair each (what run_experts does; the engine counts calls by it).
int64_t batched_expert_chunk(int64_t rows, int64_t mlp, int E);
// Batched experts with fewer rows than this run in f32 even when the engine runs bf16.
constexpr int64_t kBf16BatchedMinRows = 32;
void run_experts(MoeWorkspace& ws, const MoeWeights& w, int E, int D, int M, nn::PrimitiveCache& cache);

// The token routers' dispatch and combine, shared by the engine and training (which
// keeps the expert activations for its backward):
// in (rows, D): row entries[i].row = h[entries[i].token], token-parallel over entries.
void gather_expert_rows(float* in, const float* h, const MoeWorkspace& ws, int D);
// ws.token_begin, ws.by_token: the entries of each token in plan order (stable counting sort).
void bucket_by_token(MoeWorkspace& ws, int64_t N);
// x[n] += sum over token n's entries (in plan order) of weight * out[row], token-parallel.
void combine_expert_rows(float* x, const float* out, const MoeWorkspace& ws, int64_t N, int D);

// Routes every group with the token router moe.router on gates (N, E) and lays out the
// expert rows expert-major: fills ws.entries, ws.rows_of_expert, ws.first_row (and the
// router's per-group routings, ws.top_k / ws.experts_choice). `learned` (N) is the
// learned scorer's output or null. select (N, E), when given and the router has
// selection_bias(), replaces the gates for choosing the experts (balance "bias": logits + bias).
void plan_routing(MoeWorkspace& ws, const float* gates, const float* learned, const MoeShape& shape,
                  const MoeConfig& moe, const float* select = nullptr);
// Copies the routing plan of the last plan_routing into a trace.
void fill_trace(MoeLayerTrace& trace, const MoeWorkspace& ws, const float* gates, const MoeShape& shape,
                const MoeConfig& moe);

// The token routers' forward (DenseGateRouter::forward): gates (N, E) = softmax(h @ router)
// (the selection scores and learned scorer when the config has them), plan_routing, then
// gather, experts and combine into x (N, D); fills the trace when given.
void token_router_forward(float* x, const float* h, const MoeShape& shape, const MoeConfig& moe, const MoeWeights& w,
                          MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace, StageTimes* times);

// x (N, D) += sum over shared experts s of GELU(h @ w0[s] + b0[s]) @ w1[s] + b1[s].
void run_shared_experts(float* x, const float* h, int64_t N, int D, int M, int shared, const MoeWeights& w,
                        MoeWorkspace& ws, nn::PrimitiveCache& cache);

// x (N, D) += MoE(h) with h = LN_1(x): the routed experts' weighted outputs plus, with
// shared experts, sum over s of shared_s(h). `trace` may be null.
void moe_forward(float* x, const float* h, const MoeShape& shape, const MoeConfig& moe, const MoeWeights& w,
                 MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace, StageTimes* times);

}  // namespace vmoe
