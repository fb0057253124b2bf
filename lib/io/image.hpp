#pragma once
// Decoding and preprocessing by the config's image rules (DESIGN §3): decode with
// OpenCV, convert to the model's channels in RGB order, resize by the rule, map 0..255
// linearly onto the value range. Output is (H, W, C) float, row-major.
#include <string>
#include <vector>

#include "model/config.hpp"

namespace vmoe {

// Fills `out` (H*W*C floats) from the image file; throws naming the file on any problem.
void load_image(float* out, const std::string& path, const ImageConfig& image);

// The same from an already decoded 8-bit OpenCV-style buffer (rows, cols, channels in
// BGR order as OpenCV decodes), for tests and datasets.
void preprocess_image(float* out, const unsigned char* pixels, int rows, int cols, int channels,
                      const ImageConfig& image, const std::string& what);

}  // namespace vmoe
