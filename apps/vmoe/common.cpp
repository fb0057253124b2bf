#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "commands.hpp"

namespace vmoe::cli {

namespace fs = std::filesystem;

namespace {
CLI::Validator number_check(bool allow_zero) {
  return CLI::Validator(
      [allow_zero](std::string& text) -> std::string {
        double value = 0;
        try {
          size_t used = 0;
          value = std::stod(text, &used);
          if (used != text.size()) return "not a number: " + text;
        } catch (const std::exception&) {
          return "not a number: " + text;
        }
        if (!(value > 0 || (allow_zero && value == 0)))
          return (allow_zero ? "must not be negative, got " : "must be positive, got ") + text;
        return "";
      },
      allow_zero ? "NUMBER>=0" : "NUMBER>0");
}
}  // namespace

const CLI::Validator kPositive = number_check(false);
const CLI::Validator kNonNegative = number_check(true);

std::string resolve_model_path(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = std::getenv("VMOE_MODEL"); env && *env) return env;
  // The binary lives in build/ (or bin/ when installed); bundled models in data/models
  // (or share/vmoe/models).
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  std::vector<fs::path> roots;
  if (!ec) roots = {exe.parent_path().parent_path() / "data" / "models",
                    exe.parent_path().parent_path() / "share" / "vmoe" / "models"};
  roots.push_back(fs::path("data") / "models");
  for (const fs::path& root : roots) {
    fs::path candidate = root / "vmoe-fmnist.safetensors";
    if (fs::exists(candidate, ec)) return candidate.string();
  }
  throw UsageError("no model given and no bundled default (data/models/vmoe-fmnist.safetensors) found: pass -m MODEL or set VMOE_MODEL");
}

void add_model_option(CLI::App& app, std::string& model) {
  app.add_option("-m,--model", model, "model file (.safetensors); default: $VMOE_MODEL or the bundled model");
}

void add_resize_option(CLI::App& app, std::string& resize) {
  app.add_option("--resize", resize, "image rule instead of the model's: none, stretch (to the model's size) or resize_small_crop")
      ->check(CLI::IsMember({"none", "stretch", "resize_small_crop"}));
}

void apply_resize_override(Model& model, const std::string& resize) {
  ImageConfig& im = model.config.image;
  if (resize.empty()) return;
  if (resize == "none") im.resize = Resize::none;
  else if (resize == "stretch") im.resize = Resize::stretch;
  else if (im.resize != Resize::resize_small_crop) {
    im.resize = Resize::resize_small_crop;
    im.resize_small = std::max(im.height, im.width);
  }
}

RoutingOverrides RoutingFlags::overrides() const {
  RoutingOverrides o;
  o.capacity_factor = capacity_factor;
  if (routing == "bpr") o.batch_priority = true;
  else if (routing == "vanilla") o.batch_priority = false;
  o.group_images = group_images;
  return o;
}

void add_routing_options(CLI::App& app, RoutingFlags& flags, bool with_capacity_factor) {
  if (with_capacity_factor)
    app.add_option("--capacity-factor", flags.capacity_factor, "expert capacity factor (overrides the model's)")
        ->check(kPositive);
  app.add_option("--routing", flags.routing, "bpr (batch priority) or vanilla (token order)")
      ->check(CLI::IsMember({"bpr", "vanilla"}));
  app.add_option("--group-images", flags.group_images, "images routed together in one group (default: model's, 1)")
      ->check(kPositive);
}

}  // namespace vmoe::cli
