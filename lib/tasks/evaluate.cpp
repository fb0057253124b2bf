#include "tasks/evaluate.hpp"

#include <unistd.h>

#include <fstream>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <exception>
#include <map>
#include <numeric>
#include <optional>

#include "core/error.hpp"
#include "moe/capacity.hpp"
#include "moe/routers.hpp"
#include "spec/router.hpp"
#include "tasks/foreground.hpp"
#include "tasks/importance.hpp"
#include "tasks/route.hpp"

namespace vmoe {

namespace {

double ratio(int64_t num, int64_t den) { return den > 0 ? static_cast<double>(num) / static_cast<double>(den) : 0.0; }

bool all_of_names(const std::vector<std::string>& names, bool (*pred)(const std::string&)) {
  return !names.empty() && std::all_of(names.begin(), names.end(), pred);
}

bool is_index_name(const std::string& s) {
  return !s.empty() && s.size() <= 9 && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

bool is_synset_name(const std::string& s) {
  return s.size() == 9 && s[0] == 'n' &&
         std::all_of(s.begin() + 1, s.end(), [](unsigned char c) { return std::isdigit(c); });
}

std::string list_some(const std::vector<std::string>& names, size_t most = 5) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < most; ++i) out += (i ? ", \"" : "\"") + names[i] + "\"";
  if (names.size() > most) out += fmt::format(" and {} more", names.size() - most);
  return out;
}

}  // namespace

std::string label_slug(const std::string& label) {
  std::string out;
  bool pending_dash = false;
  for (unsigned char c : label) {
    if (std::isalnum(c)) {
      if (pending_dash && !out.empty()) out += '-';
      pending_dash = false;
      out += static_cast<char>(std::tolower(c));
    } else {
      pending_dash = true;
    }
  }
  return out;
}

std::vector<int> map_dataset_classes(const std::vector<std::string>& dataset_classes, const ModelConfig& config) {
  const int C = config.num_classes;
  std::vector<std::string> labels;
  for (int i = 0; i < C; ++i) labels.push_back(config.label(i));
  std::map<std::string, int> exact, slug;
  std::map<std::string, int> slug_count;
  for (int i = 0; i < C; ++i) {
    exact.emplace(labels[i], i);
    const std::string s = label_slug(labels[i]);
    slug.emplace(s, i);
    ++slug_count[s];
  }
  std::vector<int> out;
  std::vector<std::string> unmatched;
  for (const std::string& name : dataset_classes) {
    if (auto it = exact.find(name); it != exact.end()) {
      out.push_back(it->second);
      continue;
    }
    const std::string s = label_slug(name);
    if (auto it = slug.find(s); it != slug.end() && slug_count[s] == 1) {
      out.push_back(it->second);
      continue;
    }
    out.push_back(-1);
    unmatched.push_back(name);
  }
  if (unmatched.empty()) return out;
  // Folders named by class index.
  if (all_of_names(dataset_classes, is_index_name)) {
    out.clear();
    for (const std::string& name : dataset_classes) {
      const long v = std::stol(name);
      if (v >= C) fail("data class folder \"{}\" is not a class index of the model (0..{})", name, C - 1);
      out.push_back(static_cast<int>(v));
    }
    return out;
  }
  // ImageNet synset folders: the ILSVRC-2012 class index is the position in sorted synsets.
  if (all_of_names(dataset_classes, is_synset_name) && static_cast<int>(dataset_classes.size()) == C &&
      std::is_sorted(dataset_classes.begin(), dataset_classes.end())) {
    out.resize(C);
    std::iota(out.begin(), out.end(), 0);
    return out;
  }
  fail("{} of the {} data classes match no label of the model: {} (model labels: {}; folders must be named by label, "
       "by label with punctuation replaced, or by class index)",
       unmatched.size(), dataset_classes.size(), list_some(unmatched), list_some(labels, 10));
}

std::vector<int64_t> shard_images(int64_t count, int group_images, int shard_index, int shard_count) {
  if (shard_count < 1 || shard_index < 0 || shard_index >= shard_count)
    fail("shard {}/{}: expected 0 <= I < N", shard_index, shard_count);
  if (group_images < 1) fail("group_images must be at least 1, not {}", group_images);
  std::vector<int64_t> out;
  const int64_t groups = (count + group_images - 1) / group_images;
  for (int64_t g = shard_index; g < groups; g += shard_count)
    for (int64_t i = g * group_images; i < std::min(count, (g + 1) * group_images); ++i) out.push_back(i);
  return out;
}

