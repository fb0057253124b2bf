#include "naive/naive_ops.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>

#include "moe/router_registry.hpp"
#include "spec/router.hpp"

namespace naive {

namespace {
const double kPi = 3.14159265358979323846;

float at(const float* p, int64_t i) { return p[i]; }
}  // namespace

// 0.5 (1 + tanh(s)) = 1 / (1 + exp(-2s)) and 0.5 (1 - tanh(s)) = 1 / (1 + exp(2s)), which keep
// their relative accuracy in the tails where 1 +- tanh(s) would cancel.
double gelu_tanh(double x) {
  const double s = std::sqrt(2.0 / kPi) * (x + 0.044715 * x * x * x);
  return x / (1.0 + std::exp(-2.0 * s));
}

double gelu_tanh_slope(double x) {
  const double c = std::sqrt(2.0 / kPi), s = c * (x + 0.044715 * x * x * x);
  const double half_one_plus_t = 1.0 / (1.0 + std::exp(-2.0 * s)), half_one_minus_t = 1.0 / (1.0 + std::exp(2.0 * s));
  return half_one_plus_t + 2.0 * x * half_one_plus_t * half_one_minus_t * c * (1.0 + 3.0 * 0.044715 * x * x);
}

double activate(double x, Act act) {
  switch (act) {
    case Act::none: return x;
    case Act::gelu_tanh: return gelu_tanh(x);
    case Act::gelu_erf: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));  // the exact GELU
    case Act::tanh: return std::tanh(x);
  }
  return x;
}

void matmul(float* c, const float* a, const float* b, const float* bias, const MatmulSpec& s, double* abs_sum) {
  const int64_t lda = s.lda ? s.lda : (s.trans_a ? s.m : s.k);
  const int64_t ldb = s.ldb ? s.ldb : (s.trans_b ? s.k : s.n);
  const int64_t ldc = s.ldc ? s.ldc : s.n;
  std::vector<double> acc(s.n), mag(s.n);
  for (int64_t bt = 0; bt < s.batch; ++bt) {
    const float* A = a + bt * s.stride_a;
    const float* Bm = b + bt * s.stride_b;
    float* C = c + bt * s.stride_c;
    const float* bias_row = bias ? bias + bt * s.stride_bias : nullptr;
    for (int64_t i = 0; i < s.m; ++i) {
      // Row i of the product, accumulated in double over q.
      std::fill(acc.begin(), acc.end(), 0.0);
      std::fill(mag.begin(), mag.end(), 0.0);
      for (int64_t q = 0; q < s.k; ++q) {
        const double av = s.trans_a ? at(A, q * lda + i) : at(A, i * lda + q);
        for (int64_t j = 0; j < s.n; ++j) {
          const double bv = s.trans_b ? at(Bm, j * ldb + q) : at(Bm, q * ldb + j);
          acc[j] += av * bv;
          if (abs_sum) mag[j] += std::fabs(av * bv);
        }
      }
      for (int64_t j = 0; j < s.n; ++j) {
        double v = acc[j] * s.alpha, m = mag[j] * std::fabs(s.alpha);
        if (bias_row) {
          v += bias_row[j];
          m += std::fabs(bias_row[j]);
        }
        if (s.beta != 0.0) {
          v += s.beta * C[i * ldc + j];
          m += std::fabs(s.beta * C[i * ldc + j]);
        }
        C[i * ldc + j] = static_cast<float>(activate(v, s.act));
        if (abs_sum) abs_sum[bt * s.stride_c + i * ldc + j] = m;
      }
    }
  }
}

void layer_norm(float* y, const float* x, int64_t rows, int64_t cols, const float* scale, const float* bias,
                double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    double mean = 0;
    for (int64_t j = 0; j < cols; ++j) mean += xr[j];
    mean /= static_cast<double>(cols);
    double var = 0;
    for (int64_t j = 0; j < cols; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    var /= static_cast<double>(cols);
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t j = 0; j < cols; ++j) y[r * cols + j] = static_cast<float>((xr[j] - mean) * inv * scale[j] + bias[j]);
  }
}

