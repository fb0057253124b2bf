#pragma once
// The table of routers by config name (router_registry.cpp). A new router adds its line
// there and its own file beside it (docs/ARCHITECTURE.md).
#include <string>
#include <vector>

#include "spec/router.hpp"

namespace vmoe {

const Router& find_router(const std::string& name);  // throws listing the known names
const std::vector<const Router*>& routers();
std::string router_names(const char* separator);  // "top_k|experts_choice|soft"
const Router& default_router();  // "top_k", the router of a config that names none

}  // namespace vmoe
