#include "nn/packed_weights.hpp"

#include "core/error.hpp"
#include "nn/context.hpp"

namespace vmoe::nn {

const void* PackedWeights::get(const Gemm& gemm, const float* plain) {
  const GemmSpec& s = gemm.spec();
  // Checked before the cache: on some ISAs (AVX2) oneDNN's chosen layout is plain, so a
  // plain matmul would otherwise find a cached entry and pass unnoticed.
  if (!s.packed_b) fail("packed weights asked for by a matmul without packed_b");
  const dnnl::memory::desc want = gemm.weights_desc();
  auto& layouts = packed_[plain];
  for (const auto& [desc, memory] : layouts)
    if (desc == want) return memory.get_data_handle();
  using dims = dnnl::memory::dims;
  using tag = dnnl::memory::format_tag;
  const bool batched = s.batch > 1;
  const dnnl::memory::desc source_md = batched ? dnnl::memory::desc(dims{s.batch, s.k, s.n}, dnnl::memory::data_type::f32, tag::abc)
                                               : dnnl::memory::desc(dims{s.k, s.n}, dnnl::memory::data_type::f32, tag::ab);
  auto& ctx = context();
  try {
    dnnl::memory source(source_md, ctx.engine, const_cast<float*>(plain));
    dnnl::memory packed(want, ctx.engine);
    dnnl::reorder(source, packed).execute(ctx.stream, source, packed);
    ctx.stream.wait();
    bytes_ += static_cast<int64_t>(want.get_size());
    layouts.emplace_back(want, packed);
    return packed.get_data_handle();
  } catch (const dnnl::error& e) {
    fail("oneDNN could not pack matmul weights {}x{}: {}", s.k, s.n, e.what());
  }
}

}  // namespace vmoe::nn
