#include "train/optimizer.hpp"

#include <cmath>

namespace vmoe::train {

namespace {
bool decays(const ParamSlot& slot) {
  return slot.shape.size() >= 2 && slot.name.find("pos_embedding") == std::string::npos && slot.name != "cls" &&
         slot.name.find("Router/mu") == std::string::npos;
}
}  // namespace

AdamW::AdamW(const ModelConfig& config, const AdamWConfig& settings)
    : config_(config), settings_(settings), m_(allocate_params(config)), v_(allocate_params(config)) {}

void AdamW::step(VitParams& params, VitParams& grads, float lr) {
  ++t_;
  const double b1 = settings_.beta1, b2 = settings_.beta2;
  const float c1 = static_cast<float>(1.0 / (1.0 - std::pow(b1, static_cast<double>(t_))));
  const float c2 = static_cast<float>(1.0 / (1.0 - std::pow(b2, static_cast<double>(t_))));
  auto p_slots = param_slots(params, config_);
  auto g_slots = param_slots(grads, config_);
  auto m_slots = param_slots(m_, config_);
  auto v_slots = param_slots(v_, config_);
  for (size_t i = 0; i < p_slots.size(); ++i) {
    float* p = p_slots[i].tensor->data();
    const float* g = g_slots[i].tensor->data();
    float* m = m_slots[i].tensor->data();
    float* v = v_slots[i].tensor->data();
    const float wd = decays(p_slots[i]) ? settings_.weight_decay : 0.0f;
    const int64_t n = p_slots[i].tensor->numel();
    const float beta1 = settings_.beta1, beta2 = settings_.beta2, eps = settings_.eps;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t j = 0; j < n; ++j) {
      m[j] = beta1 * m[j] + (1 - beta1) * g[j];
      v[j] = beta2 * v[j] + (1 - beta2) * g[j] * g[j];
      p[j] -= lr * (m[j] * c1 / (std::sqrt(v[j] * c2) + eps) + wd * p[j]);
    }
  }
}

double clip_grad_norm(VitParams& grads, const ModelConfig& config, double max_norm) {
  double sum = 0;
  auto slots = param_slots(grads, config);
  for (const ParamSlot& s : slots)
    for (int64_t j = 0; j < s.tensor->numel(); ++j) sum += double{(*s.tensor)[j]} * (*s.tensor)[j];
  const double norm = std::sqrt(sum);
  if (max_norm > 0 && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / norm);
    for (const ParamSlot& s : slots)
      for (int64_t j = 0; j < s.tensor->numel(); ++j) (*s.tensor)[j] *= scale;
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