void softmax_rows(float* y, const float* x, int64_t rows, int64_t cols) {
  std::vector<double> e(cols);
  for (int64_t r = 0; r < rows; ++r) {
    double mx = x[r * cols];
    for (int64_t j = 1; j < cols; ++j) mx = std::max(mx, static_cast<double>(x[r * cols + j]));
    double sum = 0;
    for (int64_t j = 0; j < cols; ++j) sum += e[j] = std::exp(x[r * cols + j] - mx);
    for (int64_t j = 0; j < cols; ++j) y[r * cols + j] = static_cast<float>(e[j] / sum);
  }
}

void softmax_backward_rows(double* dx, const float* dy, const float* y, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0;
    for (int64_t j = 0; j < cols; ++j) dot += double{dy[r * cols + j]} * y[r * cols + j];
    for (int64_t j = 0; j < cols; ++j) dx[r * cols + j] = y[r * cols + j] * (dy[r * cols + j] - dot);
  }
}

void attention(float* out, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Dh) {
  const int64_t D = H * Dh, row = 3 * D;
  std::vector<double> p(T);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const float* q = qkv + (b * T + i) * row + h * Dh;
        double mx = -INFINITY;
        for (int64_t j = 0; j < T; ++j) {
          const float* kk = qkv + (b * T + j) * row + D + h * Dh;
          double s = 0;
          for (int64_t d = 0; d < Dh; ++d) s += double{q[d]} * kk[d];
          p[j] = s / std::sqrt(static_cast<double>(Dh));
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < T; ++j) sum += p[j] = std::exp(p[j] - mx);
        for (int64_t d = 0; d < Dh; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < T; ++j) acc += p[j] / sum * qkv[(b * T + j) * row + 2 * D + h * Dh + d];
          out[(b * T + i) * D + h * Dh + d] = static_cast<float>(acc);
        }
      }
}

void attention_backward(double* dqkv, double* bound, const float* dout, const float* qkv, int64_t B, int64_t T,
                        int64_t H, int64_t Dh) {
  const int64_t D = H * Dh, row = 3 * D;
  const double s = 1.0 / std::sqrt(static_cast<double>(Dh));
  std::fill(dqkv, dqkv + B * T * row, 0.0);
  std::fill(bound, bound + B * T * row, 0.0);
  std::vector<double> p(T * T), ds(T * T), ds_abs(T * T);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      auto q = [&](int64_t i, int64_t d) { return double{qkv[(b * T + i) * row + h * Dh + d]}; };
      auto k = [&](int64_t i, int64_t d) { return double{qkv[(b * T + i) * row + D + h * Dh + d]}; };
      auto v = [&](int64_t i, int64_t d) { return double{qkv[(b * T + i) * row + 2 * D + h * Dh + d]}; };
      auto dout_at = [&](int64_t i, int64_t d) { return double{dout[(b * T + i) * D + h * Dh + d]}; };
      auto at = [&](double* x, int64_t i, int64_t part, int64_t d) -> double& {
        return x[(b * T + i) * row + part * D + h * Dh + d];
      };
      for (int64_t i = 0; i < T; ++i) {
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < T; ++j) {
          double acc = 0;
          for (int64_t d = 0; d < Dh; ++d) acc += q(i, d) * k(j, d);
          mx = std::max(mx, p[i * T + j] = acc * s);
        }
        for (int64_t j = 0; j < T; ++j) sum += p[i * T + j] = std::exp(p[i * T + j] - mx);
        for (int64_t j = 0; j < T; ++j) p[i * T + j] /= sum;
        // dP_ij = dO_i . V_j;  dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij')
        std::vector<double> dp(T), dp_abs(T);
        double dot = 0, dot_abs = 0;
        for (int64_t j = 0; j < T; ++j) {
          for (int64_t d = 0; d < Dh; ++d) {
            dp[j] += dout_at(i, d) * v(j, d);
            dp_abs[j] += std::fabs(dout_at(i, d) * v(j, d));
          }
          dot += p[i * T + j] * dp[j], dot_abs += p[i * T + j] * dp_abs[j];
        }
        for (int64_t j = 0; j < T; ++j) {
          ds[i * T + j] = p[i * T + j] * (dp[j] - dot);
          ds_abs[i * T + j] = p[i * T + j] * (dp_abs[j] + dot_abs);
        }
      }
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j)
          for (int64_t d = 0; d < Dh; ++d) {
            at(dqkv, i, 0, d) += s * ds[i * T + j] * k(j, d);  // dQ = s dS K
            at(bound, i, 0, d) += s * ds_abs[i * T + j] * std::fabs(k(j, d));
            at(dqkv, j, 1, d) += s * ds[i * T + j] * q(i, d);  // dK = s dS^T Q
            at(bound, j, 1, d) += s * ds_abs[i * T + j] * std::fabs(q(i, d));
            at(dqkv, j, 2, d) += p[i * T + j] * dout_at(i, d);  // dV = P^T dO
            at(bound, j, 2, d) += p[i * T + j] * std::fabs(dout_at(i, d));
          }
    }
}

