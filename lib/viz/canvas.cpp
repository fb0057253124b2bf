#include "viz/canvas.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

namespace vmoe::viz {
namespace {

constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;
constexpr int kMargin = 10;
const cv::Scalar kWhite(255, 255, 255);

int ceil_div(int a, int b) { return (a + b - 1) / b; }

cv::Scalar hsv_to_bgr(double h, double s, double v) {
  cv::Mat hsv(1, 1, CV_8UC3, cv::Scalar(h * 180.0, s * 255.0, v * 255.0)), bgr;
  cv::cvtColor(hsv, bgr, cv::COLOR_HSV2BGR);
  const cv::Vec3b p = bgr.at<cv::Vec3b>(0, 0);
  return cv::Scalar(p[0], p[1], p[2]);
}

}  // namespace

int min_patch_scale(const ModelConfig& c) {
  return std::max({1, ceil_div(32, c.patch_h), ceil_div(32, c.patch_w)});
}

int main_scale(const ModelConfig& c) {
  return std::max(min_patch_scale(c), ceil_div(320, std::max(c.image.height, c.image.width)));
}

cv::Scalar expert_colour(int expert) {
  // Tableau-10 without its grey, plus one: blue, orange, green, red, purple, brown,
  // pink, olive, cyan, navy. BGR.
  static const cv::Scalar base[] = {{180, 119, 31}, {14, 127, 255}, {44, 160, 44},  {40, 39, 214},  {189, 103, 148},
                                    {75, 86, 140},  {194, 119, 227}, {34, 189, 188}, {207, 190, 23}, {128, 0, 0}};
  constexpr int kBase = sizeof(base) / sizeof(base[0]);
  if (expert >= 0 && expert < kBase) return base[expert];
  const double h = std::fmod(0.13 + 0.61803398875 * expert, 1.0);
  const double s = (expert % 3 == 0) ? 0.55 : 0.85;
  const double v = (expert % 2 == 0) ? 0.95 : 0.7;
  return hsv_to_bgr(h, s, v);
}

cv::Mat input_bgr(const std::vector<float>& pixels, const ImageConfig& image, int scale) {
  const int H = image.height, W = image.width, C = image.channels;
  cv::Mat bgr(H, W, CV_8UC3);
  const float lo = image.value_min, range = image.value_max - image.value_min;
  auto to8 = [&](float v) {
    const float u = range != 0 ? (v - lo) / range * 255.0f : 0.0f;
    return static_cast<uchar>(std::clamp(std::lround(u), 0L, 255L));
  };
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      const float* p = pixels.data() + (static_cast<size_t>(y) * W + x) * C;
      cv::Vec3b& out = bgr.at<cv::Vec3b>(y, x);
      if (C == 1) out = cv::Vec3b(to8(p[0]), to8(p[0]), to8(p[0]));
      else out = cv::Vec3b(to8(p[2]), to8(p[1]), to8(p[0]));  // model input is RGB
    }
  if (scale == 1) return bgr;
  cv::Mat big;
  cv::resize(bgr, big, cv::Size(W * scale, H * scale), 0, 0, cv::INTER_NEAREST);
  return big;
}

cv::Mat faded(const cv::Mat& bgr, double keep) {
  cv::Mat grey, out;
  cv::cvtColor(bgr, grey, cv::COLOR_BGR2GRAY);
  cv::cvtColor(grey, out, cv::COLOR_GRAY2BGR);
  out.convertTo(out, CV_8UC3, keep, 255.0 * (1.0 - keep));
  return out;
}

cv::Rect cell_rect(const ModelConfig& c, int scale, int gy, int gx) {
  return cv::Rect(gx * c.patch_w * scale, gy * c.patch_h * scale, c.patch_w * scale, c.patch_h * scale);
}

void draw_patch_grid(cv::Mat& panel, const ModelConfig& c, int scale) {
  const cv::Scalar line(150, 150, 150);
  const int ch = c.patch_h * scale, cw = c.patch_w * scale;
  const int h = c.grid_h() * ch, w = c.grid_w() * cw;
  for (int gy = 1; gy < c.grid_h(); ++gy) cv::line(panel, {0, gy * ch}, {w - 1, gy * ch}, line, 1);
  for (int gx = 1; gx < c.grid_w(); ++gx) cv::line(panel, {gx * cw, 0}, {gx * cw, h - 1}, line, 1);
  cv::rectangle(panel, cv::Rect(0, 0, panel.cols, panel.rows), cv::Scalar(90, 90, 90), 1);
}

