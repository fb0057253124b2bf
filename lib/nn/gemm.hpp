#pragma once
// One oneDNN matmul primitive, created once and executed many times:
//   C = act(alpha * op(A) @ op(B) + bias + beta * C)
// op(A) is (m, k), op(B) is (k, n), C is (m, n), each possibly strided (leading
// dimensions) and batched. With runtime_m the primitive serves any row count, which
// the expert MLPs need (each expert sees a different number of tokens).
#include <cstdint>
#include <string>

#include <oneapi/dnnl/dnnl.hpp>

namespace vmoe::nn {

enum class Activation { none, gelu_tanh, gelu_erf, tanh };

struct GemmSpec {
  int64_t m = 0, k = 0, n = 0;
  bool runtime_m = false;  // m is given at run time (then batch must be 1)
  bool runtime_k = false;  // k is given at run time (then batch must be 1)
  bool trans_a = false;  // A is stored (k, m)
  bool trans_b = false;  // B is stored (n, k)
  int64_t lda = 0, ldb = 0, ldc = 0;  // row strides of A, B, C as stored; 0 = packed
  int64_t batch = 1, batch_stride_a = 0, batch_stride_b = 0, batch_stride_c = 0;
  // An outer batch axis around `batch` (e.g. images around heads): 4-D operands.
  int64_t outer = 1, outer_stride_a = 0, outer_stride_b = 0, outer_stride_c = 0;
  bool bias = false;  // bias of n floats, broadcast over rows
  // With batch > 1: the bias holds batch x n floats, one row per batch entry (an expert's
  // bias). Added as a binary post-op: oneDNN 2.6 serves a per-batch matmul bias only with
  // its reference kernel, hundreds of times slower (docs/DECISIONS.md).
  bool batch_bias = false;
  Activation activation = Activation::none;
  float alpha = 1.0f;  // not combined with bias
  float beta = 0.0f;  // accumulate into C
};

class Gemm {
 public:
  Gemm() = default;
  explicit Gemm(const GemmSpec& spec);
  void run(float* c, const float* a, const float* b, const float* bias = nullptr, int64_t m = -1,
           int64_t k = -1) const;
  const GemmSpec& spec() const { return spec_; }
  std::string impl() const;
  bool valid() const { return static_cast<bool>(primitive_); }

 private:
  GemmSpec spec_;
  dnnl::matmul::primitive_desc pd_;
  dnnl::matmul primitive_;
  dnnl::memory::desc a_md_, b_md_, c_md_, bias_md_;
  int bias_post_op_ = -1;  // index of the binary post-op that adds a per-batch bias
};

}  // namespace vmoe::nn