int64_t capacity(int64_t tokens, int E, double factor, vmoe::CapacityRounding rounding, int multiple_of) {
  const double exact = static_cast<double>(tokens) * factor / E;
  int64_t c = static_cast<int64_t>(rounding == vmoe::CapacityRounding::ceil ? std::ceil(exact) : std::round(exact));
  if (multiple_of > 0)
    while (c % multiple_of != 0) ++c;
  if (c < 1) throw std::runtime_error("naive capacity < 1");
  return c;
}

TopK top_k(const float* gates, int S, int E, int k, int capacity, bool bpr, const float* select) {
  TopK r;
  r.expert.assign(static_cast<size_t>(S) * k, -1);
  r.gate.assign(static_cast<size_t>(S) * k, 0.0f);
  r.slot.assign(static_cast<size_t>(S) * k, -1);
  r.load.assign(E, 0);
  for (int t = 0; t < S; ++t) {
    // Rank experts by selection: e beats f when its gate is larger, or equal with a lower index.
    std::vector<int> ranked;
    std::vector<bool> used(E, false);
    for (int q = 0; q < k; ++q) {
      int best = -1;
      const float* rank = select ? select : gates;
      for (int e = 0; e < E; ++e) {
        if (used[e]) continue;
        if (best == -1 || rank[t * E + e] > rank[t * E + best]) best = e;
      }
      used[best] = true;
      r.expert[t * k + q] = best;
      r.gate[t * k + q] = gates[t * E + best];
    }
  }
  // Processing order: position, or by top-1 gate descending with ties in position order
  // (insertion sort is stable).
  r.order.clear();
  for (int t = 0; t < S; ++t) {
    if (!bpr) {
      r.order.push_back(t);
      continue;
    }
    // Priority = the token's largest gate (its first choice's, unless a balance bias chose).
    auto top = [&](int u) { return *std::max_element(gates + int64_t{u} * E, gates + int64_t{u} * E + E); };
    size_t pos = r.order.size();
    while (pos > 0 && top(r.order[pos - 1]) < top(t)) --pos;
    r.order.insert(r.order.begin() + static_cast<long>(pos), t);
  }
  for (int q = 0; q < k; ++q)
    for (int t : r.order) {
      const int e = r.expert[t * k + q];
      if (r.load[e] < capacity) {
        r.slot[t * k + q] = r.load[e];
        r.load[e] += 1;
      }
    }
  return r;
}

