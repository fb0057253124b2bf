#include "train/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/config_json.hpp"
#include "io/dataset.hpp"
#include "io/safetensors.hpp"
#include "model/engine.hpp"
#include "model/evaluate.hpp"

namespace vmoe::train {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

json settings_to_json(const TrainSettings& s) {
  return {{"data", s.data},
          {"test_data", s.test_data},
          {"data_dir", s.data_dir},
          {"epochs", s.epochs},
          {"batch", s.batch},
          {"lr", s.lr},
          {"warmup_epochs", s.warmup_epochs},
          {"weight_decay", s.weight_decay},
          {"clip_norm", s.clip_norm},
          {"label_smoothing", s.label_smoothing},
          {"importance_weight", s.importance_weight},
          {"load_weight", s.load_weight},
          {"augment", s.augment},
          {"crop_padding", s.crop_padding},
          {"flip", s.flip},
          {"seed", s.seed},
          {"limit", s.limit},
          {"test_limit", s.test_limit}};
}

TrainSettings settings_from_json(const json& j) {
  TrainSettings s;
  s.data = j.at("data");
  s.test_data = j.at("test_data");
  s.data_dir = j.at("data_dir");
  s.epochs = j.at("epochs");
  s.batch = j.at("batch");
  s.lr = j.at("lr");
  s.warmup_epochs = j.at("warmup_epochs");
  s.weight_decay = j.at("weight_decay");
  s.clip_norm = j.at("clip_norm");
  s.label_smoothing = j.at("label_smoothing");
  s.importance_weight = j.at("importance_weight");
  s.load_weight = j.at("load_weight");
  s.augment = j.at("augment");
  s.crop_padding = j.at("crop_padding");
  s.flip = j.at("flip");
  s.seed = j.at("seed");
  s.limit = j.at("limit");
  s.test_limit = j.at("test_limit");
  return s;
}

// The state file holds the model's tensors under their own names, the optimizer's
// moments under "adam_m/..." and "adam_v/...", and the run in the "vmoe.train" metadata.
void save_state(const std::string& path, Model& model, AdamW& optimizer, const TrainSettings& settings,
                int epochs_done) {
  NamedTensors named;
  auto p = param_slots(model.params, model.config);
  auto m = param_slots(optimizer.first_moment(), model.config);
  auto v = param_slots(optimizer.second_moment(), model.config);
  for (const ParamSlot& s : p) named.emplace_back(s.name, s.tensor);
  for (const ParamSlot& s : m) named.emplace_back("adam_m/" + s.name, s.tensor);
  for (const ParamSlot& s : v) named.emplace_back("adam_v/" + s.name, s.tensor);
  json run{{"settings", settings_to_json(settings)}, {"epochs_done", epochs_done}, {"step", optimizer.steps()}};
  write_safetensors(path, named, {{"vmoe.config", config_to_json(model.config)}, {"vmoe.train", run.dump()}});
}

// dst = src shifted by (dx, dy) (pixels uncovered take `fill`), optionally mirrored.
void augment_image(float* dst, const float* src, int H, int W, int C, int dx, int dy, bool flip, float fill) {
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      const int sy = y + dy, sx0 = x + dx, sx = flip ? W - 1 - sx0 : sx0;
      float* out = dst + (static_cast<int64_t>(y) * W + x) * C;
      if (sy < 0 || sy >= H || sx0 < 0 || sx0 >= W) std::fill(out, out + C, fill);
      else std::memcpy(out, src + (static_cast<int64_t>(sy) * W + sx) * C, sizeof(float) * C);
    }
}

std::string default_test_split(const TrainSettings& s) {
  if (!s.test_data.empty()) return s.test_data == "none" ? "" : s.test_data;
  return s.data == "fashion-mnist:train" ? "fashion-mnist:test" : "";
}