void EvalCounts::merge(const EvalCounts& o) {
  if (o.shard_count != shard_count)
    fail("cannot merge results of {} shards with results of {} shards", o.shard_count, shard_count);
  for (int s : o.shards)
    if (std::find(shards.begin(), shards.end(), s) != shards.end()) fail("shard {}/{} is counted twice", s, shard_count);
  if (o.layers.size() != layers.size()) fail("cannot merge results with {} and {} MoE layers", o.layers.size(), layers.size());
  if (o.class_images.size() != class_images.size())
    fail("cannot merge results with {} and {} classes", o.class_images.size(), class_images.size());
  images += o.images;
  top1 += o.top1;
  top5 += o.top5;
  seconds += o.seconds;
  foreground_patches += o.foreground_patches;
  has_foreground = has_foreground && o.has_foreground;
  if (has_importance != o.has_importance || has_oracle != o.has_oracle || scorers != o.scorers)
    fail("cannot merge results with and without the same --importance figures");
  if (has_reference != o.has_reference) fail("cannot merge results with and without the f32 reference figures");
  reference_top1 += o.reference_top1;
  same_prediction += o.same_prediction;
  shards.insert(shards.end(), o.shards.begin(), o.shards.end());
  std::sort(shards.begin(), shards.end());
  for (size_t c = 0; c < class_images.size(); ++c) {
    class_images[c] += o.class_images[c];
    class_top1[c] += o.class_top1[c];
  }
  for (size_t l = 0; l < layers.size(); ++l) {
    EvalLayerCounts& a = layers[l];
    const EvalLayerCounts& b = o.layers[l];
    if (a.layer != b.layer) fail("cannot merge: MoE layer {} in one result is layer {} in the other", a.layer, b.layer);
    a.tokens += b.tokens;
    a.dropped_tokens += b.dropped_tokens;
    a.choices += b.choices;
    a.dropped_choices += b.dropped_choices;
    a.expert_tokens += b.expert_tokens;
    a.foreground_tokens += b.foreground_tokens;
    a.foreground_kept_all += b.foreground_kept_all;
    a.importance_pairs += b.importance_pairs;
    a.importance_kept_any += b.importance_kept_any, a.importance_kept_all += b.importance_kept_all;
    a.oracle_kept_any += b.oracle_kept_any, a.oracle_kept_all += b.oracle_kept_all;
    a.spearman_images += b.spearman_images;
    if (a.spearman_sum.size() != b.spearman_sum.size()) fail("cannot merge: the parts correlate different scorers");
    for (size_t s = 0; s < a.spearman_sum.size(); ++s) a.spearman_sum[s] += b.spearman_sum[s];
    a.foreground_kept_any += b.foreground_kept_any;
    a.agreement.add(b.agreement);
    // A shard with only a partial last group reports that group's capacity; the full-group one wins.
    if (b.capacity > a.capacity) {
      a.capacity = b.capacity;
      a.effective_capacity_factor = b.effective_capacity_factor;
    }
  }
}

double EvalResult::top1() const { return ratio(counts.top1, counts.images); }
double EvalResult::top5() const { return ratio(counts.top5, counts.images); }
double EvalResult::images_per_s() const { return counts.seconds > 0 ? counts.images / counts.seconds : 0.0; }

std::vector<double> EvalResult::dropped() const {
  std::vector<double> out;
  for (const EvalLayerCounts& l : counts.layers) out.push_back(ratio(l.dropped_tokens, l.tokens));
  return out;
}

std::vector<double> EvalResult::choices_dropped() const {
  std::vector<double> out;
  for (const EvalLayerCounts& l : counts.layers) out.push_back(ratio(l.dropped_choices, l.choices));
  return out;
}

double EvalResult::mean_dropped() const {
  const std::vector<double> d = dropped();
  return d.empty() ? 0.0 : std::accumulate(d.begin(), d.end(), 0.0) / d.size();
}

double EvalResult::mean_choices_dropped() const {
  const std::vector<double> d = choices_dropped();
  return d.empty() ? 0.0 : std::accumulate(d.begin(), d.end(), 0.0) / d.size();
}

double EvalResult::processed_tokens() const { return 1.0 - mean_dropped(); }

