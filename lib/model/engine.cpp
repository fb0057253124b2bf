#include "model/engine.hpp"

#include "core/finite.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.hpp"
#include "moe/moe_layer.hpp"
#include "moe/soft_moe.hpp"
#include "nn/attention.hpp"
#include "spec/cost.hpp"

namespace vmoe {

using nn::Activation;
using nn::GemmSpec;

namespace {
// The oneDNN post-op of every MLP's hidden layer: the config's GELU form.
Activation gelu_activation(const ModelConfig& c) { return c.gelu == Gelu::erf ? Activation::gelu_erf : Activation::gelu_tanh; }

// A forward pass runs on both threads only when its oneDNN calls are large enough to
// split: each call (and each of our parallel loops) wakes the other OpenMP thread, a
// futex wake with the passive wait policy, ~10 us per wake as measured, which a small call
// does not pay back. Measured on an idle 2-core machine (docs/BENCHMARKS.md, session 10):
// two threads overtook one at batch 8 for the dense vit-fmnist (~2 MFLOP per call and
// image) but only at batch 32 for vmoe-fmnist, whose 8 experts per block add 16 small
// calls; with the threshold per block instead (32 MFLOP, batch 3) the MoE models ran 3-4x
// slower at batches 3-8 than at 2 (the small-batch cliff).
constexpr double kMinFlopsPerCallForThreads = 12e6;

// oneDNN calls of one encoder block of a pass of B images: two layer norms, the QKV and
// output projections, two more for the MLP or for the MoE router and dispatch/combine,
// and the experts' two matmuls each (token routers: every expert; shared experts: one
// pair each; Soft-MoE with few rows per expert: one pair per batched chunk, moe_layer.cpp).
double calls_per_block(const ModelConfig& c, const MoeConfig* moe, int block, int B) {
  double calls = 6;
  if (!moe || !c.is_moe_layer(block)) return calls;
  calls += 2.0 * moe->num_shared_experts;
  if (std::strcmp(moe->router->name(), "soft") != 0) return calls + 2.0 * moe->num_experts;
  const int64_t groups = (B + moe->group_images - 1) / moe->group_images;
  const int64_t chunk = batched_expert_chunk(groups * moe->slots_per_expert, c.expert_mlp_dim(), moe->num_experts);
  if (chunk == 0) return calls + 2.0 * moe->num_experts;
  return calls + 2.0 * ((moe->num_experts + chunk - 1) / chunk);
}

// Lowers the OpenMP thread count of this thread's later parallel regions (oneDNN's
// included) for the scope, then restores it.
class ThreadLimit {
 public:
  explicit ThreadLimit(int threads) : saved_(omp_get_max_threads()) {
    if (threads < saved_) omp_set_num_threads(threads);
  }
  ~ThreadLimit() { omp_set_num_threads(saved_); }
  ThreadLimit(const ThreadLimit&) = delete;
  ThreadLimit& operator=(const ThreadLimit&) = delete;

 private:
  int saved_;
};

}  // namespace

Engine::Engine(const Model& model, nn::Precision precision)
    : model_(model), precision_(precision), pack_(precision == nn::Precision::bf16 || !std::getenv("VMOE_F32_PLAIN")) {
  nn::require_precision(precision);
  const ModelConfig& c = model.config;
  const int64_t D = c.hidden_size;
  if (c.moe) routing_ = inference_routing(*c.moe);
  packed_.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    const BlockParams& b = model.params.blocks[i];
    PackedBlock& p = packed_[i];
    p.qkv_kernel = Tensor({D, 3 * D});
    p.qkv_bias = Tensor({3 * D});
    pack_qkv(p.qkv_kernel.data(), p.qkv_bias.data(), b, D);
    if (c.is_moe_layer(i) && b.router_mu.numel() > 0) {  // Soft-MoE: mu normalised and scaled once
      const int64_t slots = int64_t{c.moe->num_experts} * c.moe->slots_per_expert;
      p.soft_mu = Tensor({D, slots});
      soft_normalised_mu(p.soft_mu.data(), b.router_mu.data(), b.router_scale[0], D, slots);
    }
  }
}

