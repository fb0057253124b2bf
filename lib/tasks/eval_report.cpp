#include "tasks/eval_report.hpp"

#include <algorithm>
#include <fstream>

#include <fmt/format.h>

#include "core/error.hpp"
#include "io/input_file.hpp"

namespace vmoe {

namespace {

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string joined(const std::vector<double>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += fmt::format("{}{:.6g}", i ? ";" : "", v[i]);
  return out;
}

template <typename T>
T get(const nlohmann::json& j, const char* key, const std::string& what) {
  if (!j.is_object() || !j.contains(key)) fail("{}: missing \"{}\" (not the JSON of `vmoe eval --format json`?)", what, key);
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: bad \"{}\": {}", what, key, e.what());
  }
}

// "1/4", "0,2/4" for the shards covered; "" for a whole run (one shard, or all of them merged).
std::string shard_label(const EvalCounts& k, const char* sep) {
  if (static_cast<int>(k.shards.size()) == k.shard_count) return "";
  return fmt::format("{}/{}", fmt::join(k.shards, sep), k.shard_count);
}

// Mean over MoE layers of the factor the capacity rounding gives.
double mean_effective(const EvalResult& r) {
  double sum = 0;
  for (const EvalLayerCounts& l : r.counts.layers) sum += l.effective_capacity_factor;
  return r.counts.layers.empty() ? 0.0 : sum / r.counts.layers.size();
}

double mean(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return v.empty() ? 0.0 : sum / v.size();
}

// The five foreground columns, each preceded by its comma; empty fields when unknown
// (merged with a result that predates them) and means empty without MoE layers.
std::string foreground_csv(const EvalResult& r) {
  if (!r.counts.has_foreground) return ",,,,,";
  const std::vector<double> all = r.foreground_kept_all(), any = r.foreground_kept_any();
  const bool moe = !all.empty();
  return fmt::format(",{:.4f},{},{},{},{}", r.foreground_per_image(), moe ? fmt::format("{:.6f}", mean(all)) : "",
                     moe ? fmt::format("{:.6f}", mean(any)) : "", joined(all), joined(any));
}

// The importance columns, each preceded by its comma; empty without --importance (and
// the oracle ones without an oracle order, the scorers' without that scorer).
// The agreement columns, each preceded by its comma; empty without a reference run.
std::string agreement_csv(const EvalResult& r) {
  auto cell = [&](double v) { return r.counts.has_reference && v >= 0 ? fmt::format(",{:.6f}", v) : std::string(","); };
  return cell(r.reference_top1()) + cell(r.same_prediction()) + cell(r.same_top1_expert()) + cell(r.same_kept_decisions());
}

std::string importance_csv(const EvalResult& r) {
  const EvalCounts& k = r.counts;
  auto overall = [&](bool oracle, bool all) {
    return k.has_importance && (!oracle || k.has_oracle) ? fmt::format("{:.6f}", r.importance_kept_overall(oracle, all))
                                                         : std::string();
  };
  std::string out = "," + overall(false, false) + "," + overall(false, true) + "," + overall(true, false) + "," +
                    overall(true, true) + "," + joined(r.importance_kept()) + "," + joined(r.importance_kept(true));
  for (const char* scorer : {"max_gate", "sum_gates", "entropy", "random", "learned", "fitted"}) {
    const auto at = std::find(k.scorers.begin(), k.scorers.end(), scorer);
    out += ",";
    if (at != k.scorers.end()) out += fmt::format("{:.6f}", mean(r.importance_spearman(at - k.scorers.begin())));
  }
  return out;
}

}  // namespace

