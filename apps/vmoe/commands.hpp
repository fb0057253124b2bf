#pragma once
// Each subcommand registers its options on the root app and returns what to run once
// parsing succeeded. Subcommands parse and print; the library does the work.
#include <atomic>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "spec/config.hpp"
#include "spec/params.hpp"

namespace vmoe::cli {

// Bad usage discovered after parsing (exit code 2).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Thrown by a command that has already printed its own one-line messages (e.g. `vmoe
// report` after one line per unusable image): main returns `code` and prints nothing.
struct ExitStatus {
  int code = 1;
};

using Run = std::function<void()>;

Run add_classify(CLI::App& root);
Run add_info(CLI::App& root);
Run add_init(CLI::App& root);
Run add_bench(CLI::App& root);
Run add_route(CLI::App& root);
Run add_eval(CLI::App& root);
Run add_train(CLI::App& root);
Run add_upcycle(CLI::App& root);
Run add_fit_priority(CLI::App& root);
Run add_report(CLI::App& root);

// Number checks with short messages (CLI11's own print the whole double range).
extern const CLI::Validator kPositive;     // > 0
extern const CLI::Validator kNonNegative;  // >= 0

// A finite number in [lo, hi]; a finite number in (0, max]. NaN, infinities, numbers
// that underflow (1e-320) and trailing text are refused with a message saying which.
CLI::Validator number_in(double lo, double hi);
CLI::Validator positive_at_most(double max);

// The config names of the registered routers (lib/moe/router_registry.cpp), for --router.
std::vector<std::string> router_list();

// -m MODEL: given, else $VMOE_MODEL, else the bundled default next to the binary.
std::string resolve_model_path(const std::string& given);
void add_model_option(CLI::App& app, std::string& model);

// --resize none|stretch|resize_small_crop: the image rule for this run instead of the
// model's (DESIGN §3). Switching a model to resize_small_crop that does not use it sets
// resize_small to the larger side of the model's input, so the whole centre square fits.
void add_resize_option(CLI::App& app, std::string& resize);

// --precision f32|bf16 (default f32): the engine's matmul precision (nn/precision.hpp).
void add_precision_option(CLI::App& app, std::string& precision);
void apply_resize_override(Model& model, const std::string& resize);

// --capacity-factor, --routing bpr|vanilla, --group-images
struct RoutingFlags {
  std::optional<double> capacity_factor;
  std::string routing;
  std::optional<int> group_images;
  std::string priority, overflow;
  RoutingOverrides overrides() const;
};
// with_oracle: --priority also takes oracle (commands that compute patch importance).
void add_routing_options(CLI::App& app, RoutingFlags& flags, bool with_capacity_factor = true, bool with_oracle = false);
// --priority and --overflow (top-k routing variants).
void add_priority_options(CLI::App& app, std::string& priority, std::string& overflow, bool with_oracle = false);
// The model's routing with the flags applied and checked against the model (tokens per
// group, capacity): a problem is the flags' fault, so it is a UsageError (exit 2).
MoeConfig checked_routing(const ModelConfig& model, const RoutingFlags& flags);

// SIGINT/SIGTERM/SIGHUP: remove the temporary files being written, then die of the
// signal as usual (exit status 128 + signal). Installed by main for every command, as a
// process-wide handler that works whichever thread the kernel picks.
void install_cleanup_on_signals();
// Remove the temporary files and die of `signal` (async-signal-safe).
[[noreturn]] void cleanup_and_die(int signal);
// From now on the first stop signal only sets the returned flag (the command stops at a
// safe point and saves its state); a second one dies at once. stop_signal() says which
// signal asked to stop (0: none).
const std::atomic<bool>* stop_on_signals();
int stop_signal();
// Thrown by a command that stopped because of stop_signal(): main unwinds (releasing
// locks), then dies of that signal, so a calling shell sees the interruption.
struct Interrupted {
  int signal;
};

}  // namespace vmoe::cli