void tint(cv::Mat& img, const cv::Rect& r, const cv::Scalar& colour, double alpha) {
  cv::Mat roi = img(r & cv::Rect(0, 0, img.cols, img.rows));
  cv::Mat solid(roi.size(), roi.type(), colour);
  cv::addWeighted(roi, 1.0 - alpha, solid, alpha, 0.0, roi);
}

void grey_out(cv::Mat& img, const cv::Rect& r) {
  cv::Mat roi = img(r & cv::Rect(0, 0, img.cols, img.rows));
  cv::Mat g, g3;
  cv::cvtColor(roi, g, cv::COLOR_BGR2GRAY);
  cv::cvtColor(g, g3, cv::COLOR_GRAY2BGR);
  // keep a faint trace of the content, pulled to a slightly cool mid grey (so greyed
  // patches differ from the content of grey images too)
  cv::Mat faint;
  g3.convertTo(faint, CV_8UC3, 0.3);
  cv::add(faint, cv::Scalar(0.7 * 175, 0.7 * 150, 0.7 * 135), roi);
}

void draw_cross(cv::Mat& img, const cv::Rect& r, const cv::Scalar& colour, int thickness) {
  const int pad = std::max(2, r.width / 7);
  cv::line(img, {r.x + pad, r.y + pad}, {r.x + r.width - 1 - pad, r.y + r.height - 1 - pad}, colour, thickness,
           cv::LINE_AA);
  cv::line(img, {r.x + r.width - 1 - pad, r.y + pad}, {r.x + pad, r.y + r.height - 1 - pad}, colour, thickness,
           cv::LINE_AA);
}

void icon_background(cv::Mat& icon) {
  for (int y = 0; y < icon.rows; ++y)
    for (int x = 0; x < icon.cols; ++x) {
      const double u = (x + y) / std::max(1.0, icon.rows + icon.cols - 2.0);
      icon.at<cv::Vec3b>(y, x) = cv::Vec3b(static_cast<uchar>(70 + 60 * u), static_cast<uchar>(140 + 50 * u),
                                           static_cast<uchar>(200 + 40 * u));
    }
}

cv::Size text_size(const std::string& text, double scale, int thickness) {
  int baseline = 0;
  cv::Size s = cv::getTextSize(text, kFont, scale, thickness, &baseline);
  s.height += baseline;
  return s;
}

void put_text(cv::Mat& img, const std::string& text, cv::Point at, double scale, const cv::Scalar& colour,
              int thickness) {
  cv::putText(img, text, at, kFont, scale, colour, thickness, cv::LINE_AA);
}

void put_outlined(cv::Mat& img, const std::string& text, cv::Point at, double scale) {
  cv::putText(img, text, at, kFont, scale, cv::Scalar(0, 0, 0), 3, cv::LINE_AA);
  cv::putText(img, text, at, kFont, scale, kWhite, 1, cv::LINE_AA);
}

void put_centred(cv::Mat& img, const std::string& text, const cv::Rect& r, double scale) {
  int baseline = 0;
  cv::Size s = cv::getTextSize(text, kFont, scale, 1, &baseline);
  while (s.width > r.width - 4 && scale > 0.25) {
    scale *= 0.9;
    s = cv::getTextSize(text, kFont, scale, 1, &baseline);
  }
  put_outlined(img, text, {r.x + (r.width - s.width) / 2, r.y + (r.height + s.height) / 2}, scale);
}

cv::Scalar colormap_colour(int colormap, double v) {
  cv::Mat one(1, 1, CV_8UC1, cv::Scalar(std::clamp(v, 0.0, 1.0) * 255.0)), out;
  cv::applyColorMap(one, out, colormap);
  const cv::Vec3b p = out.at<cv::Vec3b>(0, 0);
  return cv::Scalar(p[0], p[1], p[2]);
}

void Legend::heading(const std::string& t) { items_.push_back({Item::kHeading, t, {}, {}, {}, 0, 0}); }
void Legend::text(const std::string& t) { items_.push_back({Item::kText, t, {}, {}, {}, 0, 0}); }
void Legend::swatch(const cv::Scalar& colour, const std::string& t) {
  icon([colour](cv::Mat& m) { m.setTo(colour); }, t);
}
void Legend::icon(const std::function<void(cv::Mat&)>& draw, const std::string& t) {
  items_.push_back({Item::kIconItem, t, {}, {}, draw, 0, 0});
}
void Legend::colour_bar(int colormap, const std::string& caption, const std::string& lo, const std::string& hi) {
  items_.push_back({Item::kBar, caption, lo, hi, {}, colormap, 0});
}
void Legend::gap(int pixels) { items_.push_back({Item::kGap, {}, {}, {}, {}, 0, pixels}); }

