#include "nn/context.hpp"

namespace vmoe::nn {

Context& context() {
  static Context ctx;
  return ctx;
}

void record_primitive(const std::string& what, const std::string& impl) {
  context().created.push_back(what + ": " + impl);
}

std::vector<std::string> reference_primitives() {
  std::vector<std::string> slow;
  for (const std::string& entry : context().created)
    if (entry.find(": ref") != std::string::npos) slow.push_back(entry);
  return slow;
}

}  // namespace vmoe::nn