std::vector<double> EvalResult::foreground_kept_all() const {
  std::vector<double> out;
  for (const EvalLayerCounts& l : counts.layers)
    out.push_back(l.foreground_tokens > 0 ? ratio(l.foreground_kept_all, l.foreground_tokens) : 1.0);
  return out;
}

std::vector<double> EvalResult::foreground_kept_any() const {
  std::vector<double> out;
  for (const EvalLayerCounts& l : counts.layers)
    out.push_back(l.foreground_tokens > 0 ? ratio(l.foreground_kept_any, l.foreground_tokens) : 1.0);
  return out;
}

std::vector<double> EvalResult::importance_kept(bool oracle, bool all_choices) const {
  std::vector<double> out;
  if (!counts.has_importance || (oracle && !counts.has_oracle)) return out;
  for (const EvalLayerCounts& l : counts.layers) {
    const double sum = oracle ? (all_choices ? l.oracle_kept_all : l.oracle_kept_any)
                              : (all_choices ? l.importance_kept_all : l.importance_kept_any);
    out.push_back(l.importance_pairs > 0 ? sum / static_cast<double>(l.importance_pairs) : 1.0);
  }
  return out;
}

double EvalResult::importance_kept_overall(bool oracle, bool all_choices) const {
  double sum = 0;
  int64_t pairs = 0;
  for (const EvalLayerCounts& l : counts.layers) {
    sum += oracle ? (all_choices ? l.oracle_kept_all : l.oracle_kept_any)
                  : (all_choices ? l.importance_kept_all : l.importance_kept_any);
    pairs += l.importance_pairs;
  }
  return pairs > 0 ? sum / static_cast<double>(pairs) : 1.0;
}

std::vector<double> EvalResult::importance_spearman(size_t scorer) const {
  std::vector<double> out;
  for (const EvalLayerCounts& l : counts.layers)
    out.push_back(l.spearman_images > 0 && scorer < l.spearman_sum.size()
                      ? l.spearman_sum[scorer] / static_cast<double>(l.spearman_images)
                      : 0.0);
  return out;
}

double EvalResult::reference_top1() const { return ratio(counts.reference_top1, counts.images); }
double EvalResult::same_prediction() const { return ratio(counts.same_prediction, counts.images); }

double EvalResult::same_top1_expert() const {
  RoutingAgreement sum;
  for (const EvalLayerCounts& l : counts.layers) sum.add(l.agreement);
  return sum.tokens > 0 ? ratio(sum.top1_same, sum.tokens) : -1.0;
}

double EvalResult::same_kept_decisions() const {
  RoutingAgreement sum;
  for (const EvalLayerCounts& l : counts.layers) sum.add(l.agreement);
  return sum.decisions > 0 ? ratio(sum.decisions_same, sum.decisions) : -1.0;
}

double EvalResult::foreground_per_image() const { return ratio(counts.foreground_patches, counts.images); }

double batch_memory_bytes(const ModelConfig& c, const MoeConfig* routing, int64_t B) {
  const double T = c.num_tokens(), D = c.hidden_size;
  const double image = double{1} * c.image.height * c.image.width * c.image.channels;
  // Per token: x, h, attention output, embedding (D each), QKV (3D), dense MLP hidden (M).
  double per_token = 7 * D + c.mlp_dim;
  if (routing && !routing->layers.empty()) {
    const double S = double{1} * routing->group_images * T;  // tokens routed together
    const double rows = static_cast<double>(routing->router->max_rows(*routing, static_cast<int64_t>(S))) / S;
    const double E = routing->num_experts, slots = double{1} * routing->num_experts * routing->slots_per_expert;
    const double router = routing->router->trace_slots(*routing) > 0 ? 3 * slots : 2 * E;  // (N, slots) x3 or (N, E) x2
    per_token = std::max(per_token, 6 * D + router + rows * (2 * D + c.expert_mlp_dim()));
  }
  return 4.0 * static_cast<double>(B) * (image + T * per_token + c.num_classes);
}

namespace {
double available_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
}
}  // namespace

void check_batch_memory(const ModelConfig& c, const MoeConfig* routing, int64_t B) {
  const double need = batch_memory_bytes(c, routing, B), have = available_bytes();
  if (have <= 0 || need <= have) return;
  const double per_image = batch_memory_bytes(c, routing, 1);
  const auto fits = static_cast<int64_t>(have / per_image);
  constexpr double GiB = 1 << 30;
  fail("a batch of {} images needs about {:.1f} GiB ({:.1f} MiB an image for this model) but {:.1f} GiB are "
       "available: lower the batch size (--batch {} or less{})",
       B, need / GiB, per_image / (1 << 20), have / GiB, std::max<int64_t>(fits, 1),
       fits < 1 ? "; even one image does not fit" : "");
}

