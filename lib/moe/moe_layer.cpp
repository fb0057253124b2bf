#include "moe/moe_layer.hpp"

#include "core/finite.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "core/error.hpp"
#include "moe/capacity.hpp"
#include "nn/precision.hpp"
#include "nn/softmax_rows.hpp"

namespace vmoe {

std::vector<Group> make_groups(int64_t N, int64_t group_tokens) {
  std::vector<Group> groups;
  for (int64_t first = 0; first < N; first += group_tokens) groups.push_back({first, std::min(group_tokens, N - first)});
  return groups;
}

std::vector<std::pair<int64_t, int64_t>> equal_size_runs(const std::vector<Group>& groups) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (int64_t g = 0; g < static_cast<int64_t>(groups.size()); ++g) {
    if (!runs.empty() && groups[runs.back().first].size == groups[g].size) ++runs.back().second;
    else runs.emplace_back(g, 1);
  }
  return runs;
}

namespace {

using nn::Activation;
using nn::GemmSpec;

// gates (N, E) = softmax(h @ router); with a balance bias (E) also
// select (N, E) = h @ router + bias, the logits top-k chooses by.
void router_gates(float* gates, float* select, const float* balance_bias, const float* h, const float* router,
                  int64_t N, int D, int E, nn::PrimitiveCache& cache, MoeWorkspace* ws = nullptr) {
  GemmSpec s;
  s.m = N, s.k = D, s.n = E;
  cache.gemm(s).run(gates, h, router);
  // The logits, not the gates: the softmax clamps what it exponentiates, so logits of
  // +-inf give finite nonsense gates. One read of (N, E): cheap beside the GEMM.
  if (ws) {
    ws->first_bad_gate = first_non_finite(gates, N * E);
    if (ws->first_bad_gate >= 0) ws->bad_gate_value = gates[ws->first_bad_gate];
  }
  if (balance_bias)
    for (int64_t n = 0; n < N; ++n)
      for (int e = 0; e < E; ++e) select[n * E + e] = gates[n * E + e] + balance_bias[e];
  nn::softmax_rows(gates, gates, N, E);
}

// Gathers each entry's token into its expert row, runs the experts, then
// x[token] += sum over the token's entries of weight * expert_out[row], token-parallel.
void dispatch_run_combine(float* x, const float* h, int64_t N, int D, int M, int E, const MoeWeights& w,
                          MoeWorkspace& ws, nn::PrimitiveCache& cache, StageTimes* times) {
  int64_t total_rows = 0;
  for (int e = 0; e < E; ++e) total_rows += ws.rows_of_expert[e];
  if (times) times->expert_rows += total_rows;
  {
    ScopedStage stage(times, &StageTimes::dispatch_combine);
    // Sized for the most rows the plan can ever give this batch, so that layers and passes
    // with more rows than the last never reallocate (and re-zero) the buffers.
    const int64_t rows = std::max<int64_t>({total_rows, ws.max_rows, 1}) + kExpertRowSlack;
    float* in = ws.expert_in.reserve(rows * D);
    ws.expert_out.reserve(rows * D);
    gather_expert_rows(in, h, ws, D);
    bucket_by_token(ws, N);
  }
  {
    ScopedStage stage(times, &StageTimes::experts);
    run_experts(ws, w, E, D, M, cache);
  }
  ScopedStage stage(times, &StageTimes::dispatch_combine);
  combine_expert_rows(x, ws.expert_out.data(), ws, N, D);
}

}  // namespace

// Rows of a fixed-shape expert matmul, or 0 if the runtime-rows primitive should serve.
// Padding costs 2 D M multiply-adds per padded row (up and down); the fused GELU saves
// gemm:jit's separate pass, which took the time of ~60 multiply-adds per hidden element
// (vmoe-fmnist at batch 256: 10.3 ms for 25.9 M elements at ~300 GFLOP/s), 60 M per real
// row. So pad when 60 rows > 2 D (padded - rows), i.e. 30 rows > D (padded - rows). Past
// kExpertFixedMaxHidden the pass is small next to the matmul and gemm:jit's own kernels
// were as fast or faster (vmoe-s32, vmoe-b16: docs/DECISIONS.md).
static int64_t fixed_expert_rows(int64_t rows, int64_t D, bool bf16) {
  // bf16 kernels read packed weights, which need a fixed row count: every expert is
  // padded to a whole quantum (docs/DECISIONS.md, "bf16 inference").
  if (bf16) return rows == 0 ? 0 : (rows + kExpertRowQuantum - 1) / kExpertRowQuantum * kExpertRowQuantum;
  if (rows < kExpertRowsFixedFrom || D > kExpertFixedMaxHidden) return 0;
  const int64_t padded = (rows + kExpertRowQuantum - 1) / kExpertRowQuantum * kExpertRowQuantum;
  return 30 * rows > D * (padded - rows) ? padded : 0;
}

