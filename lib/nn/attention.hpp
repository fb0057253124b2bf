#pragma once
// Multi-head scaled dot-product attention over a packed QKV buffer.
#include <cstdint>

#include "nn/primitive_cache.hpp"

namespace vmoe::nn {

// For each image b and head h, with Q, K, V read in place from qkv (B*T, 3*D) laid out
// [q heads | k heads | v heads]:
//   out[b, :, h] = softmax(Q K^T / sqrt(Dh)) V           out is (B*T, D)
//
// It runs a fused hand-written kernel: per (image, head) its scores live in a few rows of
// per-thread scratch that stay in cache.
// Inference (keep_probs false): they never reach memory; scores is a workspace of
// attention_workspace_floats(B, T, H, Dh, false) floats, sized for the OpenMP thread count
// at the time of the call (call from outside any parallel region).
// Training (keep_probs true): every image's attention probabilities are kept in scores
// (B, H, T, T), and out = P V from them; the backward needs them.
// The fused kernel's matmul tiles use AVX-512 registers when the CPU has them (chosen at
// run time; the build targets x86-64-v3) unless this was set false, which tests do to
// check the AVX2 tiles on an AVX-512 machine too.
void attention_allow_avx512(bool allow);
int64_t attention_workspace_floats(int64_t B, int64_t T, int64_t H, int64_t Dh, bool keep_probs);
void attention_forward(float* out, float* scores, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Dh,
                       bool keep_probs = false);

// The training backward, per image b and head h, with P = probs (B, H, T, T) kept by the
// forward, dO the head's columns of dout (B*T, D), s = 1/sqrt(Dh):
//   dP = dO V^T,  dS = P * (dP - rowsum(dP * P)),  dQ = s dS K,  dK = s dS^T Q,  dV = P^T dO
// written into dqkv (B*T, 3*D) laid out as qkv. oneDNN's batched matmuls over images and
// heads; dP and dS go to workspace, attention_backward_workspace_floats(B, T, H) floats.
// (A hand-written fused backward with AVX2 tiles measured 0.98-1.05x on this op alone in
// the final interleaved runs, and no difference on a training step: docs/BENCHMARKS.md,
// session 15.)
int64_t attention_backward_workspace_floats(int64_t B, int64_t T, int64_t H);
void attention_backward(float* dqkv, float* workspace, const float* dout, const float* probs, const float* qkv,
                        int64_t B, int64_t T, int64_t H, int64_t Dh, PrimitiveCache& cache);

}  // namespace vmoe::nn