namespace {

// The scorers `vmoe eval --importance` correlates with importance: the gate-based ones,
// and the model's learned scorer when it has one.
std::vector<Priority> importance_scorers(const MoeConfig& file_moe) {
  std::vector<Priority> s = {Priority::max_gate, Priority::sum_gates, Priority::entropy, Priority::random};
  if (has_priority_scorer(file_moe.priority)) s.push_back(file_moe.priority);
  return s;
}

// Adds one batch's importance figures to the layers' counts: kept shares under the run's
// trace and (when given) the oracle order's, and the scorers' correlation per image.
void count_importance(std::vector<EvalLayerCounts>& layers, const PatchImportance& imp, const RoutingTrace& run,
                      const RoutingTrace* oracle, const std::vector<Priority>& scorers, const MoeConfig& moe) {
  const int T = imp.tokens, E = moe.num_experts;
  std::vector<float> importance(T), score(T);
  for (size_t j = 0; j < layers.size(); ++j) {
    EvalLayerCounts& lc = layers[j];
    lc.spearman_sum.resize(scorers.size(), 0.0);
    const MoeLayerTrace& reference = imp.reference.layers.at(j);
    for (int b = 0; b < imp.images; ++b) {
      if (const auto kept = importance_kept(imp, b, static_cast<int>(j), run.layers.at(j), moe.k)) {
        ++lc.importance_pairs;
        lc.importance_kept_any += kept->any, lc.importance_kept_all += kept->all;
        if (oracle) {
          const auto best = importance_kept(imp, b, static_cast<int>(j), oracle->layers.at(j), moe.k);
          lc.oracle_kept_any += best->any, lc.oracle_kept_all += best->all;
        }
      }
      if (scorers.empty()) continue;
      std::copy(imp.of(b, static_cast<int>(j)), imp.of(b, static_cast<int>(j)) + T, importance.begin());
      const float* gates = reference.gates.data() + static_cast<size_t>(b) * T * E;
      const float* learned = reference.priority_score.empty() ? nullptr : reference.priority_score.data() + static_cast<size_t>(b) * T;
      for (size_t s = 0; s < scorers.size(); ++s) {
        // Each image's tokens scored as a group of their own (random: its positions).
        priority_scores(score.data(), gates, learned, T, E, moe.k, scorers[s]);
        lc.spearman_sum[s] += spearman(score, importance);
      }
      ++lc.spearman_images;
    }
  }
}

}  // namespace

