#pragma once
// Foreground patches and how many of them the MoE layers kept (issue 11, item 4).
//
// A patch is foreground when some value (any pixel, any channel) of the model input
// inside it lies above value_min + 0.1 * (value_max - value_min): 10% of the image's
// value range. Images map 0..255 linearly onto the value range (DESIGN §3), so on the
// 0..255 scale a patch is foreground when it holds a byte > 25.5, i.e. >= 26. The rule
// is defined for any model; it is meant for Fashion-MNIST, whose background is 0. The
// CLS token is not a patch and never counts.
//
// Kept shares per MoE layer, over the foreground patches only:
//   top-k           kept_all: every one of its k choices kept; kept_any: at least one
//   experts-choice  kept_all: taken by at least k experts (the config's k: what a top-k
//                   token with every choice kept receives); kept_any: taken by at least one
//   Soft-MoE        nothing is dropped: every foreground patch counts as kept (1.0 / 1.0)
#include <cstdint>
#include <vector>

#include "spec/config.hpp"
#include "spec/routing_trace.hpp"

namespace vmoe {

inline constexpr float kForegroundFraction = 0.1f;  // of the value range

// image: (H, W, C) model input in the config's value range. Returns (num_patches) flags,
// 1 = foreground, patches row-major over the grid (the token order after the CLS token).
std::vector<uint8_t> foreground_patches(const float* image, const ModelConfig& c);

struct ForegroundKept {
  int64_t foreground = 0;  // foreground patches seen
  int64_t kept_all = 0;  // of those, kept with all choices (see above)
  int64_t kept_any = 0;  // of those, kept with at least one choice
};

// Counts over every image of the trace. patch_mask: (images, patches_per_image) flags
// from foreground_patches, images in trace order. all_threshold: the k of "kept_all"
// for experts-choice (ignored by the other routers). Throws when the sizes disagree.
ForegroundKept count_foreground_kept(const MoeLayerTrace& t, const std::vector<uint8_t>& patch_mask,
                                     int patches_per_image, int all_threshold);

}  // namespace vmoe
