#pragma once
// Patch importance (docs/ROUTING.md, "Patch importance"): how much the prediction needs
// each token's MoE output at each MoE block, measured by removing it.
//
//   importance_l(t) = log p(y | x) - log p(y | x, token t's routed MoE output at block l removed)
//
// y is the class the reference pass predicts. The reference pass routes top-k blocks with
// no capacity limit (dropless, so no other token is dropped anywhere) and experts-choice
// blocks as the model file configures them (they have no capacity-free form), each image
// as its own group. "Removed" is what a drop by all of t's experts does: at block l
// token t's residual passes through unchanged (plus the shared experts, which every token
// passes through). The T variants of an image run as one batch from block l + 1 on.
// A token no expert took has importance exactly 0 (its variant is the reference).
// Soft-MoE drops nothing and has no token order to compare, so it has no importance here.
#include <optional>
#include <vector>

#include "model/engine.hpp"
#include "spec/routing_trace.hpp"

namespace vmoe {

struct PatchImportance {
  int images = 0, tokens = 0;  // B, T
  std::vector<int> blocks;  // the MoE blocks, in block order (index j below)
  std::vector<int> predicted;  // (B) y, the reference pass's class
  std::vector<float> log_prob;  // (B) log p(y | x) of the reference pass
  std::vector<float> values;  // (B, blocks, T)
  RoutingTrace reference;  // the reference pass, with gates (detail)
  std::vector<std::vector<float>> inputs;  // with keep_inputs: per block (B*T, D), h = LN_1(x) of the reference pass

  const float* of(int image, int j) const { return values.data() + (static_cast<size_t>(image) * blocks.size() + j) * tokens; }
  // (B*T) importance of block j for the whole batch, token n = image * T + t: what
  // Engine::set_oracle_priority takes per block.
  std::vector<float> block_scores(int j) const;
};

// Importance of every token of B images (B, H, W, C) at every MoE block. Leaves the
// engine's routing as it found it. Throws for dense and Soft-MoE models.
PatchImportance patch_importance(Engine& engine, const float* images, int B, bool keep_inputs = false);

// Share of the positive importance of one image at MoE block j that tokens kept:
// any = reached at least one expert, all = kept every choice (top-k: k; experts-choice:
// taken by as many experts as the model's k). `trace` is a layer trace of a pass over the
// same images in the same order; `image` indexes both. Empty when the image has no
// positive importance at that block.
struct KeptShare {
  double any = 0, all = 0;
};
std::optional<KeptShare> importance_kept(const PatchImportance& imp, int image, int j, const MoeLayerTrace& trace,
                                         int model_k);

// Spearman rank correlation of a and b (average ranks for ties); 0 when either is constant.
double spearman(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace vmoe