std::vector<EpochReport> run(Model& model, AdamW& optimizer, const TrainSettings& settings, int first_epoch,
                             const std::string& output, const TrainCallbacks& callbacks) {
  const ModelConfig& c = model.config;
  if (settings.batch <= 0) fail("training batch must be positive");
  if (settings.epochs <= 0) fail("epochs must be positive");
  Dataset train = load_dataset(settings.data, settings.data_dir);
  const std::vector<int> class_map = map_dataset_classes(train.class_names, c);
  const int64_t n = settings.limit >= 0 ? std::min<int64_t>(settings.limit, train.size()) : train.size();
  const int B = settings.batch;
  const int64_t steps_per_epoch = n / B;
  if (steps_per_epoch == 0) fail("{}: {} training images are fewer than one batch of {}", settings.data, n, B);
  const int64_t image_size = int64_t{c.image.height} * c.image.width * c.image.channels;
  // Decode and preprocess every training image once.
  std::vector<float> images(static_cast<size_t>(n * image_size));
  std::vector<int> labels(n);
  for (int64_t i = 0; i < n; ++i) {
    dataset_image(images.data() + i * image_size, train, i, c.image);
    labels[i] = class_map.at(train.labels[i]);
  }
  Dataset test;
  const std::string test_spec = default_test_split(settings);
  if (!test_spec.empty()) test = load_dataset(test_spec, settings.data_dir);

  TrainGraph graph(c, B);
  VitParams grads = allocate_params(c);
  LossOptions loss_options;
  loss_options.label_smoothing = static_cast<float>(settings.label_smoothing);
  loss_options.importance_weight = static_cast<float>(settings.importance_weight);
  loss_options.load_weight = static_cast<float>(settings.load_weight);
  const int64_t total_steps = steps_per_epoch * settings.epochs;
  const auto warmup = static_cast<int64_t>(settings.warmup_epochs * steps_per_epoch);
  std::vector<float> batch(static_cast<size_t>(B * image_size));
  std::vector<int> batch_labels(B);
  std::vector<EpochReport> reports;

  for (int epoch = first_epoch; epoch < settings.epochs; ++epoch) {
    // Every epoch's randomness derives from (seed, epoch), so a resumed run is the same run.
    std::mt19937_64 data_rng(settings.seed * 1000003ULL + static_cast<uint64_t>(epoch));
    std::mt19937_64 noise_rng(settings.seed * 7919ULL + 0x9E3779B97F4A7C15ULL * (epoch + 1));
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), data_rng);
    EpochReport report;
    report.epoch = epoch + 1;
    report.epochs = settings.epochs;
    int64_t correct = 0;
    std::vector<std::vector<double>> rows;
    const auto start = Clock::now();
    std::uniform_int_distribution<int> shift(-settings.crop_padding, settings.crop_padding);
    for (int64_t s = 0; s < steps_per_epoch; ++s) {
      if (callbacks.stop && callbacks.stop->load()) return reports;
      for (int b = 0; b < B; ++b) {
        const int64_t i = order[s * B + b];
        float* dst = batch.data() + b * image_size;
        const float* src = images.data() + i * image_size;
        if (settings.augment) {
          const int dx = shift(data_rng), dy = shift(data_rng);
          const bool flip = settings.flip && (data_rng() & 1);
          augment_image(dst, src, c.image.height, c.image.width, c.image.channels, dx, dy, flip, c.image.value_min);
        } else {
          std::memcpy(dst, src, sizeof(float) * image_size);
        }
        batch_labels[b] = labels[i];
      }
      const int64_t global_step = optimizer.steps();
      const double lr = learning_rate(global_step, total_steps, warmup, settings.lr);
      StepResult r = graph.step(model.params, grads, batch.data(), batch_labels.data(), &noise_rng, loss_options);
      clip_grad_norm(grads, c, settings.clip_norm);
      optimizer.step(model.params, grads, static_cast<float>(lr));
      report.loss += r.loss / steps_per_epoch;
      report.aux_importance += r.aux_importance / steps_per_epoch;
      report.aux_load += r.aux_load / steps_per_epoch;
      report.lr = lr;
      correct += r.correct;
      if (rows.empty()) rows.assign(r.expert_rows.size(), {});
      for (size_t l = 0; l < r.expert_rows.size(); ++l) {
        rows[l].resize(r.expert_rows[l].size());
        for (size_t e = 0; e < r.expert_rows[l].size(); ++e) rows[l][e] += static_cast<double>(r.expert_rows[l][e]);
      }
      if (callbacks.on_step) {
        const double secs = std::chrono::duration<double>(Clock::now() - start).count();
        callbacks.on_step({epoch + 1, s + 1, steps_per_epoch, report.loss * steps_per_epoch / (s + 1),
                           static_cast<double>(correct) / ((s + 1) * B), (s + 1) * B / std::max(secs, 1e-9)});
      }
    }
    report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    report.images_per_s = static_cast<double>(steps_per_epoch * B) / report.seconds;
    report.train_accuracy = static_cast<double>(correct) / (steps_per_epoch * B);
    for (auto& layer : rows) {
      const double total = std::accumulate(layer.begin(), layer.end(), 0.0);
      for (double& v : layer) v = total > 0 ? v / total : 0.0;
    }
    report.expert_load = rows;
    if (!test_spec.empty()) {
      Engine engine(model);
      EvalOptions eval;
      eval.limit = settings.test_limit;
      report.test_accuracy = evaluate(engine, test, eval).top1();
    }
    // Model first, then the state: a crash between them leaves a state one epoch behind
    // the model, never a state ahead of it.
    save_model(model, output);
    save_state(output + ".train", model, optimizer, settings, epoch + 1);
    reports.push_back(report);
    if (callbacks.on_epoch) callbacks.on_epoch(report);
  }
  return reports;
}

}  // namespace

