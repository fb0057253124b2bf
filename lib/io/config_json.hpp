#pragma once
// The `vmoe.config` JSON (DESIGN §3): strict parsing (unknown keys are errors, missing
// optional keys take their defaults) and the inverse.
#include <string>

#include "spec/config.hpp"

namespace vmoe {

ModelConfig parse_config_json(const std::string& text);
std::string config_to_json(const ModelConfig& config);

}  // namespace vmoe
