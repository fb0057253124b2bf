// vmoe train --data SPEC --arch NAME [...] -o MODEL | vmoe train --resume MODEL.train -o MODEL
// vmoe train --data SPEC --init-from MODEL [...] -o MODEL
#include <omp.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "core/error.hpp"
#include "io/config_json.hpp"
#include "io/file_lock.hpp"
#include "io/input_file.hpp"
#include "io/model_file.hpp"
#include "model/architectures.hpp"
#include "moe/balance.hpp"
#include "moe/router_registry.hpp"
#include "spec/router.hpp"
#include "train/trainer.hpp"

namespace vmoe::cli {

namespace {

// Whether the router has a learned Soft-MoE scale (what --soft-scale-init sets).
bool is_soft_moe(const MoeConfig& m) {
  for (const RouterParam& p : m.router->params(m, 1))
    if (p.name == "scale") return true;
  return false;
}

struct TrainArgs {
  train::TrainSettings settings;
  std::string arch, output, log, resume, router, init_from;
  std::optional<int> experts, k, slots, mlp_dim, hidden, layers, heads, group_images;
  std::optional<double> capacity_factor, noise_std, eval_capacity_factor;
  std::optional<int> shared_experts, expert_mlp_dim;
  std::string balance;  // "" = the architecture's (aux unless it says otherwise)
  std::optional<double> soft_scale_init;
  std::string priority, gating, overflow;  // top-k variants; empty: the architecture's / file's
  bool dropless = false;
  std::vector<int> moe_layers;
  bool no_augment = false;
  int threads = 0;
  int64_t checkpoint_every = 0;
  double checkpoint_minutes = 5;

