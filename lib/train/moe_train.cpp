#include "train/moe_train.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/error.hpp"
#include "moe/capacity.hpp"
#include "moe/routers.hpp"
#include "moe/soft_moe.hpp"
#include "nn/gelu.hpp"
#include "nn/softmax_rows.hpp"
#include "train/grad_ops.hpp"

namespace vmoe::train {

using nn::GemmSpec;

namespace {

// Rows the experts can receive at most in one forward, over all groups.
int64_t max_expert_rows(const MoeConfig& m, const std::vector<Group>& groups) {
  int64_t rows = 0;
  for (const Group& g : groups) rows += m.router->max_rows(m, g.size);
  return rows;
}

// (std / mean)^2 of v (population std) and its gradient wrt each v[e].
double cv_squared(const std::vector<double>& v, std::vector<double>* grad) {
  const double E = static_cast<double>(v.size());
  double mean = 0, var = 0;
  for (double x : v) mean += x / E;
  for (double x : v) var += (x - mean) * (x - mean) / E;
  if (mean <= 0) {
    if (grad) grad->assign(v.size(), 0.0);
    return 0.0;
  }
  if (grad) {
    grad->resize(v.size());
    for (size_t e = 0; e < v.size(); ++e) (*grad)[e] = 2.0 / (E * mean * mean) * (v[e] - mean - var / mean);
  }
  return var / (mean * mean);
}

// Index of the k-th largest value of row (ties to the lower index, as top-k picks).
int kth_largest(const float* row, int E, int k) {
  std::vector<int> idx(E);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return row[a] > row[b]; });
  return idx[k - 1];
}

double normal_pdf(double z) { return std::exp(-0.5 * z * z) / std::sqrt(2.0 * M_PI); }

}  // namespace

MoeTrainLayer::MoeTrainLayer(const ModelConfig& c, int B)
    : moe_(*c.moe),
      shape_{int64_t{B} * c.num_tokens(), c.num_tokens(), c.hidden_size, c.expert_mlp_dim()},
      groups_(make_groups(shape_.tokens, int64_t{moe_.group_images} * c.num_tokens())),
      router_softmax_backward_(shape_.tokens, c.moe->num_experts) {
  const int64_t N = shape_.tokens, D = shape_.hidden, M = shape_.mlp, E = moe_.num_experts;
  max_rows_ = max_expert_rows(moe_, groups_);
  expert_in_ = Tensor({max_rows_, D});
  expert_out_ = Tensor({max_rows_, D});
  d_expert_out_ = Tensor({max_rows_, D});
  d_expert_in_ = Tensor({max_rows_, D});
  expert_u_ = Tensor({max_rows_, M});
  expert_a_ = Tensor({max_rows_, M});
  d_expert_a_ = Tensor({max_rows_, M});
  d_expert_u_ = Tensor({max_rows_, M});
  ones_ = Tensor({std::max(N, max_rows_)});
  ones_.fill(1.0f);
  if (const int64_t Sh = moe_.num_shared_experts; Sh > 0) {
    shared_u_ = Tensor({Sh, N, M});
    shared_a_ = Tensor({Sh, N, M});
    d_shared_ = Tensor({N, M});
  }
  if (moe_.balance == Balance::bias) select_ = Tensor({N, E});
  if (!moe_.router->routes_tokens()) {
    const int64_t slots = E * moe_.slots_per_expert, G = static_cast<int64_t>(groups_.size());
    inv_norm_ = Tensor({N});
    xn_ = Tensor({N, D});
    dxn_ = Tensor({N, D});
    mun_ = Tensor({D, slots});
    dmun_ = Tensor({D, slots});
    mu_inv_ = Tensor({slots});
    for (Tensor* t : {&logits_, &dispatch_, &combine_, &dlogits_, &dcombine_, &ddispatch_}) *t = Tensor({N, slots});
    slot_in_ = Tensor({G * slots, D});
    slot_out_ = Tensor({G * slots, D});
    d_slot_ = Tensor({G * slots, D});
  } else {
    clean_logits_ = Tensor({N, E});
    noisy_logits_ = Tensor({N, E});
    gates_ = Tensor({N, E});
    dgates_ = Tensor({N, E});
    dlogits_ = Tensor({N, E});
    scores_ = Tensor({N});
    dscores_ = Tensor({N});
  }
}

