// Fuzz target: the config JSON. Whatever parses must be valid, and must write back to
// JSON that parses to the same config (a round trip that fails aborts: a finding).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.hpp"
#include "io/config_json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  vmoe::ModelConfig config;
  try {
    config = vmoe::parse_config_json(text);
  } catch (const vmoe::Error&) {
    return 0;
  }
  config.validate();  // must not throw: parse validated it
  (void)config.param_count();
  const std::string once = vmoe::config_to_json(config);
  const std::string twice = vmoe::config_to_json(vmoe::parse_config_json(once));
  if (once != twice) std::abort();
  return 0;
}
