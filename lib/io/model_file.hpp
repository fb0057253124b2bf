#pragma once
// A model file (docs/MODEL_FILE.md): safetensors whose metadata holds the config JSON and
// whose tensors are exactly the parameter slots the config implies (spec/params.hpp).
#include <string>

#include "spec/params.hpp"

namespace vmoe {

// Loads and checks every tensor's name, dtype and shape against the config; the first
// offender is named in the error. Extra tensors are an error too.
Model load_model(const std::string& path);
// Written to a temporary name and renamed (io/atomic_file).
void save_model(const Model& model, const std::string& path);

}  // namespace vmoe
