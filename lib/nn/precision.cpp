#include "nn/precision.hpp"

#include <oneapi/dnnl/dnnl.hpp>

#include "core/error.hpp"

namespace vmoe::nn {

const char* to_string(Precision p) { return p == Precision::bf16 ? "bf16" : "f32"; }

Precision parse_precision(const std::string& text) {
  if (text == "f32") return Precision::f32;
  if (text == "bf16") return Precision::bf16;
  fail("precision \"{}\": expected f32 or bf16", text);
}

namespace {
// oneDNN 2.6's ISA values are bit sets: each ISA holds the bits of those it extends.
bool isa_includes(dnnl::cpu_isa isa, dnnl::cpu_isa part) {
  const auto have = static_cast<unsigned>(isa), want = static_cast<unsigned>(part);
  return (have & want) == want;
}
}  // namespace

std::string effective_isa_name() {
  using dnnl::cpu_isa;
  const cpu_isa isa = dnnl::get_effective_cpu_isa();
  // Most capable first.
  const std::pair<cpu_isa, const char*> names[] = {
      {cpu_isa::avx512_core_amx, "avx512_core_amx"}, {cpu_isa::avx512_core_bf16, "avx512_core_bf16"},
      {cpu_isa::avx512_core_vnni, "avx512_core_vnni"}, {cpu_isa::avx512_core, "avx512_core"},
      {cpu_isa::avx2_vnni, "avx2_vnni"}, {cpu_isa::avx2, "avx2"}, {cpu_isa::avx, "avx"}, {cpu_isa::sse41, "sse41"}};
  for (const auto& [value, name] : names)
    if (isa_includes(isa, value)) return name;
  return "generic";
}

bool avx512_core() { return isa_includes(dnnl::get_effective_cpu_isa(), dnnl::cpu_isa::avx512_core); }

bool native_bf16() { return isa_includes(dnnl::get_effective_cpu_isa(), dnnl::cpu_isa::avx512_core_bf16); }

void require_precision(Precision p) {
  if (p != Precision::bf16 || native_bf16()) return;
  fail("--precision bf16 needs a CPU with native bf16 instructions (avx512_bf16 or AMX); oneDNN's best here is {}, "
       "where bf16 would only be emulated and run slower than f32: use --precision f32",
       effective_isa_name());
}

void to_bf16(uint16_t* dst, const float* src, int64_t n) {
  // Below ~64 K values waking the other thread costs more than the conversion.
#pragma omp parallel for schedule(static) if (n >= (int64_t{1} << 16))
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_from_float(src[i]);
}

}  // namespace vmoe::nn
