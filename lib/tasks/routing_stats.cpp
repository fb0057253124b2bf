#include "tasks/routing_stats.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <ostream>

#include <fmt/format.h>

#include "core/error.hpp"
#include "io/atomic_file.hpp"
#include "io/input_file.hpp"
#include "spec/router.hpp"

namespace vmoe {

namespace {

constexpr const char* kFormat = "vmoe-routing-stats";
constexpr int kVersion = 1;

// Fixed point of a weight in [0, 1]: round(w * 2^24). Each token's weight is rounded on
// its own, so the integer sums do not depend on the order tokens are added in.
int64_t fixed(float w) { return std::llround(static_cast<double>(w) * static_cast<double>(kMassScale)); }

double entropy(const std::vector<double>& p) {
  double h = 0;
  for (double v : p)
    if (v > 0) h -= v * std::log(v);
  return h;
}

void add_into(std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
}

template <typename T>
T get(const nlohmann::json& j, const char* key, const std::string& what) {
  if (!j.is_object() || !j.contains(key))
    fail("{}: missing \"{}\" (not a routing_stats.json of `vmoe eval --routing-stats`?)", what, key);
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: bad \"{}\": {}", what, key, e.what());
  }
}

// Reads a [rows][cols] integer matrix, checking its shape and that no entry is negative.
std::vector<int64_t> get_matrix(const nlohmann::json& l, const char* key, size_t rows, size_t cols, const std::string& what) {
  const auto m = get<std::vector<std::vector<int64_t>>>(l, key, what);
  if (m.size() != rows) fail("{}: \"{}\" has {} rows, expected {}", what, key, m.size(), rows);
  std::vector<int64_t> out;
  out.reserve(rows * cols);
  for (const auto& row : m) {
    if (row.size() != cols) fail("{}: a row of \"{}\" has {} entries, expected {}", what, key, row.size(), cols);
    for (int64_t v : row) {
      if (v < 0) fail("{}: negative count in \"{}\"", what, key);
      out.push_back(v);
    }
  }
  return out;
}

std::vector<int64_t> get_vector(const nlohmann::json& l, const char* key, size_t cols, const std::string& what) {
  const auto v = get<std::vector<int64_t>>(l, key, what);
  if (v.size() != cols) fail("{}: \"{}\" has {} entries, expected {}", what, key, v.size(), cols);
  for (int64_t x : v)
    if (x < 0) fail("{}: negative count in \"{}\"", what, key);
  return v;
}

nlohmann::json matrix_json(const std::vector<int64_t>& m, int cols) {
  nlohmann::json out = nlohmann::json::array();
  for (size_t r = 0; cols > 0 && r < m.size() / cols; ++r)
    out.push_back(std::vector<int64_t>(m.begin() + r * cols, m.begin() + (r + 1) * cols));
  return out;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string column_name(const RoutingStats& s, int x) {
  if (s.kind != StatsKind::soft) return fmt::format("e{}", x);
  return fmt::format("e{}s{}", x / s.slots_per_expert, x % s.slots_per_expert);
}

std::string column_header(const RoutingStats& s, int X) {
  std::string out;
  for (int x = 0; x < X; ++x) out += "," + column_name(s, x);
  return out;
}

void write_matrix_csv(std::ostream& o, const std::string& header, const std::vector<std::string>& row_names,
                      const std::vector<int64_t>& m, int X) {
  o << header << "\n";
  for (size_t r = 0; r < row_names.size(); ++r) {
    o << row_names[r];
    for (int x = 0; x < X; ++x) o << ',' << m[r * X + x];
    o << '\n';
  }
}

}  // namespace

const char* to_string(StatsKind k) {
  switch (k) {
    case StatsKind::top_k: return "top_k";
    case StatsKind::experts_choice: return "experts_choice";
    case StatsKind::soft: return "soft";
  }
  return "?";
}