TopKFull top_k_full(const float* probs, const float* learned, int S, int E, const TopKRules& o) {
  const int k = o.k;
  TopKFull r;
  r.choice.assign(static_cast<size_t>(S) * k, -1);
  r.gate.assign(static_cast<size_t>(S) * k, 0.0f);
  r.slot.assign(static_cast<size_t>(S) * k, -1);
  r.load.assign(E, 0);
  r.priority.assign(S, 0.0f);
  // Every expert of every token ranked by the selection scores: repeated argmax, the
  // lower index winning ties.
  std::vector<std::vector<int>> ranked(S);
  std::vector<float> norm(S, 1.0f);
  for (int t = 0; t < S; ++t) {
    const float* p = probs + static_cast<size_t>(t) * E;
    const float* score = o.select ? o.select + static_cast<size_t>(t) * E : p;
    std::vector<bool> used(E, false);
    for (int q = 0; q < E; ++q) {
      int best = -1;
      for (int e = 0; e < E; ++e)
        if (!used[e] && (best == -1 || score[e] > score[best])) best = e;
      used[best] = true;
      ranked[t].push_back(best);
    }
    double sum = 0;
    for (int q = 0; q < k; ++q) {
      r.choice[t * k + q] = ranked[t][q];
      sum += p[ranked[t][q]];
    }
    if (o.topk_softmax && sum > 0) norm[t] = static_cast<float>(1.0 / sum);
    // Priority score (ROUTING.md 4.1), always from the probabilities.
    switch (o.priority) {
      case vmoe::Priority::max_gate: r.priority[t] = *std::max_element(p, p + E); break;
      case vmoe::Priority::sum_gates: {
        std::vector<float> sorted(p, p + E);
        std::sort(sorted.begin(), sorted.end(), std::greater<>());
        float s = 0;
        for (int q = 0; q < k; ++q) s += sorted[q];
        r.priority[t] = s;
        break;
      }
      case vmoe::Priority::entropy: {
        double h = 0;
        for (int e = 0; e < E; ++e)
          if (p[e] > 0) h -= double{p[e]} * std::log(double{p[e]});
        r.priority[t] = static_cast<float>(-h);
        break;
      }
      case vmoe::Priority::random: {
        uint64_t z = static_cast<uint64_t>(t) + 0x9e3779b97f4a7c15ULL;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        r.priority[t] = static_cast<float>((z ^ (z >> 31)) >> 40) / static_cast<float>(1 << 24);
        break;
      }
      case vmoe::Priority::learned: r.priority[t] = learned[t]; break;
      case vmoe::Priority::oracle:  // the given scores, as learned
      case vmoe::Priority::fitted: r.priority[t] = learned[t]; break;
    }
  }
  // Order: position, or priority descending with equal scores in position order.
  for (int t = 0; t < S; ++t) {
    size_t pos = r.order.size();
    while (o.bpr && pos > 0 && r.priority[r.order[pos - 1]] < r.priority[t]) --pos;
    r.order.insert(r.order.begin() + static_cast<long>(pos), t);
  }
  r.expert = r.choice;
  auto holds = [&](int t, int e, int upto) {
    for (int q = 0; q < upto; ++q)
      if (r.slot[t * k + q] >= 0 && r.expert[t * k + q] == e) return true;
    return false;
  };
  auto has_room = [&](int t, int e, int q) { return r.load[e] < o.capacity && !holds(t, e, q); };
  for (int q = 0; q < k; ++q)
    for (int t : r.order) {
      int e = r.choice[t * k + q];
      bool room = has_room(t, e, q);
      // overflow next: the token's later-ranked experts, in order, first one with room.
      for (int later = q + 1; o.overflow_next && !room && later < E; ++later)
        if (has_room(t, ranked[t][later], q)) e = ranked[t][later], room = true;
      r.gate[t * k + q] = probs[static_cast<size_t>(t) * E + e] * norm[t];
      if (!room) continue;
      r.expert[t * k + q] = e;
      r.slot[t * k + q] = r.load[e]++;
    }
  return r;
}

