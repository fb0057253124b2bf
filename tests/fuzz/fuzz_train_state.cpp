// Fuzz target: a training state (MODEL.train), read and checked as `vmoe train --resume`
// does before it loads any data: config, run settings, progress, every tensor.
#include <cstddef>
#include <cstdint>

#include "core/error.hpp"
#include "fuzz_input.hpp"
#include "train/trainer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vmoe::fuzz::MemoryFile file(data, size);
  if (!file.ok()) return 0;
  try {
    vmoe::train::TrainingState state = vmoe::train::read_training_state(file.path());
    if (state.epochs_done < 0 || state.epochs_done > state.settings.epochs || state.step < 0 || !(state.settings.lr > 0))
      __builtin_trap();  // the checks let nonsense through
    const auto& at = state.in_epoch;  // a position inside an epoch: a real epoch, generators that parsed
    if (at.steps < 0 || (at.steps > 0 && (state.epochs_done >= state.settings.epochs || at.data_rng.empty())))
      __builtin_trap();
    // A position some data reaches: step = epochs_done x S + at.steps for S > at.steps.
    const int64_t e = state.epochs_done, k = at.steps, s = state.step;
    if (e == 0 ? s != k : (s - k <= 0 || (s - k) % e != 0 || (s - k) / e <= k)) __builtin_trap();
  } catch (const vmoe::Error&) {
  }
  return 0;
}
