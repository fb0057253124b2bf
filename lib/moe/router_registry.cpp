// The one table of routers, keyed by the config name (moe.router). A new router adds
// its line here and its own file under lib/moe/.
#include "moe/router_registry.hpp"

#include "core/error.hpp"

namespace vmoe {

const Router& top_k_router();
const Router& experts_choice_router();
const Router& soft_router();

const std::vector<const Router*>& routers() {
  static const std::vector<const Router*> table = {&top_k_router(), &experts_choice_router(), &soft_router()};
  return table;
}

const Router& default_router() { return top_k_router(); }

std::string router_names(const char* separator) {
  std::string names;
  for (const Router* r : routers()) names += (names.empty() ? "" : separator) + std::string(r->name());
  return names;
}

const Router& find_router(const std::string& name) {
  for (const Router* r : routers())
    if (name == r->name()) return *r;
  fail("unknown router \"{}\" (known: {})", name, router_names(", "));
}

}  // namespace vmoe
