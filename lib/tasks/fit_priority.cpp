#include "tasks/fit_priority.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.hpp"
#include "spec/router.hpp"
#include "tasks/importance.hpp"

namespace vmoe {

std::vector<double> solve_spd(std::vector<double> A, std::vector<double> b, int n) {
  // A = L L', L lower triangular, in place.
  for (int j = 0; j < n; ++j) {
    double d = A[static_cast<size_t>(j) * n + j];
    for (int k = 0; k < j; ++k) d -= A[static_cast<size_t>(j) * n + k] * A[static_cast<size_t>(j) * n + k];
    if (!(d > 0)) fail("fit-priority: the normal equations are not positive definite (column {})", j);
    const double l = std::sqrt(d);
    A[static_cast<size_t>(j) * n + j] = l;
    for (int i = j + 1; i < n; ++i) {
      double s = A[static_cast<size_t>(i) * n + j];
      for (int k = 0; k < j; ++k) s -= A[static_cast<size_t>(i) * n + k] * A[static_cast<size_t>(j) * n + k];
      A[static_cast<size_t>(i) * n + j] = s / l;
    }
  }
  for (int i = 0; i < n; ++i) {  // L y = b
    double s = b[i];
    for (int k = 0; k < i; ++k) s -= A[static_cast<size_t>(i) * n + k] * b[k];
    b[i] = s / A[static_cast<size_t>(i) * n + i];
  }
  for (int i = n - 1; i >= 0; --i) {  // L' x = y
    double s = b[i];
    for (int k = i + 1; k < n; ++k) s -= A[static_cast<size_t>(k) * n + i] * b[k];
    b[i] = s / A[static_cast<size_t>(i) * n + i];
  }
  return b;
}

namespace {
// Running sums of one block's regression: X = [h, 1] (D + 1 columns), y = importance.
struct NormalEquations {
  int n = 0;
  std::vector<double> xtx, xty;
  double yy = 0, y = 0;
  int64_t rows = 0;
  explicit NormalEquations(int D) : n(D + 1), xtx(static_cast<size_t>(n) * n, 0.0), xty(n, 0.0) {}
  void add(const float* h, float target) {
    for (int i = 0; i < n; ++i) {
      const double xi = i + 1 < n ? h[i] : 1.0;
      xty[i] += xi * target;
      for (int j = 0; j <= i; ++j) xtx[static_cast<size_t>(i) * n + j] += xi * (j + 1 < n ? h[j] : 1.0);
    }
    yy += double{target} * target, y += target;
    ++rows;
  }
};
// out (T) = what the head is fitted to for one image's importance v (T) at one block.
void fit_target(float* out, std::vector<int>& order, const float* v, int T, FitPriorityOptions::Target target) {
  using Target = FitPriorityOptions::Target;
  if (target == Target::nats) {
    std::copy(v, v + T, out);
    return;
  }
  if (target == Target::share) {
    double positive = 0;
    for (int t = 0; t < T; ++t) positive += std::max(0.0f, v[t]);
    for (int t = 0; t < T; ++t) out[t] = positive > 0 ? static_cast<float>(v[t] / positive) : 0.0f;
    return;
  }
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] < v[b]; });
  for (int r = 0; r < T; ++r) out[order[r]] = T > 1 ? static_cast<float>(r) / static_cast<float>(T - 1) : 0.0f;
}

}  // namespace

