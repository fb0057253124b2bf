// Which pictures each router gets, and writing them (encode all, then write each
// atomically; remove this call's files again if any write fails).
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <opencv2/imgcodecs.hpp>

#include "core/error.hpp"
#include "io/atomic_file.hpp"
#include "spec/router.hpp"
#include "viz/pictures.hpp"

namespace vmoe::viz {

namespace fs = std::filesystem;

std::vector<Picture> route_pictures(const RouteResult& r) {
  std::vector<Picture> out;
  for (size_t i = 0; i < r.main.trace.layers.size(); ++i)
    for (RouteView v : r.main.trace.layers[i].router->pictures()) {
      switch (v) {
        case RouteView::expert_overlay: out.push_back(expert_overlay(r, i)); break;
        case RouteView::dropped_overlay: out.push_back(dropped_overlay(r, i)); break;
        case RouteView::times_taken: out.push_back(times_taken_map(r, i)); break;
        case RouteView::priority_heatmap:
          out.push_back(priority_heatmap(r, i));
          if (r.importance) out.push_back(importance_heatmap(r, i));
          break;
        case RouteView::capacity_strip:
          if (!r.strip.empty()) out.push_back(capacity_strip(r, i));
          break;
        case RouteView::soft_dispatch: out.push_back(soft_dispatch_grid(r, i)); break;
        case RouteView::soft_combine: out.push_back(soft_combine_map(r, i)); break;
      }
    }
  return out;
}

void prepare_output_dir(const std::string& dir) {
  if (dir.empty()) fail("output directory: empty path");
  std::error_code ec;
  const fs::path p(dir);
  if (fs::exists(p, ec) && !fs::is_directory(p, ec)) fail("output directory {}: exists and is not a directory", dir);
  fs::create_directories(p, ec);
  if (ec) fail("output directory {}: cannot create it ({})", dir, ec.message());
  // Permission bits are not the whole story (root, read-only mounts): try a file.
  const fs::path probe = p / (".vmoe-probe." + std::to_string(::getpid()));
  FILE* f = std::fopen(probe.c_str(), "wb");
  if (!f) fail("output directory {}: cannot write into it ({})", dir, std::strerror(errno));
  std::fclose(f);
  fs::remove(probe, ec);
}

std::vector<std::string> write_pictures(const std::vector<Picture>& pictures, const std::string& dir) {
  std::vector<std::vector<uchar>> encoded(pictures.size());
  for (size_t i = 0; i < pictures.size(); ++i) {
    bool ok = false;
    try {
      ok = cv::imencode(".png", pictures[i].image, encoded[i]);
    } catch (const cv::Exception& e) {
      fail("{}: PNG encoding failed ({})", pictures[i].file, e.what());
    }
    if (!ok) fail("{}: PNG encoding failed", pictures[i].file);
  }
  prepare_output_dir(dir);
  std::vector<std::string> written;
  try {
    for (size_t i = 0; i < pictures.size(); ++i) {
      const std::string path = (fs::path(dir) / pictures[i].file).string();
      write_file_atomically(path, [&](std::ostream& out) {
        out.write(reinterpret_cast<const char*>(encoded[i].data()), static_cast<std::streamsize>(encoded[i].size()));
      });
      written.push_back(path);
    }
  } catch (...) {
    std::error_code ec;
    for (const std::string& path : written) fs::remove(path, ec);
    throw;
  }
  return written;
}

}  // namespace vmoe::viz
