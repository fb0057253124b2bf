// Fuzz target: a model file. The safetensors header and ranges, then the vmoe.config in
// its metadata, then every tensor against the config (load_model), as `vmoe info` does.
#include <cstddef>
#include <cstdint>

#include "core/error.hpp"
#include "fuzz_input.hpp"
#include "io/model_file.hpp"
#include "io/safetensors.hpp"
#include "spec/params.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vmoe::fuzz::MemoryFile file(data, size);
  if (!file.ok()) return 0;
  try {
    vmoe::SafetensorsFile st(file.path());
    for (const auto& [name, entry] : st.tensors())
      if (entry.dtype == "F32" || entry.dtype == "F16" || entry.dtype == "BF16") (void)st.read_f32(name);
  } catch (const vmoe::Error&) {
  }
  try {
    vmoe::Model model = vmoe::load_model(file.path());
    (void)vmoe::count_params(model);
  } catch (const vmoe::Error&) {
  }
  return 0;
}
