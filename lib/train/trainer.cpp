#include "train/trainer.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <memory>
#include <chrono>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/config_json.hpp"
#include "io/dataset.hpp"
#include "io/model_file.hpp"
#include "io/safetensors.hpp"
#include "model/engine.hpp"
#include "tasks/evaluate.hpp"
#include "tensor/finite_check.hpp"

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
          {"priority_penalty", s.priority_penalty},
          {"balance_rate", s.balance_rate},
          {"capacity_factors", s.capacity_factors},
          {"augment", s.augment},
          {"crop_padding", s.crop_padding},
          {"flip", s.flip},
          {"seed", s.seed},
          {"limit", s.limit},
          {"test_limit", s.test_limit}};
}

// Checked reads of the run metadata: every number must have the right type and lie in
// the range the CLI accepts, so a hand-edited or corrupt state cannot start a nonsense run.
int64_t int_in(const json& j, const char* key, int64_t lo, int64_t hi) {
  const json& v = j.at(key);
  if (!v.is_number_integer()) fail("\"{}\" must be an integer", key);
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
    fail("\"{}\" = {} is outside [{}, {}]", key, v.get<uint64_t>(), lo, hi);
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) fail("\"{}\" = {} is outside [{}, {}]", key, x, lo, hi);
  return x;
}
double real_in(const json& j, const char* key, double lo, double hi, bool open_below = false) {
  const json& v = j.at(key);
  if (!v.is_number()) fail("\"{}\" must be a number", key);
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi || (open_below && x == lo))
    fail("\"{}\" = {} is outside {}{}, {}]", key, x, open_below ? "(" : "[", lo, hi);
  return x;
}
std::string text_of(const json& j, const char* key) {
  const json& v = j.at(key);
  if (!v.is_string()) fail("\"{}\" must be a string", key);
  return v.get<std::string>();
}
bool flag_of(const json& j, const char* key) {
  const json& v = j.at(key);
  if (!v.is_boolean()) fail("\"{}\" must be true or false", key);
  return v.get<bool>();
}

TrainSettings settings_from_json(const json& j) {
  if (!j.is_object()) fail("\"settings\" must be an object");
  TrainSettings s;
  s.data = text_of(j, "data");
  s.test_data = text_of(j, "test_data");
  s.data_dir = text_of(j, "data_dir");
  s.epochs = static_cast<int>(int_in(j, "epochs", 1, kMaxEpochs));
  s.batch = static_cast<int>(int_in(j, "batch", 1, kMaxBatch));
  s.lr = real_in(j, "lr", 0, 1e3, true);
  s.warmup_epochs = real_in(j, "warmup_epochs", 0, kMaxEpochs);
  s.weight_decay = real_in(j, "weight_decay", 0, 1e3);
  s.clip_norm = real_in(j, "clip_norm", 0, 1e12);
  s.label_smoothing = real_in(j, "label_smoothing", 0, 0.99);
  s.importance_weight = real_in(j, "importance_weight", 0, 1e6);
  s.load_weight = real_in(j, "load_weight", 0, 1e6);
  if (j.contains("priority_penalty")) s.priority_penalty = real_in(j, "priority_penalty", 0, 1e6);  // newer states
  if (j.contains("balance_rate")) s.balance_rate = real_in(j, "balance_rate", 0, 1);  // absent in older states
  if (j.contains("capacity_factors")) {  // absent in older states
    const json& list = j.at("capacity_factors");
    if (!list.is_array() || list.size() > kMaxCapacityFactors)
      fail("\"capacity_factors\" must be a list of at most {} numbers", kMaxCapacityFactors);
    for (size_t i = 0; i < list.size(); ++i)
      s.capacity_factors.push_back(real_in(json{{"capacity_factors[i]", list[i]}}, "capacity_factors[i]", 0,
                                           kMaxCapacityFactor, true));
  }
  s.augment = flag_of(j, "augment");
  s.crop_padding = static_cast<int>(int_in(j, "crop_padding", 0, 64));
  s.flip = flag_of(j, "flip");
  if (!j.at("seed").is_number_unsigned()) fail("\"seed\" must be a non-negative integer");
  s.seed = j.at("seed").get<uint64_t>();
  s.limit = int_in(j, "limit", -1, int64_t{1} << 40);
  s.test_limit = int_in(j, "test_limit", -1, int64_t{1} << 40);
  if (s.limit == 0 || s.test_limit == 0) fail("\"limit\" and \"test_limit\" must be -1 (all) or positive");
  return s;
}