double normalised_mutual_information(const std::vector<int64_t>& joint, int rows, int cols) {
  if (joint.size() != static_cast<size_t>(rows) * cols) fail("nmi: matrix of {} entries is not {} x {}", joint.size(), rows, cols);
  double total = 0;
  for (int64_t v : joint) total += static_cast<double>(v);
  if (total <= 0) return 0.0;
  std::vector<double> pr(rows, 0.0), pc(cols, 0.0);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const double p = static_cast<double>(joint[static_cast<size_t>(r) * cols + c]) / total;
      pr[r] += p;
      pc[c] += p;
    }
  double info = 0;
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const double p = static_cast<double>(joint[static_cast<size_t>(r) * cols + c]) / total;
      if (p > 0) info += p * std::log(p / (pr[r] * pc[c]));
    }
  const double den = std::min(entropy(pr), entropy(pc));
  // 0/0 = 0: a constant router (or a single class) carries no information. Rounding can
  // push I a hair outside [0, min H]; the clamp keeps the documented range.
  if (den <= 0) return 0.0;
  return std::clamp(info / den, 0.0, 1.0);
}

std::vector<double> RoutingStatsLayer::mean_gate() const {
  std::vector<double> out(columns, 0.0);
  for (int x = 0; x < columns; ++x)
    if (load[x] > 0) out[x] = static_cast<double>(gate_sum[x]) / static_cast<double>(kMassScale) / static_cast<double>(load[x]);
  return out;
}

double RoutingStatsLayer::class_nmi() const {
  return normalised_mutual_information(class_expert, static_cast<int>(class_expert.size() / std::max(1, columns)), columns);
}

double RoutingStatsLayer::position_nmi() const {
  return normalised_mutual_information(position_expert, static_cast<int>(position_expert.size() / std::max(1, columns)), columns);
}

RoutingStats make_routing_stats(const ModelConfig& c, const std::vector<std::string>& classes) {
  if (!c.moe || c.moe->layers.empty()) fail("--routing-stats: the model has no MoE layer (a dense model routes nothing)");
  const MoeConfig& m = *c.moe;
  if (!m.router) fail("--routing-stats: the model's config names no router");
  RoutingStats s;
  s.classes = classes;
  s.kind = m.router->trace_slots(m) > 0 ? StatsKind::soft : m.router->top_k_options() ? StatsKind::top_k : StatsKind::experts_choice;
  s.num_experts = m.num_experts;
  s.slots_per_expert = s.kind == StatsKind::soft ? m.slots_per_expert : 0;
  s.tokens_per_image = c.num_tokens();
  s.cls = c.classifier == Classifier::token;
  s.grid_h = c.grid_h();
  s.grid_w = c.grid_w();
  const int X = s.kind == StatsKind::soft ? m.num_experts * m.slots_per_expert : m.num_experts;
  const size_t C = classes.size(), T = s.tokens_per_image;
  for (int block : m.layers) s.layers.push_back(empty_stats_layer(block, X, C, T));
  return s;
}

RoutingStatsLayer empty_stats_layer(int block, int columns, size_t classes, size_t tokens) {
  const size_t X = static_cast<size_t>(columns);
  RoutingStatsLayer l;
  l.layer = block;
  l.columns = columns;
  l.class_expert.assign(classes * X, 0);
  l.class_expert_kept.assign(classes * X, 0);
  l.position_expert.assign(tokens * X, 0);
  l.load.assign(X, 0);
  l.kept.assign(X, 0);
  l.drops.assign(X, 0);
  l.gate_sum.assign(X, 0);
  return l;
}