void Engine::linear(GemmSpec s, void* out, const float* in, const float* kernel, const float* bias) {
  if (precision_ != nn::Precision::bf16) return matmul(s, out, in, kernel, bias);
  uint16_t* in16 = in_bf16_.reserve_bf16(s.m * s.k);
  nn::to_bf16(in16, in, s.m * s.k);
  s.bf16_inputs = true;
  matmul(s, out, in16, kernel, bias);
}

void Engine::matmul(GemmSpec s, void* out, const void* in, const float* kernel, const float* bias) {
  s.packed_b = pack_;
  const nn::Gemm& gemm = cache_.gemm(s);
  gemm.run_typed(out, in, pack_ ? packed_weights_.get(gemm, kernel) : kernel, bias);
}

void Engine::set_routing(const RoutingOverrides& overrides) {
  if (!model_.config.moe) return;
  routing_ = apply_overrides(model_.config, overrides);
}

void Engine::set_routing(const MoeConfig& moe) {
  if (!model_.config.moe) fail("the model is dense: it has no routing to set");
  check_routing(model_.config, moe);
  routing_ = moe;
}

// x (B*T, D): row b*T + 0 is cls + pos[0] (token classifier), the rest
// patch @ embedding_kernel + embedding_bias + pos, patches row-major over the grid.
void Engine::embed(float* x, const float* images, int B, StageTimes* times) {
  ScopedStage stage(times, &StageTimes::embedding);
  const ModelConfig& c = model_.config;
  const int ph = c.patch_h, pw = c.patch_w, C = c.image.channels, W = c.image.width;
  const int gh = c.grid_h(), gw = c.grid_w();
  const int64_t np = c.num_patches(), T = c.num_tokens(), D = c.hidden_size, patch_len = int64_t{ph} * pw * C;
  const int64_t off = T - np;  // 1 with a CLS token
  float* patches = patches_.reserve(B * np * patch_len);
  // im2col: patch (gy, gx) row holds pixels (py, px, ch) in the kernel's (ph, pw, C) order.
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int gy = 0; gy < gh; ++gy)
      for (int gx = 0; gx < gw; ++gx) {
        float* row = patches + ((b * gh + gy) * gw + gx) * patch_len;
        for (int py = 0; py < ph; ++py) {
          const float* src = images + ((b * c.image.height + gy * ph + py) * W + gx * pw) * C;
          std::memcpy(row + int64_t{py} * pw * C, src, sizeof(float) * pw * C);
        }
      }
  GemmSpec s;
  s.m = B * np, s.k = patch_len, s.n = D, s.bias = true;
  float* embedded = embedded_.reserve(B * np * D);
  linear(s, embedded, patches, model_.params.embedding_kernel.data(), model_.params.embedding_bias.data());
  const float* pos = model_.params.pos_embedding.data();
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    if (off) {
      for (int64_t d = 0; d < D; ++d) x[b * T * D + d] = model_.params.cls[d] + pos[d];
    }
    for (int64_t p = 0; p < np; ++p)
      for (int64_t d = 0; d < D; ++d)
        x[(b * T + off + p) * D + d] = embedded[(b * np + p) * D + d] + pos[(off + p) * D + d];
  }
}

