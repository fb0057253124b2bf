#pragma once
// oneDNN layer normalisation and softmax over the last axis of a (rows, cols) buffer,
// each one primitive created for its shape and reused.
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

// y[r, :] = softmax(x[r, :]) for rows of length cols, in place allowed.
class Softmax {
 public:
  Softmax() = default;
  Softmax(int64_t rows, int64_t cols);
  void run(float* y, const float* x) const;
  std::string impl() const { return pd_ ? pd_.impl_info_str() : "none"; }

 private:
  dnnl::memory::desc md_;
  dnnl::softmax_forward::primitive_desc pd_;
  dnnl::softmax_forward primitive_;
};

}  // namespace vmoe::nn