// The state file holds the model's tensors under their own names, the optimizer's
// moments under "adam_m/..." and "adam_v/...", and the run in the "vmoe.train" metadata:
// settings, progress and, inside an epoch, everything that epoch's remaining steps
// depend on (the data and noise generators) plus its report so far.
void save_state(const std::string& path, Model& model, AdamW& optimizer, const TrainSettings& settings,
                int epochs_done, const EpochProgress& at) {
  NamedTensors named;
  auto p = param_slots(model.params, model.config);
  auto m = param_slots(optimizer.first_moment(), model.config);
  auto v = param_slots(optimizer.second_moment(), model.config);
  for (const ParamSlot& s : p) named.emplace_back(s.name, s.tensor);
  for (const ParamSlot& s : m) named.emplace_back("adam_m/" + s.name, s.tensor);
  for (const ParamSlot& s : v) named.emplace_back("adam_v/" + s.name, s.tensor);
  json run{{"settings", settings_to_json(settings)}, {"epochs_done", epochs_done}, {"step", optimizer.steps()}};
  if (at.steps > 0) {
    run["epoch_step"] = at.steps;
    run["data_rng"] = at.data_rng;
    run["noise_rng"] = at.noise_rng;
    run["partial"] = {{"loss", at.loss},       {"aux_importance", at.aux_importance}, {"aux_load", at.aux_load},
                      {"correct", at.correct}, {"seconds", at.seconds},               {"expert_rows", at.expert_rows}};
  }
  write_safetensors(path, named, {{"vmoe.config", config_to_json(model.config)}, {"vmoe.train", run.dump()}});
}

template <class Engine>
std::string engine_text(const Engine& rng) {
  std::ostringstream out;
  out << rng;
  return out.str();
}

// The generator state a checkpoint wrote (engine_text), or a one-line error. libstdc++
// writes a std::mt19937_64 as its 312 state words and then its position in them (0..312),
// and its operator>> checks neither the sign (it reads "-1" as 2^64 - 1) nor the position
// nor whether the state can still generate: an all-zero state parses and draws only
// zeros, so a uniform_int_distribution or normal_distribution on it rejects forever and a
// resumed run hung at its first step. So the text is checked here: exactly 313 unsigned
// decimal numbers, the last at most 312, and not the zero state. A zero state gives zeros
// from its first regeneration on, so draws 313..624 are all zero; and only a zero state
// does, since 312 consecutive zero words are the zero state and the recurrence is a
// bijection that never reaches it from another.
void engine_from_text(std::mt19937_64& rng, const std::string& text, const char* what) {
  constexpr size_t words = std::mt19937_64::state_size;
  size_t count = 0, i = 0;
  uint64_t last = 0;
  while (true) {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i == text.size()) break;
    uint64_t v = 0;
    for (; i < text.size() && !std::isspace(static_cast<unsigned char>(text[i])); ++i) {
      const char c = text[i];
      if (c < '0' || c > '9')
        fail("bad \"{}\" (not a generator state: \"{}\" where a number 0..2^64-1 belongs)", what, std::string(1, c));
      const auto d = static_cast<uint64_t>(c - '0');
      if (v > (UINT64_MAX - d) / 10) fail("bad \"{}\" (not a generator state: a number above 2^64-1)", what);
      v = v * 10 + d;
    }
    if (++count > words + 1) break;
    last = v;
  }
  if (count > words + 1) fail("bad \"{}\" (not a generator state: more than {} numbers)", what, words + 1);
  if (count < words + 1) fail("bad \"{}\" (not a generator state: {} numbers, expected {})", what, count, words + 1);
  if (last > words) fail("bad \"{}\" (not a generator state: position {} is past its {} words)", what, last, words);
  std::istringstream in(text);
  std::mt19937_64 read;
  in >> read;  // what the checks above let through, it reads whole
  if (in.fail()) fail("bad \"{}\" (not a generator state)", what);
  std::mt19937_64 probe = read;
  probe.discard(words);
  bool degenerate = true;
  for (size_t k = 0; k < words; ++k) degenerate = degenerate && probe() == 0;
  if (degenerate) fail("bad \"{}\" (not a generator state: all zero, it would draw only zeros)", what);
  rng = read;
}