ExpertsChoice experts_choice(const float* gates, int S, int E, int capacity) {
  ExpertsChoice r;
  r.capacity = std::min(capacity, S);
  const int c = r.capacity;
  r.token.assign(static_cast<size_t>(E) * c, -1);
  r.gate.assign(static_cast<size_t>(E) * c, 0.0f);
  for (int e = 0; e < E; ++e) {
    std::vector<bool> taken(S, false);
    for (int j = 0; j < c; ++j) {
      int best = -1;
      for (int t = 0; t < S; ++t) {
        if (taken[t]) continue;
        if (best == -1 || gates[t * E + e] > gates[best * E + e]) best = t;
      }
      taken[best] = true;
      r.token[e * c + j] = best;
      r.gate[e * c + j] = gates[best * E + e];
    }
  }
  return r;
}

void soft_weights(float* dispatch, float* combine, const float* logits, int S, int slots) {
  for (int s = 0; s < slots; ++s) {
    double mx = -INFINITY, sum = 0;
    for (int m = 0; m < S; ++m) mx = std::max(mx, double{logits[m * slots + s]});
    for (int m = 0; m < S; ++m) sum += std::exp(logits[m * slots + s] - mx);
    for (int m = 0; m < S; ++m) dispatch[m * slots + s] = static_cast<float>(std::exp(logits[m * slots + s] - mx) / sum);
  }
  softmax_rows(combine, logits, S, slots);
}

void soft_logits(float* logits, const float* x, const float* mu, float scale, int S, int D, int slots) {
  std::vector<double> xn(static_cast<size_t>(S) * D), mun(static_cast<size_t>(D) * slots);
  for (int m = 0; m < S; ++m) {
    double ss = 0;
    for (int d = 0; d < D; ++d) ss += double{x[m * D + d]} * x[m * D + d];
    for (int d = 0; d < D; ++d) xn[m * D + d] = x[m * D + d] / std::sqrt(ss + 1e-6);
  }
  for (int s = 0; s < slots; ++s) {
    double ss = 0;
    for (int d = 0; d < D; ++d) ss += double{mu[d * slots + s]} * mu[d * slots + s];
    for (int d = 0; d < D; ++d) mun[d * slots + s] = mu[d * slots + s] / std::sqrt(ss + 1e-6);
  }
  // The scale multiplies the smaller of the two.
  if (int64_t{S} * D < int64_t{D} * slots)
    for (double& v : xn) v *= scale;
  else
    for (double& v : mun) v *= scale;
  for (int m = 0; m < S; ++m)
    for (int s = 0; s < slots; ++s) {
      double acc = 0;
      for (int d = 0; d < D; ++d) acc += xn[m * D + d] * mun[d * slots + s];
      logits[m * slots + s] = static_cast<float>(acc);
    }
}

void expert_mlp(float* y, const float* x, const float* w0, const float* b0, const float* w1, const float* b1, int D,
                int M) {
  std::vector<float> hidden(M);
  MatmulSpec up;
  up.m = 1, up.k = D, up.n = M, up.act = Act::gelu_tanh;
  matmul(hidden.data(), x, w0, b0, up);
  MatmulSpec down;
  down.m = 1, down.k = M, down.n = D;
  matmul(y, hidden.data(), w1, b1, down);
}

