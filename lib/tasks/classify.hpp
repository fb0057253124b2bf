#pragma once
// Classifying image files: load by the config's image rules, run the engine in batches,
// and summarise each image's top classes and what its MoE layers dropped.
#include <string>
#include <vector>

#include "model/engine.hpp"

namespace vmoe {

struct ClassScore {
  int index;
  std::string label;
  float prob;
};

struct MoeLayerSummary {
  int layer;
  int capacity;  // slots per expert in this image's group (0 for Soft-MoE)
  double dropped;  // fraction of tokens no expert processed
  double choices_dropped;  // fraction of top-k choices dropped
};

struct Prediction {
  std::string image;
  std::vector<ClassScore> top;
  std::vector<float> logits;
  std::vector<MoeLayerSummary> moe;
};

// Images are grouped in batches whose size is a multiple of the routing's group_images,
// so groups are the consecutive images of the list, whatever the batch size.
std::vector<Prediction> classify_files(Engine& engine, const std::vector<std::string>& paths, int top_n,
                                       int max_batch = 64);

// softmax(logits) sorted descending, first top_n.
std::vector<ClassScore> top_classes(const float* logits, const ModelConfig& config, int top_n);

}  // namespace vmoe
