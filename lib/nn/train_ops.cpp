#include "nn/train_ops.hpp"

#include <fmt/format.h>

#include "core/error.hpp"
#include "nn/context.hpp"

namespace vmoe::nn {

using dims = dnnl::memory::dims;
using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

namespace {
dnnl::memory mem(const dnnl::memory::desc& md, const float* p) {
  return dnnl::memory(md, context().engine, const_cast<float*>(p));
}
}  // namespace

LayerNormTrain::LayerNormTrain(int64_t rows, int64_t cols, float eps) {
  md_ = dnnl::memory::desc(dims{rows, cols}, dt::f32, tag::ab);
  stat_md_ = dnnl::memory::desc(dims{rows}, dt::f32, tag::a);
  param_md_ = dnnl::memory::desc(dims{cols}, dt::f32, tag::a);
  const auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  try {
    auto& eng = context().engine;
    fwd_pd_ = dnnl::layer_normalization_forward::primitive_desc(
        dnnl::layer_normalization_forward::desc(dnnl::prop_kind::forward_training, md_, stat_md_, eps, flags), eng);
    fwd_ = dnnl::layer_normalization_forward(fwd_pd_);
    bwd_pd_ = dnnl::layer_normalization_backward::primitive_desc(
        dnnl::layer_normalization_backward::desc(dnnl::prop_kind::backward, md_, md_, stat_md_, eps, flags), eng,
        fwd_pd_);
    bwd_ = dnnl::layer_normalization_backward(bwd_pd_);
  } catch (const dnnl::error& e) {
    fail("oneDNN training layer norm {}x{} could not be created: {}", rows, cols, e.what());
  }
  record_primitive(fmt::format("layer_norm training {}x{}", rows, cols), fwd_pd_.impl_info_str());
  record_primitive(fmt::format("layer_norm backward {}x{}", rows, cols), bwd_pd_.impl_info_str());
}

void LayerNormTrain::forward(float* y, float* mean, float* var, const float* x, const float* scale,
                             const float* bias) const {
  auto& ctx = context();
  fwd_.execute(ctx.stream, {{DNNL_ARG_SRC, mem(md_, x)},
                            {DNNL_ARG_DST, mem(md_, y)},
                            {DNNL_ARG_MEAN, mem(stat_md_, mean)},
                            {DNNL_ARG_VARIANCE, mem(stat_md_, var)},
                            {DNNL_ARG_SCALE, mem(param_md_, scale)},
                            {DNNL_ARG_SHIFT, mem(param_md_, bias)}});
  ctx.stream.wait();
}

void LayerNormTrain::backward(float* dx, float* dscale, float* dbias, const float* dy, const float* x,
                              const float* mean, const float* var, const float* scale, const float* bias) const {
  auto& ctx = context();
  bwd_.execute(ctx.stream, {{DNNL_ARG_SRC, mem(md_, x)},
                            {DNNL_ARG_DIFF_DST, mem(md_, dy)},
                            {DNNL_ARG_MEAN, mem(stat_md_, mean)},
                            {DNNL_ARG_VARIANCE, mem(stat_md_, var)},
                            {DNNL_ARG_SCALE, mem(param_md_, scale)},
                            {DNNL_ARG_SHIFT, mem(param_md_, bias)},
                            {DNNL_ARG_DIFF_SRC, mem(md_, dx)},
                            {DNNL_ARG_DIFF_SCALE, mem(param_md_, dscale)},
                            {DNNL_ARG_DIFF_SHIFT, mem(param_md_, dbias)}});
  ctx.stream.wait();
}

SoftmaxBackward::SoftmaxBackward(int64_t rows, int64_t cols) : rows_(rows), cols_(cols) {
  if (rows <= 0 || cols <= 0) fail("softmax backward {}x{}: sizes must be positive", rows, cols);
}

void SoftmaxBackward::run(float* dx, const float* dy, const float* y) const {
  const int64_t C = cols_;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows_; ++r) {
    const float* yr = y + r * C;
    const float* dyr = dy + r * C;
    float* dxr = dx + r * C;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < C; ++c) dot += dyr[c] * yr[c];
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) dxr[c] = yr[c] * (dyr[c] - dot);
  }
}

TanhTrain::TanhTrain(int64_t count) {
  md_ = dnnl::memory::desc(dims{count}, dt::f32, tag::a);
  // tanh's derivative is cheapest from its output.
  const auto alg = dnnl::algorithm::eltwise_tanh_use_dst_for_bwd;
  try {
    auto& eng = context().engine;
    fwd_pd_ = dnnl::eltwise_forward::primitive_desc(
        dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_training, alg, md_, 0.0f, 0.0f), eng);
    fwd_ = dnnl::eltwise_forward(fwd_pd_);
    bwd_pd_ = dnnl::eltwise_backward::primitive_desc(dnnl::eltwise_backward::desc(alg, md_, md_, 0.0f, 0.0f), eng,
                                                     fwd_pd_);
    bwd_ = dnnl::eltwise_backward(bwd_pd_);
  } catch (const dnnl::error& e) {
    fail("oneDNN tanh of {} values could not be created: {}", count, e.what());
  }
  record_primitive(fmt::format("eltwise tanh forward {}", count), fwd_pd_.impl_info_str());
  record_primitive(fmt::format("eltwise tanh backward {}", count), bwd_pd_.impl_info_str());
}

void TanhTrain::forward(float* y, const float* x) const {
  auto& ctx = context();
  fwd_.execute(ctx.stream, {{DNNL_ARG_SRC, mem(md_, x)}, {DNNL_ARG_DST, mem(md_, y)}});
  ctx.stream.wait();
}

void TanhTrain::backward(float* dx, const float* dy, const float* y) const {
  auto& ctx = context();
  bwd_.execute(ctx.stream, {{DNNL_ARG_DST, mem(md_, y)}, {DNNL_ARG_DIFF_DST, mem(md_, dy)}, {DNNL_ARG_DIFF_SRC, mem(md_, dx)}});
  ctx.stream.wait();
}

}  // namespace vmoe::nn