// The experts' rows are packed one after another: the rows of this step's plan, of max_rows_.
int64_t MoeTrainLayer::used_rows() const { return plan_.first_row.back() + plan_.rows_of_expert.back(); }

// u = in @ W0[e] + b0[e]; a = GELU(u); out = a @ W1[e] + b1[e], expert by expert.
void MoeTrainLayer::experts_forward(const BlockParams& p, nn::PrimitiveCache& cache) {
  const int64_t D = shape_.hidden, M = shape_.mlp;
  for (int e = 0; e < moe_.num_experts; ++e) {
    const int64_t rows = plan_.rows_of_expert[e], first = plan_.first_row[e];
    if (rows) linear(expert_u_.data() + first * M, expert_in_.data() + first * D, p.mlp0_kernel.data() + e * D * M,
                     p.mlp0_bias.data() + e * M, rows, D, M, cache);
  }
  nn::gelu_forward(expert_a_.data(), expert_u_.data(), expert_u_.data(), used_rows() * M);
  for (int e = 0; e < moe_.num_experts; ++e) {
    const int64_t rows = plan_.rows_of_expert[e], first = plan_.first_row[e];
    if (rows) linear(expert_out_.data() + first * D, expert_a_.data() + first * M, p.mlp1_kernel.data() + e * M * D,
                     p.mlp1_bias.data() + e * D, rows, M, D, cache);
  }
}

// From d_expert_out to d_expert_in, accumulating the experts' parameter gradients.
void MoeTrainLayer::experts_backward(const BlockParams& p, BlockParams& g, nn::PrimitiveCache& cache) {
  const int64_t D = shape_.hidden, M = shape_.mlp, ones = ones_.numel();
  for (int e = 0; e < moe_.num_experts; ++e) {
    const int64_t rows = plan_.rows_of_expert[e], first = plan_.first_row[e];
    if (!rows) continue;
    const float* dout = d_expert_out_.data() + first * D;
    input_grad(d_expert_a_.data() + first * M, dout, p.mlp1_kernel.data() + e * M * D, rows, M, D, 0.0f, cache);
    accumulate_weight_grad(g.mlp1_kernel.data() + e * M * D, expert_a_.data() + first * M, dout, rows, M, D, cache);
    accumulate_bias_grad(g.mlp1_bias.data() + e * D, dout, rows, D, ones_.data(), ones, cache);
  }
  nn::gelu_backward(d_expert_u_.data(), d_expert_a_.data(), expert_u_.data(), used_rows() * M);
  for (int e = 0; e < moe_.num_experts; ++e) {
    const int64_t rows = plan_.rows_of_expert[e], first = plan_.first_row[e];
    if (!rows) continue;
    const float* du = d_expert_u_.data() + first * M;
    accumulate_weight_grad(g.mlp0_kernel.data() + e * D * M, expert_in_.data() + first * D, du, rows, D, M, cache);
    accumulate_bias_grad(g.mlp0_bias.data() + e * M, du, rows, M, ones_.data(), ones, cache);
    input_grad(d_expert_in_.data() + first * D, du, p.mlp0_kernel.data() + e * D * M, rows, D, M, 0.0f, cache);
  }
}

// u_s = h @ W0[s] + b0[s]; a_s = GELU(u_s); x += a_s @ W1[s] + b1[s], for every token.
void MoeTrainLayer::shared_forward(float* x, const float* h, const BlockParams& p, nn::PrimitiveCache& cache) {
  const int64_t N = shape_.tokens, D = shape_.hidden, M = shape_.mlp;
  GemmSpec down;  // accumulates into x
  down.m = N, down.k = M, down.n = D, down.bias = true, down.beta = 1.0f;
  for (int64_t s = 0; s < moe_.num_shared_experts; ++s) {
    float* u = shared_u_.data() + s * N * M;
    float* a = shared_a_.data() + s * N * M;
    linear(u, h, p.shared0_kernel.data() + s * D * M, p.shared0_bias.data() + s * M, N, D, M, cache);
    nn::gelu_forward(a, u, u, N * M);
    cache.gemm(down).run(x, a, p.shared1_kernel.data() + s * M * D, p.shared1_bias.data() + s * D);
  }
}

