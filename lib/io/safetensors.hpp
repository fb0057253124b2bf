#pragma once
// safetensors: u64 little-endian header length, a JSON header naming every tensor's
// dtype, shape and byte range, then the raw data. Reading memory-maps the file and
// validates the header and every range before any data is touched.
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.hpp"

namespace vmoe {

struct SafetensorsEntry {
  std::string dtype;  // "F32", "F16", "BF16", ...
  Shape shape;
  const unsigned char* data = nullptr;
  size_t bytes = 0;
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorsEntry>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor's data as float32 (F32 copied, BF16/F16 widened); throws naming it.
  Tensor read_f32(const std::string& name) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, SafetensorsEntry> tensors_;
  std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, const Tensor*>>;

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace vmoe