void accumulate_routing_stats(RoutingStats& s, const RoutingTrace& trace, const std::vector<int>& labels) {
  if (trace.layers.size() != s.layers.size())
    fail("routing stats: the trace has {} MoE layers, the statistics {}", trace.layers.size(), s.layers.size());
  const int B = static_cast<int>(labels.size());
  const int T = s.tokens_per_image;
  const int C = static_cast<int>(s.classes.size());
  for (int label : labels)
    if (label < 0 || label >= C) fail("routing stats: label {} outside 0..{}", label, C - 1);
  for (size_t li = 0; li < s.layers.size(); ++li) {
    const MoeLayerTrace& t = trace.layers[li];
    RoutingStatsLayer& l = s.layers[li];
    const int X = l.columns;
    if (t.layer != l.layer) fail("routing stats: trace layer {} where block {} was expected", t.layer, l.layer);
    if (t.num_tokens() != int64_t{B} * T)
      fail("routing stats: layer {} traced {} tokens, expected {} images x {}", t.layer, t.num_tokens(), B, T);
    const size_t N = static_cast<size_t>(B) * T;
    if (s.kind == StatsKind::top_k) {
      const int k = t.k;
      if (k < 1 || t.choice_expert.size() != N * k || t.choice_kept.size() != N * k || t.choice_gate.size() != N * k)
        fail("routing stats: layer {} has no top-k choices in its trace", t.layer);
      for (int b = 0; b < B; ++b) {
        int64_t* cls_row = l.class_expert.data() + static_cast<size_t>(labels[b]) * X;
        int64_t* kept_row = l.class_expert_kept.data() + static_cast<size_t>(labels[b]) * X;
        for (int p = 0; p < T; ++p) {
          const size_t n = static_cast<size_t>(b) * T + p;
          const int* e = t.choice_expert.data() + n * k;
          const uint8_t* kept = t.choice_kept.data() + n * k;
          const float* gate = t.choice_gate.data() + n * k;
          if (e[0] < 0 || e[0] >= X) fail("routing stats: layer {} chose expert {} of {}", t.layer, e[0], X);
          ++cls_row[e[0]];
          ++l.position_expert[static_cast<size_t>(p) * X + e[0]];
          for (int q = 0; q < k; ++q) {
            if (e[q] < 0 || e[q] >= X) fail("routing stats: layer {} chose expert {} of {}", t.layer, e[q], X);
            ++l.load[e[q]];
            l.gate_sum[e[q]] += fixed(gate[q]);
            if (kept[q]) {
              ++l.kept[e[q]];
              ++kept_row[e[q]];
            } else {
              ++l.drops[e[q]];
            }
          }
        }
      }
    } else if (s.kind == StatsKind::experts_choice) {
      if (t.gates.size() != N * X || t.expert_took.size() != N * X)
        fail("routing stats: layer {} trace has no gates (experts-choice needs a detailed trace)", t.layer);
      for (int b = 0; b < B; ++b) {
        int64_t* cls_row = l.class_expert.data() + static_cast<size_t>(labels[b]) * X;
        int64_t* kept_row = l.class_expert_kept.data() + static_cast<size_t>(labels[b]) * X;
        for (int p = 0; p < T; ++p) {
          const size_t n = static_cast<size_t>(b) * T + p;
          const float* g = t.gates.data() + n * X;
          const uint8_t* took = t.expert_took.data() + n * X;
          const int first = static_cast<int>(std::max_element(g, g + X) - g);  // ties: lower expert
          ++cls_row[first];
          ++l.position_expert[static_cast<size_t>(p) * X + first];
          ++l.load[first];
          l.gate_sum[first] += fixed(g[first]);
          if (!took[first]) ++l.drops[first];
          for (int x = 0; x < X; ++x)
            if (took[x]) {
              ++l.kept[x];
              ++kept_row[x];
            }
        }
      }
    } else {
      if (t.dispatch.size() != N * X || t.combine.size() != N * X)
        fail("routing stats: layer {} trace has no Soft-MoE weights (needs a detailed trace)", t.layer);
      for (int b = 0; b < B; ++b) {
        int64_t* cls_row = l.class_expert.data() + static_cast<size_t>(labels[b]) * X;
        int64_t* kept_row = l.class_expert_kept.data() + static_cast<size_t>(labels[b]) * X;
        for (int p = 0; p < T; ++p) {
          const size_t n = static_cast<size_t>(b) * T + p;
          const float* d = t.dispatch.data() + n * X;
          const float* w = t.combine.data() + n * X;
          int64_t* pos_row = l.position_expert.data() + static_cast<size_t>(p) * X;
          for (int x = 0; x < X; ++x) {
            const int64_t m = fixed(d[x]);
            cls_row[x] += m;
            kept_row[x] += m;
            pos_row[x] += m;
            l.load[x] += m;
            l.kept[x] += m;
            l.gate_sum[x] += fixed(w[x]);
          }
        }
      }
    }
  }
  s.images += B;
}