// The shared experts' backward: dy reaches each one with weight 1; dh accumulates.
void MoeTrainLayer::shared_backward(float* dh, const float* dy, const float* h, const BlockParams& p, BlockParams& g,
                                    nn::PrimitiveCache& cache) {
  const int64_t N = shape_.tokens, D = shape_.hidden, M = shape_.mlp, ones = ones_.numel();
  float* d = d_shared_.data();
  for (int64_t s = 0; s < moe_.num_shared_experts; ++s) {
    const float* slope = shared_u_.data() + s * N * M;
    const float* a = shared_a_.data() + s * N * M;
    input_grad(d, dy, p.shared1_kernel.data() + s * M * D, N, M, D, 0.0f, cache);  // da
    accumulate_weight_grad(g.shared1_kernel.data() + s * M * D, a, dy, N, M, D, cache);
    accumulate_bias_grad(g.shared1_bias.data() + s * D, dy, N, D, ones_.data(), ones, cache);
    nn::gelu_backward(d, d, slope, N * M);  // du
    accumulate_weight_grad(g.shared0_kernel.data() + s * D * M, h, d, N, D, M, cache);
    accumulate_bias_grad(g.shared0_bias.data() + s * M, d, N, M, ones_.data(), ones, cache);
    input_grad(dh, d, p.shared0_kernel.data() + s * D * M, N, D, M, 1.0f, cache);
  }
}

std::vector<int64_t> MoeTrainLayer::expert_choices() const {
  if (!moe_.router->selection_bias()) return {};
  std::vector<int64_t> choices(moe_.num_experts, 0);
  for (size_t g = 0; g < groups_.size(); ++g)
    for (int e : plan_.top_k[g].choice) ++choices[e];  // the choices, wherever overflow sent them
  return choices;
}

void MoeTrainLayer::forward(float* x, const float* h, const BlockParams& p, std::mt19937_64* noise,
                            nn::PrimitiveCache& cache) {
  if (!moe_.router->routes_tokens()) {
    soft_forward(x, h, p, cache);
    shared_forward(x, h, p, cache);
    return;
  }
  const int64_t N = shape_.tokens, D = shape_.hidden, E = moe_.num_experts;
  linear(clean_logits_.data(), h, p.router_kernel.data(), nullptr, N, D, E, cache);
  std::memcpy(noisy_logits_.data(), clean_logits_.data(), sizeof(float) * N * E);
  const double sigma = moe_.noise_std / E;
  if (noise && moe_.router->top_k_options() && sigma > 0) {
    std::normal_distribution<float> normal(0.0f, static_cast<float>(sigma));
    for (int64_t i = 0; i < N * E; ++i) noisy_logits_[i] += normal(*noise);
  }
  nn::softmax_rows(gates_.data(), noisy_logits_.data(), N, E);
  const bool learned = moe_.priority == Priority::learned;
  if (learned) learned_priority(scores_.data(), h, p.priority_kernel.data(), p.priority_bias[0], N, static_cast<int>(D));
  // Balance "bias": the experts are chosen by logits + bias, the gates stay unbiased.
  const bool biased = moe_.balance == Balance::bias && moe_.router->selection_bias();
  if (biased)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t e = 0; e < E; ++e) select_[n * E + e] = noisy_logits_[n * E + e] + p.balance_bias[e];
  plan_routing(plan_, gates_.data(), learned ? scores_.data() : nullptr, shape_, moe_, biased ? select_.data() : nullptr);
  // The engine's dispatch and combine (moe_layer.hpp); the experts keep their activations.
  gather_expert_rows(expert_in_.data(), h, plan_, static_cast<int>(D));
  experts_forward(p, cache);
  bucket_by_token(plan_, N);
  combine_expert_rows(x, expert_out_.data(), plan_, N, static_cast<int>(D));
  compute_aux_losses();
  shared_forward(x, h, p, cache);
}