// x = x + Attn(LN_0(x)); x = x + MLP_or_MoE(LN_1(x))
void Engine::block(float* x, int i, int B, MoeLayerTrace* trace, StageTimes* times, MoeTap* tap) {
  const ModelConfig& c = model_.config;
  const BlockParams& b = model_.params.blocks[i];
  const int64_t T = c.num_tokens(), D = c.hidden_size, H = c.num_heads, M = c.mlp_dim, N = B * T;
  const float eps = static_cast<float>(c.layer_norm_eps);
  const nn::LayerNorm& norm = cache_.layer_norm(N, D, eps);
  float* h = h_.reserve(N * D);
  {
    ScopedStage stage(times, &StageTimes::norms);
    norm.run(h, x, b.ln0_scale.data(), b.ln0_bias.data());
  }
  check_stage(h, N * D, D, i, "first layer norm");
  {
    ScopedStage stage(times, &StageTimes::attention);
    GemmSpec qkv_spec;
    qkv_spec.m = N, qkv_spec.k = D, qkv_spec.n = 3 * D, qkv_spec.bias = true;
    float* qkv = qkv_.reserve(N * 3 * D);
    linear(qkv_spec, qkv, h, packed_[i].qkv_kernel.data(), packed_[i].qkv_bias.data());
    float* attn = attn_.reserve(N * D);
    float* workspace = scores_.reserve(nn::attention_workspace_floats(B, T, H, D / H, /*keep_probs=*/false));
    nn::attention_forward(attn, workspace, qkv, B, T, H, D / H);
    GemmSpec out_spec;  // x += attn @ out_kernel + out_bias
    out_spec.m = N, out_spec.k = D, out_spec.n = D, out_spec.bias = true, out_spec.beta = 1.0f;
    linear(out_spec, x, attn, b.out_kernel.data(), b.out_bias.data());
  }
  check_stage(x, N * D, D, i, "attention");
  {
    ScopedStage stage(times, &StageTimes::norms);
    norm.run(h, x, b.ln1_scale.data(), b.ln1_bias.data());
  }
  check_stage(h, N * D, D, i, "second layer norm");
  if (c.is_moe_layer(i)) {
    MoeWeights w{b.mlp0_kernel.data(), b.mlp0_bias.data(), b.mlp1_kernel.data(), b.mlp1_bias.data(),
                 b.router_kernel.data(), packed_[i].soft_mu.data(), gelu_activation(c)};
    if (has_priority_scorer(c.moe->priority)) {  // a learned scorer scales outputs whatever --priority orders by
      w.priority_kernel = b.priority_kernel.data(), w.priority_bias = b.priority_bias.data();
      w.scorer_scales_output = c.moe->priority == Priority::learned;
    }
    w.balance_bias = b.balance_bias.data();  // null unless balance "bias"
    w.shared_w0 = b.shared0_kernel.data(), w.shared_b0 = b.shared0_bias.data();
    w.shared_w1 = b.shared1_kernel.data(), w.shared_b1 = b.shared1_bias.data();
    w.bf16 = precision_ == nn::Precision::bf16;
    if (pack_) w.packed = &packed_weights_;
    if (routing_->priority == Priority::oracle) {
      const int moe_index = static_cast<int>(std::count_if(c.moe->layers.begin(), c.moe->layers.end(), [&](int l) { return l < i; }));
      if (moe_index >= static_cast<int>(oracle_.size()) || static_cast<int64_t>(oracle_[moe_index].size()) != N)
        fail("priority oracle: no importance given for block {} of this batch", i);
      w.oracle_priority = oracle_[moe_index].data();
    }
    MoeShape shape{N, static_cast<int>(T), static_cast<int>(D), c.expert_mlp_dim()};
    moe_ws_.first_bad_gate = -1;
    if (tap) {
      tap->block = i;
      tap->without_routed.assign(x, x + N * D);
      tap->normed.assign(h, h + N * D);
      if (c.moe->num_shared_experts > 0)
        run_shared_experts(tap->without_routed.data(), h, N, static_cast<int>(D), c.expert_mlp_dim(),
                           c.moe->num_shared_experts, w, moe_ws_, cache_);
    }
    moe_forward(x, h, shape, *routing_, w, moe_ws_, cache_, trace, times);
    if (tap) tap->after.assign(x, x + N * D);
    if (moe_ws_.first_bad_gate >= 0) {
      gates_bad_ = true;
      if (locate_) report_non_finite(i, "router logits", moe_ws_.first_bad_gate, moe_ws_.bad_gate_value, c.moe->num_experts);
    }
    check_stage(x, N * D, D, i, "MoE MLP");
    return;
  }
  ScopedStage stage(times, &StageTimes::dense_mlp);
  GemmSpec up;  // hidden = GELU(h @ W0 + b0)
  up.m = N, up.k = D, up.n = M, up.bias = true, up.activation = gelu_activation(c);
  GemmSpec down;  // x += hidden @ W1 + b1
  down.m = N, down.k = M, down.n = D, down.bias = true, down.beta = 1.0f;
  float* hidden = hidden_.reserve(N * M);
  // bf16: the hidden layer only feeds the next matmul, so it is written in bf16.
  up.bf16_output = down.bf16_inputs = precision_ == nn::Precision::bf16;
  linear(up, hidden, h, b.mlp0_kernel.data(), b.mlp0_bias.data());
  matmul(down, x, hidden, b.mlp1_kernel.data(), b.mlp1_bias.data());
  check_stage(x, N * D, D, i, "MLP");
}

