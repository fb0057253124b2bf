#pragma once
// Named model shapes (`vmoe init --arch NAME`) and random initialisation.
#include <cstdint>
#include <string>
#include <vector>

#include "spec/params.hpp"

namespace vmoe {

struct Architecture {
  std::string name;
  std::string summary;
  ModelConfig config;
};

const std::vector<Architecture>& architectures();
const Architecture& find_architecture(const std::string& name);  // throws listing the known names

// Kernels ~ N(0, 1/fan_in), biases 0, LayerNorm scale 1, position embeddings
// N(0, 0.02^2), CLS 0, Soft-MoE mu ~ N(0, 1/D) and scale `soft_scale` (the reference
// code's 1 by default). Same seed, same model.
Model init_model(const ModelConfig& config, uint64_t seed, float soft_scale = 1.0f);


}  // namespace vmoe