// The experts of a Soft-MoE layer all have R rows (their slots over the batch's groups),
// laid out one expert after the other: with few rows they run as batched matmuls over as
// many experts at a time as keep the hidden activations under kExpertBatchHiddenFloats,
// two calls per chunk instead of two per expert. With few rows per expert (soft-s16 at
// batch 8: 128 experts x 8 rows; softmoe-fmnist at batch 4: 8 x 20) the per-call cost,
// not the arithmetic, was what the layer paid for. From kExpertBatchedBelowRows rows the
// per-expert calls (fixed-shape where that pays) were as fast or faster (softmoe-fmnist
// at batch 128-256: 2518-3101 images/s batched, 2730-3141 per expert; docs/BENCHMARKS.md).
// That was AVX-512 (brgemm). Below it every matmul is gemm:jit, and the batched call was
// 1.06-1.17x the per-expert ones at 80-320 rows, level at 640-1280 (softmoe-fmnist at
// batch 16-256 on AVX2, docs/BENCHMARKS.md session 14): there the bound is 512 rows.
int64_t batched_expert_chunk(int64_t rows, int64_t mlp, int E) {
  static const int64_t below = nn::avx512_core() ? kExpertBatchedBelowRows : kExpertBatchedBelowRowsAvx2;
  if (rows <= 0 || rows >= below) return 0;
  return std::clamp<int64_t>(kExpertBatchHiddenFloats / (rows * mlp), 1, E);
}

namespace {

// The experts' activations in the type their matmuls read: float, or uint16_t for bf16
// (then the hidden layer is bf16 too; the output is always float).
template <typename T>
struct ExpertOperands {
  static constexpr bool bf16 = std::is_same_v<T, uint16_t>;
  const T* in;  // (rows, D) expert-major
  T* hidden;  // (rows, M) of the experts of one call
  float* out;  // (rows, D)
};

// Packed kernels where the weights are packed and the row count is fixed (runtime row
// counts take only plain layouts: f32 experts below the padding rule read plain floats).
template <typename T>
void set_types(GemmSpec& up, GemmSpec& down, const MoeWeights& w) {
  up.bf16_inputs = up.bf16_output = down.bf16_inputs = ExpertOperands<T>::bf16;
  up.packed_b = down.packed_b = w.packed != nullptr && !up.runtime_m;
}

// The kernel `gemm` reads: packed once when it reads packed weights, else the plain floats.
const void* kernel(const nn::Gemm& gemm, const float* plain, const MoeWeights& w) {
  return gemm.spec().packed_b ? w.packed->get(gemm, plain) : plain;
}

template <typename T>
void run_experts_batched(const ExpertOperands<T>& x, const MoeWeights& w, int E, int D, int M, int64_t R, int64_t chunk,
                         nn::PrimitiveCache& cache) {
  for (int64_t e0 = 0; e0 < E; e0 += chunk) {
    const int64_t n = std::min<int64_t>(chunk, E - e0);
    GemmSpec up;
    up.batch = n, up.m = R, up.k = D, up.n = M, up.bias = true, up.batch_bias = n > 1, up.activation = w.gelu;
    up.batch_stride_a = R * D, up.batch_stride_b = int64_t{D} * M, up.batch_stride_c = R * M;
    GemmSpec down;
    down.batch = n, down.m = R, down.k = M, down.n = D, down.bias = true, down.batch_bias = n > 1;
    down.batch_stride_a = R * M, down.batch_stride_b = int64_t{M} * D, down.batch_stride_c = R * D;
    set_types<T>(up, down, w);
    const nn::Gemm& g_up = cache.gemm(up);
    const nn::Gemm& g_down = cache.gemm(down);
    g_up.run_typed(x.hidden, x.in + e0 * R * D, kernel(g_up, w.w0 + e0 * D * M, w), w.b0 + e0 * M);
    g_down.run_typed(x.out + e0 * R * D, x.hidden, kernel(g_down, w.w1 + e0 * M * D, w), w.b1 + e0 * D);
  }
}

template <typename T>
void run_experts_one_by_one(const ExpertOperands<T>& x, MoeWorkspace& ws, const MoeWeights& w, int E, int D, int M,
                            nn::PrimitiveCache& cache) {
  GemmSpec up;
  up.k = D, up.n = M, up.bias = true, up.activation = w.gelu;
  GemmSpec down;
  down.k = M, down.n = D, down.bias = true;
  for (int e = 0; e < E; ++e) {
    const int64_t rows = ws.rows_of_expert[e];
    if (rows == 0) continue;
    const int64_t fixed = fixed_expert_rows(rows, D, ExpertOperands<T>::bf16);
    up.runtime_m = down.runtime_m = fixed == 0;
    up.m = down.m = fixed;
    set_types<T>(up, down, w);
    const nn::Gemm& g_up = cache.gemm(up);
    const nn::Gemm& g_down = cache.gemm(down);
    g_up.run_typed(x.hidden, x.in + ws.first_row[e] * D, kernel(g_up, w.w0 + int64_t{e} * D * M, w), w.b0 + int64_t{e} * M, rows);
    g_down.run_typed(x.out + ws.first_row[e] * D, x.hidden, kernel(g_down, w.w1 + int64_t{e} * M * D, w), w.b1 + int64_t{e} * D, rows);
  }
}

}  // namespace

