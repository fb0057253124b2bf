#include "moe/dense_gate_router.hpp"

#include <algorithm>
#include <cstring>

#include "moe/moe_layer.hpp"
#include "nn/grad_ops.hpp"
#include "nn/softmax_rows.hpp"

namespace vmoe {

GateTrainState::GateTrainState(int64_t N, int64_t E)
    : clean_logits({N, E}), noisy_logits({N, E}), gates({N, E}), dgates({N, E}), dlogits({N, E}),
      softmax_backward(N, E) {}

void DenseGateRouter::forward(float* x, const float* h, const MoeShape& shape, const MoeConfig& m, const MoeWeights& w,
                              MoeWorkspace& ws, nn::PrimitiveCache& cache, MoeLayerTrace* trace,
                              StageTimes* times) const {
  token_router_forward(x, h, shape, m, w, ws, cache, trace, times);
}

std::unique_ptr<RouterTrainState> DenseGateRouter::train_state(const MoeTrainLayer& L) const {
  return std::make_unique<GateTrainState>(L.shape.tokens, L.moe.num_experts);
}

// gates = softmax(h @ kernel); the plan; x += combine of the experts' outputs.
void DenseGateRouter::train_forward(MoeTrainLayer& L, float* x, const float* h, const BlockParams& p, std::mt19937_64*,
                                    nn::PrimitiveCache& cache) const {
  auto& s = static_cast<GateTrainState&>(*L.router_state);
  train_logits(s, L, h, p, cache);
  nn::softmax_rows(s.gates.data(), s.noisy_logits.data(), L.shape.tokens, L.moe.num_experts);
  train_route_and_run(L, s, x, h, p, nullptr, nullptr, cache);
  L.aux = {};
}

// dgates from the combine, the experts' backward, dlogits = softmax backward, the kernel's.
void DenseGateRouter::train_backward(MoeTrainLayer& L, float* dh, const float* dy, const float* h, const BlockParams& p,
                                     BlockParams& g, const AuxWeights&, nn::PrimitiveCache& cache) const {
  auto& s = static_cast<GateTrainState&>(*L.router_state);
  train_entry_grads(L, s, dy, nullptr);
  L.experts_backward(p, g, cache);
  train_gather_input_grads(L, dh);
  s.softmax_backward.run(s.dlogits.data(), s.dgates.data(), s.gates.data());
  train_kernel_backward(L, s, dh, h, p, g, cache);
  L.shared_backward(dh, dy, h, p, g, cache);
}

void DenseGateRouter::train_logits(GateTrainState& s, const MoeTrainLayer& L, const float* h, const BlockParams& p,
                                   nn::PrimitiveCache& cache) {
  const int64_t N = L.shape.tokens, D = L.shape.hidden, E = L.moe.num_experts;
  nn::linear(s.clean_logits.data(), h, p.router_kernel.data(), nullptr, N, D, E, cache);
  std::memcpy(s.noisy_logits.data(), s.clean_logits.data(), sizeof(float) * N * E);
}

void DenseGateRouter::train_route_and_run(MoeTrainLayer& L, GateTrainState& s, float* x, const float* h,
                                          const BlockParams& p, const float* learned, const float* select,
                                          nn::PrimitiveCache& cache) {
  const int64_t N = L.shape.tokens;
  const int D = static_cast<int>(L.shape.hidden);
  plan_routing(L.routing, s.gates.data(), learned, L.shape, L.moe, select);
  // The engine's dispatch and combine (moe_layer.hpp); the experts keep their activations.
  gather_expert_rows(L.expert_in.data(), h, L.routing, D);
  L.experts_forward(p, cache);
  bucket_by_token(L.routing, N);
  combine_expert_rows(x, L.expert_out.data(), L.routing, N, D);
}

void DenseGateRouter::train_entry_grads(MoeTrainLayer& L, GateTrainState& s, const float* dy, const float* scores) {
  const int64_t D = L.shape.hidden, E = L.moe.num_experts;
  const auto& entries = L.routing.entries;
  const int64_t count = static_cast<int64_t>(entries.size());
  s.dgates.fill(0.0f);
  s.entry_dot.resize(count);
  // Each (token, expert) pair occurs once, so the writes below never collide.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    const auto& en = entries[i];
    const float* dyn = dy + en.token * D;
    const float* out = L.expert_out.data() + en.row * D;
    float* dout = L.d_expert_out.data() + en.row * D;
    double dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) {
      dout[d] = en.weight * dyn[d];
      dot += double{dyn[d]} * out[d];
    }
    s.entry_dot[i] = static_cast<float>(dot);
    const float scale = scores ? learned_output_scale(scores[en.token]) : 1.0f;
    s.dgates[en.token * E + en.expert] = static_cast<float>(scale * dot);
  }
}

void DenseGateRouter::train_gather_input_grads(const MoeTrainLayer& L, float* dh) {
  const int64_t N = L.shape.tokens, D = L.shape.hidden;
  const auto& plan = L.routing;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* dhn = dh + n * D;
    std::fill(dhn, dhn + D, 0.0f);
    for (int64_t j = plan.token_begin[n]; j < plan.token_begin[n + 1]; ++j) {
      const float* din = L.d_expert_in.data() + plan.entries[plan.by_token[j]].row * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) dhn[d] += din[d];
    }
  }
}

void DenseGateRouter::train_kernel_backward(const MoeTrainLayer& L, const GateTrainState& s, float* dh, const float* h,
                                            const BlockParams& p, BlockParams& g, nn::PrimitiveCache& cache) {
  const int64_t N = L.shape.tokens, D = L.shape.hidden, E = L.moe.num_experts;
  nn::accumulate_weight_grad(g.router_kernel.data(), h, s.dlogits.data(), N, D, E, cache);
  nn::input_grad(dh, s.dlogits.data(), p.router_kernel.data(), N, D, E, 1.0f, cache);
}

}  // namespace vmoe
