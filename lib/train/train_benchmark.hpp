#pragma once
// `vmoe bench --train`: training steps timed as `vmoe train` runs them (augmentation,
// forward and backward with router noise, gradient clipping, AdamW) on random images and
// labels, with the time of each stage.
#include <cstdint>

#include "core/stage_times.hpp"
#include "spec/params.hpp"

namespace vmoe::train {

struct TrainBenchResult {
  int batch = 0, steps = 0;
  double seconds = 0;  // timed steps only
  double images_per_s = 0;
  // 3 x the forward pass's FLOPs per image (forward, and the backward's two products per
  // matmul), counting the expert rows the cost model allows (every slot used).
  double gflops_per_image = 0, gflops_per_s = 0;
  // Summed over the timed steps: data = augmenting the batch; optimizer = clipping + AdamW.
  StageTimes forward, backward;
  double data = 0, optimizer = 0;
};

// Two warm-up steps, then steps until min_seconds have elapsed (at least 3). The model's
// weights change as in training (a copy: `model` is not modified).
TrainBenchResult benchmark_training(const Model& model, int batch, double min_seconds, uint64_t seed = 0);

}  // namespace vmoe::train
