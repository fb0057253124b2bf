#pragma once
// Finding NaN and infinities in float arrays. Bit tests, not std::isfinite, so the check
// survives any floating-point optimisation flags (-ffinite-math-only would fold
// std::isfinite to true); the loop vectorises and reads memory once.
#include <cstdint>
#include <cstring>
#include <string>

namespace vmoe {

inline bool is_finite_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return (bits & 0x7f800000u) != 0x7f800000u;  // exponent all ones: inf or NaN
}

// Index of the first NaN or infinity in x[0, n), or -1 when all are finite.
inline int64_t first_non_finite(const float* x, int64_t n) {
  constexpr int64_t kChunk = 1024;  // a branch-free pass per chunk, then find the element
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t end = begin + kChunk < n ? begin + kChunk : n;
    bool bad = false;
    for (int64_t i = begin; i < end; ++i) bad |= !is_finite_bits(x[i]);
    if (bad)
      for (int64_t i = begin; i < end; ++i)
        if (!is_finite_bits(x[i])) return i;
  }
  return -1;
}

// "nan", "inf" or "-inf", as messages print a bad value.
inline std::string non_finite_name(float v) {
  if (v != v) return "NaN";
  return v > 0 ? "+inf" : "-inf";
}

}  // namespace vmoe
