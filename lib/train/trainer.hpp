#pragma once
// The training loop: epochs over a dataset with light augmentation, AdamW with warm-up
// and cosine decay, gradient clipping, router noise and auxiliary losses, evaluation on
// a test split after every epoch, and an atomic checkpoint after every epoch that
// `resume` continues exactly (same schedule, optimizer state and data order).
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/vit_train.hpp"
#include "moe/balance.hpp"
#include "spec/params.hpp"
#include "train/optimizer.hpp"

namespace vmoe::train {

struct TrainSettings {
  std::string data = "fashion-mnist:train";
  std::string test_data;  // "" = the matching test split for fashion-mnist, none for folders
  std::string data_dir;
  int epochs = 10;
  int batch = 128;
  double lr = 2e-3;  // peak learning rate
  double warmup_epochs = 1.0;
  double weight_decay = 0.05;
  double clip_norm = 1.0;
  double label_smoothing = 0.1;
  double importance_weight = 0.005, load_weight = 0.005;
  double priority_penalty = 0;  // learned priority scorer: weight of its mean output scale
  double balance_rate = kDefaultBalanceRate;  // balance "bias" models: the bias update per step (moe/balance)
  // Empty: every step routes at the model's capacity factor. Otherwise step s routes at
  // capacity_factors[s % size] (models whose router drops tokens): one model trained for
  // both a low and a full factor.
  std::vector<double> capacity_factors;
  bool augment = true;  // random crop with padding, horizontal flip
  int crop_padding = 2;
  bool flip = true;
  uint64_t seed = 0;
  int64_t limit = -1;  // use only the first N training images (tests, quick runs)
  int64_t test_limit = -1;
};

struct EpochReport {
  int epoch = 0, epochs = 0;
  double loss = 0, aux_importance = 0, aux_load = 0;  // means over the epoch's steps
  double train_accuracy = 0;  // on augmented images, with router noise
  double test_accuracy = -1;  // -1 when there is no test split
  double lr = 0;  // at the end of the epoch
  double seconds = 0, images_per_s = 0;
  std::vector<std::vector<double>> expert_load;  // per MoE layer, share of expert rows per expert
};

struct StepProgress {
  int epoch = 0;
  int64_t step = 0, steps_per_epoch = 0;
  double loss = 0, accuracy = 0, images_per_s = 0;  // running means over the epoch so far
};

// Where a run stopped early (a stop request): the state file holds this point.
struct StopReport {
  int epoch = 0;  // 1-based epoch it stopped in
  int64_t step = 0, steps_per_epoch = 0;  // steps of that epoch done
  std::string state;  // the state file written
};

struct TrainCallbacks {
  std::function<void(const StepProgress&)> on_step;
  std::function<void(const EpochReport&)> on_epoch;
  std::function<void(const StopReport&)> on_stop;  // called once the state is saved after a stop request
  const std::atomic<bool>* stop = nullptr;  // set (e.g. by SIGINT) to stop between steps
  // Checkpoints inside an epoch (the state file only; the model file is written at epoch
  // ends): every this many optimizer steps (0: off) and whenever this many seconds have
  // passed since the last write (0: off). They do not change what is computed.
  int64_t checkpoint_every = 0;
  double checkpoint_seconds = 300;
};

// Trains `initial` (or continues the checkpoint at `resume_path`) and writes the model to
// `output` plus its training state to `output + ".train"` after every epoch (the state
// also at the checkpoints of `callbacks` and on a stop request). Same seed, settings and
// thread count: the same model, however often the run was stopped or killed and resumed.
// Throws (keeping the last state written, and saving the current one) when the loss or
// a gradient is not finite.
// Returns the reports of the epochs run in this call.
std::vector<EpochReport> train_model(const Model& initial, const TrainSettings& settings, const std::string& output,
                                     const TrainCallbacks& callbacks);
std::vector<EpochReport> resume_training(const std::string& resume_path, const std::string& output,
                                         const TrainCallbacks& callbacks);

// Reads a training state's model config (to check it against an --arch).
ModelConfig read_training_state_config(const std::string& path);

// Limits on a run (the CLI's and a resumed state's).
inline constexpr int kMaxEpochs = 100000;
inline constexpr int kMaxBatch = 65536;
inline constexpr size_t kMaxCapacityFactors = 16;  // entries of TrainSettings::capacity_factors

// A checkpoint inside an epoch: the steps done, the state of the epoch's two random
// generators after them (std::mt19937_64's text form) and its report so far (sums over
// those steps, as EpochReport accumulates them).
struct EpochProgress {
  int64_t steps = 0;  // 0: at the epoch's start (nothing else is used)
  std::string data_rng, noise_rng;
  double loss = 0, aux_importance = 0, aux_load = 0, seconds = 0;
  int64_t correct = 0;
  std::vector<std::vector<double>> expert_rows;  // per MoE layer, per expert
};

// Everything a resume needs, read from MODEL.train and checked: the config, the run's
// settings (types and ranges as the CLI accepts them), progress (0 <= epochs_done <=
// epochs, step >= 0, a position inside an epoch) and every tensor, all finite. Throws
// vmoe::Error naming the first problem.
struct TrainingState {
  ModelConfig config;
  TrainSettings settings;
  int epochs_done = 0;
  int64_t step = 0;
  EpochProgress in_epoch;
  Model model;
  std::unique_ptr<AdamW> optimizer;
};
TrainingState read_training_state(const std::string& path);

// dst (H, W, C) = src shifted by (dx, dy) (pixels uncovered take `fill`), optionally
// mirrored: the training augmentation of one image.
void augment_image(float* dst, const float* src, int H, int W, int C, int dx, int dy, bool flip, float fill);

}  // namespace vmoe::train