FitPriorityResult fit_priority(Engine& engine, const Dataset& data, const FitPriorityOptions& o) {
  const ModelConfig& c = engine.config();
  if (!c.moe || c.moe->layers.empty()) fail("fit-priority: the model is dense, it has no routing to order");
  if (!c.moe->router->top_k_options())
    fail("fit-priority: a priority orders top-k routing; the {} router has none", c.moe->router->name());
  if (c.moe->priority == Priority::learned)
    fail("fit-priority: the model has a learned scorer, which scales its MoE outputs and holds the same tensors");
  if (o.images < 1 || o.batch < 1) fail("fit-priority: need at least one image and a batch of at least one");
  const int D = c.hidden_size, T = c.num_tokens();
  std::vector<int64_t> order(data.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::mt19937_64 rng(o.seed);
  std::shuffle(order.begin(), order.end(), rng);
  order.resize(std::min<int64_t>(o.images, data.size()));
  const int64_t count = static_cast<int64_t>(order.size());
  const int64_t image_floats = int64_t{c.image.height} * c.image.width * c.image.channels;

  std::vector<NormalEquations> eq;
  FitPriorityResult r;
  std::vector<float> images;
  for (int64_t first = 0; first < count; first += o.batch) {
    const int B = static_cast<int>(std::min<int64_t>(o.batch, count - first));
    images.resize(static_cast<size_t>(B) * image_floats);
    for (int b = 0; b < B; ++b) dataset_image(images.data() + b * image_floats, data, order[first + b], c.image);
    const PatchImportance imp = patch_importance(engine, images.data(), B, /*keep_inputs=*/true);
    if (eq.empty()) {
      r.blocks = imp.blocks;
      eq.assign(imp.blocks.size(), NormalEquations(D));
    }
    std::vector<float> target(T);
    std::vector<int> order(T);
    for (size_t j = 0; j < imp.blocks.size(); ++j)
      for (int b = 0; b < B; ++b) {
        const float* v = imp.of(b, static_cast<int>(j));
        fit_target(target.data(), order, v, T, o.target);
        for (int t = 0; t < T; ++t) eq[j].add(imp.inputs[j].data() + (static_cast<size_t>(b) * T + t) * D, target[t]);
      }
    if (o.progress) o.progress(first + B, count);
  }
  r.images = count, r.tokens = count * T;

  // The model with a head in each MoE block (the heads' tensors appear with priority fitted).
  r.model.config = c;
  r.model.config.moe->priority = Priority::fitted;
  r.model.params = allocate_params(r.model.config);
  const auto src = param_slots(engine.model().params, c);
  for (ParamSlot& slot : param_slots(r.model.params, r.model.config))
    for (const auto& from : src)
      if (from.name == slot.name) *slot.tensor = from.tensor->clone();
  r.model.source = engine.model().source;

  for (size_t j = 0; j < eq.size(); ++j) {
    NormalEquations& e = eq[j];
    const int n = e.n;
    for (int i = 0; i < n; ++i)  // mirror the lower triangle
      for (int k = i + 1; k < n; ++k) e.xtx[static_cast<size_t>(i) * n + k] = e.xtx[static_cast<size_t>(k) * n + i];
    double mean_diag = 0;
    for (int i = 0; i + 1 < n; ++i) mean_diag += e.xtx[static_cast<size_t>(i) * n + i] / (n - 1);
    std::vector<double> A = e.xtx;
    for (int i = 0; i + 1 < n; ++i) A[static_cast<size_t>(i) * n + i] += o.ridge * mean_diag + 1e-12;
    const std::vector<double> w = solve_spd(A, e.xty, n);
    // R^2 on the fit data: 1 - SSE / SST with SSE = y'y - 2 w'X'y + w'X'Xw.
    double wxy = 0, wxxw = 0;
    for (int i = 0; i < n; ++i) {
      wxy += w[i] * e.xty[i];
      for (int k = 0; k < n; ++k) wxxw += w[i] * e.xtx[static_cast<size_t>(i) * n + k] * w[k];
    }
    const double sst = e.yy - e.y * e.y / static_cast<double>(e.rows), sse = e.yy - 2 * wxy + wxxw;
    r.r2.push_back(sst > 0 ? 1.0 - sse / sst : 0.0);
    BlockParams& b = r.model.params.blocks[r.blocks[j]];
    for (int d = 0; d < D; ++d) b.priority_kernel[d] = static_cast<float>(w[d]);
    b.priority_bias[0] = static_cast<float>(w[D]);
  }
  return r;
}

}  // namespace vmoe
