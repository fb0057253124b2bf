#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <thread>

#include <fmt/format.h>

#include "commands.hpp"
#include "core/error.hpp"
#include "io/atomic_file.hpp"
#include "moe/router_registry.hpp"
#include "spec/router.hpp"

namespace vmoe::cli {

namespace fs = std::filesystem;

namespace {

// Parses a whole decimal number; on failure returns why (for the CLI's one-line message).
std::string parse_number(const std::string& text, double& value) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) return "not a number: \"" + text + "\"";
  errno = 0;
  char* end = nullptr;
  value = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0') return "not a number: \"" + text + "\"";
  if (std::isnan(value) || std::isinf(value)) return "must be a finite number, got " + text;
  if (errno == ERANGE) {
    if (std::fabs(value) <= std::numeric_limits<double>::min())  // underflow: subnormal or zero
      return text + " is too close to zero to be represented exactly (smallest accepted magnitude 2.2e-308)";
    return text + " is out of the range of a double";
  }
  return "";
}

CLI::Validator number_check(bool allow_zero, double max) {
  return CLI::Validator(
      [allow_zero, max](std::string& text) -> std::string {
        double value = 0;
        if (std::string why = parse_number(text, value); !why.empty()) return why;
        if (!(value > 0 || (allow_zero && value == 0)))
          return (allow_zero ? "must not be negative, got " : "must be positive, got ") + text;
        if (value > max) return fmt::format("must be at most {}, got {}", max, text);
        return "";
      },
      allow_zero ? "NUMBER>=0" : "NUMBER>0");
}
}  // namespace

const CLI::Validator kPositive = number_check(false, std::numeric_limits<double>::max());
const CLI::Validator kNonNegative = number_check(true, std::numeric_limits<double>::max());

CLI::Validator number_in(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        double value = 0;
        if (std::string why = parse_number(text, value); !why.empty()) return why;
        if (value < lo || value > hi) return fmt::format("must be in [{}, {}], got {}", lo, hi, text);
        return "";
      },
      fmt::format("NUMBER in [{}, {}]", lo, hi));
}

CLI::Validator positive_at_most(double max) { return number_check(false, max); }

MoeConfig checked_routing(const ModelConfig& model, const RoutingFlags& flags) {
  try {
    return apply_overrides(model, flags.overrides());
  } catch (const Error& e) {
    throw UsageError(e.what());  // the flags asked for it: bad usage
  }
}

std::vector<std::string> router_list() {
  std::vector<std::string> names;
  for (const Router* r : routers()) names.push_back(r->name());
  return names;
}

std::string resolve_model_path(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = std::getenv("VMOE_MODEL"); env && *env) return env;
  // The binary lives in build/ (or bin/ when installed); bundled models in data/models
  // (or share/vmoe/models).
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  std::vector<fs::path> roots;
  if (!ec) roots = {exe.parent_path().parent_path() / "data" / "models",
                    exe.parent_path().parent_path() / "share" / "vmoe" / "models"};
  roots.push_back(fs::path("data") / "models");
  for (const fs::path& root : roots) {
    fs::path candidate = root / "vmoe-fmnist.safetensors";
    if (fs::exists(candidate, ec)) return candidate.string();
  }
  throw UsageError("no model given and no bundled default (data/models/vmoe-fmnist.safetensors) found: pass -m MODEL or set VMOE_MODEL");
}

void add_model_option(CLI::App& app, std::string& model) {
  app.add_option("-m,--model", model, "model file (.safetensors); default: $VMOE_MODEL or the bundled model");
}

void add_resize_option(CLI::App& app, std::string& resize) {
  app.add_option("--resize", resize, "image rule instead of the model's: none, stretch (to the model's size) or resize_small_crop")
      ->check(CLI::IsMember({"none", "stretch", "resize_small_crop"}));
}

void add_precision_option(CLI::App& app, std::string& precision) {
  app.add_option("--precision", precision,
                 "f32 (default) or bf16: bf16 runs the large matmuls on bfloat16 weights and activations "
                 "(faster on CPUs with avx512_bf16 or AMX; refused elsewhere)")
      ->check(CLI::IsMember({"f32", "bf16"}));
}

void apply_resize_override(Model& model, const std::string& resize) {
  ImageConfig& im = model.config.image;
  if (resize.empty()) return;
  if (resize == "none") im.resize = Resize::none;
  else if (resize == "stretch") im.resize = Resize::stretch;
  else if (im.resize != Resize::resize_small_crop) {
    im.resize = Resize::resize_small_crop;
    im.resize_small = std::max(im.height, im.width);
  }
}

