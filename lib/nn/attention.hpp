#pragma once
// Multi-head scaled dot-product attention over a packed QKV buffer.
#include <cstdint>

#include "nn/primitive_cache.hpp"

namespace vmoe::nn {

// For each image b and head h, with Q, K, V read in place from qkv (B*T, 3*D) laid out
// [q heads | k heads | v heads]:
//   out[b, :, h] = softmax(Q K^T / sqrt(Dh)) V           out is (B*T, D)
//
// Inference (keep_probs false) runs a fused hand-written kernel: per (image, head) its
// scores live in a few rows of per-thread scratch that stay in cache, never in memory.
// scores is then a workspace of attention_workspace_floats(B, T, H, Dh, false) floats,
// sized for the OpenMP thread count at the time of the call (call from outside any
// parallel region).
// Training (keep_probs true) runs oneDNN's batched matmuls and softmax and keeps every
// image's attention probabilities in scores (B, H, T, T); the backward needs them.
// The fused kernel's matmul tiles use AVX-512 registers when the CPU has them (chosen at
// run time; the build targets x86-64-v3) unless this was set false, which tests do to
// check the AVX2 tiles on an AVX-512 machine too.
void attention_allow_avx512(bool allow);
int64_t attention_workspace_floats(int64_t B, int64_t T, int64_t H, int64_t Dh, bool keep_probs);
void attention_forward(float* out, float* scores, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Dh,
                       PrimitiveCache& cache, bool keep_probs = false);

}  // namespace vmoe::nn
