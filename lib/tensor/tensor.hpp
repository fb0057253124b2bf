#pragma once
// A small owning float32 tensor: a shape and a 64-byte aligned buffer, row-major.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace vmoe {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "(2, 3, 4)"

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape shape);  // zero-filled

  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t rank() const { return shape_.size(); }
  int64_t numel() const { return numel_; }
  bool empty() const { return numel_ == 0 && shape_.empty(); }
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  float& operator[](int64_t i) { return data_.get()[i]; }
  float operator[](int64_t i) const { return data_.get()[i]; }

  void fill(float value);
  Tensor clone() const;

 private:
  Shape shape_;
  int64_t numel_ = 0;
  std::unique_ptr<float[], AlignedFree> data_;
};

// A growable scratch buffer that keeps its allocation: resize() reallocates only when
// asked for more than it ever held, so per-batch workspaces settle after the first call.
class Scratch {
 public:
  float* reserve(int64_t count);
  // The same buffer holding `count` 16-bit values (bfloat16 activations).
  uint16_t* reserve_bf16(int64_t count) { return reinterpret_cast<uint16_t*>(reserve((count + 1) / 2)); }
  float* data() { return data_.get(); }
  uint16_t* data_bf16() { return reinterpret_cast<uint16_t*>(data_.get()); }
  int64_t capacity() const { return capacity_; }

 private:
  std::unique_ptr<float[], AlignedFree> data_;
  int64_t capacity_ = 0;
};

float* aligned_floats(int64_t count);  // 64-byte aligned, zeroed; free with std::free

}  // namespace vmoe