// Weights, gradients and the two AdamW moments are four float32 copies of the model:
// refuse, with one line, a model whose copies alone do not fit in the machine's memory.
void check_training_memory(const ModelConfig& c) {
  const double need = 16.0 * static_cast<double>(c.param_count());
  const double have = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
  if (have > 0 && need > have)
    fail("training this model needs at least {:.1f} GiB (weights, gradients and AdamW moments: 16 bytes for each of "
         "its {} parameters) but the machine has {:.1f} GiB",
         need / (1 << 30), c.param_count(), have / (1 << 30));
}

std::string default_test_split(const TrainSettings& s) {
  if (!s.test_data.empty()) return s.test_data == "none" ? "" : s.test_data;
  return s.data == "fashion-mnist:train" ? "fashion-mnist:test" : "";
}

// One line for a training step that produced NaN or infinity.
[[noreturn]] void fail_non_finite(const char* what, double value, int epoch, int64_t s, int64_t global_step,
                                  const std::string& state, double lr) {
  const std::string kept = global_step > 0 ? fmt::format("{} holds the state before it", state)
                                           : std::string("nothing was saved (it was the run's first step)");
  const std::string shown = std::isnan(value) ? "NaN" : value > 0 ? "+inf" : "-inf";
  fail("training stopped: the {} is {} at step {} of epoch {} (step {} of the run, learning rate {:.3g}); {}; lower "
       "--lr or use --clip", what, shown, s + 1, epoch + 1, global_step + 1, lr, kept);
}

