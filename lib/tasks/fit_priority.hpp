#pragma once
// `vmoe fit-priority`: a priority scorer that predicts patch importance (issue 22, item 3).
// Per MoE block a linear head s(t) = h_t . kernel + bias on the block's input h = LN_1(x),
// fitted by ridge regression to the patch importance (tasks/importance.hpp) of the tokens
// of training images. The model keeps its function: priority "fitted" only orders tokens
// for BPR (unlike "learned", whose scorer also scales the MoE output).
#include <cstdint>
#include <functional>
#include <vector>

#include "io/dataset.hpp"
#include "model/engine.hpp"
#include "spec/params.hpp"

namespace vmoe {

struct FitPriorityOptions {
  int64_t images = 1024;  // training images, drawn without replacement
  uint64_t seed = 1;  // which images
  double ridge = 1e-3;  // L2 penalty on the kernel, relative to the mean of diag(X'X)
  int batch = 32;  // images per importance pass
  // What the head is fitted to, per token of an image at a block: nats (the importance),
  // share (importance / the image's total positive importance there: every image weighs
  // the same) or rank (the token's importance rank in the image, scaled to [0, 1]).
  enum class Target { nats, share, rank } target = Target::nats;
  std::function<void(int64_t, int64_t)> progress;  // (images done, images)
};

struct FitPriorityResult {
  Model model;  // the input model with priority "fitted" and a head in every MoE block
  int64_t images = 0, tokens = 0;  // fitted on
  std::vector<int> blocks;
  std::vector<double> r2;  // per block: share of the importance variance the head explains (fit data)
};

// Throws for dense and Soft-MoE models and for models with a learned scorer (whose
// tensors the head would take).
FitPriorityResult fit_priority(Engine& engine, const Dataset& data, const FitPriorityOptions& options);

// Solves (A) x = b for a symmetric positive definite n x n A (row-major) by Cholesky;
// throws if A is not positive definite.
std::vector<double> solve_spd(std::vector<double> A, std::vector<double> b, int n);

}  // namespace vmoe