// out = GELU(in @ w0[e] + b0[e]) @ w1[e] + b1[e] per expert, in expert order. A padded
// matmul reads up to kExpertRowQuantum - 1 rows past its expert's, i.e. the next experts'
// input or the buffer's slack, and writes as many output rows past them, which the
// experts after it then overwrite with their own (or nobody reads: the slack). Experts
// that all have the same few rows run batched instead (run_experts_batched, above).
void run_experts(MoeWorkspace& ws, const MoeWeights& w, int E, int D, int M, nn::PrimitiveCache& cache) {
  if (w.bf16 && !w.packed) fail("moe: bf16 experts need packed kernels");
  const int64_t R = E > 1 ? ws.rows_of_expert[0] : 0;
  const int64_t chunk = batched_expert_chunk(R, M, E);
  bool equal = chunk > 0;
  for (int e = 0; e < E && equal; ++e) equal = ws.rows_of_expert[e] == R && ws.first_row[e] == e * R;
  int64_t max_rows = 0;
  for (int e = 0; e < E; ++e)
    max_rows = std::max({max_rows, ws.rows_of_expert[e], fixed_expert_rows(ws.rows_of_expert[e], D, w.bf16)});
  const int64_t hidden_rows = equal ? chunk * R : std::max(max_rows, ws.max_expert_rows);
  float* hidden = ws.expert_hidden.reserve((hidden_rows + kExpertRowSlack) * M);
  float* out = ws.expert_out.data();
  // Batched bf16 matmuls of few rows were no faster than f32 ones (oneDNN 2.6 brgemm,
  // 128 experts x 8 rows x 384 x 1536: 10.4 ms bf16, 8.8 ms f32, both packed;
  // docs/BENCHMARKS.md session 11): such experts (Soft-MoE with one slot per expert and a
  // small batch) run in f32 also when the engine runs bf16.
  if (!w.bf16 || (equal && R < kBf16BatchedMinRows)) {
    const ExpertOperands<float> x{ws.expert_in.data(), hidden, out};
    if (equal) return run_experts_batched(x, w, E, D, M, R, chunk, cache);
    return run_experts_one_by_one(x, ws, w, E, D, M, cache);
  }
  // The rows up to the last expert's and the slack a padded matmul may read past them.
  const int64_t rows = E > 0 ? ws.first_row[E - 1] + ws.rows_of_expert[E - 1] + kExpertRowSlack : 0;
  uint16_t* in = ws.expert_in_bf16.reserve_bf16(rows * D);
  nn::to_bf16(in, ws.expert_in.data(), rows * D);
  const ExpertOperands<uint16_t> x{in, reinterpret_cast<uint16_t*>(hidden), out};
  if (equal) return run_experts_batched(x, w, E, D, M, R, chunk, cache);
  run_experts_one_by_one(x, ws, w, E, D, M, cache);
}