std::vector<EpochReport> run(Model& model, AdamW& optimizer, const TrainSettings& settings, int first_epoch,
                             const EpochProgress& resume_at, const std::string& output, const TrainCallbacks& callbacks) {
  const ModelConfig& c = model.config;
  if (settings.batch <= 0) fail("training batch must be positive");
  if (settings.epochs <= 0) fail("epochs must be positive");
  check_training_memory(c);
  Dataset train = load_dataset(settings.data, settings.data_dir);
  const std::vector<int> class_map = map_dataset_classes(train.class_names, c);
  const int64_t n = settings.limit >= 0 ? std::min<int64_t>(settings.limit, train.size()) : train.size();
  const int B = settings.batch;
  const int64_t steps_per_epoch = n / B;
  if (steps_per_epoch == 0) fail("{}: {} training images are fewer than one batch of {}", settings.data, n, B);
  // A state must sit where this data puts it (a changed dataset would shift every step).
  if (resume_at.steps >= steps_per_epoch || optimizer.steps() != first_epoch * steps_per_epoch + resume_at.steps)
    fail("the training state is at step {} ({} epochs and {} steps done), which {} with {} steps per epoch does not "
         "reach: the training data changed", optimizer.steps(), first_epoch, resume_at.steps, settings.data,
         steps_per_epoch);
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

  // One graph per training capacity factor (their buffers are sized by the factor).
  std::vector<std::unique_ptr<TrainGraph>> graphs;
  if (settings.capacity_factors.empty()) {
    graphs.push_back(std::make_unique<TrainGraph>(c, B));
  } else {
    if (!c.moe || !c.moe->router->drops())
      fail("training capacity factors need an MoE model whose router has a capacity ({})",
           c.moe ? c.moe->router->name() : "dense model");
    if (settings.capacity_factors.size() > kMaxCapacityFactors)
      fail("at most {} training capacity factors, got {}", kMaxCapacityFactors, settings.capacity_factors.size());
    for (double f : settings.capacity_factors) {
      ModelConfig at = c;
      at.moe->capacity_factor = f;
      at.moe->dropless = false;
      at.validate();
      graphs.push_back(std::make_unique<TrainGraph>(at, B));
    }
  }
  VitParams grads = allocate_params(c);
  LossOptions loss_options;
  loss_options.label_smoothing = static_cast<float>(settings.label_smoothing);
  loss_options.importance_weight = static_cast<float>(settings.importance_weight);
  loss_options.load_weight = static_cast<float>(settings.load_weight);
  loss_options.priority_penalty = static_cast<float>(settings.priority_penalty);
  const int64_t total_steps = steps_per_epoch * settings.epochs;
  const auto warmup = static_cast<int64_t>(settings.warmup_epochs * steps_per_epoch);
  std::vector<float> batch(static_cast<size_t>(B * image_size));
  std::vector<int> batch_labels(B);
  std::vector<EpochReport> reports;
  const std::string state_path = output + ".train";
  // The optimizer step of the last state written (a resumed run's file is where it
  // resumed; a fresh run saves nothing before its first step).
  int64_t saved_step = optimizer.steps();
  auto last_save = Clock::now();

  for (int epoch = first_epoch; epoch < settings.epochs; ++epoch) {
    // Every epoch's randomness derives from (seed, epoch), so a resumed run is the same run;
    // inside an epoch, a checkpoint keeps both generators' states.
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
    int64_t first_step = 0;
    double seconds_before = 0;  // of this epoch, in the runs before a resume
    if (epoch == first_epoch && resume_at.steps > 0) {
      first_step = resume_at.steps;
      engine_from_text(data_rng, resume_at.data_rng, "data_rng");
      engine_from_text(noise_rng, resume_at.noise_rng, "noise_rng");
      report.loss = resume_at.loss, report.aux_importance = resume_at.aux_importance, report.aux_load = resume_at.aux_load;
      correct = resume_at.correct;
      rows = resume_at.expert_rows;
      seconds_before = resume_at.seconds;
    }
    const auto start = Clock::now();
    auto progress_at = [&](int64_t steps_done) {
      EpochProgress p;
      p.steps = steps_done;
      p.data_rng = engine_text(data_rng);
      p.noise_rng = engine_text(noise_rng);
      p.loss = report.loss, p.aux_importance = report.aux_importance, p.aux_load = report.aux_load;
      p.correct = correct;
      p.seconds = seconds_before + std::chrono::duration<double>(Clock::now() - start).count();
      p.expert_rows = rows;
      return p;
    };
    auto checkpoint = [&](int64_t steps_done) {
      save_state(state_path, model, optimizer, settings, epoch, progress_at(steps_done));
      saved_step = optimizer.steps();
      last_save = Clock::now();
    };
    std::uniform_int_distribution<int> shift(-settings.crop_padding, settings.crop_padding);
    for (int64_t s = first_step; s < steps_per_epoch; ++s) {
      if (callbacks.stop && callbacks.stop->load()) {
        if (saved_step != optimizer.steps()) checkpoint(s);
        const bool any = optimizer.steps() > 0;  // else nothing was ever saved
        if (callbacks.on_stop) callbacks.on_stop({epoch + 1, s, steps_per_epoch, any ? state_path : ""});
        return reports;
      }
      // The generators before this step: a step that goes non-finite is not applied, and
      // the state saved then must replay it from its start.
      const std::mt19937_64 data_before = data_rng, noise_before = noise_rng;
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
      TrainGraph& graph = *graphs[static_cast<size_t>(global_step) % graphs.size()];
      StepResult r = graph.step(model.params, grads, batch.data(), batch_labels.data(), &noise_rng, loss_options);
      const double norm = clip_grad_norm(grads, c, settings.clip_norm);
      const char* bad = !std::isfinite(r.loss)             ? "loss"
                        : !std::isfinite(r.aux_importance) ? "importance loss"
                        : !std::isfinite(r.aux_load)       ? "load loss"
                        : !std::isfinite(norm)             ? "gradient norm"
                                                           : nullptr;
      if (bad) {  // the parameters are still those before this step: keep them
        const double value = std::string(bad) == "gradient norm" ? norm
                             : std::string(bad) == "loss"        ? r.loss
                             : std::string(bad) == "load loss"   ? r.aux_load
                                                                 : r.aux_importance;
        data_rng = data_before, noise_rng = noise_before;
        if (saved_step != optimizer.steps()) checkpoint(s);
        fail_non_finite(bad, value, epoch, s, global_step, state_path, lr);
      }
      optimizer.step(model.params, grads, static_cast<float>(lr));
      update_balance_biases(model.params, c, r, static_cast<float>(settings.balance_rate));
      report.loss += r.loss / steps_per_epoch;
      report.aux_importance += r.aux_importance / steps_per_epoch;
      report.aux_load += r.aux_load / steps_per_epoch;
      report.lr = lr;
      correct += r.correct;
      if (rows.empty()) rows.assign(r.expert_rows.size(), {});
      if (rows.size() != r.expert_rows.size()) fail("the training state's \"expert_rows\" do not match the model");
      for (size_t l = 0; l < r.expert_rows.size(); ++l) {
        rows[l].resize(r.expert_rows[l].size());
        for (size_t e = 0; e < r.expert_rows[l].size(); ++e) rows[l][e] += static_cast<double>(r.expert_rows[l][e]);
      }
      if (callbacks.on_step) {
        const double secs = std::chrono::duration<double>(Clock::now() - start).count();  // in this process
        callbacks.on_step({epoch + 1, s + 1, steps_per_epoch, report.loss * steps_per_epoch / (s + 1),
                           static_cast<double>(correct) / ((s + 1) * B), (s + 1 - first_step) * B / std::max(secs, 1e-9)});
      }
      // The epoch's last step is followed by the epoch-end save below.
      const bool every = callbacks.checkpoint_every > 0 && optimizer.steps() % callbacks.checkpoint_every == 0;
      const bool timed = callbacks.checkpoint_seconds > 0 &&
                         std::chrono::duration<double>(Clock::now() - last_save).count() >= callbacks.checkpoint_seconds;
      if (s + 1 < steps_per_epoch && (every || timed)) checkpoint(s + 1);
    }
    report.seconds = seconds_before + std::chrono::duration<double>(Clock::now() - start).count();
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
    save_state(state_path, model, optimizer, settings, epoch + 1, EpochProgress{});
    saved_step = optimizer.steps();
    last_save = Clock::now();
    reports.push_back(report);
    if (callbacks.on_epoch) callbacks.on_epoch(report);
  }
  return reports;
}

}  // namespace

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
  return run(model, optimizer, settings, 0, EpochProgress{}, output, callbacks);
}

