#include "io/model_file.hpp"

#include <set>

#include "core/error.hpp"
#include "tensor/finite_check.hpp"
#include "io/config_json.hpp"
#include "io/safetensors.hpp"

namespace vmoe {

Model load_model(const std::string& path) {
  SafetensorsFile file(path);
  auto meta = file.metadata().find("vmoe.config");
  if (meta == file.metadata().end()) fail("{}: no \"vmoe.config\" in the safetensors metadata", path);
  Model model;
  model.source = path;
  try {
    model.config = parse_config_json(meta->second);
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
  std::set<std::string> expected;
  for (ParamSlot& slot : param_slots(model.params, model.config)) {
    expected.insert(slot.name);
    auto it = file.tensors().find(slot.name);
    if (it == file.tensors().end()) fail("{}: missing tensor \"{}\" (expected shape {})", path, slot.name, shape_str(slot.shape));
    const SafetensorsEntry& e = it->second;
    if (e.dtype != "F32") fail("{}: tensor \"{}\" has dtype {}, expected F32", path, slot.name, e.dtype);
    if (e.shape != slot.shape)
      fail("{}: tensor \"{}\" has shape {}, config implies {}", path, slot.name, shape_str(e.shape), shape_str(slot.shape));
    *slot.tensor = file.read_f32(slot.name);
    check_finite(*slot.tensor, slot.name, path);
  }
  for (const auto& [name, e] : file.tensors())
    if (!expected.count(name)) fail("{}: unexpected tensor \"{}\" (not implied by the config)", path, name);
  return model;
}

void save_model(const Model& model, const std::string& path) {
  NamedTensors named;
  for (const ConstParamSlot& slot : param_slots(model.params, model.config)) {
    if (slot.tensor->shape() != slot.shape)
      fail("cannot save: tensor \"{}\" has shape {}, config implies {}", slot.name, shape_str(slot.tensor->shape()),
           shape_str(slot.shape));
    named.emplace_back(slot.name, slot.tensor);
  }
  write_safetensors(path, named, {{"vmoe.config", config_to_json(model.config)}});
}

}  // namespace vmoe
