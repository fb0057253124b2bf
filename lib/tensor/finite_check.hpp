#pragma once
// Refusing tensors that hold NaN or infinities (weights read from files).
#include <string>

#include "tensor/tensor.hpp"

namespace vmoe {

// Throws vmoe::Error "FILE: tensor "NAME" holds NaN at index [i, j, k] (...)" naming the
// first non-finite element in the tensor's own coordinates. A NaN or infinite weight
// makes every later number meaningless, yet routing and softmax can still print
// plausible results from it (issue 24, D10).
void check_finite(const Tensor& t, const std::string& name, const std::string& file);

}  // namespace vmoe
