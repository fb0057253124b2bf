// vmoe: see and measure what Mixture-of-Experts routers do to images.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>

#include <fmt/core.h>

#include "commands.hpp"
#include "core/error.hpp"
#include "io/image.hpp"

// OpenMP threads that spin while waiting make a 2-core run ~10x slower as soon as any
// other process wants a core (measured: 141 vs 1311 images/s for `vmoe bench --batch
// 256` with a training run beside it). libgomp reads OMP_WAIT_POLICY before main runs,
// so when the user has not chosen a policy we choose "passive" and re-execute once.
//
// OpenCV likewise reads OPENCV_IO_MAX_IMAGE_PIXELS once, when it is loaded: we lower its
// limit on decoded images to ours (io/image.hpp), for the formats whose headers we do
// not check before decoding. The user's own settings of either are kept.
void set_library_environment(char** argv) {
  const bool have_omp = std::getenv("OMP_WAIT_POLICY"), have_cv = std::getenv("OPENCV_IO_MAX_IMAGE_PIXELS");
  if (have_omp && have_cv) return;
  if (!have_omp) ::setenv("OMP_WAIT_POLICY", "passive", 1);
  if (!have_cv) ::setenv("OPENCV_IO_MAX_IMAGE_PIXELS", std::to_string(vmoe::kMaxImagePixels).c_str(), 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: then carry on as we are
}

// Every error line goes through printable() (core/error.hpp): one line, no terminal
// control sequences, bounded length, whatever the message echoes.
void print_error(const char* what) {
  fmt::print(stderr, "vmoe: error: {}\n", vmoe::printable(what, 4 * vmoe::kMaxEchoBytes));
}

int main(int argc, char** argv) {
  set_library_environment(argv);
  vmoe::cli::install_cleanup_on_signals();
  CLI::App app{"vmoe: Vision Mixture-of-Experts on CPU (V-MoE, experts-choice, Soft-MoE)"};
  app.require_subcommand(1);
  app.failure_message([](const CLI::App*, const CLI::Error& e) {  // one line: what was wrong
    return fmt::format("vmoe: error: {} (see --help)\n", vmoe::printable(e.what(), 4 * vmoe::kMaxEchoBytes));
  });
  app.set_version_flag("--version", "vmoe 0.1");
  const std::pair<std::string, vmoe::cli::Run> commands[] = {
      {"classify", vmoe::cli::add_classify(app)},
      {"info", vmoe::cli::add_info(app)},
      {"init", vmoe::cli::add_init(app)},
      {"bench", vmoe::cli::add_bench(app)},
      {"route", vmoe::cli::add_route(app)},
      {"eval", vmoe::cli::add_eval(app)},
      {"train", vmoe::cli::add_train(app)},
      {"upcycle", vmoe::cli::add_upcycle(app)},
      {"fit-priority", vmoe::cli::add_fit_priority(app)},
      {"report", vmoe::cli::add_report(app)},
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  try {
    for (const auto& [name, run] : commands)
      if (app.got_subcommand(name)) run();
  } catch (const vmoe::cli::Interrupted& stop) {
    vmoe::cli::cleanup_and_die(stop.signal);  // after unwinding: locks released, state saved
  } catch (const vmoe::cli::ExitStatus& e) {
    return e.code;
  } catch (const vmoe::cli::UsageError& e) {
    print_error(e.what());
    return 2;
  } catch (const vmoe::Error& e) {
    print_error(e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    print_error("out of memory");
    return 1;
  } catch (const std::exception& e) {
    print_error(e.what());
    return 1;
  }
  return 0;
}