EvalResult evaluate(Engine& engine, const Dataset& data, const EvalOptions& options) {
  const ModelConfig& c = engine.config();
  const MoeConfig* moe = engine.routing();
  if (options.batch < 1) fail("batch size must be at least 1, not {}", options.batch);
  if (data.size() == 0) fail("{}: the dataset has no images", data.name);

  EvalResult r;
  r.model = engine.model().source;
  r.data = data.name;
  r.class_names = data.class_names;
  r.precision = nn::to_string(engine.precision());
  if (options.reference && (&options.reference->model() != &engine.model()))
    fail("eval: the reference engine runs a different model");
  if (!moe || moe->layers.empty()) {
    r.router = "dense";
    r.routing = "dense";
  } else {
    r.router = moe->router->name();
    r.routing = moe->router->routing(moe->batch_priority);
    r.has_capacity = moe->router->drops() && !moe->dropless;
    if (moe->router->top_k_options()) r.priority = to_string(moe->priority), r.overflow = to_string(moe->overflow);
    r.capacity_factor = r.has_capacity ? moe->capacity_factor : 0.0;
    r.group_images = moe->group_images;
  }
  const std::vector<int> to_model = map_dataset_classes(data.class_names, c);

  const int group = r.group_images;
  const int64_t count = options.limit >= 0 ? std::min(options.limit, data.size()) : data.size();
  if (count == 0) fail("--limit 0: nothing to evaluate");
  const std::vector<int64_t> mine = shard_images(count, group, options.shard_index, options.shard_count);

  EvalCounts& k = r.counts;
  k.shard_count = options.shard_count;
  k.shards = {options.shard_index};
  k.class_images.assign(data.class_names.size(), 0);
  k.class_top1.assign(data.class_names.size(), 0);
  k.has_reference = options.reference != nullptr;
  if (moe)
    for (int layer : moe->layers) {
      EvalLayerCounts lc;
      lc.layer = layer;
      k.layers.push_back(lc);
    }

  // No bigger than the images to evaluate (whole groups), and refused up front if it
  // cannot fit in memory.
  const int64_t needed = (static_cast<int64_t>(mine.size()) + group - 1) / group * group;
  const int batch = static_cast<int>(std::min<int64_t>(std::max(group, options.batch / group * group), std::max<int64_t>(needed, group)));
  check_batch_memory(c, moe, batch);
  const int64_t image_size = int64_t{c.image.height} * c.image.width * c.image.channels;
  const int C = c.num_classes;
  std::vector<float> images(static_cast<size_t>(batch) * image_size);
  std::vector<float> logits(static_cast<size_t>(batch) * C);
  const int patches = c.num_patches();
  std::vector<uint8_t> foreground(static_cast<size_t>(batch) * patches);  // (B, patches)
  RoutingTrace trace;
  trace.detail = options.detail_trace;
  // Patch importance: for --importance, and for the oracle order, which routes by it.
  const bool oracle_run = moe && moe->priority == Priority::oracle;
  const bool with_importance = moe && (options.importance || oracle_run);
  const bool with_oracle = options.importance && moe && moe->router->top_k_options();
  std::vector<Priority> scorers;
  std::optional<MoeConfig> run_routing, oracle_routing;
  if (moe) run_routing = *moe;
  if (options.importance) {
    if (!moe || moe->layers.empty()) fail("--importance: the model is dense, there is no MoE output to measure");
    k.has_importance = true, k.has_oracle = with_oracle;
    if (moe->router->top_k_options()) scorers = importance_scorers(*c.moe);
    for (Priority p : scorers) k.scorers.push_back(to_string(p));
    if (with_oracle) {
      oracle_routing = *moe;
      oracle_routing->priority = Priority::oracle;
      oracle_routing->batch_priority = true;
    }
  }
  RoutingTrace oracle_trace, reference_trace;
  std::vector<float> oracle_logits, reference_logits;
  std::vector<int> labels;  // (B) dataset class of each image of the batch
  const auto start = std::chrono::steady_clock::now();
  for (size_t first = 0; first < mine.size(); first += batch) {
    const int B = static_cast<int>(std::min<size_t>(batch, mine.size() - first));
    // Decode and preprocess in parallel (folders decode files); errors surface after the loop.
    std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 4)
    for (int b = 0; b < B; ++b) {
      try {
        dataset_image(images.data() + b * image_size, data, mine[first + b], c.image);
      } catch (...) {
#pragma omp critical(vmoe_eval_error)
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    foreground.resize(static_cast<size_t>(B) * patches);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; ++b) {
      const std::vector<uint8_t> mask = foreground_patches(images.data() + b * image_size, c);
      std::copy(mask.begin(), mask.end(), foreground.begin() + static_cast<ptrdiff_t>(b) * patches);
    }
    for (uint8_t f : foreground) k.foreground_patches += f;
    std::optional<PatchImportance> importance;
    if (with_importance) {
      importance = patch_importance(engine, images.data(), B);
      std::vector<std::vector<float>> scores;
      for (size_t j = 0; j < importance->blocks.size(); ++j) scores.push_back(importance->block_scores(static_cast<int>(j)));
      // The reference run orders by the same importance, so only the arithmetic differs.
      if (options.reference) options.reference->set_oracle_priority(scores);
      engine.set_oracle_priority(std::move(scores));
    }
    engine.forward(logits.data(), images.data(), B, moe ? &trace : nullptr);
    if (options.importance) {
      if (with_oracle) {
        engine.set_routing(*oracle_routing);
        oracle_logits.resize(logits.size());
        engine.forward(oracle_logits.data(), images.data(), B, &oracle_trace);
        engine.set_routing(*run_routing);
      }
      count_importance(k.layers, *importance, trace, with_oracle ? &oracle_trace : nullptr, scorers, *run_routing);
    }
    if (with_importance) engine.set_oracle_priority({});
    if (options.reference) {
      reference_logits.resize(logits.size());
      options.reference->forward(reference_logits.data(), images.data(), B, moe ? &reference_trace : nullptr);
      if (with_importance) options.reference->set_oracle_priority({});
    }

    for (int b = 0; b < B; ++b) {
      const int64_t i = mine[first + b];
      const int dataset_class = data.labels[i];
      const int truth = to_model[dataset_class];
      const float* l = logits.data() + static_cast<size_t>(b) * C;
      // Rank of the true class under the order of top_classes: higher logit first, ties to the lower index.
      int rank = 0;
      for (int j = 0; j < C; ++j) rank += l[j] > l[truth] || (l[j] == l[truth] && j < truth);
      ++k.images;
      ++k.class_images[dataset_class];
      if (rank == 0) {
        ++k.top1;
        ++k.class_top1[dataset_class];
      }
      if (rank < 5) ++k.top5;
      if (options.reference) {
        const float* ref = reference_logits.data() + static_cast<size_t>(b) * C;
        const int predicted = static_cast<int>(std::max_element(l, l + C) - l);
        const int ref_predicted = static_cast<int>(std::max_element(ref, ref + C) - ref);
        k.reference_top1 += ref_predicted == truth;
        k.same_prediction += ref_predicted == predicted;
      }
    }
    if (moe) {
      if (trace.layers.size() != k.layers.size())
        fail("internal: the engine traced {} MoE layers, the config has {}", trace.layers.size(), k.layers.size());
      for (size_t li = 0; li < k.layers.size(); ++li) {
        const MoeLayerTrace& t = trace.layers[li];
        EvalLayerCounts& lc = k.layers[li];
        const int64_t N = t.num_tokens();
        lc.tokens += N;
        const LayerCounts counts = count_layer(t);
        lc.dropped_tokens += counts.dropped_tokens;
        lc.expert_tokens += counts.expert_tokens;
        lc.choices += counts.choices;
        lc.dropped_choices += counts.dropped_choices;
        if (t.router->drops() && !t.group_capacity.empty() && t.group_capacity.front() > lc.capacity) {
          lc.capacity = t.group_capacity.front();
          const int64_t group_tokens = int64_t{std::min(B, group)} * t.tokens_per_image;
          lc.effective_capacity_factor = effective_capacity_factor(lc.capacity, t.num_experts, t.demand(group_tokens));
        }
        const ForegroundKept fg = count_foreground_kept(t, foreground, patches, moe->k);
        lc.foreground_tokens += fg.foreground;
        lc.foreground_kept_all += fg.kept_all;
        lc.foreground_kept_any += fg.kept_any;
        if (options.reference) lc.agreement.add(routing_agreement(reference_trace.layers.at(li), t));
      }
    }
    if (moe && options.on_trace) {
      labels.resize(B);
      for (int b = 0; b < B; ++b) labels[b] = data.labels[mine[first + b]];
      options.on_trace(trace, labels);
    }
    if (options.progress) options.progress(static_cast<int64_t>(first + B), static_cast<int64_t>(mine.size()));
  }
  k.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

EvalResult merge_results(const std::vector<EvalResult>& parts) {
  if (parts.empty()) fail("nothing to merge");
  EvalResult out = parts.front();
  for (size_t i = 1; i < parts.size(); ++i) {
    const EvalResult& p = parts[i];
    auto same = [&](const char* what, const auto& a, const auto& b) {
      if (a != b) fail("cannot merge: part {} has a different {} than part 1", i + 1, what);
    };
    same("model", p.model, out.model);
    same("data", p.data, out.data);
    same("router", p.router, out.router);
    same("routing", p.routing, out.routing);
    same("priority", p.priority, out.priority);
    same("overflow", p.overflow, out.overflow);
    same("precision", p.precision, out.precision);
    same("capacity factor", p.capacity_factor, out.capacity_factor);
    same("group size", p.group_images, out.group_images);
    same("class list", p.class_names, out.class_names);
    out.counts.merge(p.counts);
  }
  const EvalCounts& k = out.counts;
  if (static_cast<int>(k.shards.size()) != k.shard_count) {
    std::vector<std::string> missing;
    for (int s = 0; s < k.shard_count; ++s)
      if (!std::binary_search(k.shards.begin(), k.shards.end(), s)) missing.push_back(fmt::format("{}/{}", s, k.shard_count));
    fail("cannot merge: shard{} {} missing", missing.size() > 1 ? "s" : "", fmt::join(missing, ", "));
  }
  return out;
}

}  // namespace vmoe
