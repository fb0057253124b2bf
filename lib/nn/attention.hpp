#pragma once
// Multi-head scaled dot-product attention over a packed QKV buffer.
#include <cstdint>

#include "nn/primitive_cache.hpp"

namespace vmoe::nn {

// For each image b and head h, with Q, K, V read in place from qkv (B*T, 3*D) laid out
// [q heads | k heads | v heads]:
//   out[b, :, h] = softmax(Q K^T / sqrt(Dh)) V           out is (B*T, D)
// scores is a (H, T, T) workspace, or with keep_probs (B, H, T, T) keeping every
// image's attention probabilities (training needs them).
void attention_forward(float* out, float* scores, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Dh,
                       PrimitiveCache& cache, bool keep_probs = false);

}  // namespace vmoe::nn