void set_identity(RoutingStats& s, const EvalResult& r) {
  s.model = r.model;
  s.data = r.data;
  s.router = r.router;
  s.routing = r.routing;
  s.capacity_factor = r.capacity_factor;
  s.has_capacity = r.has_capacity;
  s.group_images = r.group_images;
  s.classes = r.class_names;
  s.shard_count = r.counts.shard_count;
  s.shards = r.counts.shards;
}

void RoutingStats::merge(const RoutingStats& o) {
  auto same = [&](const char* what, const auto& a, const auto& b) {
    if (a != b) fail("cannot merge routing statistics with a different {}", what);
  };
  same("model", o.model, model);
  same("data", o.data, data);
  same("router", o.router, router);
  same("routing", o.routing, routing);
  same("capacity factor", o.capacity_factor, capacity_factor);
  same("group size", o.group_images, group_images);
  same("class list", o.classes, classes);
  same("router kind", o.kind, kind);
  same("number of experts", o.num_experts, num_experts);
  same("slots per expert", o.slots_per_expert, slots_per_expert);
  same("tokens per image", o.tokens_per_image, tokens_per_image);
  same("patch grid", std::pair(o.grid_h, o.grid_w), std::pair(grid_h, grid_w));
  if (o.shard_count != shard_count)
    fail("cannot merge routing statistics of {} shards with those of {} shards", o.shard_count, shard_count);
  for (int sh : o.shards)
    if (std::find(shards.begin(), shards.end(), sh) != shards.end()) fail("shard {}/{} is counted twice", sh, shard_count);
  if (o.layers.size() != layers.size()) fail("cannot merge routing statistics with {} and {} MoE layers", o.layers.size(), layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    RoutingStatsLayer& a = layers[i];
    const RoutingStatsLayer& b = o.layers[i];
    if (a.layer != b.layer || a.columns != b.columns)
      fail("cannot merge: MoE layer {} in one part is layer {} in the other", a.layer, b.layer);
    add_into(a.class_expert, b.class_expert);
    add_into(a.class_expert_kept, b.class_expert_kept);
    add_into(a.position_expert, b.position_expert);
    add_into(a.load, b.load);
    add_into(a.kept, b.kept);
    add_into(a.drops, b.drops);
    add_into(a.gate_sum, b.gate_sum);
  }
  images += o.images;
  shards.insert(shards.end(), o.shards.begin(), o.shards.end());
  std::sort(shards.begin(), shards.end());
  if (static_cast<int>(shards.size()) == shard_count) shard_count = 1, shards = {0};
}

bool is_routing_stats_json(const nlohmann::json& j) {
  return j.is_object() && j.contains("format") && j["format"] == kFormat;
}