ModelConfig read_training_state_config(const std::string& path) {
  SafetensorsFile file(path);
  auto it = file.metadata().find("vmoe.config");
  if (it == file.metadata().end() || !file.metadata().count("vmoe.train"))
    fail("{}: not a vmoe training state (no vmoe.config / vmoe.train metadata)", path);
  return parse_config_json(it->second);
}

TrainingState read_training_state(const std::string& path) {
  SafetensorsFile file(path);
  auto config_it = file.metadata().find("vmoe.config");
  auto run_it = file.metadata().find("vmoe.train");
  if (config_it == file.metadata().end() || run_it == file.metadata().end())
    fail("{}: not a vmoe training state (no vmoe.config / vmoe.train metadata)", path);
  TrainingState state;
  try {
    state.config = parse_config_json(config_it->second);
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
  try {
    const json run_info = json::parse(run_it->second);
    if (!run_info.is_object()) fail("not a JSON object");
    state.settings = settings_from_json(run_info.at("settings"));
    state.epochs_done = static_cast<int>(int_in(run_info, "epochs_done", 0, state.settings.epochs));
    state.step = int_in(run_info, "step", 0, int64_t{1} << 40);
    if (run_info.contains("epoch_step")) {  // a checkpoint inside an epoch (absent at epoch ends)
      EpochProgress& p = state.in_epoch;
      p.steps = int_in(run_info, "epoch_step", 1, int64_t{1} << 40);
      if (state.epochs_done >= state.settings.epochs) fail("a position inside epoch {} of {}", state.epochs_done + 1,
                                                             state.settings.epochs);
      p.data_rng = text_of(run_info, "data_rng");
      p.noise_rng = text_of(run_info, "noise_rng");
      std::mt19937_64 check;
      engine_from_text(check, p.data_rng, "data_rng");
      engine_from_text(check, p.noise_rng, "noise_rng");
      const json& partial = run_info.at("partial");
      if (!partial.is_object()) fail("\"partial\" must be an object");
      p.loss = real_in(partial, "loss", -1e300, 1e300);
      p.aux_importance = real_in(partial, "aux_importance", -1e300, 1e300);
      p.aux_load = real_in(partial, "aux_load", -1e300, 1e300);
      p.seconds = real_in(partial, "seconds", 0, 1e300);
      p.correct = int_in(partial, "correct", 0, int64_t{1} << 62);
      const json& rows = partial.at("expert_rows");
      if (!rows.is_array() || rows.size() > 1000) fail("\"expert_rows\" must be a list of layers");
      for (const json& layer : rows) {
        if (!layer.is_array() || layer.size() > 4096) fail("\"expert_rows\" must hold lists of experts");
        p.expert_rows.emplace_back();
        for (const json& v : layer) {
          if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0)
            fail("\"expert_rows\" must hold non-negative numbers");
          p.expert_rows.back().push_back(v.get<double>());
        }
      }
    }
  } catch (const json::exception& e) {
    fail("{}: bad vmoe.train metadata ({})", path, e.what());
  } catch (const Error& e) {
    fail("{}: bad vmoe.train metadata: {}", path, e.what());
  }
  if ((state.step == 0) != (state.epochs_done == 0 && state.in_epoch.steps == 0))
    fail("{}: bad vmoe.train metadata: {} epochs done but step {} ({} steps into the next epoch)", path,
         state.epochs_done, state.step, state.in_epoch.steps);
  // A position some data reaches: step = epochs_done x S + epoch_step for S steps per
  // epoch, S > epoch_step. Which S, the data decides when the run starts (run() refuses a
  // state this data does not reach); a state no S fits is refused here, before any data
  // is loaded.
  {
    const int64_t e = state.epochs_done, k = state.in_epoch.steps, s = state.step;
    if (e == 0 ? s != k : (s - k <= 0 || (s - k) % e != 0 || (s - k) / e <= k))
      fail("{}: bad vmoe.train metadata: step {} with {} epochs done and {} steps into the next is a position no data "
           "reaches (the step must be epochs done x steps per epoch + steps into the epoch, fewer than an epoch's)",
           path, s, e, k);
  }
  // Every tensor present with the right dtype and shape before anything is allocated:
  // a config claiming a huge model then costs nothing, since the file must hold the data.
  for (const char* prefix : {"", "adam_m/", "adam_v/"}) {
    VitParams shapes;
    for (const ParamSlot& slot : param_slots(shapes, state.config)) {
      auto it = file.tensors().find(prefix + slot.name);
      if (it == file.tensors().end()) fail("{}: missing tensor \"{}{}\"", path, prefix, slot.name);
      if (it->second.shape != slot.shape)
        fail("{}: tensor \"{}{}\" has shape {}, expected {}", path, prefix, slot.name, shape_str(it->second.shape),
             shape_str(slot.shape));
    }
  }
  state.model.config = state.config;
  state.model.params = allocate_params(state.config);
  AdamWConfig adam;
  adam.weight_decay = static_cast<float>(state.settings.weight_decay);
  state.optimizer = std::make_unique<AdamW>(state.config, adam);
  auto load_into = [&](VitParams& params, const std::string& prefix) {
    for (ParamSlot& slot : param_slots(params, state.config)) {
      Tensor t = file.read_f32(prefix + slot.name);
      if (t.shape() != slot.shape)
        fail("{}: tensor \"{}{}\" has shape {}, expected {}", path, prefix, slot.name, shape_str(t.shape()),
             shape_str(slot.shape));
      *slot.tensor = std::move(t);
    }
  };
  load_into(state.model.params, "");
  load_into(state.optimizer->first_moment(), "adam_m/");
  load_into(state.optimizer->second_moment(), "adam_v/");
  for (const char* prefix : {"", "adam_m/", "adam_v/"}) {  // a diverged run's state is not resumed
    VitParams& params = *prefix ? (prefix[5] == 'm' ? state.optimizer->first_moment() : state.optimizer->second_moment())
                                : state.model.params;
    for (const ParamSlot& slot : param_slots(params, state.config)) check_finite(*slot.tensor, prefix + slot.name, path);
  }
  state.optimizer->set_steps(state.step);
  return state;
}

std::vector<EpochReport> resume_training(const std::string& resume_path, const std::string& output,
                                         const TrainCallbacks& callbacks) {
  TrainingState state = read_training_state(resume_path);
  if (state.epochs_done >= state.settings.epochs) return {};
  return run(state.model, *state.optimizer, state.settings, state.epochs_done, state.in_epoch, output, callbacks);
}

}  // namespace vmoe::train