nlohmann::json eval_to_json(const EvalResult& r) {
  using nlohmann::json;
  const EvalCounts& k = r.counts;
  json layers = json::array(), capacity = json::array(), effective = json::array(), moe_layers = json::array();
  for (const EvalLayerCounts& l : k.layers) {
    moe_layers.push_back(l.layer);
    capacity.push_back(l.capacity);
    effective.push_back(l.effective_capacity_factor);
    layers.push_back({{"layer", l.layer},
                      {"tokens", l.tokens},
                      {"dropped_tokens", l.dropped_tokens},
                      {"choices", l.choices},
                      {"dropped_choices", l.dropped_choices},
                      {"expert_tokens", l.expert_tokens},
                      {"capacity", l.capacity},
                      {"effective_capacity_factor", l.effective_capacity_factor}});
    if (k.has_foreground) {
      layers.back()["foreground_tokens"] = l.foreground_tokens;
      layers.back()["foreground_kept_all"] = l.foreground_kept_all;
      layers.back()["foreground_kept_any"] = l.foreground_kept_any;
    }
    if (k.has_importance) {
      layers.back()["importance_pairs"] = l.importance_pairs;
      layers.back()["importance_kept_any"] = l.importance_kept_any;
      layers.back()["importance_kept_all"] = l.importance_kept_all;
      if (k.has_oracle) {
        layers.back()["oracle_kept_any"] = l.oracle_kept_any;
        layers.back()["oracle_kept_all"] = l.oracle_kept_all;
      }
      layers.back()["spearman_images"] = l.spearman_images;
      layers.back()["spearman_sum"] = l.spearman_sum;
    }
    if (k.has_reference)
      layers.back()["agreement"] = {{"tokens", l.agreement.tokens}, {"top1_same", l.agreement.top1_same},
                                    {"decisions", l.agreement.decisions}, {"decisions_same", l.agreement.decisions_same}};
  }
  json j{{"model", r.model},
         {"data", r.data},
         {"router", r.router},
         {"routing", r.routing},
         {"capacity_factor", r.has_capacity ? json(r.capacity_factor) : json(nullptr)},
         {"group_images", r.group_images},
         {"images", k.images},
         {"top1", r.top1()},
         {"top5", r.top5()},
         {"moe_layers", moe_layers},
         {"dropped", r.dropped()},
         {"choices_dropped", r.choices_dropped()},
         {"capacity", capacity},
         {"effective_capacity_factor", effective},
         {"processed_tokens", r.processed_tokens()},
         {"images_per_s", r.images_per_s()},
         {"seconds", k.seconds},
         {"shard", shard_label(k, ",").empty() ? json(nullptr) : json(shard_label(k, ","))},
         {"classes", r.class_names},
         {"counts",
          {{"images", k.images},
           {"top1", k.top1},
           {"top5", k.top5},
           {"seconds", k.seconds},
           {"shard_count", k.shard_count},
           {"shards", k.shards},
           {"class_images", k.class_images},
           {"class_top1", k.class_top1},
           {"layers", layers}}}};
  // Added keys (issue 11): null when a merged part predates the foreground counts.
  j["foreground_patches_per_image"] = k.has_foreground ? json(r.foreground_per_image()) : json(nullptr);
  j["foreground_kept_all"] = k.has_foreground ? json(r.foreground_kept_all()) : json(nullptr);
  j["foreground_kept_any"] = k.has_foreground ? json(r.foreground_kept_any()) : json(nullptr);
  if (k.has_foreground) j["counts"]["foreground_patches"] = k.foreground_patches;
  // Added by issue 22: --importance (null without it; the oracle's null for routers with no order).
  j["importance_kept"] = k.has_importance ? json(r.importance_kept_overall()) : json(nullptr);
  j["importance_kept_all"] = k.has_importance ? json(r.importance_kept_overall(false, true)) : json(nullptr);
  j["importance_kept_oracle"] = k.has_oracle ? json(r.importance_kept_overall(true)) : json(nullptr);
  j["importance_kept_oracle_all"] = k.has_oracle ? json(r.importance_kept_overall(true, true)) : json(nullptr);
  j["importance_kept_per_layer"] = k.has_importance ? json(r.importance_kept()) : json(nullptr);
  j["importance_kept_oracle_per_layer"] = k.has_oracle ? json(r.importance_kept(true)) : json(nullptr);
  json spearman = json::object();
  for (size_t s = 0; s < k.scorers.size(); ++s) spearman[k.scorers[s]] = r.importance_spearman(s);
  j["importance_spearman"] = k.has_importance ? spearman : json(nullptr);
  if (k.has_importance) j["counts"]["importance"] = {{"oracle", k.has_oracle}, {"scorers", k.scorers}};
  j["priority"] = r.priority.empty() ? json(nullptr) : json(r.priority);
  j["overflow"] = r.overflow.empty() ? json(nullptr) : json(r.overflow);
  // Added by issue 23: the matmul precision and, for bf16, agreement with the f32 run
  // (null without a reference run, or where the routers make no such decision).
  j["precision"] = r.precision;
  auto share = [&](double v) { return k.has_reference && v >= 0 ? json(v) : json(nullptr); };
  j["f32_top1"] = share(r.reference_top1());
  j["same_prediction"] = share(r.same_prediction());
  j["same_top1_expert"] = share(r.same_top1_expert());
  j["same_kept_decisions"] = share(r.same_kept_decisions());
  if (k.has_reference) j["counts"]["reference"] = {{"top1", k.reference_top1}, {"same_prediction", k.same_prediction}};
  return j;
}

