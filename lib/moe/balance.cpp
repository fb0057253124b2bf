#include "moe/balance.hpp"

namespace vmoe {

void update_balance_bias(float* bias, const std::vector<int64_t>& load, float rate) {
  const int64_t E = static_cast<int64_t>(load.size());
  if (E == 0) return;
  int64_t total = 0;
  for (int64_t l : load) total += l;
  // Compare load[e] * E with the total: the mean without rounding.
  for (int64_t e = 0; e < E; ++e) {
    const int64_t scaled = load[e] * E;
    if (scaled < total) bias[e] += rate;
    else if (scaled > total) bias[e] -= rate;
  }
}

}  // namespace vmoe
