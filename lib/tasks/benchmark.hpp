#pragma once
// Timing the engine on random images, and the machine's own matmul ceiling.
#include <string>
#include <vector>

#include "model/engine.hpp"
#include "spec/cost.hpp"

namespace vmoe {

struct BenchResult {
  int batch = 0, iterations = 0;
  double seconds = 0;  // timed iterations only
  // FLOPs count the routed expert rows actually processed (kept choices): a model that
  // drops tokens does less work than its capacity allows.
  double images_per_s = 0, gflops_per_s = 0, gflops_per_image = 0;
  // The cost model's count (model_cost: every expert slot used), as `vmoe info` prints it.
  double gflops_per_s_capacity = 0, gflops_per_image_capacity = 0;
  // Routed expert rows per image summed over MoE layers: processed, and the cost model's.
  double expert_rows_per_image = 0, expert_rows_per_image_capacity = 0;
  StageTimes stages;  // summed over the timed iterations
  std::vector<std::string> primitives;  // "op shape: implementation" of every primitive created
};

// Two warm-up passes, then passes until min_seconds have elapsed (at least 3).
BenchResult benchmark_engine(Engine& engine, int batch, double min_seconds, uint64_t seed = 0);

struct MatmulCeiling {
  int64_t m, k, n;
  double gflops_per_s;
  std::string impl;
  nn::Precision precision = nn::Precision::f32;
};
// One large matmul (3136 x 768 x 3072 by default), best of several runs; bf16: bf16
// inputs, f32 output, as the engine's bf16 matmuls.
MatmulCeiling measure_matmul_ceiling(int64_t m = 3136, int64_t k = 768, int64_t n = 3072,
                                     nn::Precision precision = nn::Precision::f32);

}  // namespace vmoe