// importance = cv^2 of per-expert gate sums; load = cv^2 of per-expert mean probability
// of being selected under re-sampled noise, P(noisy logit beats the k-th best) =
// 1 - Phi((threshold - clean logit) / sigma); per group, averaged over groups.
void MoeTrainLayer::compute_aux_losses() {
  aux_ = {};
  if (moe_.priority == Priority::learned) {
    double sum = 0;
    for (int64_t n = 0; n < shape_.tokens; ++n) sum += learned_output_scale(scores_[n]);
    aux_.scorer = sum / static_cast<double>(shape_.tokens);
  }
  if (!moe_.router->top_k_options()) return;
  const int E = moe_.num_experts;
  const double sigma = moe_.noise_std / E;
  for (const Group& g : groups_) {
    std::vector<double> importance(E, 0.0), load(E, 0.0);
    for (int64_t n = g.first; n < g.first + g.size; ++n) {
      const float* gate = gates_.data() + n * E;
      for (int e = 0; e < E; ++e) importance[e] += gate[e];
      if (sigma > 0) {
        const float* noisy = noisy_logits_.data() + n * E;
        const double threshold = noisy[kth_largest(noisy, E, moe_.k)];
        for (int e = 0; e < E; ++e)
          load[e] += 0.5 * std::erfc((threshold - clean_logits_[n * E + e]) / sigma / std::sqrt(2.0)) / g.size;
      }
    }
    aux_.importance += cv_squared(importance, nullptr) / groups_.size();
    if (sigma > 0) aux_.load += cv_squared(load, nullptr) / groups_.size();
  }
}

