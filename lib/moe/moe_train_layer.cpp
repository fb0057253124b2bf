#include "moe/moe_train_layer.hpp"

#include <algorithm>

#include "nn/gelu.hpp"
#include "nn/grad_ops.hpp"

namespace vmoe {

using nn::accumulate_bias_grad;
using nn::accumulate_weight_grad;
using nn::input_grad;
using nn::linear;

MoeTrainLayer::MoeTrainLayer(const ModelConfig& c, int B)
    : moe(*c.moe),
      shape{int64_t{B} * c.num_tokens(), c.num_tokens(), c.hidden_size, c.expert_mlp_dim()},
      groups(make_groups(shape.tokens, int64_t{moe.group_images} * c.num_tokens())) {
  const int64_t N = shape.tokens, D = shape.hidden, M = shape.mlp;
  for (const Group& g : groups) max_rows += moe.router->max_rows(moe, g.size);
  expert_in = Tensor({max_rows, D});
  expert_out = Tensor({max_rows, D});
  d_expert_out = Tensor({max_rows, D});
  d_expert_in = Tensor({max_rows, D});
  expert_u = Tensor({max_rows, M});
  expert_a = Tensor({max_rows, M});
  d_expert_a = Tensor({max_rows, M});
  d_expert_u = Tensor({max_rows, M});
  ones = Tensor({std::max(N, max_rows)});
  ones.fill(1.0f);
  if (const int64_t Sh = moe.num_shared_experts; Sh > 0) {
    shared_u_ = Tensor({Sh, N, M});
    shared_a_ = Tensor({Sh, N, M});
    d_shared_ = Tensor({N, M});
  }
  router_state = moe.router->train_state(*this);
}

void MoeTrainLayer::experts_forward(const BlockParams& p, nn::PrimitiveCache& cache) {
  ScopedStage stage(times, &StageTimes::experts);
  const int64_t D = shape.hidden, M = shape.mlp;
  for (int e = 0; e < moe.num_experts; ++e) {
    const int64_t rows = routing.rows_of_expert[e], first = routing.first_row[e];
    if (rows) linear(expert_u.data() + first * M, expert_in.data() + first * D, p.mlp0_kernel.data() + e * D * M,
                     p.mlp0_bias.data() + e * M, rows, D, M, cache);
  }
  nn::gelu_forward(expert_a.data(), expert_u.data(), expert_u.data(), used_rows() * M);
  for (int e = 0; e < moe.num_experts; ++e) {
    const int64_t rows = routing.rows_of_expert[e], first = routing.first_row[e];
    if (rows) linear(expert_out.data() + first * D, expert_a.data() + first * M, p.mlp1_kernel.data() + e * M * D,
                     p.mlp1_bias.data() + e * D, rows, M, D, cache);
  }
}

void MoeTrainLayer::experts_backward(const BlockParams& p, BlockParams& g, nn::PrimitiveCache& cache) {
  ScopedStage stage(times, &StageTimes::experts);
  const int64_t D = shape.hidden, M = shape.mlp, count = ones.numel();
  for (int e = 0; e < moe.num_experts; ++e) {
    const int64_t rows = routing.rows_of_expert[e], first = routing.first_row[e];
    if (!rows) continue;
    const float* dout = d_expert_out.data() + first * D;
    input_grad(d_expert_a.data() + first * M, dout, p.mlp1_kernel.data() + e * M * D, rows, M, D, 0.0f, cache);
    accumulate_weight_grad(g.mlp1_kernel.data() + e * M * D, expert_a.data() + first * M, dout, rows, M, D, cache);
    accumulate_bias_grad(g.mlp1_bias.data() + e * D, dout, rows, D, ones.data(), count, cache);
  }
  nn::gelu_backward(d_expert_u.data(), d_expert_a.data(), expert_u.data(), used_rows() * M);
  for (int e = 0; e < moe.num_experts; ++e) {
    const int64_t rows = routing.rows_of_expert[e], first = routing.first_row[e];
    if (!rows) continue;
    const float* du = d_expert_u.data() + first * M;
    accumulate_weight_grad(g.mlp0_kernel.data() + e * D * M, expert_in.data() + first * D, du, rows, D, M, cache);
    accumulate_bias_grad(g.mlp0_bias.data() + e * M, du, rows, M, ones.data(), count, cache);
    input_grad(d_expert_in.data() + first * D, du, p.mlp0_kernel.data() + e * D * M, rows, D, M, 0.0f, cache);
  }
}

// u_s = h @ W0[s] + b0[s]; a_s = GELU(u_s); x += a_s @ W1[s] + b1[s], for every token.
void MoeTrainLayer::shared_forward(float* x, const float* h, const BlockParams& p, nn::PrimitiveCache& cache) {
  ScopedStage stage(times, &StageTimes::experts);
  const int64_t N = shape.tokens, D = shape.hidden, M = shape.mlp;
  nn::GemmSpec down;  // accumulates into x
  down.m = N, down.k = M, down.n = D, down.bias = true, down.beta = 1.0f;
  for (int64_t s = 0; s < moe.num_shared_experts; ++s) {
    float* u = shared_u_.data() + s * N * M;
    float* a = shared_a_.data() + s * N * M;
    linear(u, h, p.shared0_kernel.data() + s * D * M, p.shared0_bias.data() + s * M, N, D, M, cache);
    nn::gelu_forward(a, u, u, N * M);
    cache.gemm(down).run(x, a, p.shared1_kernel.data() + s * M * D, p.shared1_bias.data() + s * D);
  }
}

void MoeTrainLayer::shared_backward(float* dh, const float* dy, const float* h, const BlockParams& p, BlockParams& g,
                                    nn::PrimitiveCache& cache) {
  ScopedStage stage(times, &StageTimes::experts);
  const int64_t N = shape.tokens, D = shape.hidden, M = shape.mlp, count = ones.numel();
  float* d = d_shared_.data();
  for (int64_t s = 0; s < moe.num_shared_experts; ++s) {
    const float* slope = shared_u_.data() + s * N * M;
    const float* a = shared_a_.data() + s * N * M;
    input_grad(d, dy, p.shared1_kernel.data() + s * M * D, N, M, D, 0.0f, cache);  // da
    accumulate_weight_grad(g.shared1_kernel.data() + s * M * D, a, dy, N, M, D, cache);
    accumulate_bias_grad(g.shared1_bias.data() + s * D, dy, N, D, ones.data(), count, cache);
    nn::gelu_backward(d, d, slope, N * M);  // du
    accumulate_weight_grad(g.shared0_kernel.data() + s * D * M, h, d, N, D, M, cache);
    accumulate_bias_grad(g.shared0_bias.data() + s * M, d, N, M, ones.data(), count, cache);
    input_grad(dh, d, p.shared0_kernel.data() + s * D * M, N, D, M, 1.0f, cache);
  }
}

std::vector<int64_t> MoeTrainLayer::expert_choices() const {
  if (!moe.router->selection_bias()) return {};
  std::vector<int64_t> choices(moe.num_experts, 0);
  for (size_t g = 0; g < groups.size(); ++g)
    for (int e : routing.top_k[g].choice) ++choices[e];  // the choices, wherever overflow sent them
  return choices;
}

void MoeTrainLayer::forward(float* x, const float* h, const BlockParams& p, std::mt19937_64* noise,
                            nn::PrimitiveCache& cache) {
  moe.router->train_forward(*this, x, h, p, noise, cache);
  shared_forward(x, h, p, cache);
}

void MoeTrainLayer::backward(float* dh, const float* dy, const float* h, const BlockParams& p, BlockParams& g,
                             float importance_weight, float load_weight, nn::PrimitiveCache& cache) {
  moe.router->train_backward(*this, dh, dy, h, p, g, {importance_weight, load_weight}, cache);
}

}  // namespace vmoe
