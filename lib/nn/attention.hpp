#pragma once
// Multi-head scaled dot-product attention over a packed QKV buffer.
#include <cstdint>

#include "nn/primitive_cache.hpp"

namespace vmoe::nn {

// For each image b and head h, with Q, K, V read in place from qkv (B*T, 3*D) laid out
// [q heads | k heads | v heads]:
//   out[b, :, h] = softmax(Q K^T / sqrt(Dh)) V           out is (B*T, D)
// scores is a workspace of attention_chunk_images(B, T, H) * H * T * T floats (images
// are processed in chunks of that many), or with keep_probs (B, H, T, T) keeping every
// image's attention probabilities (training needs them).
int64_t attention_chunk_images(int64_t B, int64_t T, int64_t H);
void attention_forward(float* out, float* scores, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Dh,
                       PrimitiveCache& cache, bool keep_probs = false);

}  // namespace vmoe::nn