cv::Mat Legend::render() const {
  constexpr int kBarW = 170, kBarH = 14, kLine = 20;
  int width = kBarW, height = 0;
  for (const Item& it : items_) {
    switch (it.kind) {
      case Item::kHeading: width = std::max(width, text_size(it.text, kTextScale, 2).width); height += kLine + 2; break;
      case Item::kText: width = std::max(width, text_size(it.text).width); height += kLine; break;
      case Item::kIconItem: width = std::max(width, kIcon + 8 + text_size(it.text).width); height += kIcon + 4; break;
      case Item::kBar:
        width = std::max(width, text_size(it.text).width);
        height += kLine + kBarH + kLine;
        break;
      case Item::kGap: height += it.pixels; break;
    }
  }
  cv::Mat out(std::max(height, 1), width + 2, CV_8UC3, kWhite);
  int y = 0;
  for (const Item& it : items_) {
    switch (it.kind) {
      case Item::kHeading:
        put_text(out, it.text, {0, y + 15}, kTextScale, cv::Scalar(0, 0, 0), 2);
        y += kLine + 2;
        break;
      case Item::kText:
        put_text(out, it.text, {0, y + 15});
        y += kLine;
        break;
      case Item::kIconItem: {
        cv::Mat icon(kIcon, kIcon, CV_8UC3, kWhite);
        it.draw(icon);
        cv::rectangle(icon, cv::Rect(0, 0, kIcon, kIcon), cv::Scalar(90, 90, 90), 1);
        icon.copyTo(out(cv::Rect(0, y + 1, kIcon, kIcon)));
        put_text(out, it.text, {kIcon + 8, y + 17});
        y += kIcon + 4;
        break;
      }
      case Item::kBar: {
        put_text(out, it.text, {0, y + 15});
        y += kLine;
        cv::Mat ramp(1, kBarW, CV_8UC1);
        for (int x = 0; x < kBarW; ++x) ramp.at<uchar>(0, x) = static_cast<uchar>(x * 255 / (kBarW - 1));
        cv::Mat coloured, bar;
        cv::applyColorMap(ramp, coloured, it.colormap);
        cv::resize(coloured, bar, cv::Size(kBarW, kBarH), 0, 0, cv::INTER_NEAREST);
        bar.copyTo(out(cv::Rect(0, y, kBarW, kBarH)));
        cv::rectangle(out, cv::Rect(0, y, kBarW, kBarH), cv::Scalar(90, 90, 90), 1);
        y += kBarH;
        put_text(out, it.lo, {0, y + 15});
        put_text(out, it.hi, {kBarW - text_size(it.hi).width, y + 15});
        y += kLine;
        break;
      }
      case Item::kGap: y += it.pixels; break;
    }
  }
  return out;
}

void paste(cv::Mat& page, const cv::Mat& part, cv::Point at) { part.copyTo(page(cv::Rect(at, part.size()))); }

cv::Mat compose(const std::vector<std::string>& title, const cv::Mat& body, const cv::Mat& legend, cv::Rect* body_at) {
  constexpr int kTitleLine = 22;
  int title_w = 0;
  for (size_t i = 0; i < title.size(); ++i)
    title_w = std::max(title_w, text_size(title[i], kTitleScale, i == 0 ? 2 : 1).width);
  const int legend_w = legend.empty() ? 0 : legend.cols + kMargin;
  const int width = std::max(body.cols + legend_w, title_w) + 2 * kMargin;
  const int title_h = static_cast<int>(title.size()) * kTitleLine + 6;
  const int height = title_h + std::max(body.rows, legend.empty() ? 0 : legend.rows) + 2 * kMargin;
  cv::Mat page(height, width, CV_8UC3, kWhite);
  for (size_t i = 0; i < title.size(); ++i)
    put_text(page, title[i], {kMargin, kMargin + 14 + static_cast<int>(i) * kTitleLine}, kTitleScale,
             cv::Scalar(0, 0, 0), i == 0 ? 2 : 1);
  const cv::Point at(kMargin, kMargin + title_h);
  paste(page, body, at);
  if (body_at) *body_at = cv::Rect(at, body.size());
  if (!legend.empty()) paste(page, legend, {kMargin + body.cols + kMargin, kMargin + title_h});
  return page;
}

std::string short_number(double v) {
  std::string s = fmt::format("{:.3g}", v);
  return s;
}

}  // namespace vmoe::viz