void MoeTrainLayer::backward(float* dh, const float* dy, const float* h, const BlockParams& p, BlockParams& g,
                             float importance_weight, float load_weight, nn::PrimitiveCache& cache) {
  if (!moe_.router->routes_tokens()) {
    soft_backward(dh, dy, h, p, g, cache);
    shared_backward(dh, dy, h, p, g, cache);
    return;
  }
  const int64_t N = shape_.tokens, D = shape_.hidden, E = moe_.num_experts;
  const auto& entries = plan_.entries;
  const int64_t count = static_cast<int64_t>(entries.size());
  dgates_.fill(0.0f);
  // y[n] = scale[n] sum gate * out[row] (scale 1 without a learned scorer): d out[row] =
  // weight * dy[n] with weight = scale * gate, d gate = scale * dy[n] . out[row],
  // d scale[n] = sum over its entries of gate * dy[n] . out[row]. Each (token, expert)
  // pair occurs once, so the writes below never collide.
  const bool learned = moe_.priority == Priority::learned;
  entry_dot_.resize(count);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    const auto& en = entries[i];
    const float* dyn = dy + en.token * D;
    const float* out = expert_out_.data() + en.row * D;
    float* dout = d_expert_out_.data() + en.row * D;
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) {
      dout[d] = en.weight * dyn[d];
      dot += double{dyn[d]} * out[d];
    }
    entry_dot_[i] = static_cast<float>(dot);
    const float scale = learned ? learned_output_scale(scores_[en.token]) : 1.0f;
    dgates_[en.token * E + en.expert] = static_cast<float>(scale * dot);
  }
  if (learned) {
    // s -> scale = 2 sigmoid(s): d scale / d s = scale (1 - scale / 2).
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      double dscale = 0;
      for (int64_t j = plan_.token_begin[n]; j < plan_.token_begin[n + 1]; ++j)
        dscale += double{entries[plan_.by_token[j]].gate} * entry_dot_[plan_.by_token[j]];
      dscale += scorer_penalty_ / static_cast<double>(N);  // penalty: weight * mean scale
      const float scale = learned_output_scale(scores_[n]);
      dscores_[n] = static_cast<float>(dscale * scale * (1.0f - 0.5f * scale));
    }
  }
  if (moe_.gating == Gating::topk_softmax) renormalised_gate_backward();
  experts_backward(p, g, cache);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* dhn = dh + n * D;
    std::fill(dhn, dhn + D, 0.0f);
    for (int64_t j = plan_.token_begin[n]; j < plan_.token_begin[n + 1]; ++j) {
      const float* din = d_expert_in_.data() + entries[plan_.by_token[j]].row * D;
      for (int64_t d = 0; d < D; ++d) dhn[d] += din[d];
    }
  }
  const double sigma = moe_.noise_std / E;
  const bool top_k = moe_.router->top_k_options();  // router noise and the importance/load losses
  const double G = static_cast<double>(groups_.size());
  if (top_k && importance_weight != 0) {
    for (const Group& grp : groups_) {
      std::vector<double> importance(E, 0.0), grad;
      for (int64_t n = grp.first; n < grp.first + grp.size; ++n)
        for (int e = 0; e < E; ++e) importance[e] += gates_[n * E + e];
      cv_squared(importance, &grad);
      for (int64_t n = grp.first; n < grp.first + grp.size; ++n)
        for (int e = 0; e < E; ++e) dgates_[n * E + e] += static_cast<float>(importance_weight / G * grad[e]);
    }
  }
  // dlogits = softmax backward of the gates (noise is additive, so clean and noisy
  // logits share this gradient); then the load loss, which reads the clean logits and
  // the noisy k-th best as threshold.
  Tensor& dlogits = dlogits_;
  router_softmax_backward_.run(dlogits.data(), dgates_.data(), gates_.data());
  if (top_k && load_weight != 0 && sigma > 0) {
    for (const Group& grp : groups_) {
      const int64_t S = grp.size;
      std::vector<double> load(E, 0.0), grad;
      std::vector<double> z(S * E);
      std::vector<int> kth(S);
      for (int64_t t = 0; t < S; ++t) {
        const int64_t n = grp.first + t;
        const float* noisy = noisy_logits_.data() + n * E;
        kth[t] = kth_largest(noisy, E, moe_.k);
        for (int e = 0; e < E; ++e) {
          z[t * E + e] = (noisy[kth[t]] - clean_logits_[n * E + e]) / sigma;
          load[e] += 0.5 * std::erfc(z[t * E + e] / std::sqrt(2.0)) / S;
        }
      }
      cv_squared(load, &grad);
      for (int64_t t = 0; t < S; ++t) {
        const int64_t n = grp.first + t;
        for (int e = 0; e < E; ++e) {
          const double c = load_weight / G * grad[e] / S * normal_pdf(z[t * E + e]) / sigma;
          dlogits[n * E + e] += static_cast<float>(c);
          dlogits[n * E + kth[t]] -= static_cast<float>(c);
        }
      }
    }
  }
  accumulate_weight_grad(g.router_kernel.data(), h, dlogits.data(), N, D, E, cache);
  input_grad(dh, dlogits.data(), p.router_kernel.data(), N, D, E, 1.0f, cache);
  shared_backward(dh, dy, h, p, g, cache);
  if (!learned) return;
  // s[n] = h[n] . kernel + bias
  double dbias = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float ds = dscores_[n];
    dbias += ds;
    for (int64_t d = 0; d < D; ++d) {
      g.priority_kernel[d] += ds * h[n * D + d];
      dh[n * D + d] += ds * p.priority_kernel[d];
    }
  }
  g.priority_bias[0] += static_cast<float>(dbias);
}

