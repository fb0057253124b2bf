#pragma once
// Primitives keyed by their shape and the OpenMP thread count in force: the first request
// creates one, later requests get the same object back. An engine owns one cache, so it
// creates each shape once per thread count. (A oneDNN primitive keeps the thread count it
// was created with, so one created for a 1-thread batch must not serve a 2-thread one.)
#include <map>
#include <memory>
#include <tuple>

#include "nn/gemm.hpp"
#include "nn/layer_norm.hpp"

namespace vmoe::nn {

class PrimitiveCache {
 public:
  const Gemm& gemm(const GemmSpec& spec);
  const LayerNorm& layer_norm(int64_t rows, int64_t cols, float eps);
  size_t size() const { return gemms_.size() + norms_.size(); }

 private:
  using GemmKey = std::tuple<int64_t, int64_t, int64_t, bool, bool, bool, bool, int64_t, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, int, float, float, int, bool, bool, bool>;
  std::map<GemmKey, std::unique_ptr<Gemm>> gemms_;
  std::map<std::tuple<int64_t, int64_t, float, int>, std::unique_ptr<LayerNorm>> norms_;
};

}  // namespace vmoe::nn