nlohmann::json routing_stats_to_json(const RoutingStats& s) {
  using nlohmann::json;
  json layers = json::array();
  for (const RoutingStatsLayer& l : s.layers) {
    layers.push_back({{"layer", l.layer},
                      {"columns", l.columns},
                      {"class_nmi", l.class_nmi()},
                      {"position_nmi", l.position_nmi()},
                      {"class_expert", matrix_json(l.class_expert, l.columns)},
                      {"class_expert_kept", matrix_json(l.class_expert_kept, l.columns)},
                      {"position_expert", matrix_json(l.position_expert, l.columns)},
                      {"load", l.load},
                      {"kept", l.kept},
                      {"drops", l.drops},
                      {"gate_sum", l.gate_sum},
                      {"mean_gate", l.mean_gate()}});
  }
  return json{{"format", kFormat},
              {"version", kVersion},
              {"model", s.model},
              {"data", s.data},
              {"router", s.router},
              {"routing", s.routing},
              {"capacity_factor", s.has_capacity ? json(s.capacity_factor) : json(nullptr)},
              {"group_images", s.group_images},
              {"classes", s.classes},
              {"kind", to_string(s.kind)},
              {"columns", s.kind == StatsKind::soft ? "slot" : "expert"},
              {"num_experts", s.num_experts},
              {"slots_per_expert", s.slots_per_expert},
              {"mass_scale", s.kind == StatsKind::soft ? kMassScale : 1},
              {"gate_scale", kMassScale},
              {"tokens_per_image", s.tokens_per_image},
              {"cls", s.cls},
              {"grid", {s.grid_h, s.grid_w}},
              {"images", s.images},
              {"shard_count", s.shard_count},
              {"shards", s.shards},
              {"layers", layers}};
}

RoutingStats routing_stats_from_json(const nlohmann::json& j, const std::string& what) {
  if (!is_routing_stats_json(j)) fail("{}: not a routing_stats.json (no \"format\": \"{}\")", what, kFormat);
  if (get<int>(j, "version", what) != kVersion) fail("{}: routing stats version {} (this vmoe reads {})", what, j["version"].dump(), kVersion);
  RoutingStats s;
  s.model = get<std::string>(j, "model", what);
  s.data = get<std::string>(j, "data", what);
  s.router = get<std::string>(j, "router", what);
  s.routing = get<std::string>(j, "routing", what);
  s.has_capacity = j.contains("capacity_factor") && !j["capacity_factor"].is_null();
  if (s.has_capacity) s.capacity_factor = get<double>(j, "capacity_factor", what);
  s.group_images = get<int>(j, "group_images", what);
  s.classes = get<std::vector<std::string>>(j, "classes", what);
  const std::string kind = get<std::string>(j, "kind", what);
  if (kind == "top_k") s.kind = StatsKind::top_k;
  else if (kind == "experts_choice") s.kind = StatsKind::experts_choice;
  else if (kind == "soft") s.kind = StatsKind::soft;
  else fail("{}: unknown kind \"{}\"", what, kind);
  s.num_experts = get<int>(j, "num_experts", what);
  s.slots_per_expert = get<int>(j, "slots_per_expert", what);
  s.tokens_per_image = get<int>(j, "tokens_per_image", what);
  s.cls = get<bool>(j, "cls", what);
  const auto grid = get<std::vector<int>>(j, "grid", what);
  if (grid.size() != 2) fail("{}: \"grid\" must be [rows, cols]", what);
  s.grid_h = grid[0], s.grid_w = grid[1];
  s.images = get<int64_t>(j, "images", what);
  s.shard_count = get<int>(j, "shard_count", what);
  s.shards = get<std::vector<int>>(j, "shards", what);
  if (s.num_experts < 1 || s.tokens_per_image < 1 || s.grid_h < 1 || s.grid_w < 1 || s.images < 0 ||
      int64_t{s.grid_h} * s.grid_w + (s.cls ? 1 : 0) != s.tokens_per_image || s.tokens_per_image > kMaxTokens ||
      (s.kind == StatsKind::soft && s.slots_per_expert < 1))
    fail("{}: inconsistent shapes (experts, tokens per image, grid)", what);
  if (s.shard_count < 1 || s.shards.empty()) fail("{}: bad shard bookkeeping", what);
  for (int sh : s.shards)
    if (sh < 0 || sh >= s.shard_count) fail("{}: shard {} outside 0..{}", what, sh, s.shard_count - 1);
  const int X = s.kind == StatsKind::soft ? s.num_experts * s.slots_per_expert : s.num_experts;
  for (const nlohmann::json& lj : get<nlohmann::json>(j, "layers", what)) {
    const std::string lw = what + ": layers";
    RoutingStatsLayer l;
    l.layer = get<int>(lj, "layer", lw);
    l.columns = get<int>(lj, "columns", lw);
    if (l.columns != X) fail("{}: layer {} has {} columns, expected {}", lw, l.layer, l.columns, X);
    l.class_expert = get_matrix(lj, "class_expert", s.classes.size(), X, lw);
    l.class_expert_kept = get_matrix(lj, "class_expert_kept", s.classes.size(), X, lw);
    l.position_expert = get_matrix(lj, "position_expert", s.tokens_per_image, X, lw);
    l.load = get_vector(lj, "load", X, lw);
    l.kept = get_vector(lj, "kept", X, lw);
    l.drops = get_vector(lj, "drops", X, lw);
    l.gate_sum = get_vector(lj, "gate_sum", X, lw);
    s.layers.push_back(std::move(l));
  }
  if (s.layers.empty()) fail("{}: no MoE layers", what);
  return s;
}