// Gating topk_softmax: the weight of expert e for a token is w_e = p_e / Z with Z the sum
// of p over the token's top-k choices K (e may lie outside K after overflow "next"). With
// dG = dL/dw from the combine, dL/dp_e = dG_e / Z, and every m in K also gets
// -sum_e dG_e w_e / Z. Turns dgates_ from d weight into d probability, row by row.
void MoeTrainLayer::renormalised_gate_backward() {
  const int E = moe_.num_experts, k = moe_.k;
#pragma omp parallel for schedule(dynamic)
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const TopKRouting& r = plan_.top_k[gi];
    for (int64_t t = 0; t < groups_[gi].size; ++t) {
      const int64_t n = groups_[gi].first + t;
      const float* prob = gates_.data() + n * E;
      float* dg = dgates_.data() + n * E;
      double Z = 0;
      for (int q = 0; q < k; ++q) Z += prob[r.choice[t * k + q]];
      if (!(Z > 0)) continue;
      double s = 0;
      for (int e = 0; e < E; ++e) s += double{dg[e]} * prob[e] / Z;
      for (int e = 0; e < E; ++e) dg[e] = static_cast<float>(dg[e] / Z);
      for (int q = 0; q < k; ++q) dg[r.choice[t * k + q]] -= static_cast<float>(s / Z);
    }
  }
}

// Soft-MoE, per group of S tokens: xn = h / |h|, logits = xn @ (scale * mu / |mu|),
// dispatch = softmax over tokens, combine = softmax over slots, slot_in = dispatch^T h,
// slot_out = expert(slot_in), y = combine @ slot_out.
void MoeTrainLayer::soft_forward(float* x, const float* h, const BlockParams& p, nn::PrimitiveCache& cache) {
  const int64_t N = shape_.tokens, D = shape_.hidden, E = moe_.num_experts, P = moe_.slots_per_expert;
  const int64_t slots = E * P, G = static_cast<int64_t>(groups_.size());
  soft_normalise_tokens(xn_.data(), inv_norm_.data(), h, N, D);
  soft_normalised_mu(mun_.data(), mu_inv_.data(), p.router_mu.data(), p.router_scale[0], D, slots);
  linear(logits_.data(), xn_.data(), mun_.data(), nullptr, N, D, slots, cache);
#pragma omp parallel for schedule(dynamic)
  for (int64_t g = 0; g < G; ++g)
    soft_dispatch_combine(dispatch_.data() + groups_[g].first * slots, combine_.data() + groups_[g].first * slots,
                          logits_.data() + groups_[g].first * slots, static_cast<int>(groups_[g].size),
                          static_cast<int>(slots));
  soft_slot_inputs(slot_in_.data(), dispatch_.data(), h, groups_, slots, D, cache);
  plan_.rows_of_expert.assign(E, G * P);
  plan_.first_row.resize(E);
  for (int64_t e = 0; e < E; ++e) plan_.first_row[e] = e * G * P;
  slots_to_expert_major(expert_in_.data(), slot_in_.data(), G, E, P, D);
  experts_forward(p, cache);
  slots_to_group_major(slot_out_.data(), expert_out_.data(), G, E, P, D);
  soft_combine_slots(x, combine_.data(), slot_out_.data(), groups_, slots, D, cache);
}

