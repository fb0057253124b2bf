#include "moe/soft_moe.hpp"

#include <cmath>
#include <cstring>

#include "nn/gemm.hpp"

namespace vmoe {

void soft_normalise_tokens(float* xn, float* inv_norm, const float* h, int64_t N, int64_t D) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* row = h + n * D;
    float ss = 0;  // float lanes: at most ~D u relative error in the sum of D squares (worst case)
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < D; ++d) ss += row[d] * row[d];
    const float inv = 1.0f / std::sqrt(ss + kSoftNormEps);
    if (inv_norm) inv_norm[n] = inv;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) xn[n * D + d] = row[d] * inv;
  }
}

void soft_normalised_mu(float* out, float* inv_norm, const float* mu, float scale, int64_t D, int64_t slots) {
  for (int64_t s = 0; s < slots; ++s) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += double{mu[d * slots + s]} * mu[d * slots + s];
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss) + kSoftNormEps);
    if (inv_norm) inv_norm[s] = inv;
    for (int64_t d = 0; d < D; ++d) out[d * slots + s] = scale * mu[d * slots + s] * inv;
  }
}

void soft_slot_inputs(float* slot_in, const float* dispatch, const float* h, const std::vector<Group>& groups,
                      int64_t slots, int64_t D, nn::PrimitiveCache& cache) {
  for (const auto& [g0, count] : equal_size_runs(groups)) {
    const int64_t S = groups[g0].size, first = groups[g0].first;
    nn::GemmSpec s;  // (slots, D) = dispatch^T (slots, S) @ h (S, D)
    s.m = slots, s.k = S, s.n = D, s.trans_a = true, s.lda = slots;
    s.batch = count, s.batch_stride_a = S * slots, s.batch_stride_b = S * D, s.batch_stride_c = slots * D;
    cache.gemm(s).run(slot_in + g0 * slots * D, dispatch + first * slots, h + first * D);
  }
}

void soft_combine_slots(float* x, const float* combine, const float* slot_out, const std::vector<Group>& groups,
                        int64_t slots, int64_t D, nn::PrimitiveCache& cache) {
  for (const auto& [g0, count] : equal_size_runs(groups)) {
    const int64_t S = groups[g0].size, first = groups[g0].first;
    nn::GemmSpec s;  // x (S, D) += combine (S, slots) @ slot_out (slots, D)
    s.m = S, s.k = slots, s.n = D, s.beta = 1.0f;
    s.batch = count, s.batch_stride_a = S * slots, s.batch_stride_b = slots * D, s.batch_stride_c = S * D;
    cache.gemm(s).run(x + first * D, combine + first * slots, slot_out + g0 * slots * D);
  }
}

namespace {

// Copies the (P, D) slot blocks between group-major (g, e) and expert-major (e, g) order.
void move_slot_blocks(float* dst, const float* src, int64_t G, int64_t E, int64_t P, int64_t D, bool to_expert_major) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e) {
      const int64_t group_major = (g * E + e) * P * D, expert_major = (e * G + g) * P * D;
      if (to_expert_major) std::memcpy(dst + expert_major, src + group_major, sizeof(float) * P * D);
      else std::memcpy(dst + group_major, src + expert_major, sizeof(float) * P * D);
    }
}

}  // namespace

void slots_to_expert_major(float* expert_major, const float* group_major, int64_t G, int64_t E, int64_t P,
                           int64_t D) {
  move_slot_blocks(expert_major, group_major, G, E, P, D, true);
}

void slots_to_group_major(float* group_major, const float* expert_major, int64_t G, int64_t E, int64_t P,
                          int64_t D) {
  move_slot_blocks(group_major, expert_major, G, E, P, D, false);
}

}  // namespace vmoe