std::vector<EpochReport> train_model(const Model& initial, const TrainSettings& settings, const std::string& output,
                                     const TrainCallbacks& callbacks) {
  // The hand-written GELU backward (nn/gelu) is the tanh form's; erf models (timm
  // imports) are for inference.
  if (initial.config.gelu != Gelu::tanh)
    fail("training supports only gelu \"tanh\"; this model's config says \"{}\" (set it to tanh to fine-tune "
         "with the approximation)", to_string(initial.config.gelu));
  Model model;
  model.config = initial.config;
  model.params = allocate_params(initial.config);
  auto dst = param_slots(model.params, model.config);
  auto src = param_slots(initial.params, initial.config);
  for (size_t i = 0; i < dst.size(); ++i) *dst[i].tensor = src[i].tensor->clone();
  AdamWConfig adam;
  adam.weight_decay = static_cast<float>(settings.weight_decay);
  AdamW optimizer(model.config, adam);
  return run(model, optimizer, settings, 0, output, callbacks);
}

ModelConfig read_training_state_config(const std::string& path) {
  SafetensorsFile file(path);
  auto it = file.metadata().find("vmoe.config");
  if (it == file.metadata().end() || !file.metadata().count("vmoe.train"))
    fail("{}: not a vmoe training state (no vmoe.config / vmoe.train metadata)", path);
  return parse_config_json(it->second);
}

std::vector<EpochReport> resume_training(const std::string& resume_path, const std::string& output,
                                         const TrainCallbacks& callbacks) {
  SafetensorsFile file(resume_path);
  const ModelConfig config = read_training_state_config(resume_path);
  json run_info;
  try {
    run_info = json::parse(file.metadata().at("vmoe.train"));
  } catch (const std::exception& e) {
    fail("{}: bad vmoe.train metadata ({})", resume_path, e.what());
  }
  TrainSettings settings;
  int epochs_done = 0;
  int64_t step = 0;
  try {
    settings = settings_from_json(run_info.at("settings"));
    epochs_done = run_info.at("epochs_done");
    step = run_info.at("step");
  } catch (const json::exception& e) {
    fail("{}: incomplete vmoe.train metadata ({})", resume_path, e.what());
  }
  Model model;
  model.config = config;
  model.params = allocate_params(config);
  AdamWConfig adam;
  adam.weight_decay = static_cast<float>(settings.weight_decay);
  AdamW optimizer(config, adam);
  auto load_into = [&](VitParams& params, const std::string& prefix) {
    for (ParamSlot& slot : param_slots(params, config)) {
      Tensor t = file.read_f32(prefix + slot.name);
      if (t.shape() != slot.shape)
        fail("{}: tensor \"{}{}\" has shape {}, expected {}", resume_path, prefix, slot.name, shape_str(t.shape()),
             shape_str(slot.shape));
      *slot.tensor = std::move(t);
    }
  };
  load_into(model.params, "");
  load_into(optimizer.first_moment(), "adam_m/");
  load_into(optimizer.second_moment(), "adam_v/");
  optimizer.set_steps(step);
  if (epochs_done >= settings.epochs) return {};
  return run(model, optimizer, settings, epochs_done, output, callbacks);
}

}  // namespace vmoe::train
