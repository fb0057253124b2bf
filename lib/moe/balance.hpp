#pragma once
// Auxiliary-loss-free load balancing (config moe.balance "bias", DeepSeek-V3): top-k
// chooses experts by router logits + a per-expert bias b, while the gates that weight
// the outputs stay the softmax of the plain logits. The bias is no parameter of the
// loss: after every training step it moves each expert toward the mean load,
//   b_e += rate * sign(mean_e' load_e' - load_e),
// where load_e counts the top-k choices of expert e in the step (kept or dropped: the
// bias steers choices, and counting kept rows would hide demand above capacity).
#include <cstdint>
#include <vector>

namespace vmoe {

// Default update rate of `vmoe train --balance-rate` (docs/DECISIONS.md).
inline constexpr double kDefaultBalanceRate = 1e-2;

// bias (E) += rate * sign(mean(load) - load[e]); an expert at the mean does not move.
void update_balance_bias(float* bias, const std::vector<int64_t>& load, float rate);

}  // namespace vmoe
