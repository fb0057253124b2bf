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
  // A and B hold bfloat16 values (nn/precision.hpp), C float unless bf16_output; the
  // products accumulate in f32 either way. Bias and post-op operands stay float.
  bool bf16_inputs = false;
  bool bf16_output = false;
  // B in the layout the kernel prefers (oneDNN's format "any"), so it is not repacked at
  // every call: the caller hands run_typed weights reordered once to weights_desc()
  // (nn/packed_weights.hpp). Needs B plain (no trans_b, ldb n, batch stride k*n) and
  // fixed sizes: 2.6's kernels for runtime sizes take only plain layouts.
  bool packed_b = false;
};

class Gemm {
 public:
  Gemm() = default;
  explicit Gemm(const GemmSpec& spec);
  // All operands float and plain (throws for a bf16 or packed_b spec).
  void run(float* c, const float* a, const float* b, const float* bias = nullptr, int64_t m = -1,
           int64_t k = -1) const;
  // Operands of the spec's types (bf16_inputs, bf16_output): uint16_t or float; B in
  // weights_desc()'s layout when packed_b.
  void run_typed(void* c, const void* a, const void* b, const float* bias = nullptr, int64_t m = -1,
                 int64_t k = -1) const;
  const GemmSpec& spec() const { return spec_; }
  // The layout run_typed expects B in (packed_b: the kernel's choice).
  dnnl::memory::desc weights_desc() const { return pd_.weights_desc(); }
  std::string impl() const;
  bool valid() const { return static_cast<bool>(primitive_); }

 private:
  GemmSpec spec_;
  dnnl::matmul::primitive_desc pd_;
  dnnl::matmul primitive_;
  dnnl::memory::desc a_md_, b_md_, c_md_, bias_md_;
  int bias_post_op_ = -1;  // index of the binary post-op that adds a per-batch bias
  bool gelu_after_ = false;  // tanh GELU by our own pass after the matmul, not a post-op
};

}  // namespace vmoe::nn