void gather_expert_rows(float* in, const float* h, const MoeWorkspace& ws, int D) {
  const int64_t count = static_cast<int64_t>(ws.entries.size());
  // The rows written are scattered over the expert-major input: claim those of an entry
  // a few ahead while copying this one.
  constexpr int64_t ahead = 8;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    if (i + ahead < count) {
      const char* row = reinterpret_cast<const char*>(in + ws.entries[i + ahead].row * D);
      for (int64_t byte = 0; byte < int64_t{D} * 4; byte += 64) __builtin_prefetch(row + byte, 1);
    }
    std::memcpy(in + ws.entries[i].row * D, h + ws.entries[i].token * D, sizeof(float) * D);
  }
}

void bucket_by_token(MoeWorkspace& ws, int64_t N) {
  ws.token_begin.assign(N + 1, 0);
  bool token_order = true;  // top-k plans list each token's entries together, tokens ascending
  int64_t previous = 0;
  for (const auto& en : ws.entries) {
    ++ws.token_begin[en.token + 1];
    token_order = token_order && en.token >= previous;
    previous = en.token;
  }
  for (int64_t n = 0; n < N; ++n) ws.token_begin[n + 1] += ws.token_begin[n];
  ws.by_token.resize(ws.entries.size());
  if (token_order) {  // what the counting sort below gives on entries already in token order
    std::iota(ws.by_token.begin(), ws.by_token.end(), int64_t{0});
    return;
  }
  ws.cursor.assign(ws.token_begin.begin(), ws.token_begin.end() - 1);
  for (size_t i = 0; i < ws.entries.size(); ++i) ws.by_token[ws.cursor[ws.entries[i].token]++] = static_cast<int64_t>(i);
}

void combine_expert_rows(float* x, const float* out, const MoeWorkspace& ws, int64_t N, int D) {
  // The rows a token reads are scattered over the expert-major output: fetch those of a
  // token a few ahead while adding this one's.
  constexpr int64_t ahead = 4;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    if (n + ahead < N)
      for (int64_t i = ws.token_begin[n + ahead]; i < ws.token_begin[n + ahead + 1]; ++i) {
        const char* row = reinterpret_cast<const char*>(out + ws.entries[ws.by_token[i]].row * D);
        for (int64_t byte = 0; byte < int64_t{D} * 4; byte += 64) __builtin_prefetch(row + byte);
      }
    float* xr = x + n * D;
    for (int64_t i = ws.token_begin[n]; i < ws.token_begin[n + 1]; ++i) {
      const auto& en = ws.entries[ws.by_token[i]];
      const float* y = out + en.row * D;
      const float g = en.weight;
#pragma omp simd
      for (int d = 0; d < D; ++d) xr[d] += g * y[d];
    }
  }
}

void plan_rows(MoeWorkspace& ws, const std::vector<int64_t>& load, size_t G, int E) {
  ws.rows_of_expert.assign(E, 0);
  ws.first_row.assign(E, 0);
  ws.group_expert_base.assign(G * E, 0);
  for (size_t g = 0; g < G; ++g)
    for (int e = 0; e < E; ++e) ws.rows_of_expert[e] += load[g * E + e];
  for (int e = 1; e < E; ++e) ws.first_row[e] = ws.first_row[e - 1] + ws.rows_of_expert[e - 1];
  for (int e = 0; e < E; ++e) {
    int64_t row = ws.first_row[e];
    for (size_t g = 0; g < G; ++g) {
      ws.group_expert_base[g * E + e] = row;
      row += load[g * E + e];
    }
  }
}

void token_router_forward(float* x, const float* h, const MoeShape& sh, const MoeConfig& moe, const MoeWeights& w,
                          MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace, StageTimes* times) {
  const int64_t N = sh.tokens;
  const int D = sh.hidden, E = moe.num_experts;
  float* gates = ws.gates.reserve(N * E);
  float* scores = nullptr;
  const bool biased = moe.balance == Balance::bias && moe.router->selection_bias();
  if (biased && !w.balance_bias) fail("moe_forward: balance \"bias\" without its bias tensor");
  float* select = biased ? ws.select.reserve(N * E) : nullptr;
  {
    ScopedStage stage(times, &StageTimes::router);
    router_gates(gates, select, biased ? w.balance_bias : nullptr, h, w.router, N, D, E, cache, &ws);
    if (w.priority_kernel) {
      scores = ws.scores.reserve(N);
      learned_priority(scores, h, w.priority_kernel, *w.priority_bias, N, D);
    }
    if (moe.priority == Priority::oracle && !w.oracle_priority) fail("priority oracle: no importance given to this MoE block");
    ws.oracle_priority = w.oracle_priority;
    ws.scorer_scales_output = w.scorer_scales_output;
    plan_routing(ws, gates, scores, sh, moe, select);
  }
  dispatch_run_combine(x, h, N, D, sh.mlp, E, w, ws, cache, times);
  if (trace) vmoe::fill_trace(*trace, ws, gates, sh, moe);
}

