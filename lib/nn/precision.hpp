#pragma once
// The arithmetic the engine's large matmuls run in. f32: everything in float. bf16:
// the big weight matrices are kept as bfloat16 (8 bits of mantissa) and the activations
// that feed them are rounded to bfloat16; every matmul still accumulates and writes in
// f32 (or bf16 for a hidden layer that only feeds the next matmul), and layer norms,
// attention softmax, routers and residual stream stay f32 (docs/DECISIONS.md).
#include <cstdint>
#include <string>

namespace vmoe::nn {

enum class Precision { f32, bf16 };

const char* to_string(Precision p);
// "f32" | "bf16"; throws naming the bad value otherwise.
Precision parse_precision(const std::string& text);

// The instruction set oneDNN would use here, as its name ("avx512_core_bf16", "avx2", ...).
std::string effective_isa_name();
// True when oneDNN may use native bf16 instructions on this CPU (avx512_core_bf16 or
// AMX); honours ONEDNN_MAX_CPU_ISA. Without them oneDNN 2.6 emulates bf16, slower than f32.
bool native_bf16();
// True when oneDNN may use AVX-512 (avx512_core or better); honours ONEDNN_MAX_CPU_ISA.
bool avx512_core();
// Throws a one-line vmoe::Error when bf16 was asked for on a CPU without native bf16.
void require_precision(Precision p);

// Round to nearest even, as the CPU's vcvtneps2bf16 does; NaN stays NaN, +-inf stays +-inf.
inline uint16_t bf16_from_float(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float float_from_bf16(uint16_t h) {
  const uint32_t u = uint32_t{h} << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
// dst[i] = bf16(src[i]) for i < n, in parallel over OpenMP threads for large n.
void to_bf16(uint16_t* dst, const float* src, int64_t n);

}  // namespace vmoe::nn
