#include "model/vit_train.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <cstring>

#include "core/error.hpp"
#include "moe/balance.hpp"
#include "nn/attention.hpp"
#include "nn/gelu.hpp"
#include "nn/grad_ops.hpp"

namespace vmoe::train {

using nn::accumulate_bias_grad;
using nn::accumulate_weight_grad;
using nn::GemmSpec;
using nn::input_grad;
using nn::linear;

namespace {

void zero(VitParams& grads, const ModelConfig& c) {
  for (ParamSlot& s : param_slots(grads, c)) s.tensor->fill(0.0f);
}

// The gradient of the packed (D, 3D) kernel and (3D) bias (see pack_qkv) back into
// the query, key and value gradients.
void unpack_qkv_grads(BlockParams& g, const float* kernel, const float* bias, int64_t D) {
  Tensor* kernels[3] = {&g.query_kernel, &g.key_kernel, &g.value_kernel};
  Tensor* biases[3] = {&g.query_bias, &g.key_bias, &g.value_bias};
  for (int j = 0; j < 3; ++j) {
    for (int64_t r = 0; r < D; ++r)
      for (int64_t c = 0; c < D; ++c) (*kernels[j])[r * D + c] += kernel[r * 3 * D + j * D + c];
    for (int64_t c = 0; c < D; ++c) (*biases[j])[c] += bias[j * D + c];
  }
}

// y += x over n floats (the residual's gradient joining the layer norm's).
void add_into(float* y, const float* x, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace

TrainGraph::TrainGraph(const ModelConfig& c, int batch)
    : c_(c),
      B_(batch),
      N_(int64_t{batch} * c.num_tokens()),
      T_(c.num_tokens()),
      D_(c.hidden_size),
      H_(c.num_heads),
      Dh_(c.head_dim()),
      M_(c.mlp_dim),
      NP_(c.num_patches()),
      patch_len_(int64_t{c.patch_h} * c.patch_w * c.image.channels),
      pooled_(c.pooled_size()),
      norm_(N_, D_, static_cast<float>(c.layer_norm_eps)) {
  if (batch <= 0) fail("training batch must be positive, got {}", batch);
  c.validate();
  if (c.representation_size) tanh_ = std::make_unique<nn::TanhTrain>(int64_t{batch} * pooled_);
  acts_.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    BlockActs& a = acts_[l];
    for (Tensor* t : {&a.x_in, &a.h0, &a.attn, &a.x_mid, &a.h1}) *t = Tensor({N_, D_});
    for (Tensor* t : {&a.mean0, &a.var0, &a.mean1, &a.var1}) *t = Tensor({N_});
    a.qkv = Tensor({N_, 3 * D_});
    a.probs = Tensor({int64_t{batch}, H_, T_, T_});
    if (c.is_moe_layer(l)) {
      a.moe = std::make_unique<MoeTrainLayer>(c, batch);
    } else {
      a.u = Tensor({N_, M_});
      a.a = Tensor({N_, M_});
    }
  }
  qkv_kernel_ = Tensor({D_, 3 * D_});
  qkv_bias_ = Tensor({3 * D_});
  dqkv_kernel_ = Tensor({D_, 3 * D_});
  dqkv_bias_ = Tensor({3 * D_});
  patches_ = Tensor({batch * NP_, patch_len_});
  embedded_ = Tensor({batch * NP_, D_});
  x_final_ = Tensor({N_, D_});
  hf_ = Tensor({N_, D_});
  meanf_ = Tensor({N_});
  varf_ = Tensor({N_});
  pooled_act_ = Tensor({int64_t{batch}, D_});
  pre_z_ = Tensor({int64_t{batch}, pooled_});
  features_ = Tensor({int64_t{batch}, pooled_});
  logits_ = Tensor({int64_t{batch}, c.num_classes});
  probs_ = Tensor({int64_t{batch}, c.num_classes});
  dprobs_ = Tensor({nn::attention_backward_workspace_floats(batch, T_, H_)});
  for (Tensor* t : {&dx_, &dtmp_, &dh_, &dattn_}) *t = Tensor({N_, D_});
  dqkv_ = Tensor({N_, 3 * D_});
  du_ = Tensor({N_, M_});
  da_ = Tensor({N_, M_});
  dpooled_ = Tensor({int64_t{batch}, D_});
  dfeatures_ = Tensor({int64_t{batch}, pooled_});
  dpre_z_ = Tensor({int64_t{batch}, pooled_});
  dlogits_ = Tensor({int64_t{batch}, c.num_classes});
  ones_ = Tensor({N_});
  ones_.fill(1.0f);
}

// x_in = x_out of the previous block; see Engine::block for the same maths.
// Runs an MoE layer's forward or backward, its experts' time (routed and shared) into
// times->experts and the rest of the layer (router, dispatch, combine, aux losses) into
// times->router.
template <class Run>
static void moe_timed(TrainGraph::BlockActs& a, StageTimes* times, Run run) {
  a.moe->times = times;
  const double experts_before = times ? times->experts : 0.0;
  {
    ScopedStage stage(times, &StageTimes::router);
    run();
  }
  if (times) times->router -= times->experts - experts_before;
}

void TrainGraph::block_forward(int l, const BlockParams& p, float* x_out, std::mt19937_64* noise) {
  BlockActs& a = acts_[l];
  const int64_t N = N_, D = D_;
  StageTimes* t = fwd_times_;
  {
    ScopedStage stage(t, &StageTimes::norms);
    norm_.forward(a.h0.data(), a.mean0.data(), a.var0.data(), a.x_in.data(), p.ln0_scale.data(), p.ln0_bias.data());
  }
  std::optional<ScopedStage> attention(std::in_place, t, &StageTimes::attention);
  pack_qkv(qkv_kernel_.data(), qkv_bias_.data(), p, D);
  linear(a.qkv.data(), a.h0.data(), qkv_kernel_.data(), qkv_bias_.data(), N, D, 3 * D, cache_);
  nn::attention_forward(a.attn.data(), a.probs.data(), a.qkv.data(), B_, T_, H_, Dh_, /*keep_probs=*/true);
  // The residual by a pass of our own, not a copy and the matmul's sum post-op: that pair
  // measured 1.2x slower on these shapes (docs/BENCHMARKS.md, session 15).
  GemmSpec out;
  out.m = N, out.k = D, out.n = D, out.bias = true;
  cache_.gemm(out).run(a.x_mid.data(), a.attn.data(), p.out_kernel.data(), p.out_bias.data());
  add_into(a.x_mid.data(), a.x_in.data(), N * D);
  attention.reset();
  {
    ScopedStage stage(t, &StageTimes::norms);
    norm_.forward(a.h1.data(), a.mean1.data(), a.var1.data(), a.x_mid.data(), p.ln1_scale.data(), p.ln1_bias.data());
  }
  if (a.moe) {
    std::memcpy(x_out, a.x_mid.data(), sizeof(float) * N * D);
    moe_timed(a, t, [&] { a.moe->forward(x_out, a.h1.data(), p, noise, cache_); });
    return;
  }
  ScopedStage stage(t, &StageTimes::dense_mlp);
  linear(a.u.data(), a.h1.data(), p.mlp0_kernel.data(), p.mlp0_bias.data(), N, D, M_, cache_);
  nn::gelu_forward(a.a.data(), a.u.data(), a.u.data(), N * M_);
  linear(x_out, a.a.data(), p.mlp1_kernel.data(), p.mlp1_bias.data(), N, M_, D, cache_);
  add_into(x_out, a.x_mid.data(), N * D);
}

StepResult TrainGraph::forward(const VitParams& params, const float* images, const int* labels,
                               std::mt19937_64* noise, const LossOptions& options) {
  const ModelConfig& c = c_;
  const int64_t D = D_, T = T_, NP = NP_, off = T - NP;
  const int ph = c.patch_h, pw = c.patch_w, C = c.image.channels, W = c.image.width, gh = c.grid_h(), gw = c.grid_w();
  std::optional<ScopedStage> embedding(std::in_place, fwd_times_, &StageTimes::embedding);
  for (int64_t b = 0; b < B_; ++b)
    for (int gy = 0; gy < gh; ++gy)
      for (int gx = 0; gx < gw; ++gx) {
        float* row = patches_.data() + ((b * gh + gy) * gw + gx) * patch_len_;
        for (int py = 0; py < ph; ++py)
          std::memcpy(row + int64_t{py} * pw * C, images + ((b * c.image.height + gy * ph + py) * W + gx * pw) * C,
                      sizeof(float) * pw * C);
      }
  linear(embedded_.data(), patches_.data(), params.embedding_kernel.data(), params.embedding_bias.data(), B_ * NP,
         patch_len_, D, cache_);
  float* x0 = acts_[0].x_in.data();
  const float* pos = params.pos_embedding.data();
  for (int64_t b = 0; b < B_; ++b) {
    if (off)
      for (int64_t d = 0; d < D; ++d) x0[b * T * D + d] = params.cls[d] + pos[d];
    for (int64_t p = 0; p < NP; ++p)
      for (int64_t d = 0; d < D; ++d) x0[(b * T + off + p) * D + d] = embedded_[(b * NP + p) * D + d] + pos[(off + p) * D + d];
  }
  embedding.reset();
  StepResult r;
  for (int l = 0; l < c.num_layers; ++l) {
    float* x_out = l + 1 < c.num_layers ? acts_[l + 1].x_in.data() : x_final_.data();
    block_forward(l, params.blocks[l], x_out, noise);
    if (acts_[l].moe) {
      const AuxLosses aux = acts_[l].moe->aux_losses();
      r.aux_importance += aux.importance;
      r.aux_load += aux.load;
      r.aux_scorer += aux.scorer;
      r.expert_rows.push_back(acts_[l].moe->expert_rows());
      r.expert_choices.push_back(acts_[l].moe->expert_choices());
    }
  }
  ScopedStage head(fwd_times_, &StageTimes::head);
  norm_.forward(hf_.data(), meanf_.data(), varf_.data(), x_final_.data(), params.encoder_norm_scale.data(),
                params.encoder_norm_bias.data());
  for (int64_t b = 0; b < B_; ++b)
    for (int64_t d = 0; d < D; ++d) {
      if (c.classifier == Classifier::token) {
        pooled_act_[b * D + d] = hf_[b * T * D + d];
        continue;
      }
      double sum = 0;
      for (int64_t t = 0; t < T; ++t) sum += hf_[(b * T + t) * D + d];
      pooled_act_[b * D + d] = static_cast<float>(sum / T);
    }
  const float* features = pooled_act_.data();
  if (c.representation_size) {
    linear(pre_z_.data(), pooled_act_.data(), params.pre_logits_kernel.data(), params.pre_logits_bias.data(), B_, D,
           pooled_, cache_);
    tanh_->forward(features_.data(), pre_z_.data());
    features = features_.data();
  }
  const int classes = c.num_classes;
  linear(logits_.data(), features, params.head_kernel.data(), params.head_bias.data(), B_, pooled_, classes, cache_);
  // Cross-entropy against (1 - eps) one-hot + eps / classes.
  const double eps = options.label_smoothing;
  for (int64_t b = 0; b < B_; ++b) {
    const float* l = logits_.data() + b * classes;
    float* p = probs_.data() + b * classes;
    const float mx = *std::max_element(l, l + classes);
    double sum = 0;
    for (int k = 0; k < classes; ++k) sum += std::exp(double{l[k]} - mx);
    const double log_sum = std::log(sum) + mx;
    int best = 0;
    for (int k = 0; k < classes; ++k) {
      p[k] = static_cast<float>(std::exp(l[k] - log_sum));
      const double target = (k == labels[b] ? 1.0 - eps : 0.0) + eps / classes;
      r.loss -= target * (l[k] - log_sum) / B_;
      if (l[k] > l[best]) best = k;
    }
    r.correct += best == labels[b];
  }
  labels_ = labels;
  return r;
}

void TrainGraph::block_backward(int l, const BlockParams& p, BlockParams& g, float* dx, const LossOptions& options) {
  BlockActs& a = acts_[l];
  const int64_t N = N_, D = D_, M = M_, T = T_, H = H_, Dh = Dh_;
  StageTimes* t = bwd_times_;
  // x_out = x_mid + MLP(h1), h1 = LN_1(x_mid)
  if (a.moe) {
    a.moe->set_scorer_penalty(options.priority_penalty);
    moe_timed(a, t, [&] {
      a.moe->backward(dh_.data(), dx, a.h1.data(), p, g, options.importance_weight, options.load_weight, cache_);
    });
  } else {
    ScopedStage stage(t, &StageTimes::dense_mlp);
    input_grad(da_.data(), dx, p.mlp1_kernel.data(), N, M, D, 0.0f, cache_);
    accumulate_weight_grad(g.mlp1_kernel.data(), a.a.data(), dx, N, M, D, cache_);
    accumulate_bias_grad(g.mlp1_bias.data(), dx, N, D, ones_.data(), ones_.numel(), cache_);
    nn::gelu_backward(du_.data(), da_.data(), a.u.data(), N * M);
    accumulate_weight_grad(g.mlp0_kernel.data(), a.h1.data(), du_.data(), N, D, M, cache_);
    accumulate_bias_grad(g.mlp0_bias.data(), du_.data(), N, M, ones_.data(), ones_.numel(), cache_);
    input_grad(dh_.data(), du_.data(), p.mlp0_kernel.data(), N, D, M, 0.0f, cache_);
  }
  {
    ScopedStage stage(t, &StageTimes::norms);
    norm_.backward(dtmp_.data(), g.ln1_scale.data(), g.ln1_bias.data(), dh_.data(), a.x_mid.data(), a.mean1.data(),
                   a.var1.data(), p.ln1_scale.data(), p.ln1_bias.data());
    add_into(dx, dtmp_.data(), N * D);
  }
  std::optional<ScopedStage> attention(std::in_place, t, &StageTimes::attention);
  // x_mid = x_in + attn @ out_kernel + out_bias
  accumulate_weight_grad(g.out_kernel.data(), a.attn.data(), dx, N, D, D, cache_);
  accumulate_bias_grad(g.out_bias.data(), dx, N, D, ones_.data(), ones_.numel(), cache_);
  input_grad(dattn_.data(), dx, p.out_kernel.data(), N, D, D, 0.0f, cache_);
  nn::attention_backward(dqkv_.data(), dprobs_.data(), dattn_.data(), a.probs.data(), a.qkv.data(), B_, T, H, Dh,
                         cache_);
  // qkv = h0 @ Wqkv + bqkv
  pack_qkv(qkv_kernel_.data(), qkv_bias_.data(), p, D);
  dqkv_kernel_.fill(0.0f);
  dqkv_bias_.fill(0.0f);
  accumulate_weight_grad(dqkv_kernel_.data(), a.h0.data(), dqkv_.data(), N, D, 3 * D, cache_);
  accumulate_bias_grad(dqkv_bias_.data(), dqkv_.data(), N, 3 * D, ones_.data(), ones_.numel(), cache_);
  unpack_qkv_grads(g, dqkv_kernel_.data(), dqkv_bias_.data(), D);
  input_grad(dh_.data(), dqkv_.data(), qkv_kernel_.data(), N, D, 3 * D, 0.0f, cache_);
  attention.reset();
  ScopedStage stage(t, &StageTimes::norms);
  norm_.backward(dtmp_.data(), g.ln0_scale.data(), g.ln0_bias.data(), dh_.data(), a.x_in.data(), a.mean0.data(),
                 a.var0.data(), p.ln0_scale.data(), p.ln0_bias.data());
  add_into(dx, dtmp_.data(), N * D);
}

void TrainGraph::backward(const VitParams& params, VitParams& grads, const LossOptions& options) {
  const ModelConfig& c = c_;
  const int64_t D = D_, T = T_, NP = NP_, off = T - NP, classes = c.num_classes;
  {
    ScopedStage stage(bwd_times_, &StageTimes::head);  // the gradients' zeroing counted here
    zero(grads, c);
  const double eps = options.label_smoothing;
  for (int64_t b = 0; b < B_; ++b)
    for (int64_t k = 0; k < classes; ++k) {
      const double target = (k == labels_[b] ? 1.0 - eps : 0.0) + eps / classes;
      dlogits_[b * classes + k] = static_cast<float>((probs_[b * classes + k] - target) / B_);
    }
  const float* features = c.representation_size ? features_.data() : pooled_act_.data();
  accumulate_weight_grad(grads.head_kernel.data(), features, dlogits_.data(), B_, pooled_, classes, cache_);
  accumulate_bias_grad(grads.head_bias.data(), dlogits_.data(), B_, classes, ones_.data(), ones_.numel(), cache_);
  if (c.representation_size) {
    input_grad(dfeatures_.data(), dlogits_.data(), params.head_kernel.data(), B_, pooled_, classes, 0.0f, cache_);
    tanh_->backward(dpre_z_.data(), dfeatures_.data(), features_.data());
    accumulate_weight_grad(grads.pre_logits_kernel.data(), pooled_act_.data(), dpre_z_.data(), B_, D, pooled_, cache_);
    accumulate_bias_grad(grads.pre_logits_bias.data(), dpre_z_.data(), B_, pooled_, ones_.data(), ones_.numel(), cache_);
    input_grad(dpooled_.data(), dpre_z_.data(), params.pre_logits_kernel.data(), B_, D, pooled_, 0.0f, cache_);
  } else {
    input_grad(dpooled_.data(), dlogits_.data(), params.head_kernel.data(), B_, D, classes, 0.0f, cache_);
  }
  dh_.fill(0.0f);
  for (int64_t b = 0; b < B_; ++b)
    for (int64_t d = 0; d < D; ++d) {
      if (c.classifier == Classifier::token) {
        dh_[b * T * D + d] = dpooled_[b * D + d];
        continue;
      }
      for (int64_t t = 0; t < T; ++t) dh_[(b * T + t) * D + d] = dpooled_[b * D + d] / static_cast<float>(T);
    }
  norm_.backward(dx_.data(), grads.encoder_norm_scale.data(), grads.encoder_norm_bias.data(), dh_.data(),
                 x_final_.data(), meanf_.data(), varf_.data(), params.encoder_norm_scale.data(),
                 params.encoder_norm_bias.data());
  }
  for (int l = c.num_layers - 1; l >= 0; --l) block_backward(l, params.blocks[l], grads.blocks[l], dx_.data(), options);
  // x0 = [cls | patches @ kernel + bias] + pos
  ScopedStage stage(bwd_times_, &StageTimes::embedding);
  for (int64_t b = 0; b < B_; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t d = 0; d < D; ++d) grads.pos_embedding[t * D + d] += dx_[(b * T + t) * D + d];
  if (off)
    for (int64_t b = 0; b < B_; ++b)
      for (int64_t d = 0; d < D; ++d) grads.cls[d] += dx_[b * T * D + d];
  float* d_embedded = dtmp_.data();
  for (int64_t b = 0; b < B_; ++b)
    std::memcpy(d_embedded + b * NP * D, dx_.data() + (b * T + off) * D, sizeof(float) * NP * D);
  accumulate_weight_grad(grads.embedding_kernel.data(), patches_.data(), d_embedded, B_ * NP, patch_len_, D, cache_);
  accumulate_bias_grad(grads.embedding_bias.data(), d_embedded, B_ * NP, D, ones_.data(), ones_.numel(), cache_);
}

StepResult TrainGraph::step(const VitParams& params, VitParams& grads, const float* images, const int* labels,
                            std::mt19937_64* noise, const LossOptions& options) {
  StepResult r = forward(params, images, labels, noise, options);
  backward(params, grads, options);
  return r;
}

std::vector<int64_t> TrainGraph::routing_signature() const {
  std::vector<int64_t> signature;
  for (const BlockActs& a : acts_)
    if (a.moe)
      for (const auto& en : a.moe->plan().entries) signature.insert(signature.end(), {en.token, en.expert, en.row});
  return signature;
}

double TrainGraph::loss(const VitParams& params, const float* images, const int* labels, std::mt19937_64* noise,
                        const LossOptions& options) {
  StepResult r = forward(params, images, labels, noise, options);
  return r.loss + options.importance_weight * r.aux_importance + options.load_weight * r.aux_load +
         options.priority_penalty * r.aux_scorer;
}

void update_balance_biases(VitParams& params, const ModelConfig& c, const StepResult& step, float rate) {
  if (!c.moe || c.moe->balance != Balance::bias) return;
  size_t layer = 0;  // StepResult lists the MoE blocks in block order
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    if (layer >= step.expert_choices.size()) fail("balance update: the step has no loads for block {}", l);
    update_balance_bias(params.blocks[l].balance_bias.data(), step.expert_choices[layer++], rate);
  }
}

}  // namespace vmoe::train
