#include "spec/router.hpp"

#include "core/error.hpp"

namespace vmoe {

void Router::plan(MoeWorkspace&, const float*, const float*, const float*, const std::vector<Group>&,
                  const std::vector<int>&, const MoeConfig&) const {
  fail("plan_routing: the {} router has no token routing", name());
}

}  // namespace vmoe
