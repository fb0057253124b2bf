#pragma once
// The one oneDNN engine and stream every op uses (the only process-wide state), plus
// the list of implementations the primitives we created resolved to, so tests and
// `vmoe bench` can say which kernels ran and catch a slow `ref` fallback.
#include <string>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

namespace vmoe::nn {

struct Context {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::vector<std::string> created;  // "<op> <shape>: <impl_info_str>"
};

Context& context();
void record_primitive(const std::string& what, const std::string& impl);
// Entries of context().created whose implementation is a reference (slow) kernel.
std::vector<std::string> reference_primitives();

}  // namespace vmoe::nn
