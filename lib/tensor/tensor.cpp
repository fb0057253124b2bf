#include "tensor/tensor.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"

namespace vmoe {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("negative dimension in shape {}", shape_str(shape));
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

float* aligned_floats(int64_t count) {
  size_t bytes = (static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(float) + 63) / 64 * 64;
  auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p) fail("out of memory allocating {} bytes", bytes);
  std::memset(p, 0, bytes);
  return p;
}

Tensor::Tensor(Shape shape) : shape_(std::move(shape)), numel_(shape_numel(shape_)) {
  data_.reset(aligned_floats(numel_));
}

void Tensor::fill(float value) { std::fill(data(), data() + numel_, value); }

Tensor Tensor::clone() const {
  Tensor t(shape_);
  if (numel_) std::memcpy(t.data(), data(), numel_ * sizeof(float));
  return t;
}

float* Scratch::reserve(int64_t count) {
  if (count > capacity_) {
    data_.reset(aligned_floats(count));
    capacity_ = count;
  }
  return data_.get();
}

}  // namespace vmoe