EvalResult eval_from_json(const nlohmann::json& j, const std::string& what) {
  EvalResult r;
  r.model = get<std::string>(j, "model", what);
  r.data = get<std::string>(j, "data", what);
  r.router = get<std::string>(j, "router", what);
  r.routing = get<std::string>(j, "routing", what);
  r.has_capacity = j.contains("capacity_factor") && !j["capacity_factor"].is_null();
  if (r.has_capacity) r.capacity_factor = get<double>(j, "capacity_factor", what);
  r.group_images = get<int>(j, "group_images", what);
  if (j.contains("priority") && j["priority"].is_string()) r.priority = j["priority"].get<std::string>();
  if (j.contains("overflow") && j["overflow"].is_string()) r.overflow = j["overflow"].get<std::string>();
  if (j.contains("precision")) r.precision = get<std::string>(j, "precision", what);
  if (r.precision != "f32" && r.precision != "bf16") fail("{}: precision \"{}\" is neither f32 nor bf16", what, r.precision);
  r.class_names = get<std::vector<std::string>>(j, "classes", what);
  const nlohmann::json c = get<nlohmann::json>(j, "counts", what);
  const std::string cw = what + ": counts";
  EvalCounts& k = r.counts;
  k.images = get<int64_t>(c, "images", cw);
  k.top1 = get<int64_t>(c, "top1", cw);
  k.top5 = get<int64_t>(c, "top5", cw);
  k.seconds = get<double>(c, "seconds", cw);
  k.shard_count = get<int>(c, "shard_count", cw);
  k.shards = get<std::vector<int>>(c, "shards", cw);
  k.class_images = get<std::vector<int64_t>>(c, "class_images", cw);
  k.class_top1 = get<std::vector<int64_t>>(c, "class_top1", cw);
  // Results written before the foreground counts existed have none of them.
  k.has_foreground = c.contains("foreground_patches");
  if (k.has_foreground) {
    k.foreground_patches = get<int64_t>(c, "foreground_patches", cw);
    if (k.foreground_patches < 0) fail("{}: negative foreground_patches", cw);
  }
  k.has_importance = c.contains("importance");
  if (k.has_importance) {
    const nlohmann::json i = get<nlohmann::json>(c, "importance", cw);
    k.has_oracle = get<bool>(i, "oracle", cw + ": importance");
    k.scorers = get<std::vector<std::string>>(i, "scorers", cw + ": importance");
  }
  k.has_reference = c.contains("reference");
  if (k.has_reference) {
    const nlohmann::json ref = get<nlohmann::json>(c, "reference", cw);
    k.reference_top1 = get<int64_t>(ref, "top1", cw + ": reference");
    k.same_prediction = get<int64_t>(ref, "same_prediction", cw + ": reference");
    if (k.reference_top1 < 0 || k.reference_top1 > k.images || k.same_prediction < 0 || k.same_prediction > k.images)
      fail("{}: reference counts outside 0..{} images", cw, k.images);
  }
  for (const nlohmann::json& l : get<nlohmann::json>(c, "layers", cw)) {
    const std::string lw = cw + ": layers";
    EvalLayerCounts lc;
    lc.layer = get<int>(l, "layer", lw);
    lc.tokens = get<int64_t>(l, "tokens", lw);
    lc.dropped_tokens = get<int64_t>(l, "dropped_tokens", lw);
    lc.choices = get<int64_t>(l, "choices", lw);
    lc.dropped_choices = get<int64_t>(l, "dropped_choices", lw);
    lc.expert_tokens = get<int64_t>(l, "expert_tokens", lw);
    lc.capacity = get<int>(l, "capacity", lw);
    lc.effective_capacity_factor = get<double>(l, "effective_capacity_factor", lw);
    if (k.has_foreground) {
      lc.foreground_tokens = get<int64_t>(l, "foreground_tokens", lw);
      lc.foreground_kept_all = get<int64_t>(l, "foreground_kept_all", lw);
      lc.foreground_kept_any = get<int64_t>(l, "foreground_kept_any", lw);
      if (lc.foreground_tokens < 0 || lc.foreground_kept_any < lc.foreground_kept_all || lc.foreground_kept_all < 0 ||
          lc.foreground_kept_any > lc.foreground_tokens)
        fail("{}: foreground counts of layer {} do not add up", lw, lc.layer);
    }
    if (k.has_importance) {
      lc.importance_pairs = get<int64_t>(l, "importance_pairs", lw);
      lc.importance_kept_any = get<double>(l, "importance_kept_any", lw);
      lc.importance_kept_all = get<double>(l, "importance_kept_all", lw);
      if (k.has_oracle) {
        lc.oracle_kept_any = get<double>(l, "oracle_kept_any", lw);
        lc.oracle_kept_all = get<double>(l, "oracle_kept_all", lw);
      }
      lc.spearman_images = get<int64_t>(l, "spearman_images", lw);
      lc.spearman_sum = get<std::vector<double>>(l, "spearman_sum", lw);
      const double pairs = static_cast<double>(lc.importance_pairs);
      for (double v : {lc.importance_kept_any, lc.importance_kept_all, lc.oracle_kept_any, lc.oracle_kept_all})
        if (!(v >= 0 && v <= pairs)) fail("{}: importance sums of layer {} do not add up", lw, lc.layer);
      if (lc.spearman_images < 0 || lc.spearman_sum.size() != k.scorers.size())
        fail("{}: spearman sums of layer {} do not match the scorers", lw, lc.layer);
    }
    if (k.has_reference) {
      const nlohmann::json a = get<nlohmann::json>(l, "agreement", lw);
      RoutingAgreement& g = lc.agreement;
      g.tokens = get<int64_t>(a, "tokens", lw), g.top1_same = get<int64_t>(a, "top1_same", lw);
      g.decisions = get<int64_t>(a, "decisions", lw), g.decisions_same = get<int64_t>(a, "decisions_same", lw);
      if (g.tokens < 0 || g.top1_same < 0 || g.top1_same > g.tokens || g.decisions < 0 || g.decisions_same < 0 ||
          g.decisions_same > g.decisions)
        fail("{}: agreement counts of layer {} do not add up", lw, lc.layer);
    }
    k.layers.push_back(lc);
  }
  if (k.shard_count < 1 || k.shards.empty()) fail("{}: bad shard bookkeeping", what);
  for (int s : k.shards)
    if (s < 0 || s >= k.shard_count) fail("{}: shard {} outside 0..{}", what, s, k.shard_count - 1);
  if (k.class_images.size() != r.class_names.size() || k.class_top1.size() != r.class_names.size())
    fail("{}: per-class counts do not match the class list", what);
  return r;
}

