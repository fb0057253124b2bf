#pragma once
// Weights reordered once into the layout a matmul kernel prefers (GemmSpec::packed_b),
// converted to bf16 on the way when the matmul reads bf16. oneDNN 2.6's brgemm kernels
// otherwise repack plain weights inside every call: measured on a 64 x 512 x 2048 matmul,
// 2 threads, AVX-512 (docs/BENCHMARKS.md, session 11): f32 299 -> 442 GFLOP/s, bf16
// 528 -> 846 GFLOP/s.
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "nn/gemm.hpp"

namespace vmoe::nn {

class PackedWeights {
 public:
  // The weights `gemm` reads as B, from `plain` (float, (k, n) or (batch, k, n) row-major
  // as gemm's spec says): packed on the first request for this source and layout, then
  // served from memory. The source must outlive this object and not change.
  const void* get(const Gemm& gemm, const float* plain);
  int64_t bytes() const { return bytes_; }

 private:
  std::map<const float*, std::vector<std::pair<dnnl::memory::desc, dnnl::memory>>> packed_;
  int64_t bytes_ = 0;
};

}  // namespace vmoe::nn