RoutingOverrides RoutingFlags::overrides() const {
  RoutingOverrides o;
  o.capacity_factor = capacity_factor;
  if (routing == "bpr") o.batch_priority = true;
  else if (routing == "vanilla") o.batch_priority = false;
  o.group_images = group_images;
  if (!priority.empty()) o.priority = parse_priority(priority);
  if (!overflow.empty()) o.overflow = parse_overflow(overflow);
  return o;
}

void add_priority_options(CLI::App& app, std::string& priority, std::string& overflow, bool with_oracle) {
  std::vector<std::string> names = {"max_gate", "sum_gates", "entropy", "random", "learned", "fitted"};
  if (with_oracle) names.push_back("oracle");
  app.add_option("--priority", priority,
                 with_oracle ? "BPR scorer: max_gate, sum_gates, entropy, random, learned, fitted (default: model's), or oracle: "
                               "by patch importance from a full-capacity pass first, an upper bound for any scorer "
                               "(slower: one extra pass per token and MoE block)"
                             : "BPR scorer: max_gate, sum_gates, entropy, random, learned or fitted (default: model's)")
      ->check(CLI::IsMember(names));
  app.add_option("--overflow", overflow, "a choice whose expert is full: drop, or next (its next expert with room)")
      ->check(CLI::IsMember({"drop", "next"}));
}

void add_routing_options(CLI::App& app, RoutingFlags& flags, bool with_capacity_factor, bool with_oracle) {
  if (with_capacity_factor)
    app.add_option("--capacity-factor", flags.capacity_factor, "expert capacity factor (overrides the model's)")
        ->check(positive_at_most(kMaxCapacityFactor));
  app.add_option("--routing", flags.routing, "bpr (batch priority) or vanilla (token order)")
      ->check(CLI::IsMember({"bpr", "vanilla"}));
  app.add_option("--group-images", flags.group_images, "images routed together in one group (default: model's, 1)")
      ->check(CLI::Range(1LL, kMaxGroupTokens));
  add_priority_options(app, flags.priority, flags.overflow, with_oracle);
}

}  // namespace vmoe::cli

namespace vmoe::cli {

namespace {

// What a SIGINT, SIGTERM or SIGHUP does, read by the handler (lock-free atomics are
// async-signal-safe). By default: remove our temporary files and die of the signal.
// After stop_on_signals() (train): the first one sets g_stop and is kept in g_stop_signal;
// a second one dies at once.
std::atomic<bool> g_graceful{false};
std::atomic<bool> g_stop{false};
std::atomic<int> g_stop_signal{0};

constexpr int kStopSignals[] = {SIGINT, SIGTERM, SIGHUP};

void on_signal(int signal) {
  int none = 0;
  if (g_graceful.load() && g_stop_signal.compare_exchange_strong(none, signal)) {
    g_stop.store(true);
    return;
  }
  cleanup_and_die(signal);
}

sigset_t stop_signal_set() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : kStopSignals) sigaddset(&set, s);
  return set;
}

}  // namespace

void cleanup_and_die(int signal) {
  remove_temp_files_now();  // async-signal-safe: unlink() of fixed paths
  std::signal(signal, SIG_DFL);
  const sigset_t set = stop_signal_set();
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);  // a thread that blocked it (train's) must take it now
  std::raise(signal);  // the usual death (exit status 128 + signal for the shell)
  ::_exit(128 + signal);  // not reached: the signal is unblocked and its action is the default
}

// A real handler, not a mask plus sigwait: the kernel gives a process-directed signal to
// any thread that does not block it, and threads started before main (OpenBLAS's pool,
// loaded with OpenCV) never saw our mask (issue 24, D9). Whichever thread runs it, the
// handler does the same async-signal-safe thing.
void install_cleanup_on_signals() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  for (int s : kStopSignals) sigaddset(&action.sa_mask, s);  // one handler at a time
  for (int s : kStopSignals) sigaction(s, &action, nullptr);
}

// The stop signals are blocked in the calling thread, so the OpenMP threads it starts
// later inherit the block: a handler run on a thread inside a oneDNN primitive's
// OpenMP region coincided with heap corruption (docs/KNOWN_PROBLEMS.md). One idle
// watcher thread keeps them unblocked, so they always have a thread of ours to land on
// (a thread started before main may take them instead: same handler, same effect).
const std::atomic<bool>* stop_on_signals() {
  g_graceful.store(true);
  const sigset_t set = stop_signal_set();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
    for (;;) ::pause();
  }).detach();
  return &g_stop;
}

int stop_signal() { return g_stop_signal.load(); }

}  // namespace vmoe::cli