void moe_layer(float* y, const float* h, int64_t N, int group_tokens, int D, int M, const vmoe::MoeConfig& moe,
               const MoeParams& p, LayerRouting* routing) {
  const int E = moe.num_experts;
  const int k = moe.k;
  for (int64_t i = 0; i < N * D; ++i) y[i] = 0.0f;
  if (routing) {
    routing->kept.assign(moe.router == &vmoe::find_router("top_k") ? N * k : 0, 0);
    routing->expert.assign(moe.router == &vmoe::find_router("top_k") ? N * k : 0, -1);
    routing->times_taken.assign(N, 0);
    routing->group_capacity.clear();
  }
  std::vector<float> out(D);
  auto run_expert = [&](int e, const float* x) {
    expert_mlp(out.data(), x, p.w0 + int64_t{e} * D * M, p.b0 + int64_t{e} * M, p.w1 + int64_t{e} * M * D,
               p.b1 + int64_t{e} * D, D, M);
  };
  for (int64_t first = 0; first < N; first += group_tokens) {
    const int S = static_cast<int>(std::min<int64_t>(group_tokens, N - first));
    const float* hg = h + first * D;
    float* yg = y + first * D;
    if (moe.router == &vmoe::find_router("soft")) {
      const int P = moe.slots_per_expert, slots = E * P;
      std::vector<float> logits(static_cast<size_t>(S) * slots), dispatch(logits.size()), combine(logits.size());
      soft_logits(logits.data(), hg, p.mu, p.scale, S, D, slots);
      soft_weights(dispatch.data(), combine.data(), logits.data(), S, slots);
      std::vector<float> slot_out(static_cast<size_t>(slots) * D), slot_in(D);
      for (int s = 0; s < slots; ++s) {
        for (int d = 0; d < D; ++d) {
          double acc = 0;
          for (int m = 0; m < S; ++m) acc += double{dispatch[m * slots + s]} * hg[int64_t{m} * D + d];
          slot_in[d] = static_cast<float>(acc);
        }
        run_expert(s / P, slot_in.data());
        for (int d = 0; d < D; ++d) slot_out[int64_t{s} * D + d] = out[d];
      }
      for (int m = 0; m < S; ++m)
        for (int d = 0; d < D; ++d) {
          double acc = 0;
          for (int s = 0; s < slots; ++s) acc += double{combine[m * slots + s]} * slot_out[int64_t{s} * D + d];
          yg[int64_t{m} * D + d] = static_cast<float>(acc);
        }
      if (routing)
        for (int m = 0; m < S; ++m) routing->times_taken[first + m] = slots;
      continue;
    }
    // gates = softmax(h @ router), no bias
    std::vector<float> logits(static_cast<size_t>(S) * E), gates(logits.size()), select;
    MatmulSpec spec;
    spec.m = S, spec.k = D, spec.n = E;
    matmul(logits.data(), hg, p.router, nullptr, spec);
    softmax_rows(gates.data(), logits.data(), S, E);
    if (moe.balance == vmoe::Balance::bias) {
      select = logits;
      for (int t = 0; t < S; ++t)
        for (int e = 0; e < E; ++e) select[int64_t{t} * E + e] += p.balance_bias[e];
    }
    std::vector<double> acc(static_cast<size_t>(S) * D, 0.0);
    if (moe.router == &vmoe::find_router("top_k")) {
      const int c = static_cast<int>(capacity(int64_t{S} * k, E, moe.capacity_factor, moe.capacity_rounding,
                                              moe.capacity_multiple_of));
      TopK r = top_k(gates.data(), S, E, k, c, moe.batch_priority, select.empty() ? nullptr : select.data());
      for (int t = 0; t < S; ++t)
        for (int q = 0; q < k; ++q) {
          if (routing) {
            routing->expert[(first + t) * k + q] = r.expert[t * k + q];
            routing->kept[(first + t) * k + q] = r.slot[t * k + q] >= 0;
          }
          if (r.slot[t * k + q] < 0) continue;
          if (routing) routing->times_taken[first + t] += 1;
          run_expert(r.expert[t * k + q], hg + int64_t{t} * D);
          for (int d = 0; d < D; ++d) acc[int64_t{t} * D + d] += double{r.gate[t * k + q]} * out[d];
        }
      if (routing) routing->group_capacity.push_back(c);
    } else {
      const int c = static_cast<int>(
          capacity(S, E, moe.capacity_factor, moe.capacity_rounding, moe.capacity_multiple_of));
      ExpertsChoice r = experts_choice(gates.data(), S, E, c);
      for (int e = 0; e < E; ++e)
        for (int j = 0; j < r.capacity; ++j) {
          const int t = r.token[e * r.capacity + j];
          run_expert(e, hg + int64_t{t} * D);
          for (int d = 0; d < D; ++d) acc[int64_t{t} * D + d] += double{r.gate[e * r.capacity + j]} * out[d];
          if (routing) routing->times_taken[first + t] += 1;
        }
      if (routing) routing->group_capacity.push_back(r.capacity);
    }
    for (size_t i = 0; i < acc.size(); ++i) yg[i] = static_cast<float>(acc[i]);
  }
  // Shared experts: every token, weight 1, on top of the routed output.
  for (int s = 0; s < moe.num_shared_experts; ++s)
    for (int64_t n = 0; n < N; ++n) {
      expert_mlp(out.data(), h + n * D, p.shared_w0 + int64_t{s} * D * M, p.shared_b0 + int64_t{s} * M,
                 p.shared_w1 + int64_t{s} * M * D, p.shared_b1 + int64_t{s} * D, D, M);
      for (int d = 0; d < D; ++d) y[n * D + d] = static_cast<float>(double{y[n * D + d]} + out[d]);
    }
}