EvalResult read_eval_json(const std::string& path) {
  const std::string text = read_input_file(path, "result file", uint64_t{1} << 30);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", path, e.what());
  }
  return eval_from_json(j, path);
}

std::string eval_csv_header() {
  return "model,data,router,routing,capacity_factor,effective_capacity_factor,group_images,images,top1,top5,dropped,choices_dropped,"
         "processed_tokens,images_per_s,seconds,shard,dropped_per_layer,choices_dropped_per_layer,"
         // Added by issue 11 (appended: earlier columns keep their positions).
         "foreground_patches_per_image,foreground_kept_all,foreground_kept_any,foreground_kept_all_per_layer,"
         "foreground_kept_any_per_layer,priority,overflow,"
         // Added by issue 22 (vmoe eval --importance; empty without it).
         "importance_kept,importance_kept_all,importance_kept_oracle,importance_kept_oracle_all,"
         "importance_kept_per_layer,importance_kept_oracle_per_layer,spearman_max_gate,spearman_sum_gates,"
         "spearman_entropy,spearman_random,spearman_learned,spearman_fitted,"
         // Added by issue 23 (--precision; the agreement columns empty without a reference run).
         "precision,f32_top1,same_prediction,same_top1_expert,same_kept_decisions";
}

std::string eval_csv_row(const EvalResult& r) {
  const EvalCounts& k = r.counts;
  const std::string shard = shard_label(k, ";");
  return fmt::format("{},{},{},{},{},{},{},{},{:.6f},{:.6f},{:.6f},{:.6f},{:.6f},{:.2f},{:.3f},{},{},{}", csv_field(r.model),
                     csv_field(r.data), r.router, r.routing, r.has_capacity ? fmt::format("{}", r.capacity_factor) : "",
                     r.has_capacity ? fmt::format("{:.6g}", mean_effective(r)) : "", r.group_images, k.images, r.top1(), r.top5(), r.mean_dropped(), r.mean_choices_dropped(),
                     r.processed_tokens(), r.images_per_s(), k.seconds, shard, joined(r.dropped()),
                     joined(r.choices_dropped())) +
         foreground_csv(r) + "," + r.priority + "," + r.overflow + importance_csv(r) + "," + r.precision + agreement_csv(r);
}

