#include "moe/capacity.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "spec/router.hpp"

namespace vmoe {

int64_t expert_capacity(int64_t tokens, int num_experts, double capacity_factor, CapacityRounding rounding,
                        int multiple_of) {
  if (num_experts <= 0) fail("capacity: {} experts", num_experts);
  const double exact = static_cast<double>(tokens) * capacity_factor / num_experts;
  if (!std::isfinite(exact)) fail("capacity: factor {} gives no finite capacity", capacity_factor);
  double rounded = rounding == CapacityRounding::ceil ? std::ceil(exact) : std::round(exact);
  if (rounded > 1e12) fail("capacity: factor {} gives an absurd capacity", capacity_factor);
  auto capacity = static_cast<int64_t>(rounded);
  if (multiple_of > 0 && capacity % multiple_of) capacity += multiple_of - capacity % multiple_of;
  if (capacity < 1)
    fail("capacity factor {} leaves experts no room: {} tokens over {} experts give capacity {}", capacity_factor,
         tokens, num_experts, capacity);
  return capacity;
}

int64_t group_capacity(const MoeConfig& m, int64_t S) { return m.router->capacity(m, S); }

double effective_capacity_factor(int64_t capacity, int num_experts, int64_t tokens) {
  return static_cast<double>(capacity) * num_experts / static_cast<double>(tokens);
}

}  // namespace vmoe
