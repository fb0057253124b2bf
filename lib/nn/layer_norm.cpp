#include "nn/layer_norm.hpp"

#include <fmt/format.h>

#include "core/error.hpp"
#include "nn/context.hpp"

namespace vmoe::nn {

using dims = dnnl::memory::dims;
using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

LayerNorm::LayerNorm(int64_t rows, int64_t cols, float eps) {
  md_ = dnnl::memory::desc(dims{rows, cols}, dt::f32, tag::ab);
  param_md_ = dnnl::memory::desc(dims{cols}, dt::f32, tag::a);
  try {
    auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
    dnnl::layer_normalization_forward::desc desc(dnnl::prop_kind::forward_inference, md_, eps, flags);
    pd_ = dnnl::layer_normalization_forward::primitive_desc(desc, context().engine);
    primitive_ = dnnl::layer_normalization_forward(pd_);
  } catch (const dnnl::error& e) {
    fail("oneDNN layer norm {}x{} could not be created: {}", rows, cols, e.what());
  }
  record_primitive(fmt::format("layer_norm {}x{}", rows, cols), impl());
}

void LayerNorm::run(float* y, const float* x, const float* scale, const float* bias) const {
  auto& ctx = context();
  primitive_.execute(ctx.stream, {{DNNL_ARG_SRC, dnnl::memory(md_, ctx.engine, const_cast<float*>(x))},
                                  {DNNL_ARG_DST, dnnl::memory(md_, ctx.engine, y)},
                                  {DNNL_ARG_SCALE, dnnl::memory(param_md_, ctx.engine, const_cast<float*>(scale))},
                                  {DNNL_ARG_SHIFT, dnnl::memory(param_md_, ctx.engine, const_cast<float*>(bias))}});
  ctx.stream.wait();
}

}  // namespace vmoe::nn