RoutingStats read_routing_stats(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) file = (std::filesystem::path(path) / "routing_stats.json").string();
  const std::string text = read_input_file(file, "routing statistics", uint64_t{1} << 32);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", file, e.what());
  }
  return routing_stats_from_json(j, file);
}

std::vector<std::string> write_routing_stats(const RoutingStats& s, const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<std::string> written;
  auto write = [&](const std::string& name, const std::function<void(std::ostream&)>& body) {
    const std::string path = (fs::path(dir) / name).string();
    write_file_atomically(path, body);
    written.push_back(path);
  };
  std::vector<std::string> positions;
  for (int p = 0; p < s.tokens_per_image; ++p) {
    const int q = p - (s.cls ? 1 : 0);
    positions.push_back(q < 0 ? "cls,," : fmt::format("{},{},{}", q, q / s.grid_w, q % s.grid_w));
  }
  std::vector<std::string> classes;
  for (const std::string& c : s.classes) classes.push_back(csv_field(c));
  for (const RoutingStatsLayer& l : s.layers) {
    const int X = l.columns;
    const std::string head = column_header(s, X);
    write(fmt::format("L{}-class_expert.csv", l.layer), [&](std::ostream& o) { write_matrix_csv(o, "class" + head, classes, l.class_expert, X); });
    write(fmt::format("L{}-class_expert_kept.csv", l.layer),
          [&](std::ostream& o) { write_matrix_csv(o, "class" + head, classes, l.class_expert_kept, X); });
    write(fmt::format("L{}-position_expert.csv", l.layer),
          [&](std::ostream& o) { write_matrix_csv(o, "token,patch_row,patch_col" + head, positions, l.position_expert, X); });
    write(fmt::format("L{}-experts.csv", l.layer), [&](std::ostream& o) {
      const std::vector<double> mean = l.mean_gate();
      o << (s.kind == StatsKind::soft ? "slot" : "expert") << ",load,kept,drops,gate_sum,mean_gate\n";
      for (int x = 0; x < X; ++x)
        o << column_name(s, x) << ',' << l.load[x] << ',' << l.kept[x] << ',' << l.drops[x] << ',' << l.gate_sum[x] << ','
          << fmt::format("{:.6f}", mean[x]) << '\n';
    });
  }
  write("specialisation.csv", [&](std::ostream& o) {
    o << "layer,class_nmi,position_nmi\n";
    for (const RoutingStatsLayer& l : s.layers) o << fmt::format("{},{:.6f},{:.6f}\n", l.layer, l.class_nmi(), l.position_nmi());
  });
  // The JSON last: its presence means the CSVs beside it are complete.
  write("routing_stats.json", [&](std::ostream& o) { o << routing_stats_to_json(s).dump() << '\n'; });
  return written;
}

std::string routing_stats_text(const RoutingStats& s) {
  std::string out;
  for (const RoutingStatsLayer& l : s.layers)
    out += fmt::format("specialise block {}: class NMI {:.4f}, position NMI {:.4f} ({})\n", l.layer, l.class_nmi(),
                       l.position_nmi(), s.kind == StatsKind::soft ? "slots, by dispatch mass" : "first-choice expert");
  return out;
}

}  // namespace vmoe
