#include "train/train_benchmark.hpp"

#include <chrono>
#include <random>
#include <vector>

#include "core/error.hpp"
#include "model/vit_train.hpp"
#include "spec/cost.hpp"
#include "train/optimizer.hpp"
#include "train/trainer.hpp"

namespace vmoe::train {

TrainBenchResult benchmark_training(const Model& model, int batch, double min_seconds, uint64_t seed) {
  const ModelConfig& c = model.config;
  if (batch < 1) fail("bench --train: batch of {} images", batch);
  Model m;
  m.config = c;
  m.params = allocate_params(c);
  const auto src = param_slots(model.params, c);
  auto dst = param_slots(m.params, c);
  for (size_t i = 0; i < dst.size(); ++i) *dst[i].tensor = src[i].tensor->clone();
  VitParams grads = allocate_params(c);
  TrainGraph graph(c, batch);
  AdamW optimizer(c, AdamWConfig{});
  const LossOptions loss;

  // A pool of random images and labels, augmented into each batch as training does.
  const int H = c.image.height, W = c.image.width, C = c.image.channels;
  const int64_t image_floats = int64_t{H} * W * C;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> pixel(c.image.value_min, c.image.value_max);
  std::vector<float> pool(static_cast<size_t>(batch) * image_floats), images(pool.size());
  for (float& v : pool) v = pixel(rng);
  std::vector<int> labels(batch);
  for (int& l : labels) l = static_cast<int>(rng() % c.num_classes);
  std::mt19937_64 noise(seed + 1);
  std::uniform_int_distribution<int> shift(-2, 2);

  TrainBenchResult r;
  r.batch = batch;
  StageTimes fwd, bwd;
  double data = 0, opt = 0;
  auto step = [&](bool timed) {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    for (int b = 0; b < batch; ++b)
      augment_image(images.data() + b * image_floats, pool.data() + b * image_floats, H, W, C, shift(rng), shift(rng),
                    rng() & 1, c.image.value_min);
    const auto t1 = clock::now();
    graph.set_times(timed ? &fwd : nullptr, timed ? &bwd : nullptr);
    graph.step(m.params, grads, images.data(), labels.data(), &noise, loss);
    const auto t2 = clock::now();
    clip_grad_norm(grads, c, 1.0);
    optimizer.step(m.params, grads, 1e-4f);
    const auto t3 = clock::now();
    if (timed) {
      data += std::chrono::duration<double>(t1 - t0).count();
      opt += std::chrono::duration<double>(t3 - t2).count();
    }
  };
  step(false), step(false);
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  while (r.steps < 3 || elapsed < min_seconds) {
    step(true);
    ++r.steps;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  r.seconds = elapsed;
  r.images_per_s = static_cast<double>(r.steps) * batch / elapsed;
  const MoeConfig* routing = c.moe ? &*c.moe : nullptr;
  r.gflops_per_image = 3.0 * model_cost(c, routing).flops_total() / 1e9;
  r.gflops_per_s = r.gflops_per_image * r.images_per_s;
  r.forward = fwd, r.backward = bwd, r.data = data, r.optimizer = opt;
  return r;
}

}  // namespace vmoe::train
