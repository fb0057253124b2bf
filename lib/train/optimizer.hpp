#pragma once
// AdamW with decoupled weight decay, global-norm gradient clipping, and the learning
// rate schedule (linear warm-up, then cosine decay to zero).
#include <cstdint>

#include "spec/params.hpp"

namespace vmoe::train {

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.05f;  // applied to kernels only (not biases, norms, embeddings)
};

class AdamW {
 public:
  AdamW(const ModelConfig& config, const AdamWConfig& settings);
  // params -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * params)   (wd only where it applies)
  void step(VitParams& params, VitParams& grads, float lr);
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  VitParams& first_moment() { return m_; }
  VitParams& second_moment() { return v_; }

 private:
  ModelConfig config_;
  AdamWConfig settings_;
  VitParams m_, v_;
  int64_t t_ = 0;
};

// Scales grads so their global L2 norm is at most max_norm; returns the norm before.
double clip_grad_norm(VitParams& grads, const ModelConfig& config, double max_norm);

// Linear warm-up from 0 over warmup steps, then cosine from peak to 0 at total steps.
double learning_rate(int64_t step, int64_t total, int64_t warmup, double peak);

}  // namespace vmoe::train
