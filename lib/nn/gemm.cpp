#include "nn/gemm.hpp"

#include <fmt/format.h>

#include <cstdlib>

#include "core/error.hpp"
#include "nn/context.hpp"
#include "nn/gelu.hpp"
#include "nn/precision.hpp"

namespace vmoe::nn {
namespace {

using dims = dnnl::memory::dims;
using dt = dnnl::memory::data_type;
constexpr int64_t kRuntime = DNNL_RUNTIME_DIM_VAL;

// A (rows, cols) operand stored row-major with leading dimension ld, or transposed;
// with batch axes in front when batched (outer > 1 makes it 4-D).
dnnl::memory::desc operand_md(dt type, int64_t batch, int64_t rows, int64_t cols, bool transposed, int64_t ld,
                              int64_t batch_stride, bool batched, int64_t outer = 1, int64_t outer_stride = 0) {
  int64_t row_stride = transposed ? 1 : ld;
  int64_t col_stride = transposed ? ld : 1;
  if (!batched) return dnnl::memory::desc(dims{rows, cols}, type, dims{row_stride, col_stride});
  if (outer > 1)
    return dnnl::memory::desc(dims{outer, batch, rows, cols}, type,
                              dims{outer_stride, batch_stride, row_stride, col_stride});
  return dnnl::memory::desc(dims{batch, rows, cols}, type, dims{batch_stride, row_stride, col_stride});
}

dt input_type(const GemmSpec& s) { return s.bf16_inputs ? dt::bf16 : dt::f32; }
dt output_type(const GemmSpec& s) { return s.bf16_output ? dt::bf16 : dt::f32; }

dnnl::algorithm algorithm_of(Activation a) {
  switch (a) {
    case Activation::gelu_tanh: return dnnl::algorithm::eltwise_gelu_tanh;
    case Activation::gelu_erf: return dnnl::algorithm::eltwise_gelu_erf;
    default: return dnnl::algorithm::eltwise_tanh;
  }
}

// oneDNN 2.6 applies a gelu_tanh post-op slowly below AVX-512: on an AVX2 Zen 3 a
// 3200x96x384 matmul took 1.46 ms plain, 4.04 ms with the post-op and 1.95 ms with
// gelu_erf (docs/BENCHMARKS.md, session 13). There our own vectorised pass runs after the
// matmul instead. VMOE_GELU_POST_OP=1 keeps oneDNN's post-op (for comparisons).
bool gelu_by_own_pass(const GemmSpec& s) {
  static const bool forced_post_op = std::getenv("VMOE_GELU_POST_OP") != nullptr;
  return s.activation == Activation::gelu_tanh && !s.bf16_output && s.outer == 1 && !forced_post_op && !avx512_core();
}

}  // namespace

Gemm::Gemm(const GemmSpec& s) : spec_(s) {
  if ((!s.runtime_k && s.k <= 0) || s.n <= 0 || (!s.runtime_m && s.m <= 0) || s.batch <= 0)
    fail("gemm: bad sizes {}x{}x{}", s.m, s.k, s.n);
  if ((s.runtime_m || s.runtime_k) && (s.batch != 1 || s.outer != 1)) fail("gemm: runtime sizes need batch 1");
  if (s.bias && s.alpha != 1.0f) fail("gemm: alpha with bias is not supported");
  if (s.outer < 1) fail("gemm: outer batch {}", s.outer);
  const bool batched = s.batch > 1 || s.outer > 1;
  const int64_t m = s.runtime_m ? kRuntime : s.m;
  const int64_t k = s.runtime_k ? kRuntime : s.k;
  spec_.lda = s.lda ? s.lda : (s.trans_a ? s.m : s.k);
  spec_.ldb = s.ldb ? s.ldb : (s.trans_b ? s.k : s.n);
  spec_.ldc = s.ldc ? s.ldc : s.n;
  // A runtime size may not hide inside a stride: those leading dimensions must be given.
  if (s.runtime_m && s.trans_a && !s.lda) fail("gemm: transposed A with runtime rows needs lda");
  if (s.runtime_k && !s.trans_a && !s.lda) fail("gemm: A with runtime k needs lda");
  if (s.runtime_k && s.trans_b && !s.ldb) fail("gemm: transposed B with runtime k needs ldb");
  a_md_ = operand_md(input_type(s), s.batch, m, k, s.trans_a, spec_.lda, s.batch_stride_a, batched, s.outer, s.outer_stride_a);
  b_md_ = operand_md(input_type(s), s.batch, k, s.n, s.trans_b, spec_.ldb, s.batch_stride_b, batched, s.outer, s.outer_stride_b);
  if (s.packed_b) {
    if (s.runtime_m || s.runtime_k || s.trans_b || spec_.ldb != s.n || s.outer > 1 || (batched && s.batch_stride_b != s.k * s.n))
      fail("gemm: packed weights need plain, fixed-size B");
    b_md_ = batched ? dnnl::memory::desc(dims{s.batch, s.k, s.n}, input_type(s), dnnl::memory::format_tag::any)
                    : dnnl::memory::desc(dims{s.k, s.n}, input_type(s), dnnl::memory::format_tag::any);
  }
  c_md_ = operand_md(output_type(s), s.batch, m, s.n, false, spec_.ldc, s.batch_stride_c, batched, s.outer, s.outer_stride_c);
  if (s.batch_bias && (!s.bias || s.batch < 2 || s.outer > 1)) fail("gemm: a per-batch bias needs a batch");
  if (s.batch_bias) {
    bias_md_ = dnnl::memory::desc(dims{s.batch, 1, s.n}, dt::f32, dims{s.n, s.n, 1});
  } else if (s.bias) {
    if (s.outer > 1) fail("gemm: bias with an outer batch is not supported");
    bias_md_ = batched ? dnnl::memory::desc(dims{1, 1, s.n}, dt::f32, dims{s.n, s.n, 1})
                       : dnnl::memory::desc(dims{1, s.n}, dt::f32, dims{s.n, 1});
  }

  dnnl::primitive_attr attr;
  dnnl::post_ops ops;
  if (s.beta != 0.0f) ops.append_sum(s.beta);
  bias_post_op_ = s.batch_bias ? ops.len() : -1;
  if (s.batch_bias) ops.append_binary(dnnl::algorithm::binary_add, bias_md_);
  gelu_after_ = gelu_by_own_pass(s);
  if (s.activation != Activation::none && !gelu_after_) ops.append_eltwise(1.0f, algorithm_of(s.activation), 0.0f, 0.0f);
  attr.set_post_ops(ops);
  if (s.alpha != 1.0f) attr.set_output_scales(0, {s.alpha});
  try {
    auto desc = s.bias && !s.batch_bias ? dnnl::matmul::desc(a_md_, b_md_, bias_md_, c_md_) : dnnl::matmul::desc(a_md_, b_md_, c_md_);
    pd_ = dnnl::matmul::primitive_desc(desc, attr, context().engine);
    primitive_ = dnnl::matmul(pd_);
  } catch (const dnnl::error& e) {
    fail("oneDNN matmul {}x{}x{} could not be created: {}", s.m, s.k, s.n, e.what());
  }
  if (s.packed_b) b_md_ = pd_.weights_desc();
  record_primitive(fmt::format("matmul{}{} b{} m{} k{} n{}{}{}", s.bf16_inputs ? (s.bf16_output ? " bf16>bf16" : " bf16>f32") : "", s.packed_b ? " packed" : "", s.outer * s.batch, s.runtime_m ? std::string("?") : std::to_string(s.m),
                               s.runtime_k ? std::string("?") : std::to_string(s.k), s.n, s.trans_a ? " tA" : "", s.trans_b ? " tB" : ""),
                   impl());
}

std::string Gemm::impl() const {
  if (!pd_) return "none";
  return gelu_after_ ? std::string(pd_.impl_info_str()) + " + vmoe gelu_tanh pass" : std::string(pd_.impl_info_str());
}

void Gemm::run(float* c, const float* a, const float* b, const float* bias, int64_t m, int64_t k) const {
  // Plain float operands only: a packed B must come through run_typed from PackedWeights.
  if (spec_.bf16_inputs || spec_.bf16_output) fail("gemm: a bf16 matmul given float operands");
  if (spec_.packed_b) fail("gemm: a matmul with packed weights given plain ones");
  run_typed(c, a, b, bias, m, k);
}

void Gemm::run_typed(void* c, const void* a, const void* b, const float* bias, int64_t m, int64_t k) const {
  const GemmSpec& s = spec_;
  dnnl::memory::desc a_md = a_md_, b_md = b_md_, c_md = c_md_;
  if (s.runtime_m || s.runtime_k) {
    if ((s.runtime_m && m < 0) || (s.runtime_k && k < 0)) fail("gemm: runtime size not given");
    if (!s.runtime_m) m = s.m;
    if (!s.runtime_k) k = s.k;
    if (m == 0 || k == 0) return;  // nothing to add; callers with runtime sizes accumulate (beta 1)
    a_md = operand_md(input_type(s), 1, m, k, s.trans_a, s.lda, 0, false);
    b_md = operand_md(input_type(s), 1, k, s.n, s.trans_b, s.ldb, 0, false);  // never packed_b
    c_md = operand_md(output_type(s), 1, m, s.n, false, s.ldc, 0, false);
  }
  auto& ctx = context();
  dnnl::memory am(a_md, ctx.engine, const_cast<void*>(a));
  dnnl::memory bm(b_md, ctx.engine, const_cast<void*>(b));
  dnnl::memory cm(c_md, ctx.engine, c);
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}};
  if (s.bias) {
    const int arg = bias_post_op_ >= 0 ? DNNL_ARG_ATTR_MULTIPLE_POST_OP(bias_post_op_) | DNNL_ARG_SRC_1 : DNNL_ARG_BIAS;
    args.emplace(arg, dnnl::memory(bias_md_, ctx.engine, const_cast<float*>(bias)));
  }
  primitive_.execute(ctx.stream, args);
  ctx.stream.wait();
  if (gelu_after_) {
    // Batches laid out back to back are one pass (one parallel region, not one per batch).
    const int64_t rows = s.runtime_m ? m : s.m;
    if (s.batch == 1 || s.batch_stride_c == rows * s.ldc) {
      gelu_tanh_inplace(static_cast<float*>(c), rows * s.batch, s.n, s.ldc);
    } else {
      for (int64_t b = 0; b < s.batch; ++b)
        gelu_tanh_inplace(static_cast<float*>(c) + b * s.batch_stride_c, rows, s.n, s.ldc);
    }
  }
}

}  // namespace vmoe::nn
