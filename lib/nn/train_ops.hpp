#pragma once
// What the training pass needs besides matmul: layer norm that keeps its statistics and
// its backward, softmax backward, and tanh forward and backward (GELU is nn/gelu.hpp).
// Each is created once for its shape and reused.
#include <cstdint>

#include <oneapi/dnnl/dnnl.hpp>

namespace vmoe::nn {

// Forward: y = (x - mean) * rsqrt(var + eps) * scale + bias, keeping mean and var (rows).
// Backward: dx and (overwritten) dscale, dbias from dy, x and the kept statistics.
class LayerNormTrain {
 public:
  LayerNormTrain(int64_t rows, int64_t cols, float eps);
  void forward(float* y, float* mean, float* var, const float* x, const float* scale, const float* bias) const;
  // (oneDNN 2.6 insists on the shift argument too, though the maths does not use it.)
  void backward(float* dx, float* dscale, float* dbias, const float* dy, const float* x, const float* mean,
                const float* var, const float* scale, const float* bias) const;

 private:
  dnnl::memory::desc md_, stat_md_, param_md_;
  dnnl::layer_normalization_forward::primitive_desc fwd_pd_;
  dnnl::layer_normalization_forward fwd_;
  dnnl::layer_normalization_backward::primitive_desc bwd_pd_;
  dnnl::layer_normalization_backward bwd_;
};

// dx = y * (dy - sum(dy * y)) per row, with y = softmax(x) over the last axis.
// Hand-written: oneDNN 2.6 has no jit softmax backward for AVX2 and falls back to
// ref:any there (9% of a training step on the AVX2 machines).
class SoftmaxBackward {
 public:
  SoftmaxBackward(int64_t rows, int64_t cols);
  void run(float* dx, const float* dy, const float* y) const;

 private:
  int64_t rows_, cols_;
};

// y = tanh(x) elementwise over `count` floats; backward dx = dy * (1 - y^2), from y.
class TanhTrain {
 public:
  explicit TanhTrain(int64_t count);
  void forward(float* y, const float* x) const;
  void backward(float* dx, const float* dy, const float* y) const;

 private:
  dnnl::memory::desc md_;
  dnnl::eltwise_forward::primitive_desc fwd_pd_;
  dnnl::eltwise_forward fwd_;
  dnnl::eltwise_backward::primitive_desc bwd_pd_;
  dnnl::eltwise_backward bwd_;
};

}  // namespace vmoe::nn