// logits = head(pre_logits?(pool(encoder_norm(x))))
void Engine::head(float* logits, const float* x, int B, StageTimes* times) {
  const ModelConfig& c = model_.config;
  const VitParams& p = model_.params;
  const int64_t T = c.num_tokens(), D = c.hidden_size, N = B * T;
  float* h = h_.reserve(N * D);
  {
    ScopedStage stage(times, &StageTimes::norms);
    cache_.layer_norm(N, D, static_cast<float>(c.layer_norm_eps))
        .run(h, x, p.encoder_norm_scale.data(), p.encoder_norm_bias.data());
  }
  ScopedStage stage(times, &StageTimes::head);
  float* pooled = pooled_.reserve(B * D);
  for (int64_t b = 0; b < B; ++b) {
    if (c.classifier == Classifier::token) {
      std::memcpy(pooled + b * D, h + b * T * D, sizeof(float) * D);
      continue;
    }
    for (int64_t d = 0; d < D; ++d) {
      float sum = 0;
      for (int64_t t = 0; t < T; ++t) sum += h[(b * T + t) * D + d];
      pooled[b * D + d] = sum / static_cast<float>(T);
    }
  }
  const float* features = pooled;
  int64_t width = D;
  if (c.representation_size) {
    width = *c.representation_size;
    GemmSpec s;
    s.m = B, s.k = D, s.n = width, s.bias = true, s.activation = Activation::tanh;
    float* pre = pre_logits_.reserve(B * width);
    cache_.gemm(s).run(pre, pooled, p.pre_logits_kernel.data(), p.pre_logits_bias.data());
    features = pre;
  }
  GemmSpec s;
  s.m = B, s.k = width, s.n = c.num_classes, s.bias = true;
  cache_.gemm(s).run(logits, features, p.head_kernel.data(), p.head_bias.data());
}

int Engine::threads_for_batch(int B) const {
  const ModelConfig& c = model_.config;
  const double flops_per_image = model_cost(c, routing()).flops_total();
  // Two threads from the first batch size whose calls are large enough: a Soft-MoE pass
  // that goes back from batched to per-expert expert calls at some size (more, but larger
  // calls) keeps two threads, so images/s never falls as the batch grows.
  for (int b = 1; b <= B; ++b) {
    double calls = 0;
    for (int i = 0; i < c.num_layers; ++i) calls += calls_per_block(c, routing(), i, b);
    if (flops_per_image * b / calls >= kMinFlopsPerCallForThreads) return omp_get_max_threads();
  }
  return 1;
}

void Engine::run_forward(float* logits, const float* images, int B, RoutingTrace* trace, StageTimes* times,
                         std::vector<MoeTap>* taps) {
  const ModelConfig& c = model_.config;
  const int64_t N = int64_t{B} * c.num_tokens();
  float* x = x_.reserve(N * c.hidden_size);
  embed(x, images, B, times);
  check_stage(x, N * c.hidden_size, c.hidden_size, -1, "embedding");
  run_blocks(logits, 0, B, trace, times, taps);
}

void Engine::run_blocks(float* logits, int first, int B, RoutingTrace* trace, StageTimes* times,
                        std::vector<MoeTap>* taps) {
  const ModelConfig& c = model_.config;
  float* x = x_.data();
  if (trace) trace->layers.clear();
  if (taps) taps->clear();
  for (int i = first; i < c.num_layers; ++i) {
    MoeLayerTrace* layer_trace = nullptr;
    if (trace && c.is_moe_layer(i)) {
      trace->layers.emplace_back();
      layer_trace = &trace->layers.back();
      layer_trace->layer = i;
      layer_trace->detail = trace->detail;
    }
    MoeTap* tap = nullptr;
    if (taps && c.is_moe_layer(i)) tap = &taps->emplace_back();
    block(x, i, B, layer_trace, times, tap);
  }
  head(logits, x, B, times);
  check_stage(logits, int64_t{B} * c.num_classes, c.num_classes, c.num_layers, "head (logits)");
}

