#pragma once
// Drawing helpers shared by every routing picture: the expert palette, text with an
// outline, the upscaled input image, the patch grid, legends (swatches, icons, colour
// bars) and the page layout (title lines on top, picture left, legend right).
#include <functional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "spec/config.hpp"

namespace vmoe::viz {

// Upscale factors. `min_patch` makes a patch at least 32 px; `main_scale` also makes the
// longer image side at least 320 px so that the per-layer pictures are easy to read.
int min_patch_scale(const ModelConfig& c);
int main_scale(const ModelConfig& c);

// One colour (BGR) per expert: ten well separated colours, then golden-ratio hues. None
// is grey, which the pictures keep for dropped patches.
cv::Scalar expert_colour(int expert);

// The model input (H, W, C floats in the config's value range) as 8-bit BGR, upscaled
// by `scale` with nearest-neighbour so every pixel stays a sharp square.
cv::Mat input_bgr(const std::vector<float>& pixels, const ImageConfig& image, int scale);
// The same, desaturated and faded towards white (a quiet background for heatmaps).
cv::Mat faded(const cv::Mat& bgr, double keep = 0.45);

// cell rectangle of patch (gy, gx) in a panel of `scale`-times upscaled patches
cv::Rect cell_rect(const ModelConfig& c, int scale, int gy, int gx);
void draw_patch_grid(cv::Mat& panel, const ModelConfig& c, int scale);

// Blends `colour` over the rectangle with opacity alpha in [0, 1].
void tint(cv::Mat& img, const cv::Rect& r, const cv::Scalar& colour, double alpha);
// Greys out the rectangle (luma, pulled towards a cool mid grey).
void grey_out(cv::Mat& img, const cv::Rect& r);
// A cross over the rectangle (dropped patch).
void draw_cross(cv::Mat& img, const cv::Rect& r, const cv::Scalar& colour, int thickness);

// Fills a legend icon with a warm gradient standing for "some image content", so that
// icons of kept / greyed / crossed patches read like the cells they explain.
void icon_background(cv::Mat& icon);

// Hershey simplex text. `outlined` draws a dark outline under light text so it reads on
// any background.
constexpr double kTextScale = 0.45;
constexpr double kTitleScale = 0.5;
cv::Size text_size(const std::string& text, double scale = kTextScale, int thickness = 1);
void put_text(cv::Mat& img, const std::string& text, cv::Point baseline_left, double scale = kTextScale,
              const cv::Scalar& colour = cv::Scalar(20, 20, 20), int thickness = 1);
void put_outlined(cv::Mat& img, const std::string& text, cv::Point baseline_left, double scale = kTextScale);
// Outlined text centred in the rectangle, shrunk to fit its width.
void put_centred(cv::Mat& img, const std::string& text, const cv::Rect& r, double scale = kTextScale);

// Maps v in [0, 1] through an OpenCV colour map (cv::COLORMAP_*) to a BGR colour.
cv::Scalar colormap_colour(int colormap, double v);

// A legend: a column of items, each an icon (drawn by a callback into a square) or a
// colour bar, with text beside it.
class Legend {
 public:
  static constexpr int kIcon = 22;
  void heading(const std::string& text);
  void text(const std::string& text);
  void swatch(const cv::Scalar& colour, const std::string& text);
  void icon(const std::function<void(cv::Mat& icon)>& draw, const std::string& text);
  // horizontal bar of the colour map from lo to hi with a caption above it
  void colour_bar(int colormap, const std::string& caption, const std::string& lo, const std::string& hi);
  void gap(int pixels = 8);
  cv::Mat render() const;

 private:
  struct Item {
    enum Kind { kHeading, kText, kIconItem, kBar, kGap } kind;
    std::string text, lo, hi;
    std::function<void(cv::Mat&)> draw;
    int colormap = 0, pixels = 0;
  };
  std::vector<Item> items_;
};

// The page: title lines (first one bold) across the top, `body` below on the left, the
// legend to its right; white background. `body_at` receives where the body landed.
cv::Mat compose(const std::vector<std::string>& title, const cv::Mat& body, const cv::Mat& legend,
                cv::Rect* body_at = nullptr);

// Pastes `part` into `page` at `at` (top-left).
void paste(cv::Mat& page, const cv::Mat& part, cv::Point at);

// Short numbers for labels: 0.25 -> "0.25", 2 -> "2", 0.1234 -> "0.123".
std::string short_number(double v);

}  // namespace vmoe::viz