void moe_forward(float* x, const float* h, const MoeShape& shape, const MoeConfig& moe, const MoeWeights& w,
                 MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace, StageTimes* times) {
  if (trace) {
    trace->router = moe.router;
    trace->num_experts = moe.num_experts;
    trace->k = moe.router->trace_k(moe);
    trace->slots_per_expert = moe.router->trace_slots(moe);
    trace->tokens_per_image = shape.tokens_per_image;
    trace->group_images = moe.group_images;
    trace->capacity_factor = moe.capacity_factor;
    trace->dropless = moe.dropless;
    trace->batch_priority = moe.batch_priority;
    trace->priority = moe.priority;
    trace->gating = moe.gating;
    trace->overflow = moe.overflow;
    trace->group_capacity.clear();
  }
  moe.router->forward(x, h, shape, moe, w, ws, cache, trace, times);
  if (moe.num_shared_experts > 0) {
    ScopedStage stage(times, &StageTimes::experts);
    run_shared_experts(x, h, shape.tokens, shape.hidden, shape.mlp, moe.num_shared_experts, w, ws, cache);
  }
}

void run_shared_experts(float* x, const float* h, int64_t N, int D, int M, int shared, const MoeWeights& w,
                        MoeWorkspace& ws, nn::PrimitiveCache& cache) {
  GemmSpec up;
  up.m = N, up.k = D, up.n = M, up.bias = true, up.activation = w.gelu;
  GemmSpec down;  // accumulates into x
  down.m = N, down.k = M, down.n = D, down.bias = true, down.beta = 1.0f;
  up.bf16_inputs = up.bf16_output = down.bf16_inputs = w.bf16;
  up.packed_b = down.packed_b = w.packed != nullptr;
  float* hidden = ws.expert_hidden.reserve(N * M);
  const void* in = h;
  if (w.bf16) {
    uint16_t* h16 = ws.expert_in_bf16.reserve_bf16(N * D);
    nn::to_bf16(h16, h, N * D);
    in = h16;
  }
  const nn::Gemm& g_up = cache.gemm(up);
  const nn::Gemm& g_down = cache.gemm(down);
  for (int s = 0; s < shared; ++s) {
    g_up.run_typed(hidden, in, kernel(g_up, w.shared_w0 + int64_t{s} * D * M, w), w.shared_b0 + int64_t{s} * M);
    g_down.run_typed(x, hidden, kernel(g_down, w.shared_w1 + int64_t{s} * M * D, w), w.shared_b1 + int64_t{s} * D);
  }
}

void learned_priority(float* s, const float* h, const float* kernel, float bias, int64_t N, int D) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float acc = bias;
    for (int d = 0; d < D; ++d) acc += h[n * D + d] * kernel[d];
    s[n] = acc;
  }
}

void plan_routing(MoeWorkspace& ws, const float* gates, const float* learned, const MoeShape& sh, const MoeConfig& moe,
                  const float* select) {
  const auto groups = make_groups(sh.tokens, int64_t{moe.group_images} * sh.tokens_per_image);
  std::vector<int> capacity(groups.size());
  ws.max_rows = 0, ws.max_expert_rows = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    capacity[g] = static_cast<int>(group_capacity(moe, groups[g].size));
    ws.max_rows += moe.router->max_rows(moe, groups[g].size);
    ws.max_expert_rows += std::min<int64_t>(capacity[g], groups[g].size);
  }
  moe.router->plan(ws, gates, learned, moe.router->selection_bias() ? select : nullptr, groups, capacity, moe);
}

void fill_trace(MoeLayerTrace& trace, const MoeWorkspace& ws, const float* gates, const MoeShape& sh,
                const MoeConfig& moe) {
  const int64_t N = sh.tokens;
  const auto groups = make_groups(N, int64_t{moe.group_images} * sh.tokens_per_image);
  trace.times_taken.assign(N, 0);
  moe.router->fill_trace(trace, ws, groups, moe);
  if (trace.detail) trace.gates.assign(gates, gates + N * moe.num_experts);
}

}  // namespace vmoe