// Checking every stage of every pass would read each activation once more; instead a
// pass checks what it hands out (logits, (B, classes)) and the router gates ((N, E) per
// MoE block, what routing acts on), and only a bad pass is run again stage by stage to
// say where it first went wrong. The weights were checked when loaded, so a bad pass is
// an overflow at run time (or an inf/NaN in the images).
void Engine::forward(float* logits, const float* images, int B, RoutingTrace* trace, StageTimes* times,
                     std::vector<MoeTap>* taps) {
  if (B <= 0) fail("forward: batch of {} images", B);
  const ThreadLimit limit(threads_for_batch(B));
  const ModelConfig& c = model_.config;
  gates_bad_ = false;
  run_forward(logits, images, B, trace, times, taps);
  if (!gates_bad_ && first_non_finite(logits, int64_t{B} * c.num_classes) < 0) return;
  const int64_t image_floats = int64_t{B} * c.image.height * c.image.width * c.image.channels;
  if (const int64_t i = first_non_finite(images, image_floats); i >= 0)
    fail("forward pass: the input images hold {} (image {})", non_finite_name(images[i]),
         i / (int64_t{c.image.height} * c.image.width * c.image.channels));
  struct Locating {  // run_forward again, throwing at the first stage that is not finite
    Engine& e;
    explicit Locating(Engine& engine) : e(engine) { e.locate_ = true, e.tokens_ = e.model_.config.num_tokens(); }
    ~Locating() { e.locate_ = false; }
  } locating(*this);
  std::vector<float> scratch(static_cast<size_t>(B) * c.num_classes);
  run_forward(scratch.data(), images, B, nullptr, nullptr, nullptr);
  fail("forward pass: non-finite logits or router gates, but a second pass found every stage finite");
}

void Engine::forward_from(float* logits, const float* x, int B, int first_block, RoutingTrace* trace) {
  const ModelConfig& c = model_.config;
  if (B <= 0) fail("forward: batch of {} images", B);
  if (first_block < 0 || first_block > c.num_layers) fail("forward: no block {} to start from", first_block);
  const ThreadLimit limit(threads_for_batch(B));
  const int64_t n = int64_t{B} * c.num_tokens() * c.hidden_size;
  std::memcpy(x_.reserve(n), x, sizeof(float) * n);
  gates_bad_ = false;
  run_blocks(logits, first_block, B, trace, nullptr, nullptr);
  if (gates_bad_ || first_non_finite(logits, int64_t{B} * c.num_classes) >= 0)
    fail("forward pass from block {}: non-finite logits or router gates", first_block);
}

void Engine::check_stage(const float* x, int64_t n, int64_t width, int block, const char* stage) const {
  if (!locate_) return;
  if (const int64_t i = first_non_finite(x, n); i >= 0) report_non_finite(block, stage, i, x[i], width);
}

void Engine::report_non_finite(int block, const char* stage, int64_t i, float value, int64_t width) const {
  const int64_t row = i / width, column = i % width;
  const std::string where = block < 0 ? "the patch embedding"
                            : block >= model_.config.num_layers ? std::string(stage)
                                                                : fmt::format("block {}, {}", block, stage);
  const bool per_token = block < model_.config.num_layers;
  const std::string at = per_token ? fmt::format("image {}, token {}, {} {}", row / tokens_, row % tokens_,
                                                 std::string(stage) == "router logits" ? "expert" : "channel", column)
                                   : fmt::format("image {}, class {}", row, column);
  fail("forward pass: values first went non-finite in {} ({} at {}); the weights are finite, so the activations "
       "overflowed (weights or inputs too large)", where, non_finite_name(value), at);
}

}  // namespace vmoe
