#include "tasks/benchmark.hpp"

#include <algorithm>
#include <chrono>
#include <random>

#include "nn/context.hpp"
#include "nn/gemm.hpp"
#include "tensor/tensor.hpp"

namespace vmoe {

using Clock = std::chrono::steady_clock;

BenchResult benchmark_engine(Engine& engine, int batch, double min_seconds, uint64_t seed) {
  const ModelConfig& c = engine.config();
  const int64_t image_size = int64_t{c.image.height} * c.image.width * c.image.channels;
  Tensor images({batch, image_size});
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> pixel(c.image.value_min, c.image.value_max);
  for (int64_t i = 0; i < images.numel(); ++i) images[i] = pixel(rng);
  Tensor logits({batch, c.num_classes});
  for (int i = 0; i < 2; ++i) engine.forward(logits.data(), images.data(), batch);
  BenchResult r;
  r.batch = batch;
  const auto start = Clock::now();
  while (r.iterations < 3 || r.seconds < min_seconds) {
    engine.forward(logits.data(), images.data(), batch, nullptr, &r.stages);
    ++r.iterations;
    r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  }
  const double images_done = double{1.0} * batch * r.iterations;
  r.images_per_s = images_done / r.seconds;
  // The cost model assumes every expert slot is used; the engine counts the rows it ran.
  // One routed expert row costs 2 * 2 * D * M (up and down projections).
  const ModelCost cost = model_cost(c, engine.routing());
  const double flops_per_row = 2.0 * 2.0 * c.hidden_size * c.expert_mlp_dim();
  r.expert_rows_per_image_capacity = cost.expert_rows;
  r.expert_rows_per_image = static_cast<double>(r.stages.expert_rows) / images_done;
  r.gflops_per_image_capacity = cost.flops_total() / 1e9;
  r.gflops_per_image = r.gflops_per_image_capacity + (r.expert_rows_per_image - cost.expert_rows) * flops_per_row / 1e9;
  r.gflops_per_s_capacity = r.gflops_per_image_capacity * r.images_per_s;
  r.gflops_per_s = r.gflops_per_image * r.images_per_s;
  r.primitives = nn::context().created;
  return r;
}

MatmulCeiling measure_matmul_ceiling(int64_t m, int64_t k, int64_t n, nn::Precision precision) {
  nn::GemmSpec s;
  s.m = m, s.k = k, s.n = n, s.bf16_inputs = precision == nn::Precision::bf16;
  nn::Gemm gemm(s);
  Tensor a({m, k}), b({k, n}), c({m, n});  // bf16 operands use the first half of a and b
  a.fill(0.5f);
  b.fill(0.25f);
  if (s.bf16_inputs) {
    nn::to_bf16(reinterpret_cast<uint16_t*>(a.data()), a.data(), m * k);
    nn::to_bf16(reinterpret_cast<uint16_t*>(b.data()), b.data(), k * n);
  }
  gemm.run_typed(c.data(), a.data(), b.data());
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const auto start = Clock::now();
    gemm.run_typed(c.data(), a.data(), b.data());
    best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
  }
  return {m, k, n, 2.0 * m * k * n / best / 1e9, gemm.impl(), precision};
}

}  // namespace vmoe
