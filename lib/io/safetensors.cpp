#include "io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/atomic_file.hpp"
#include "io/input_file.hpp"

namespace vmoe {
namespace {

using json = nlohmann::json;
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

size_t dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;
}

float half_to_float(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  float value;
  if (exponent == 0) value = std::ldexp(static_cast<float>(mantissa), -24);
  else if (exponent == 31) value = mantissa ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else value = std::ldexp(static_cast<float>(mantissa | 0x400), static_cast<int>(exponent) - 25);
  return sign ? -value : value;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = open_input_file(path, "model");  // a FIFO or device is refused, never waited on
  struct stat st {};
  ::fstat(fd, &st);
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    fail("{}: truncated safetensors file ({} bytes, no header)", path, size_);
  }
  map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail("cannot map {}: {}", path, std::strerror(errno));
  }
  try {
    const auto* bytes = static_cast<const unsigned char*>(map_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
    if (header_len > kMaxHeaderBytes || header_len > size_ - 8)
      fail("{}: header length {} does not fit in the {}-byte file", path, header_len, size_);
    json header;
    try {
      header = json::parse(bytes + 8, bytes + 8 + header_len);
    } catch (const json::exception& e) {
      fail("{}: header is not valid JSON ({})", path, e.what());
    }
    if (!header.is_object()) fail("{}: header is not a JSON object", path);
    const unsigned char* data = bytes + 8 + header_len;
    const uint64_t data_size = size_ - 8 - header_len;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const json& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) fail("{}: __metadata__ is not an object", path);
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) fail("{}: metadata \"{}\" is not a string", path, m.key());
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      if (!v.is_object() || !v.contains("dtype") || !v["dtype"].is_string() || !v.contains("shape") ||
          !v["shape"].is_array() || !v.contains("data_offsets") || !v["data_offsets"].is_array() ||
          v["data_offsets"].size() != 2)
        fail("{}: tensor \"{}\" has a malformed header entry", path, name);
      SafetensorsEntry e;
      e.dtype = v["dtype"].get<std::string>();
      size_t elem = dtype_size(e.dtype);
      if (!elem) fail("{}: tensor \"{}\" has unknown dtype {}", path, name, e.dtype);
      uint64_t numel = 1;
      for (const json& d : v["shape"]) {
        if (!d.is_number_unsigned()) fail("{}: tensor \"{}\" has a bad dimension", path, name);
        uint64_t dim = d.get<uint64_t>();
        if (dim != 0 && numel > (uint64_t{1} << 40) / dim) fail("{}: tensor \"{}\" is implausibly large", path, name);
        numel *= dim;
        e.shape.push_back(static_cast<int64_t>(dim));
      }
      const json& off = v["data_offsets"];
      if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        fail("{}: tensor \"{}\" has bad data_offsets", path, name);
      uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
      if (begin > end || end > data_size)
        fail("{}: tensor \"{}\" data [{}, {}) lies outside the {}-byte data section (truncated file?)", path, name,
             begin, end, data_size);
      if (end - begin != numel * elem)
        fail("{}: tensor \"{}\" has {} bytes but shape {} {} needs {}", path, name, end - begin, shape_str(e.shape),
             e.dtype, numel * elem);
      e.data = data + begin;
      e.bytes = end - begin;
      tensors_[name] = std::move(e);
    }
  } catch (...) {
    ::munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

Tensor SafetensorsFile::read_f32(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail("{}: missing tensor \"{}\"", path_, name);
  const SafetensorsEntry& e = it->second;
  Tensor t(e.shape);
  if (e.dtype == "F32") {
    std::memcpy(t.data(), e.data, e.bytes);
  } else if (e.dtype == "BF16" || e.dtype == "F16") {
    for (int64_t i = 0; i < t.numel(); ++i) {
      uint16_t h;
      std::memcpy(&h, e.data + 2 * i, 2);
      if (e.dtype == "BF16") {
        uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(&t[i], &bits, 4);
      } else {
        t[i] = half_to_float(h);
      }
    }
  } else {
    fail("{}: tensor \"{}\" has dtype {}, expected F32", path_, name, e.dtype);
  }
  return t;
}

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    uint64_t bytes = static_cast<uint64_t>(t->numel()) * sizeof(float);
    header[name] = {{"dtype", "F32"}, {"shape", t->shape()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  write_file_atomically(path, [&](std::ostream& out) {
    uint64_t n = text.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, t] : tensors)
      out.write(reinterpret_cast<const char*>(t->data()), static_cast<std::streamsize>(t->numel() * sizeof(float)));
  });
}

}  // namespace vmoe
