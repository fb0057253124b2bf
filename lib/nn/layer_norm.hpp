#pragma once
// oneDNN layer normalisation over the last axis of a (rows, cols) buffer, one primitive
// created for its shape and reused. (Softmax is hand-written: nn/softmax_rows.hpp.)
#include <cstdint>
#include <string>

#include <oneapi/dnnl/dnnl.hpp>

namespace vmoe::nn {

// y = (x - mean) / sqrt(var + eps) * scale + bias, per row over cols.
class LayerNorm {
 public:
  LayerNorm() = default;
  LayerNorm(int64_t rows, int64_t cols, float eps);
  void run(float* y, const float* x, const float* scale, const float* bias) const;
  std::string impl() const { return pd_ ? pd_.impl_info_str() : "none"; }

 private:
  dnnl::memory::desc md_, param_md_;
  dnnl::layer_normalization_forward::primitive_desc pd_;
  dnnl::layer_normalization_forward primitive_;
};

}  // namespace vmoe::nn