std::vector<float> naive_forward(const vmoe::Model& model, const float* images, int B,
                                 const vmoe::RoutingOverrides& overrides, ForwardInfo* info) {
  const vmoe::ModelConfig& c = model.config;
  const vmoe::VitParams& P = model.params;
  const int H = c.image.height, W = c.image.width, C = c.image.channels;
  const int ph = c.patch_h, pw = c.patch_w, gh = H / ph, gw = W / pw;
  const int D = c.hidden_size, heads = c.num_heads, Dh = D / heads, M = c.mlp_dim;
  const bool cls = c.classifier == vmoe::Classifier::token;
  const int T = gh * gw + (cls ? 1 : 0);
  const int64_t N = int64_t{B} * T;

  std::optional<vmoe::MoeConfig> moe = c.moe;
  if (moe) {
    if (overrides.capacity_factor) moe->capacity_factor = *overrides.capacity_factor;
    if (overrides.batch_priority) moe->batch_priority = *overrides.batch_priority;
    if (overrides.group_images) moe->group_images = *overrides.group_images;
  }
  if (info) info->layers.clear();

  // Patch embedding (conv, stride = patch, VALID) plus CLS and position embeddings.
  std::vector<float> x(static_cast<size_t>(N) * D);
  for (int b = 0; b < B; ++b) {
    if (cls)
      for (int d = 0; d < D; ++d) x[int64_t{b} * T * D + d] = static_cast<float>(double{P.cls[d]} + P.pos_embedding[d]);
    for (int gy = 0; gy < gh; ++gy)
      for (int gx = 0; gx < gw; ++gx) {
        const int tok = (cls ? 1 : 0) + gy * gw + gx;
        for (int d = 0; d < D; ++d) {
          double acc = P.embedding_bias[d];
          for (int py = 0; py < ph; ++py)
            for (int px = 0; px < pw; ++px)
              for (int ch = 0; ch < C; ++ch) {
                const double pixel = images[((int64_t{b} * H + gy * ph + py) * W + gx * pw + px) * C + ch];
                acc += pixel * P.embedding_kernel[((int64_t{py} * pw + px) * C + ch) * D + d];
              }
          const float embedded = static_cast<float>(acc);
          x[(int64_t{b} * T + tok) * D + d] = static_cast<float>(double{embedded} + P.pos_embedding[int64_t{tok} * D + d]);
        }
      }
  }

  std::vector<float> h(x.size()), qkv(static_cast<size_t>(N) * 3 * D), attn(x.size()), y(x.size());
  std::vector<float> hidden(static_cast<size_t>(N) * M);
  for (int i = 0; i < c.num_layers; ++i) {
    const vmoe::BlockParams& bp = P.blocks[i];
    layer_norm(h.data(), x.data(), N, D, bp.ln0_scale.data(), bp.ln0_bias.data(), c.layer_norm_eps);
    // q, k, v = h @ kernel (D, H*Dh) + bias (H*Dh), packed side by side.
    const vmoe::Tensor* kernels[3] = {&bp.query_kernel, &bp.key_kernel, &bp.value_kernel};
    const vmoe::Tensor* biases[3] = {&bp.query_bias, &bp.key_bias, &bp.value_bias};
    for (int j = 0; j < 3; ++j) {
      MatmulSpec s;
      s.m = N, s.k = D, s.n = D, s.ldc = 3 * D;
      matmul(qkv.data() + j * D, h.data(), kernels[j]->data(), biases[j]->data(), s);
    }
    attention(attn.data(), qkv.data(), B, T, heads, Dh);
    {
      MatmulSpec s;  // out kernel (H, Dh, D) is (D, D) with rows in head-major order
      s.m = N, s.k = D, s.n = D;
      matmul(y.data(), attn.data(), bp.out_kernel.data(), bp.out_bias.data(), s);
      for (size_t q = 0; q < x.size(); ++q) x[q] = static_cast<float>(double{x[q]} + y[q]);
    }
    layer_norm(h.data(), x.data(), N, D, bp.ln1_scale.data(), bp.ln1_bias.data(), c.layer_norm_eps);
    const bool is_moe = moe && std::find(moe->layers.begin(), moe->layers.end(), i) != moe->layers.end();
    if (is_moe) {
      MoeParams mp{bp.mlp0_kernel.data(), bp.mlp0_bias.data(), bp.mlp1_kernel.data(), bp.mlp1_bias.data()};
      mp.balance_bias = bp.balance_bias.data();
      mp.shared_w0 = bp.shared0_kernel.data(), mp.shared_b0 = bp.shared0_bias.data();
      mp.shared_w1 = bp.shared1_kernel.data(), mp.shared_b1 = bp.shared1_bias.data();
      if (moe->router == &vmoe::find_router("soft")) {
        mp.mu = bp.router_mu.data();
        mp.scale = bp.router_scale[0];
      } else {
        mp.router = bp.router_kernel.data();
      }
      LayerRouting lr;
      moe_layer(y.data(), h.data(), N, moe->group_images * T, D, c.expert_mlp_dim(), *moe, mp, &lr);
      if (info) info->layers.push_back(std::move(lr));
    } else {
      MatmulSpec up;
      up.m = N, up.k = D, up.n = M, up.act = Act::gelu_tanh;
      matmul(hidden.data(), h.data(), bp.mlp0_kernel.data(), bp.mlp0_bias.data(), up);
      MatmulSpec down;
      down.m = N, down.k = M, down.n = D;
      matmul(y.data(), hidden.data(), bp.mlp1_kernel.data(), bp.mlp1_bias.data(), down);
    }
    for (size_t q = 0; q < x.size(); ++q) x[q] = static_cast<float>(double{x[q]} + y[q]);
  }
  layer_norm(h.data(), x.data(), N, D, P.encoder_norm_scale.data(), P.encoder_norm_bias.data(), c.layer_norm_eps);

  // Pool: the CLS token, or the mean over all tokens.
  std::vector<float> pooled(static_cast<size_t>(B) * D);
  for (int b = 0; b < B; ++b)
    for (int d = 0; d < D; ++d) {
      if (cls) {
        pooled[int64_t{b} * D + d] = h[int64_t{b} * T * D + d];
        continue;
      }
      double acc = 0;
      for (int t = 0; t < T; ++t) acc += h[(int64_t{b} * T + t) * D + d];
      pooled[int64_t{b} * D + d] = static_cast<float>(acc / T);
    }
  int width = D;
  std::vector<float> features = pooled;
  if (c.representation_size) {
    width = *c.representation_size;
    features.assign(static_cast<size_t>(B) * width, 0.0f);
    MatmulSpec s;
    s.m = B, s.k = D, s.n = width, s.act = Act::tanh;
    matmul(features.data(), pooled.data(), P.pre_logits_kernel.data(), P.pre_logits_bias.data(), s);
  }
  std::vector<float> logits(static_cast<size_t>(B) * c.num_classes);
  MatmulSpec s;
  s.m = B, s.k = width, s.n = c.num_classes;
  matmul(logits.data(), features.data(), P.head_kernel.data(), P.head_bias.data(), s);
  return logits;
}

}  // namespace naive