std::string eval_text(const EvalResult& r) {
  const EvalCounts& k = r.counts;
  std::string out;
  out += fmt::format("model      {}\n", r.model);
  out += fmt::format("data       {} ({} images{})\n", r.data, k.images,
                     shard_label(k, ",").empty() ? "" : ", shard " + shard_label(k, ","));
  if (r.router == "dense") out += "routing    dense model (no MoE layers)\n";
  else if (r.has_capacity)
    out += fmt::format("routing    {}, capacity factor {}, {} image{} per group\n",
                       r.routing == r.router ? r.router
                       : r.routing == "bpr"  ? fmt::format("bpr by {} ({})", r.priority, r.router)
                                             : r.routing + " (" + r.router + ")",
                       r.capacity_factor, r.group_images, r.group_images == 1 ? "" : "s");
  else out += fmt::format("routing    {}, {} image{} per group\n", r.router, r.group_images, r.group_images == 1 ? "" : "s");
  out += fmt::format("top-1      {:.2f}%  ({}/{})\n", 100.0 * r.top1(), k.top1, k.images);
  out += fmt::format("top-5      {:.2f}%  ({}/{})\n", 100.0 * r.top5(), k.top5, k.images);
  const std::vector<double> dropped = r.dropped(), choices = r.choices_dropped();
  const std::vector<double> fg_all = r.foreground_kept_all(), fg_any = r.foreground_kept_any();
  for (size_t i = 0; i < k.layers.size(); ++i) {
    const EvalLayerCounts& l = k.layers[i];
    if (!r.has_capacity) {
      out += fmt::format("moe block {}: soft routing, nothing dropped\n", l.layer);
      continue;
    }
    out += fmt::format("moe block {}: capacity {} (effective factor {:.3f}), {:.2f}% of tokens dropped", l.layer,
                       l.capacity, l.effective_capacity_factor, 100.0 * dropped[i]);
    if (l.choices > 0) out += fmt::format(", {:.2f}% of choices dropped", 100.0 * choices[i]);
    if (k.has_foreground)
      out += fmt::format("; foreground kept {:.2f}% all choices, {:.2f}% >=1", 100.0 * fg_all[i], 100.0 * fg_any[i]);
    out += "\n";
  }
  if (k.has_foreground)
    out += fmt::format("foreground {:.2f} patches per image (some pixel above 10% of the value range)\n",
                       r.foreground_per_image());
  if (k.has_importance) {
    const std::vector<double> kept = r.importance_kept(), kept_all = r.importance_kept(false, true);
    const std::vector<double> oracle = r.importance_kept(true);
    for (size_t i = 0; i < k.layers.size(); ++i) {
      out += fmt::format("importance block {}: kept {:.2f}% (all choices {:.2f}%)", k.layers[i].layer, 100.0 * kept[i],
                         100.0 * kept_all[i]);
      if (k.has_oracle) out += fmt::format(", oracle order {:.2f}%", 100.0 * oracle[i]);
      for (size_t s = 0; s < k.scorers.size(); ++s)
        out += fmt::format("{} {} {:.3f}", s ? "," : "; spearman", k.scorers[s], r.importance_spearman(s)[i]);
      out += "\n";
    }
    out += fmt::format("importance kept {:.2f}% by tokens reaching an expert, {:.2f}% with all choices", 100.0 * r.importance_kept_overall(),
                       100.0 * r.importance_kept_overall(false, true));
    if (k.has_oracle)
      out += fmt::format("; oracle order {:.2f}% / {:.2f}%", 100.0 * r.importance_kept_overall(true),
                         100.0 * r.importance_kept_overall(true, true));
    out += " (mean over image-block pairs with positive importance)\n";
  }
  if (k.has_reference) {
    out += fmt::format("precision  {}: f32 top-1 {:.2f}%, same top-1 class {:.2f}% of images", r.precision,
                       100.0 * r.reference_top1(), 100.0 * r.same_prediction());
    if (r.same_top1_expert() >= 0) out += fmt::format(", same first expert {:.2f}% of tokens", 100.0 * r.same_top1_expert());
    if (r.same_kept_decisions() >= 0)
      out += fmt::format(", kept/dropped decisions agree {:.3f}%", 100.0 * r.same_kept_decisions());
    out += "\n";
  } else if (r.precision != "f32") {
    out += fmt::format("precision  {}\n", r.precision);
  }
  if (!k.layers.empty()) out += fmt::format("processed  {:.2f}% of tokens reached an expert (mean over MoE blocks)\n",
                                            100.0 * r.processed_tokens());
  out += fmt::format("speed      {:.1f} images/s ({:.2f} s{})\n", r.images_per_s(), k.seconds,
                     k.shards.size() > 1 ? ", summed over shards" : "");
  return out;
}

}  // namespace vmoe