  bool has_routing_variant() const {
    return eval_capacity_factor || !priority.empty() || !gating.empty() || !overflow.empty() || dropless;
  }
  // Routing variants are not architecture, except that `learned` adds a scorer (handled
  // by the caller when starting from a file).
  void apply_routing_variant(MoeConfig& m) const {
    if (capacity_factor && dropless) throw UsageError("--dropless and --capacity-factor contradict each other");
    if (dropless) m.dropless = true;
    if (capacity_factor) m.dropless = false;
    if (eval_capacity_factor) m.eval_capacity_factor = eval_capacity_factor;
    try {
      if (!priority.empty()) m.priority = parse_priority(priority);
      if (!gating.empty()) m.gating = parse_gating(gating);
      if (!overflow.empty()) m.overflow = parse_overflow(overflow);
    } catch (const Error& e) {
      throw UsageError(e.what());
    }
  }
};

// A copy of `model` with a zero learned priority scorer in every MoE block: its output
// scale 2 sigmoid(0) = 1 leaves the function as it was.
Model with_learned_scorer(const Model& model) {
  Model out;
  out.config = model.config;
  out.config.moe->priority = Priority::learned;
  out.params = allocate_params(out.config);
  const auto src = param_slots(model.params, model.config);
  for (ParamSlot& slot : param_slots(out.params, out.config))
    for (const auto& from : src)
      if (from.name == slot.name) *slot.tensor = from.tensor->clone();
  return out;
}

ModelConfig build_config(const TrainArgs& a) {
  ModelConfig c;
  try {
    c = find_architecture(a.arch).config;
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
  if (a.hidden) c.hidden_size = *a.hidden;
  if (a.layers) c.num_layers = *a.layers;
  if (a.heads) c.num_heads = *a.heads;
  if (a.mlp_dim) c.mlp_dim = *a.mlp_dim;
  const bool moe_flags = a.experts || a.k || a.slots || a.capacity_factor || a.noise_std || !a.router.empty() ||
                         !a.moe_layers.empty() || a.group_images || a.has_routing_variant() || a.shared_experts ||
                         a.expert_mlp_dim || !a.balance.empty();
  if (moe_flags && !c.moe) {
    if (a.moe_layers.empty()) throw UsageError(fmt::format("--arch {} is dense: give --moe-layers to add MoE blocks", a.arch));
    c.moe = MoeConfig{};
    c.moe->router = &default_router();
  }
  if (c.moe) {
    MoeConfig& m = *c.moe;
    if (!a.moe_layers.empty()) m.layers = a.moe_layers;
    if (!a.router.empty()) m.router = &find_router(a.router);
    if (a.experts) m.num_experts = *a.experts;
    if (a.k) m.k = *a.k;
    if (a.slots) m.slots_per_expert = *a.slots;
    if (a.capacity_factor) m.capacity_factor = *a.capacity_factor;
    if (a.noise_std) m.noise_std = *a.noise_std;
    if (a.group_images) m.group_images = *a.group_images;
    a.apply_routing_variant(m);
    if (a.shared_experts) m.num_shared_experts = *a.shared_experts;
    if (a.expert_mlp_dim) m.expert_mlp_dim = *a.expert_mlp_dim;
    if (!a.balance.empty()) m.balance = a.balance == "bias" ? Balance::bias : Balance::aux;
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
  return c;
}

// The first key where two configs' JSON forms differ, e.g. "moe.num_experts: 8 vs 4".
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& where = "") {
  if (a.is_object() && b.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it) {
      const std::string key = where.empty() ? it.key() : where + "." + it.key();
      if (!b.contains(it.key())) return fmt::format("{}: {} vs absent", key, it.value().dump());
      if (std::string d = first_difference(it.value(), b[it.key()], key); !d.empty()) return d;
    }
    for (auto it = b.begin(); it != b.end(); ++it)
      if (!a.contains(it.key())) return fmt::format("{}: absent vs {}", where.empty() ? it.key() : where + "." + it.key(), it.value().dump());
    return "";
  }
  return a == b ? "" : fmt::format("{}: {} vs {}", where, a.dump(), b.dump());
}

// --init-from MODEL: its weights and architecture, with a fresh optimizer and schedule.
// Architecture flags may be given but must describe the same model; routing flags
// (--capacity-factor, --noise-std, --group-images) override the model's.
Model initial_from_file(const TrainArgs& a) {
  Model model = load_model(a.init_from);
  const bool arch_flags = !a.arch.empty() || a.experts || a.k || a.slots || !a.router.empty() || !a.moe_layers.empty() ||
                          a.mlp_dim || a.hidden || a.layers || a.heads || a.shared_experts || a.expert_mlp_dim ||
                          !a.balance.empty();
  if (arch_flags) {
    TrainArgs check = a;
    if (check.arch.empty()) throw UsageError("--init-from with architecture flags also needs --arch NAME to compare against");
    check.capacity_factor.reset(), check.noise_std.reset(), check.group_images.reset();
    ModelConfig wanted = build_config(check);
    ModelConfig have = model.config;
    wanted.labels = have.labels, wanted.num_classes = have.num_classes;  // the data decides the classes
    if (wanted.moe && have.moe) {  // routing knobs are not architecture
      wanted.moe->capacity_factor = have.moe->capacity_factor, wanted.moe->noise_std = have.moe->noise_std;
      wanted.moe->group_images = have.moe->group_images, wanted.moe->dropless = have.moe->dropless;
      wanted.moe->eval_capacity_factor = have.moe->eval_capacity_factor, wanted.moe->priority = have.moe->priority;
      wanted.moe->gating = have.moe->gating, wanted.moe->overflow = have.moe->overflow;
    }
    if (std::string d = first_difference(nlohmann::json::parse(config_to_json(wanted)), nlohmann::json::parse(config_to_json(have)));
        !d.empty())
      throw UsageError(fmt::format("--init-from {} does not match --arch {} with these flags ({}, flags vs file)", a.init_from,
                                   a.arch, d));
  }
  if (a.soft_scale_init) throw UsageError("--soft-scale-init does not apply to --init-from (the file has its scale)");
  if (model.config.moe) {
    MoeConfig& m = *model.config.moe;
    if (a.capacity_factor) m.capacity_factor = *a.capacity_factor;
    if (a.noise_std) m.noise_std = *a.noise_std;
    if (a.group_images) m.group_images = *a.group_images;
    const bool had_scorer = m.priority == Priority::learned;
    a.apply_routing_variant(m);
    if (m.priority == Priority::fitted)
      throw UsageError(fmt::format("{} has a fitted importance head (vmoe fit-priority), which training would leave "
                                   "stale: train with another --priority (e.g. max_gate) and fit it again after",
                                   a.init_from));
    if (had_scorer && m.priority != Priority::learned)
      throw UsageError(fmt::format("{} has a learned priority scorer that scales its MoE outputs: it cannot be "
                                   "dropped (--priority learned, or start from a model without one)", a.init_from));
    if (!had_scorer && m.priority == Priority::learned) {
      m.priority = Priority::max_gate;
      model = with_learned_scorer(model);
    }
    try {
      model.config.validate();
    } catch (const Error& e) {
      throw UsageError(e.what());
    }
  } else if (a.capacity_factor || a.noise_std || a.group_images || a.has_routing_variant()) {
    throw UsageError(fmt::format("{} is dense: routing flags do not apply (vmoe upcycle makes an MoE from it)", a.init_from));
  }
  return model;
}

void append_log(const std::string& path, const train::EpochReport& r) {
  const bool fresh = !std::filesystem::exists(path);
  std::ofstream out(path, std::ios::app);
  if (!out) throw Error(fmt::format("cannot write log {}", path));
  if (fresh) out << "epoch,loss,aux_importance,aux_load,train_accuracy,test_accuracy,lr,seconds,images_per_s,expert_load\n";
  std::string load;
  for (size_t l = 0; l < r.expert_load.size(); ++l) {
    if (l) load += "|";
    for (size_t e = 0; e < r.expert_load[l].size(); ++e) load += fmt::format("{}{:.4f}", e ? " " : "", r.expert_load[l][e]);
  }
  out << fmt::format("{},{:.6f},{:.6f},{:.6f},{:.6f},{:.6f},{:.3e},{:.2f},{:.1f},{}\n", r.epoch, r.loss, r.aux_importance,
                     r.aux_load, r.train_accuracy, r.test_accuracy, r.lr, r.seconds, r.images_per_s, load);
}

}  // namespace

Run add_train(CLI::App& root) {
  auto a = std::make_shared<TrainArgs>();
  train::TrainSettings& s = a->settings;
  CLI::App* app = root.add_subcommand("train", "train a model on CPU (Fashion-MNIST or a class-per-folder tree)");
  app->add_option("--data", s.data, "training data: fashion-mnist:train or a folder with one sub-folder per class");
  app->add_option("--data-dir", s.data_dir, "where the Fashion-MNIST IDX files are");
  app->add_option("--test-data", s.test_data, "evaluated after every epoch (default: fashion-mnist:test for fashion-mnist:train; 'none')");
  app->add_option("--arch", a->arch, "architecture to start from (vmoe init --list)");
  app->add_option("-o,--output", a->output, "model file written after every epoch (state in MODEL.train)")->required();
  app->add_option("--resume", a->resume, "continue the run whose state file is MODEL.train");
  app->add_option("--init-from", a->init_from, "start from this model file's weights (fresh optimizer and schedule)");
  // The same ranges as a resumed state is checked against (train/trainer.cpp).
  app->add_option("--epochs", s.epochs, "epochs")->check(CLI::Range(1, train::kMaxEpochs));
  app->add_option("--batch", s.batch, "images per step")->check(CLI::Range(1, train::kMaxBatch));
  app->add_option("--lr", s.lr, "peak learning rate")->check(positive_at_most(1e3));
  app->add_option("--warmup-epochs", s.warmup_epochs, "linear warm-up length")->check(number_in(0, train::kMaxEpochs));
  app->add_option("--weight-decay", s.weight_decay, "AdamW decoupled weight decay")->check(number_in(0, 1e3));
  app->add_option("--clip", s.clip_norm, "gradient clipping global norm (0: off)")->check(number_in(0, 1e12));
  app->add_option("--label-smoothing", s.label_smoothing, "label smoothing")->check(number_in(0.0, 0.99));
  CLI::Option* importance = app->add_option("--importance-weight", s.importance_weight,
                                            "importance loss weight (default 0.005; 0 with --balance bias)")
                                 ->check(number_in(0, 1e6));
  CLI::Option* load = app->add_option("--load-weight", s.load_weight, "load loss weight (default 0.005; 0 with --balance bias)")
                          ->check(number_in(0, 1e6));
  app->add_option("--priority-penalty", s.priority_penalty,
                  "learned priority scorer: loss weight of its mean output scale, which teaches it to silence (and rank "
                  "last) the tokens whose MoE output does not help")
      ->check(number_in(0, 1e6));
  CLI::Option* balance_rate =
      app->add_option("--balance-rate", s.balance_rate,
                      fmt::format("balance bias update per step (default {:g}; --balance bias models)", kDefaultBalanceRate))
          ->check(number_in(0, 1));
  app->add_flag("--no-augment", a->no_augment, "no random crop / flip");
  app->add_option("--crop-padding", s.crop_padding, "random crop padding in pixels")->check(CLI::Range(0, 64));
  app->add_option("--seed", s.seed, "seed: same seed, same run");
  app->add_option("--limit", s.limit, "use only the first N training images")->check(kPositive);
  app->add_option("--test-limit", s.test_limit, "evaluate only the first N test images")->check(kPositive);
  app->add_option("--log", a->log, "append per-epoch metrics to this CSV file");
  app->add_option("--threads", a->threads, "OpenMP threads (a resumed run gives the same model with the same count)")
      ->check(CLI::Range(1, 1024));
  app->add_option("--checkpoint-every", a->checkpoint_every,
                  "also save the training state (MODEL.train) every N steps inside an epoch (0: off)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  app->add_option("--checkpoint-minutes", a->checkpoint_minutes,
                  "also save the training state when this many minutes passed since the last save (default 5; 0: off)")
      ->check(number_in(0, 1e6));
  app->add_option("--router", a->router, "MoE router")->check(CLI::IsMember(router_list()));
  app->add_option("--experts", a->experts, "experts per MoE layer")->check(CLI::Range(1, 4096));
  app->add_option("--k", a->k, "experts per token (top-k)")->check(CLI::Range(1, 4096));
  app->add_option("--slots", a->slots, "Soft-MoE slots per expert")->check(CLI::Range(1, 4096));
  app->add_option("--capacity-factor", a->capacity_factor, "expert capacity factor")
      ->check(positive_at_most(kMaxCapacityFactor));
  app->add_option("--noise-std", a->noise_std, "router noise std (times 1/E)")->check(number_in(0, 1e6));
  app->add_option("--group-images", a->group_images, "images routed together")->check(CLI::Range(1LL, kMaxGroupTokens));
  app->add_option("--eval-capacity-factor", a->eval_capacity_factor,
                  "capacity factor for evaluation and inference (default: the training one)")
      ->check(positive_at_most(kMaxCapacityFactor));
  app->add_option("--train-capacity-factors", s.capacity_factors,
                  "train at these capacity factors in turn, one per step, e.g. 0.25,1.05 (the model keeps --capacity-factor "
                  "or its own; see --eval-capacity-factor)")
      ->delimiter(',')
      ->check(positive_at_most(kMaxCapacityFactor));
  app->add_flag("--dropless", a->dropless, "no capacity limit: every expert can take every token (top_k)");
  app->add_option("--priority", a->priority, "BPR scorer: max_gate, sum_gates, entropy, random or learned (a trained linear scorer)")
      ->check(CLI::IsMember({"max_gate", "sum_gates", "entropy", "random", "learned"}));
  app->add_option("--gating", a->gating, "softmax_topk (V-MoE) or topk_softmax (gates renormalised over the k)")
      ->check(CLI::IsMember({"softmax_topk", "topk_softmax"}));
  app->add_option("--overflow", a->overflow, "a choice whose expert is full: drop, or next (its next expert with room)")
      ->check(CLI::IsMember({"drop", "next"}));
  app->add_option("--soft-scale-init", a->soft_scale_init,
                  "initial Soft-MoE logit scale (default sqrt(D); logits are scale * cosine, and the reference code's 1 leaves dispatch near uniform)")
      ->check(positive_at_most(1e6));
  app->add_option("--moe-layers", a->moe_layers, "blocks with MoE MLPs, e.g. 1,3,5")->delimiter(',');
  app->add_option("--mlp-dim", a->mlp_dim, "MLP (expert) hidden size")->check(CLI::Range(1, 1 << 16));
  app->add_option("--shared-experts", a->shared_experts, "experts every token of an MoE block passes through (DeepSeekMoE)")
      ->check(CLI::Range(0, 4096));
  app->add_option("--expert-mlp-dim", a->expert_mlp_dim, "hidden size of the MoE experts (default: --mlp-dim)")
      ->check(CLI::Range(1, 1 << 16));
  app->add_option("--balance", a->balance,
                  "top-k load balancing: aux (importance + load losses) or bias (a per-expert selection bias, no aux loss)")
      ->check(CLI::IsMember({"aux", "bias"}));
  app->add_option("--hidden", a->hidden, "hidden size D")->check(CLI::Range(1, 1 << 14));
  app->add_option("--layers", a->layers, "encoder blocks")->check(CLI::Range(1, 256));
  app->add_option("--heads", a->heads, "attention heads")->check(CLI::Range(1, 256));
  return [a, importance, load, balance_rate] {
    if (a->threads > 0) omp_set_num_threads(a->threads);
    // Flags that depend on the model being trained. A balance-bias model balances without
    // the auxiliary losses unless they are asked for.
    auto check_run_settings = [&](const ModelConfig& config) {
      const auto& factors = a->settings.capacity_factors;
      if (factors.size() > train::kMaxCapacityFactors)
        throw UsageError(fmt::format("--train-capacity-factors takes at most {} factors", train::kMaxCapacityFactors));
      if (!factors.empty() && (!config.moe || !config.moe->router->drops()))
        throw UsageError(fmt::format("--train-capacity-factors needs an MoE model whose router has a capacity, not {}",
                                     config.moe ? config.moe->router->name() : "a dense model"));
      if (!factors.empty() && a->dropless) throw UsageError("--train-capacity-factors and --dropless contradict each other");
      const bool bias = config.moe && config.moe->balance == Balance::bias;
      if (!bias && balance_rate->count()) throw UsageError("--balance-rate needs a --balance bias model");
      if (bias && !importance->count()) a->settings.importance_weight = 0;
      if (bias && !load->count()) a->settings.load_weight = 0;
    };
    a->settings.augment = !a->no_augment;
    const bool tty = ::isatty(2);
    train::TrainCallbacks callbacks;
    callbacks.stop = stop_on_signals();  // before any OpenMP thread exists (they inherit its mask)
    callbacks.checkpoint_every = a->checkpoint_every;
    callbacks.checkpoint_seconds = 60 * a->checkpoint_minutes;
    bool stopped = false;
    callbacks.on_stop = [&stopped, tty, output = a->output](const train::StopReport& r) {
      stopped = true;
      if (r.state.empty())
        fmt::print(stderr, "{}interrupted by SIG{} before the first step: nothing saved\n", tty ? "\n" : "",
                   sigabbrev_np(stop_signal()));
      else
        fmt::print(stderr, "{}interrupted by SIG{} after step {}/{} of epoch {}: the state is in {} (continue with vmoe "
                   "train --resume {} -o {}); {} holds the last completed epoch\n", tty ? "\n" : "",
                   sigabbrev_np(stop_signal()), r.step, r.steps_per_epoch, r.epoch, r.state, r.state, output, output);
    };
    callbacks.on_step = [tty](const train::StepProgress& p) {
      if (!tty) return;
      const int width = 30, filled = static_cast<int>(width * p.step / p.steps_per_epoch);
      fmt::print(stderr, "\repoch {} [{}{}] {}/{}  loss {:.4f}  acc {:.1f}%  {:.0f} img/s ", p.epoch,
                 std::string(filled, '#'), std::string(width - filled, '.'), p.step, p.steps_per_epoch, p.loss,
                 100 * p.accuracy, p.images_per_s);
    };
    const std::string log = a->log, output = a->output;
    callbacks.on_epoch = [tty, log, output](const train::EpochReport& r) {
      if (tty) fmt::print(stderr, "\n");
      std::string test = r.test_accuracy >= 0 ? fmt::format("  test {:.2f}%", 100 * r.test_accuracy) : "";
      fmt::print(stderr, "epoch {}/{}  loss {:.4f}  aux {:.4f}/{:.4f}  train {:.2f}%{}  lr {:.2e}  {:.0f} s  {:.0f} img/s  -> {}\n",
                 r.epoch, r.epochs, r.loss, r.aux_importance, r.aux_load, 100 * r.train_accuracy, test, r.lr, r.seconds,
                 r.images_per_s, output);
      if (!log.empty()) append_log(log, r);
    };
    if (!a->resume.empty() && !a->init_from.empty()) throw UsageError("give --resume or --init-from, not both");
    // Refuse a device, FIFO, symlink or directory as output now, not after an epoch.
    check_output_path(a->output, "model");
    check_output_path(a->output + ".train", "training state");
    const FileLock lock(a->output);  // a second run on the same files is refused, now
    if (!a->init_from.empty()) {
      Model initial = initial_from_file(*a);
      check_run_settings(initial.config);
      train::train_model(initial, a->settings, a->output, callbacks);
    } else if (!a->resume.empty()) {
      if (!a->arch.empty()) {
        const ModelConfig wanted = build_config(*a);
        const ModelConfig have = train::read_training_state_config(a->resume);
        if (config_to_json(wanted) != config_to_json(have))
          throw UsageError(fmt::format("{} holds a different architecture than --arch {} with these flags", a->resume,
                                       a->arch));
      }
      train::resume_training(a->resume, a->output, callbacks);
    } else {
      if (a->arch.empty()) throw UsageError("train needs --arch NAME (or --resume STATE, or --init-from MODEL)");
      const ModelConfig config = build_config(*a);
      check_run_settings(config);
      const bool soft = config.moe && is_soft_moe(*config.moe);
      if (a->soft_scale_init && !soft) throw UsageError("--soft-scale-init needs Soft-MoE layers");
      const float soft_scale = a->soft_scale_init ? static_cast<float>(*a->soft_scale_init) : default_soft_scale(config);
      Model initial = init_model(config, a->settings.seed, soft_scale);
      train::train_model(initial, a->settings, a->output, callbacks);
    }
    if (stopped) throw Interrupted{stop_signal()};
  };
}

}  // namespace vmoe::cli
