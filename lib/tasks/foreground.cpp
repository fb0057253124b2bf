#include "tasks/foreground.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "spec/router.hpp"

namespace vmoe {

std::vector<uint8_t> foreground_patches(const float* image, const ModelConfig& c) {
  const int ph = c.patch_h, pw = c.patch_w, C = c.image.channels, W = c.image.width;
  const int gh = c.grid_h(), gw = c.grid_w();
  const float lo = c.image.value_min, hi = c.image.value_max;
  const float threshold = lo + kForegroundFraction * (hi - lo);
  std::vector<uint8_t> out(static_cast<size_t>(gh) * gw, 0);
  for (int gy = 0; gy < gh; ++gy)
    for (int gx = 0; gx < gw; ++gx) {
      bool any = false;
      for (int py = 0; py < ph && !any; ++py) {
        const float* row = image + (static_cast<int64_t>(gy * ph + py) * W + int64_t{gx} * pw) * C;
        for (int i = 0; i < pw * C; ++i) any = any || row[i] > threshold;
      }
      out[static_cast<size_t>(gy) * gw + gx] = any;
    }
  return out;
}

ForegroundKept count_foreground_kept(const MoeLayerTrace& t, const std::vector<uint8_t>& patch_mask,
                                     int patches_per_image, int all_threshold) {
  const int T = t.tokens_per_image;
  const int off = T - patches_per_image;  // 1 with a CLS token
  if (patches_per_image < 1 || off < 0 || T == 0 || t.num_tokens() % T != 0 ||
      static_cast<int64_t>(patch_mask.size()) != t.num_tokens() / T * patches_per_image)
    fail("internal: foreground mask of {} patches for a trace of {} tokens ({} per image, {} patches)", patch_mask.size(),
         t.num_tokens(), T, patches_per_image);
  // How many experts a token must get to count as kept with all choices.
  const int all = t.router->all_choices(t, all_threshold);
  ForegroundKept n;
  const int64_t images = t.num_tokens() / T;
  for (int64_t b = 0; b < images; ++b)
    for (int p = 0; p < patches_per_image; ++p) {
      if (!patch_mask[b * patches_per_image + p]) continue;
      ++n.foreground;
      if (!t.router->drops()) {  // nothing is dropped
        ++n.kept_all, ++n.kept_any;
        continue;
      }
      const int taken = t.times_taken[b * T + off + p];
      n.kept_all += taken >= all;
      n.kept_any += taken >= 1;
    }
  return n;
}

}  // namespace vmoe