void MoeTrainLayer::soft_backward(float* dh, const float* dy, const float* h, const BlockParams& p, BlockParams& g,
                                  nn::PrimitiveCache& cache) {
  const int64_t N = shape_.tokens, D = shape_.hidden, E = moe_.num_experts, P = moe_.slots_per_expert;
  const int64_t slots = E * P, G = static_cast<int64_t>(groups_.size());
  const auto runs = equal_size_runs(groups_);  // equal-size groups run as one batched matmul
  for (const auto& [g0, count] : runs) {
    const int64_t first = groups_[g0].first, S = groups_[g0].size;
    GemmSpec dc;  // dcombine (S, slots) = dy (S, D) @ slot_out^T
    dc.m = S, dc.k = D, dc.n = slots, dc.trans_b = true, dc.ldb = D;
    dc.batch = count, dc.batch_stride_a = S * D, dc.batch_stride_b = slots * D, dc.batch_stride_c = S * slots;
    cache.gemm(dc).run(dcombine_.data() + first * slots, dy + first * D, slot_out_.data() + g0 * slots * D);
    GemmSpec ds;  // dslot_out (slots, D) = combine^T @ dy
    ds.m = slots, ds.k = S, ds.n = D, ds.trans_a = true, ds.lda = slots;
    ds.batch = count, ds.batch_stride_a = S * slots, ds.batch_stride_b = S * D, ds.batch_stride_c = slots * D;
    cache.gemm(ds).run(d_slot_.data() + g0 * slots * D, combine_.data() + first * slots, dy + first * D);
  }
  slots_to_expert_major(d_expert_out_.data(), d_slot_.data(), G, E, P, D);
  experts_backward(p, g, cache);
  slots_to_group_major(d_slot_.data(), d_expert_in_.data(), G, E, P, D);
  for (const auto& [g0, count] : runs) {
    const int64_t first = groups_[g0].first, S = groups_[g0].size;
    GemmSpec dd;  // ddispatch (S, slots) = h (S, D) @ dslot_in^T
    dd.m = S, dd.k = D, dd.n = slots, dd.trans_b = true, dd.ldb = D;
    dd.batch = count, dd.batch_stride_a = S * D, dd.batch_stride_b = slots * D, dd.batch_stride_c = S * slots;
    cache.gemm(dd).run(ddispatch_.data() + first * slots, h + first * D, d_slot_.data() + g0 * slots * D);
    GemmSpec dx;  // dh (S, D) = dispatch (S, slots) @ dslot_in
    dx.m = S, dx.k = slots, dx.n = D;
    dx.batch = count, dx.batch_stride_a = S * slots, dx.batch_stride_b = slots * D, dx.batch_stride_c = S * D;
    cache.gemm(dx).run(dh + first * D, dispatch_.data() + first * slots, d_slot_.data() + g0 * slots * D);
  }
  // Softmax backwards: combine over slots (rows), dispatch over the group's tokens (columns).
#pragma omp parallel for schedule(dynamic)
  for (int64_t gi = 0; gi < G; ++gi) {
    const int64_t first = groups_[gi].first, S = groups_[gi].size;
    std::vector<double> column(slots, 0.0);
    for (int64_t n = first; n < first + S; ++n)
      for (int64_t s = 0; s < slots; ++s) column[s] += double{ddispatch_[n * slots + s]} * dispatch_[n * slots + s];
    for (int64_t n = first; n < first + S; ++n) {
      double row = 0;
      for (int64_t s = 0; s < slots; ++s) row += double{dcombine_[n * slots + s]} * combine_[n * slots + s];
      for (int64_t s = 0; s < slots; ++s) {
        const int64_t i = n * slots + s;
        dlogits_[i] = static_cast<float>(combine_[i] * (dcombine_[i] - row) + dispatch_[i] * (ddispatch_[i] - column[s]));
      }
    }
  }
  input_grad(dxn_.data(), dlogits_.data(), mun_.data(), N, D, slots, 0.0f, cache);
  dmun_.fill(0.0f);
  accumulate_weight_grad(dmun_.data(), xn_.data(), dlogits_.data(), N, D, slots, cache);
  // xn = h * r with r = (|h|^2 + eps)^-1/2:  dh += r dxn - h r^3 (h . dxn)
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += double{h[n * D + d]} * dxn_[n * D + d];
    const float r = inv_norm_[n], r3dot = static_cast<float>(r * r * r * dot);
    for (int64_t d = 0; d < D; ++d) dh[n * D + d] += r * dxn_[n * D + d] - h[n * D + d] * r3dot;
  }
  // mun = scale * mu * q with q = (|mu_s|^2 + eps)^-1/2 per slot.
  const float scale = p.router_scale[0];
  double dscale = 0;
  for (int64_t s = 0; s < slots; ++s) {
    double dot = 0;
    const double q = mu_inv_[s];
    for (int64_t d = 0; d < D; ++d) dot += double{p.router_mu[d * slots + s]} * dmun_[d * slots + s];
    dscale += dot * q;
    for (int64_t d = 0; d < D; ++d)
      g.router_mu[d * slots + s] +=
          static_cast<float>(scale * (q * dmun_[d * slots + s] - p.router_mu[d * slots + s] * q * q * q * dot));
  }
  g.router_scale[0] += static_cast<float>(dscale);
}

}  // namespace vmoe::train
