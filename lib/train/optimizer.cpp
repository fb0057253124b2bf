#include "train/optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace vmoe::train {

namespace {
bool decays(const ParamSlot& slot) {
  return slot.shape.size() >= 2 && slot.name.find("pos_embedding") == std::string::npos && slot.name != "cls" &&
         slot.name.find("Router/mu") == std::string::npos;
}
}  // namespace

AdamW::AdamW(const ModelConfig& config, const AdamWConfig& settings)
    : config_(config), settings_(settings), m_(allocate_params(config)), v_(allocate_params(config)) {}

// One parallel region for every tensor, each split over the threads in static chunks
// (no barrier between tensors: they are independent), and `omp simd` for the AVX2 sqrt and
// division, which round as the scalar ones do. Most tensors of a small model are below
// any sensible per-tensor threshold; one region wakes the second thread once per step,
// not once per large tensor.
void AdamW::step(VitParams& params, VitParams& grads, float lr) {
  ++t_;
  const double b1 = settings_.beta1, b2 = settings_.beta2;
  const float c1 = static_cast<float>(1.0 / (1.0 - std::pow(b1, static_cast<double>(t_))));
  const float c2 = static_cast<float>(1.0 / (1.0 - std::pow(b2, static_cast<double>(t_))));
  auto p_slots = param_slots(params, config_);
  auto g_slots = param_slots(grads, config_);
  auto m_slots = param_slots(m_, config_);
  auto v_slots = param_slots(v_, config_);
  const float beta1 = settings_.beta1, beta2 = settings_.beta2, eps = settings_.eps;
  const int64_t slots = static_cast<int64_t>(p_slots.size());
#pragma omp parallel
  for (int64_t i = 0; i < slots; ++i) {
    float* p = p_slots[i].tensor->data();
    const float* g = g_slots[i].tensor->data();
    float* m = m_slots[i].tensor->data();
    float* v = v_slots[i].tensor->data();
    const float wd = decays(p_slots[i]) ? settings_.weight_decay : 0.0f;
    const int64_t n = p_slots[i].tensor->numel();
#pragma omp for simd schedule(static) nowait
    for (int64_t j = 0; j < n; ++j) {
      m[j] = beta1 * m[j] + (1 - beta1) * g[j];
      v[j] = beta2 * v[j] + (1 - beta2) * g[j] * g[j];
      p[j] -= lr * (m[j] * c1 / (std::sqrt(v[j] * c2) + eps) + wd * p[j]);
    }
  }
}

// The squared norm is summed in fixed blocks of every tensor, each block in double by
// `omp simd`, and the block sums in order: the same bits whatever the thread count.
double clip_grad_norm(VitParams& grads, const ModelConfig& config, double max_norm) {
  constexpr int64_t kBlock = 16384;
  auto slots = param_slots(grads, config);
  struct Block {
    const float* data;
    int64_t size;
  };
  std::vector<Block> blocks;
  for (const ParamSlot& s : slots)
    for (int64_t j = 0; j < s.tensor->numel(); j += kBlock)
      blocks.push_back({s.tensor->data() + j, std::min(kBlock, s.tensor->numel() - j)});
  std::vector<double> block_sums(blocks.size());
  const int64_t count = static_cast<int64_t>(blocks.size());
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < count; ++b) {
    const float* x = blocks[b].data;
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < blocks[b].size; ++j) sum += double{x[j]} * x[j];
    block_sums[b] = sum;
  }
  double sum = 0;
  for (double s : block_sums) sum += s;
  const double norm = std::sqrt(sum);
  if (max_norm > 0 && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / norm);
    const int64_t n = static_cast<int64_t>(slots.size());
#pragma omp parallel
    for (int64_t i = 0; i < n; ++i) {
      float* x = slots[i].tensor->data();
      const int64_t size = slots[i].tensor->numel();
#pragma omp for simd schedule(static) nowait
      for (int64_t j = 0; j < size; ++j) x[j] *= scale;
    }
  }
  return norm;
}

double learning_rate(int64_t step, int64_t total, int64_t warmup, double peak) {
  if (warmup > 0 && step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  return peak * 0.5 * (1.0 + std::cos(M_PI * progress));
}

}  // namespace vmoe::train
