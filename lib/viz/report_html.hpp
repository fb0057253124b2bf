#pragma once
// The page of `vmoe report`: one self-contained HTML file (docs/ROUTE.md, "vmoe report").
// The model inputs are inlined as PNG data URLs, the routing runs as one JSON object in a
// <script type="application/json" id="vmoe-data"> element, and the page's own CSS and
// JavaScript (lib/viz/report_page.{html,css,js}, embedded at build time) draw everything
// in the browser from that JSON: no network, no framework.
#include <string>

#include <nlohmann/json.hpp>

#include "tasks/report.hpp"

namespace vmoe::viz {

// The JSON the page reads (shape in report_html.cpp and docs/ROUTE.md).
nlohmann::json report_data(const Report& r);

// The whole page.
std::string report_html(const Report& r);

// Writes report_html(r) to `path` through a temporary file and a rename (io/atomic_file).
void write_report_html(const Report& r, const std::string& path);

}  // namespace vmoe::viz
