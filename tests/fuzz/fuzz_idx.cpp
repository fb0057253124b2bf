// Fuzz target: IDX image and label files (Fashion-MNIST), plain or gzipped, as images
// and as labels.
#include <cstddef>
#include <cstdint>

#include "core/error.hpp"
#include "fuzz_input.hpp"
#include "io/dataset.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vmoe::fuzz::MemoryFile file(data, size);
  if (!file.ok()) return 0;
  try {
    vmoe::IdxImages images = vmoe::read_idx_images(file.path());
    if (static_cast<int64_t>(images.pixels.size()) != images.count * images.rows * images.cols) __builtin_trap();
  } catch (const vmoe::Error&) {
  }
  try {
    (void)vmoe::read_idx_labels(file.path());
  } catch (const vmoe::Error&) {
  }
  return 0;
}
