#include "tensor/finite_check.hpp"

#include <vector>

#include "core/error.hpp"
#include "core/finite.hpp"

namespace vmoe {

void check_finite(const Tensor& t, const std::string& name, const std::string& file) {
  const int64_t i = first_non_finite(t.data(), t.numel());
  if (i < 0) return;
  const Shape& shape = t.shape();
  std::vector<int64_t> index(shape.size());
  int64_t rest = i;
  for (size_t d = shape.size(); d-- > 0;) index[d] = rest % shape[d], rest /= shape[d];
  std::string at;
  for (size_t d = 0; d < index.size(); ++d) at += (d ? ", " : "") + std::to_string(index[d]);
  fail("{}: tensor \"{}\" holds {} at index [{}] (a NaN or infinite weight: the file is broken, e.g. written by a "
       "diverged training run)", file, name, non_finite_name(t.data()[i]), at);
}

}  // namespace vmoe
