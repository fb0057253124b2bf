// Every oneDNN-backed op against its plain-loop twin in tests/naive (DESIGN §7).
//
// Tolerances. A float32 dot product of length k has a worst-case rounding error of
// gamma_k * sum|a_i b_i| with gamma_k ~ k * 2^-24 (Higham, Accuracy and Stability, 3.1);
// bias and the beta*C term add two more roundings, GELU and tanh have slope <= 1.13 (we
// use 1.2), and oneDNN's JIT eltwise kernels use polynomial exp/tanh approximations good
// to a few ulp, covered by a 1e-5 relative plus 1e-6 absolute term. The naive side
// accumulates in double, so its own error is negligible. The bound is the worst case, not
// the typical error, so the tests cannot flake on an unlucky seed.
#include <catch2/catch.hpp>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.hpp"
#include "naive/naive_ops.hpp"
#include "naive/test_util.hpp"
#include "nn/attention.hpp"
#include "nn/context.hpp"
#include "nn/gelu.hpp"
#include "nn/gemm.hpp"
#include "nn/layer_norm.hpp"
#include "nn/primitive_cache.hpp"
#include "nn/softmax_rows.hpp"
#include "nn/train_ops.hpp"

using vmoe::nn::Activation;
using vmoe::nn::Gemm;
using vmoe::nn::GemmSpec;

namespace {

constexpr double kUnit = 1.0 / (1 << 24);  // float32 unit round-off

naive::Act naive_act(Activation a) {
  switch (a) {
    case Activation::none: return naive::Act::none;
    case Activation::gelu_tanh: return naive::Act::gelu_tanh;
    case Activation::gelu_erf: return naive::Act::gelu_erf;
    case Activation::tanh: return naive::Act::tanh;
  }
  return naive::Act::none;
}

const char* act_name(Activation a) {
  return a == Activation::none ? "none" : a == Activation::gelu_tanh ? "gelu_tanh" : a == Activation::gelu_erf ? "gelu_erf" : "tanh";
}

struct Layout {
  int64_t lda, ldb, ldc, size_a, size_b, size_c;
};

// Buffer sizes and strides of a spec as the test stores its operands; m_max and k_max
// are the largest row count and inner size the spec will be run with.
Layout layout_of(const GemmSpec& s, int64_t m_max, int64_t k_max) {
  Layout l{};
  l.lda = s.lda ? s.lda : (s.trans_a ? m_max : k_max);
  l.ldb = s.ldb ? s.ldb : (s.trans_b ? k_max : s.n);
  l.ldc = s.ldc ? s.ldc : s.n;
  const int64_t rows_a = s.trans_a ? k_max : m_max, rows_b = s.trans_b ? s.n : k_max;
  l.size_a = (s.outer - 1) * s.outer_stride_a + (s.batch - 1) * s.batch_stride_a + rows_a * l.lda;
  l.size_b = (s.outer - 1) * s.outer_stride_b + (s.batch - 1) * s.batch_stride_b + rows_b * l.ldb;
  l.size_c = (s.outer - 1) * s.outer_stride_c + (s.batch - 1) * s.batch_stride_c + m_max * l.ldc;
  return l;
}

// Runs `gemm` with m rows and inner size k and compares every element of C with the naive
// result; elements of C outside the (outer, batch, m, n) result (padding of ldc, gaps
// between batches) must be left untouched.
void check_gemm(const Gemm& gemm, int64_t m, uint64_t seed, int64_t m_max = -1, int64_t k = -1, int64_t k_max = -1) {
  const GemmSpec& s = gemm.spec();
  if (m_max < 0) m_max = m;
  if (k < 0) k = s.k;
  if (k_max < 0) k_max = k;
  const Layout l = layout_of(s, m_max, k_max);
  auto a = testutil::random_normal(l.size_a, seed * 7 + 1);
  auto b = testutil::random_normal(l.size_b, seed * 7 + 2);
  auto bias = testutil::random_normal(s.batch_bias ? s.batch * s.n : s.n, seed * 7 + 3);
  auto c = testutil::random_normal(l.size_c, seed * 7 + 4);
  std::vector<float> ref = c;
  std::vector<double> mag(l.size_c, 0.0);
  naive::MatmulSpec ns;
  ns.m = m, ns.k = k, ns.n = s.n, ns.trans_a = s.trans_a, ns.trans_b = s.trans_b;
  ns.lda = l.lda, ns.ldb = l.ldb, ns.ldc = l.ldc;
  ns.batch = s.batch, ns.stride_a = s.batch_stride_a, ns.stride_b = s.batch_stride_b, ns.stride_c = s.batch_stride_c;
  ns.stride_bias = s.batch_bias ? s.n : 0;
  ns.alpha = s.alpha, ns.beta = s.beta, ns.act = naive_act(s.activation);
  std::vector<uint8_t> valid(l.size_c, 0);
  for (int64_t o = 0; o < s.outer; ++o) {
    naive::matmul(ref.data() + o * s.outer_stride_c, a.data() + o * s.outer_stride_a, b.data() + o * s.outer_stride_b,
                  s.bias ? bias.data() : nullptr, ns, mag.data() + o * s.outer_stride_c);
    for (int64_t bt = 0; bt < s.batch; ++bt)
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < s.n; ++j) valid[o * s.outer_stride_c + bt * s.batch_stride_c + i * l.ldc + j] = 1;
  }

  gemm.run(c.data(), a.data(), b.data(), s.bias ? bias.data() : nullptr, s.runtime_m ? m : -1, s.runtime_k ? k : -1);

  INFO("gemm m=" << m << " k=" << k << " n=" << s.n << " tA=" << s.trans_a << " tB=" << s.trans_b
                 << " lda=" << l.lda << " ldb=" << l.ldb << " ldc=" << l.ldc << " batch=" << s.batch
                 << " outer=" << s.outer << " bias=" << s.bias << " act=" << act_name(s.activation)
                 << " alpha=" << s.alpha << " beta=" << s.beta << " runtime_m=" << s.runtime_m
                 << " runtime_k=" << s.runtime_k << " impl=" << gemm.impl());
  int bad = 0, untouched_bad = 0;
  double worst = 0;
  for (int64_t i = 0; i < l.size_c; ++i) {
    if (!valid[i]) {
      untouched_bad += std::memcmp(&c[i], &ref[i], sizeof(float)) != 0;
      continue;
    }
    const double tol = 1.2 * (k + 2) * kUnit * mag[i] + 1e-5 * std::fabs(ref[i]) + 1e-6;
    const double err = std::fabs(double{c[i]} - ref[i]);
    worst = std::max(worst, err / tol);
    bad += !(err <= tol);
  }
  INFO("worst error / tolerance = " << worst);
  CHECK(bad == 0);
  CHECK(untouched_bad == 0);
}

struct MKN {
  int64_t m, k, n;
};

}  // namespace

TEST_CASE("Gemm matches naive over shapes, transposes, leading dimensions and batches", "[ops][gemm]") {
  const MKN shape = GENERATE(MKN{1, 1, 1}, MKN{1, 7, 5}, MKN{3, 1, 4}, MKN{5, 9, 1}, MKN{17, 33, 13},
                             MKN{50, 96, 96}, MKN{13, 160, 31}, MKN{64, 64, 72}, MKN{1, 96, 288});
  const bool trans_a = GENERATE(false, true);
  const bool trans_b = GENERATE(false, true);
  const int64_t pad = GENERATE(0, 3);  // extra elements per stored row
  const int64_t batch = GENERATE(1, 3);
  const uint64_t seed = GENERATE(1, 2);
  GemmSpec s;
  s.m = shape.m, s.k = shape.k, s.n = shape.n, s.trans_a = trans_a, s.trans_b = trans_b;
  if (pad) {
    s.lda = (trans_a ? s.m : s.k) + pad;
    s.ldb = (trans_b ? s.k : s.n) + pad;
    s.ldc = s.n + pad;
  }
  if (batch > 1) {
    const Layout one = layout_of(s, s.m, s.k);  // sizes of one batch entry, then a gap of 5
    s.batch = batch;
    s.batch_stride_a = one.size_a + 5, s.batch_stride_b = one.size_b + 5, s.batch_stride_c = one.size_c + 5;
  }
  Gemm gemm(s);
  check_gemm(gemm, s.m, seed);
}

TEST_CASE("Gemm bias and GELU / tanh post-ops match naive", "[ops][gemm]") {
  const MKN shape = GENERATE(MKN{1, 1, 1}, MKN{1, 96, 10}, MKN{7, 5, 3}, MKN{50, 96, 384}, MKN{33, 17, 65});
  const bool bias = GENERATE(false, true);
  const Activation act = GENERATE(Activation::none, Activation::gelu_tanh, Activation::gelu_erf, Activation::tanh);
  const bool trans_b = GENERATE(false, true);
  const int64_t batch = GENERATE(1, 2);
  GemmSpec s;
  s.m = shape.m, s.k = shape.k, s.n = shape.n, s.trans_b = trans_b, s.bias = bias, s.activation = act;
  if (batch > 1) {
    s.batch = batch;
    s.batch_stride_a = s.m * s.k, s.batch_stride_b = s.k * s.n, s.batch_stride_c = s.m * s.n;
  }
  Gemm gemm(s);
  check_gemm(gemm, s.m, 11);
}

// One bias row per batch entry (the batched Soft-MoE experts), with and without GELU and
// an accumulating C; the oneDNN kernel must not be the reference one.
TEST_CASE("Gemm with a per-batch bias matches naive and is not a reference kernel", "[ops][gemm]") {
  const MKN shape = GENERATE(MKN{1, 1, 1}, MKN{8, 96, 384}, MKN{8, 384, 96}, MKN{3, 17, 65}, MKN{40, 64, 128});
  const int64_t batch = GENERATE(2, 5, 16);
  const Activation act = GENERATE(Activation::none, Activation::gelu_tanh, Activation::gelu_erf);
  const float beta = GENERATE(0.0f, 1.0f);
  GemmSpec s;
  s.m = shape.m, s.k = shape.k, s.n = shape.n, s.bias = true, s.batch_bias = true, s.activation = act, s.beta = beta;
  s.batch = batch, s.batch_stride_a = s.m * s.k, s.batch_stride_b = s.k * s.n, s.batch_stride_c = s.m * s.n;
  Gemm gemm(s);
  INFO("impl " << gemm.impl());
  CHECK(gemm.impl().rfind("ref", 0) != 0);
  check_gemm(gemm, s.m, 13 + batch);
}

TEST_CASE("Gemm refuses a per-batch bias without a batch", "[ops][gemm]") {
  GemmSpec s;
  s.m = 4, s.k = 4, s.n = 4, s.bias = true, s.batch_bias = true;
  CHECK_THROWS_AS(Gemm(s), vmoe::Error);
}

TEST_CASE("Gemm alpha scales the product", "[ops][gemm]") {
  const MKN shape = GENERATE(MKN{1, 3, 2}, MKN{9, 17, 23}, MKN{50, 32, 50});
  const float alpha = GENERATE(0.5f, -2.0f, 0.17677669f);
  const Activation act = GENERATE(Activation::none, Activation::tanh);
  GemmSpec s;
  s.m = shape.m, s.k = shape.k, s.n = shape.n, s.alpha = alpha, s.activation = act;
  Gemm gemm(s);
  check_gemm(gemm, s.m, 21);
}

TEST_CASE("Gemm beta accumulates into C", "[ops][gemm]") {
  const MKN shape = GENERATE(MKN{1, 1, 1}, MKN{4, 6, 8}, MKN{50, 96, 96}, MKN{50, 384, 96});
  const float beta = GENERATE(1.0f, 0.5f);
  const bool bias = GENERATE(false, true);
  const Activation act = GENERATE(Activation::none, Activation::gelu_tanh);
  const int64_t pad = GENERATE(0, 2);
  GemmSpec s;
  s.m = shape.m, s.k = shape.k, s.n = shape.n, s.beta = beta, s.bias = bias, s.activation = act;
  if (pad) s.ldc = s.n + pad;
  Gemm gemm(s);
  check_gemm(gemm, s.m, 31);
}

TEST_CASE("Gemm with runtime rows serves many row counts with one primitive", "[ops][gemm]") {
  const MKN shape = GENERATE(MKN{0, 96, 192}, MKN{0, 192, 96}, MKN{0, 1, 7}, MKN{0, 13, 1});
  const bool trans_a = GENERATE(false, true);
  const Activation act = GENERATE(Activation::none, Activation::gelu_tanh);
  const bool pad_c = GENERATE(false, true);
  const int64_t m_max = 70;
  GemmSpec s;
  s.runtime_m = true, s.k = shape.k, s.n = shape.n, s.bias = true, s.activation = act, s.trans_a = trans_a;
  if (trans_a) s.lda = m_max;  // A stored (k, m_max); the first m columns are used
  if (pad_c) s.ldc = s.n + 3;
  Gemm gemm(s);
  for (int64_t m : {1, 2, 7, 33, 64, 70, 5, 1}) {
    INFO("run with m = " << m);
    check_gemm(gemm, m, 40 + m, m_max);
  }
  SECTION("m = 0 touches nothing") {
    std::vector<float> c(8, 42.0f), a(1), b(s.k * s.n), bias(s.n);
    gemm.run(c.data(), a.data(), b.data(), bias.data(), 0);
    for (float v : c) CHECK(v == 42.0f);
  }
}

TEST_CASE("Gemm with the attention layouts of a packed QKV buffer", "[ops][gemm]") {
  // Q K^T and P V per head, reading interleaved heads in place (batch stride Dh).
  const int64_t T = GENERATE(1, 5, 50), H = GENERATE(1, 3), Dh = GENERATE(4, 32);
  const int64_t D = H * Dh;
  GemmSpec qk;
  qk.batch = H, qk.m = T, qk.k = Dh, qk.n = T, qk.lda = 3 * D, qk.batch_stride_a = Dh;
  qk.trans_b = true, qk.ldb = 3 * D, qk.batch_stride_b = Dh, qk.batch_stride_c = T * T;
  qk.alpha = 1.0f / std::sqrt(static_cast<float>(Dh));
  check_gemm(Gemm(qk), T, 51);
  GemmSpec pv;
  pv.batch = H, pv.m = T, pv.k = T, pv.n = Dh, pv.batch_stride_a = T * T;
  pv.ldb = 3 * D, pv.batch_stride_b = Dh, pv.ldc = D, pv.batch_stride_c = Dh;
  check_gemm(Gemm(pv), T, 52);
}

TEST_CASE("Gemm with an outer batch axis (images around heads)", "[ops][gemm]") {
  // The attention layout over several images at once: 4-D operands (image, head, T, .).
  const int64_t B = GENERATE(2, 3), T = GENERATE(1, 5, 50), H = GENERATE(1, 3), Dh = GENERATE(4, 32);
  const int64_t D = H * Dh;
  GemmSpec qk;
  qk.outer = B, qk.outer_stride_a = qk.outer_stride_b = T * 3 * D, qk.outer_stride_c = H * T * T;
  qk.batch = H, qk.m = T, qk.k = Dh, qk.n = T, qk.lda = 3 * D, qk.batch_stride_a = Dh;
  qk.trans_b = true, qk.ldb = 3 * D, qk.batch_stride_b = Dh, qk.batch_stride_c = T * T;
  qk.alpha = 1.0f / std::sqrt(static_cast<float>(Dh));
  check_gemm(Gemm(qk), T, 53);
  GemmSpec pv;
  pv.outer = B, pv.outer_stride_a = H * T * T, pv.outer_stride_b = T * 3 * D, pv.outer_stride_c = T * D;
  pv.batch = H, pv.m = T, pv.k = T, pv.n = Dh, pv.batch_stride_a = T * T;
  pv.ldb = 3 * D, pv.batch_stride_b = Dh, pv.ldc = D, pv.batch_stride_c = Dh;
  check_gemm(Gemm(pv), T, 54);
  SECTION("padded outer strides, plain 2-D inner blocks") {
    GemmSpec s;
    s.outer = B, s.batch = 2, s.m = T, s.k = 7, s.n = 9;
    s.batch_stride_a = T * 7 + 1, s.batch_stride_b = 63 + 2, s.batch_stride_c = T * 9 + 3;
    s.outer_stride_a = 2 * s.batch_stride_a + 5, s.outer_stride_b = 2 * s.batch_stride_b + 5;
    s.outer_stride_c = 2 * s.batch_stride_c + 5;
    s.activation = Activation::gelu_tanh;
    check_gemm(Gemm(s), T, 55);
  }
}

TEST_CASE("Gemm with a runtime inner size serves many k with one primitive", "[ops][gemm]") {
  // Training's weight gradients: C (m, n) += A^T (m, k) @ B (k, n) over a varying k.
  const bool trans_a = GENERATE(false, true);
  const bool trans_b = GENERATE(false, true);
  const int64_t m = GENERATE(1, 12), n = GENERATE(1, 20);
  const int64_t k_max = 64;
  GemmSpec s;
  s.runtime_k = true, s.m = m, s.n = n, s.trans_a = trans_a, s.trans_b = trans_b, s.beta = 1.0f;
  s.lda = trans_a ? m : k_max;  // A stored (k, m) or (m, k_max)
  s.ldb = trans_b ? k_max : n;  // B stored (n, k_max) or (k, n)
  Gemm gemm(s);
  for (int64_t k : {1, 5, 33, 64, 2}) {
    INFO("run with k = " << k);
    check_gemm(gemm, m, 60 + k, m, k, k_max);
  }
  SECTION("k = 0 adds nothing") {
    std::vector<float> c(m * n, 42.0f), buf(k_max * std::max(m, n) + 8);
    gemm.run(c.data(), buf.data(), buf.data(), nullptr, -1, 0);
    for (float v : c) CHECK(v == 42.0f);
  }
}

TEST_CASE("Gemm rejects specs it cannot honour", "[ops][gemm]") {
  GemmSpec s;
  s.m = 2, s.k = 0, s.n = 3;
  CHECK_THROWS_AS(Gemm(s), vmoe::Error);
  s.k = 3, s.runtime_m = true, s.batch = 2;
  CHECK_THROWS_AS(Gemm(s), vmoe::Error);
  GemmSpec t;
  t.m = 2, t.k = 2, t.n = 2, t.bias = true, t.alpha = 2.0f;
  CHECK_THROWS_AS(Gemm(t), vmoe::Error);
  GemmSpec o;
  o.m = 2, o.k = 2, o.n = 2, o.outer = 2, o.batch = 2, o.bias = true;
  CHECK_THROWS_AS(Gemm(o), vmoe::Error);  // bias with an outer batch
  o.bias = false, o.outer = 0;
  CHECK_THROWS_AS(Gemm(o), vmoe::Error);
  GemmSpec rk;
  rk.m = 2, rk.runtime_k = true, rk.n = 2, rk.outer = 2;
  CHECK_THROWS_AS(Gemm(rk), vmoe::Error);  // runtime sizes need batch 1
  GemmSpec r;
  r.runtime_m = true, r.k = 4, r.n = 4;
  Gemm g(r);
  std::vector<float> buf(16);
  CHECK_THROWS_AS(g.run(buf.data(), buf.data(), buf.data()), vmoe::Error);  // no row count
}

TEST_CASE("PrimitiveCache creates each shape once", "[ops]") {
  vmoe::nn::PrimitiveCache cache;
  GemmSpec s;
  s.m = 4, s.k = 5, s.n = 6;
  const Gemm& a = cache.gemm(s);
  const Gemm& b = cache.gemm(s);
  CHECK(&a == &b);
  s.n = 7;
  CHECK(&cache.gemm(s) != &a);
  CHECK(&cache.layer_norm(3, 8, 1e-6f) == &cache.layer_norm(3, 8, 1e-6f));
  CHECK(cache.size() == 3);
}

// LayerNorm: the float32 mean of `cols` values carries an error up to cols * u * max|x|,
// which the normalisation divides by sqrt(var + eps); the variance's relative error is of
// the same order and enters through its square root. Scale and shift add a rounding each.
// Rows with a large mean and a small spread (offset 5, two columns) are the hard case.
TEST_CASE("LayerNorm matches naive", "[ops][norm]") {
  const int64_t rows = GENERATE(1, 3, 50, 150);
  const int64_t cols = GENERATE(2, 5, 96, 384);
  const float offset = GENERATE(0.0f, 5.0f);
  const float eps = GENERATE(1e-6f, 1e-3f);
  auto x = testutil::random_normal(rows * cols, 61 + rows + cols, 1.0f, offset);
  auto scale = testutil::random_normal(cols, 62, 0.3f, 1.0f);
  auto bias = testutil::random_normal(cols, 63, 0.3f);
  std::vector<float> y(rows * cols), ref(rows * cols);
  vmoe::nn::LayerNorm norm(rows, cols, eps);
  norm.run(y.data(), x.data(), scale.data(), bias.data());
  naive::layer_norm(ref.data(), x.data(), rows, cols, scale.data(), bias.data(), eps);
  INFO("rows " << rows << " cols " << cols << " offset " << offset << " impl " << norm.impl());
  int bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0, xmax = 0;
    for (int64_t j = 0; j < cols; ++j) mean += x[r * cols + j], xmax = std::max(xmax, double{std::fabs(x[r * cols + j])});
    mean /= cols;
    for (int64_t j = 0; j < cols; ++j) var += (x[r * cols + j] - mean) * (x[r * cols + j] - mean);
    var /= cols;
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t i = r * cols + j;
      const double normalised = std::fabs(x[i] - mean) * inv;
      const double tol = 2.0 * (cols + 4) * kUnit * (xmax * inv + normalised) * std::fabs(scale[j]) +
                         4 * kUnit * (std::fabs(ref[i]) + std::fabs(bias[j])) + 1e-6;
      bad += !(std::fabs(double{y[i]} - ref[i]) <= tol);
    }
  }
  CHECK(bad == 0);
  SECTION("in place") {
    std::vector<float> z = x;
    norm.run(z.data(), z.data(), scale.data(), bias.data());
    CHECK(testutil::max_abs_diff(z.data(), y.data(), z.size()) == 0.0);
  }
}

// softmax_rows: exp_bounded is within a few ulp and the row sum of `cols` terms in [0, 1]
// adds cols * u relative; outputs are <= 1. Columns on both sides of the 8-lane width,
// rows enough to take the threaded path, and a row whose terms underflow (spread 30).
TEST_CASE("softmax_rows matches naive", "[ops][softmax]") {
  const int64_t rows = GENERATE(1, 7, 150, 9000);
  const int64_t cols = GENERATE(1, 2, 7, 8, 9, 50, 128);
  const float spread = GENERATE(1.0f, 30.0f);
  auto x = testutil::random_normal(rows * cols, 71 + rows * cols, spread, 3.0f);
  std::vector<float> y(rows * cols), ref(rows * cols);
  vmoe::nn::softmax_rows(y.data(), x.data(), rows, cols);
  naive::softmax_rows(ref.data(), x.data(), rows, cols);
  INFO("rows " << rows << " cols " << cols << " spread " << spread);
  int bad = 0;
  for (int64_t i = 0; i < rows * cols; ++i)
    bad += !(std::fabs(double{y[i]} - ref[i]) <= (cols + 8) * kUnit * ref[i] + 1e-7);
  CHECK(bad == 0);
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < cols; ++j) sum += y[r * cols + j];
    CHECK(sum == Approx(1.0).margin((cols + 8) * kUnit));
  }
  SECTION("in place") {
    vmoe::nn::softmax_rows(x.data(), x.data(), rows, cols);
    CHECK(testutil::max_abs_diff(x.data(), y.data(), x.size()) == 0.0);
  }
}

// Softmax backward: the float dot product sum(dy y) is off by at most gamma_C sum|dy y|,
// and the subtraction and product add 2u relative, so per element
// |dx - ref| <= (C + 2) u |y| (sum|dy y| + |dy| + |dot|).
TEST_CASE("SoftmaxBackward matches naive", "[ops][softmax]") {
  const int64_t rows = GENERATE(1, 7, 150);
  const int64_t cols = GENERATE(1, 2, 8, 50, 128);
  const float spread = GENERATE(1.0f, 30.0f);
  auto x = testutil::random_normal(rows * cols, 91 + rows * cols, spread, 3.0f);
  auto dy = testutil::random_normal(rows * cols, 93 + rows * cols, 1.0f, 0.0f);
  std::vector<float> y(rows * cols), dx(rows * cols);
  naive::softmax_rows(y.data(), x.data(), rows, cols);
  vmoe::nn::SoftmaxBackward backward(rows, cols);
  backward.run(dx.data(), dy.data(), y.data());
  std::vector<double> ref(rows * cols);
  naive::softmax_backward_rows(ref.data(), dy.data(), y.data(), rows, cols);
  INFO("rows " << rows << " cols " << cols << " spread " << spread);
  int bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double abs_dot = 0, dot = 0;
    for (int64_t j = 0; j < cols; ++j) {
      abs_dot += std::fabs(double{dy[r * cols + j]} * y[r * cols + j]);
      dot += double{dy[r * cols + j]} * y[r * cols + j];
    }
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t i = r * cols + j;
      const double bound = (cols + 2) * kUnit * y[i] * (abs_dot + std::fabs(dy[i]) + std::fabs(dot)) + 1e-30;
      bad += !(std::fabs(dx[i] - ref[i]) <= bound);
    }
  }
  CHECK(bad == 0);
  SECTION("in place over dy") {
    backward.run(dy.data(), dy.data(), y.data());
    CHECK(testutil::max_abs_diff(dy.data(), dx.data(), dy.size()) == 0.0);
  }
}

// GELU (hand-written): s = c (x + 0.044715 x^3) carries a few roundings, relative to the
// terms it sums, and exp(2s) turns that absolute error into a relative one of about
// u |x ds/dx| ("amp"), which a and the slope inherit; exp's polynomial and the divisions add
// a few u more. So |a - ref| <= 8 u amp |ref|, and for the slope the same over the sum of
// its two terms' magnitudes (it crosses zero near x = -0.75). The 1e-30 floor covers the far
// tails (|s| clamped at 43), where a and the slope are below 1e-30.
TEST_CASE("gelu_forward and gelu_backward match naive", "[ops][gelu]") {
  const int64_t count = GENERATE(1, 7, 8, 9, 1000, 4099);
  const float spread = GENERATE(1.0f, 4.0f);
  auto u = testutil::random_normal(count, 17 + count, spread, 0.0f);
  // The grid of the whole interesting range, -12..12, whenever there is room for it.
  if (count >= 1000)
    for (int64_t i = 0; i < 481; ++i) u[i] = -12.0f + 0.05f * static_cast<float>(i);
  auto da = testutil::random_normal(count, 19 + count, 1.0f, 0.0f);
  std::vector<float> a(count), slope(count), du(count);
  vmoe::nn::gelu_forward(a.data(), slope.data(), u.data(), count);
  vmoe::nn::gelu_backward(du.data(), da.data(), slope.data(), count);
  INFO("count " << count << " spread " << spread);
  const double c = std::sqrt(2.0 / M_PI);
  int bad_a = 0, bad_slope = 0, bad_du = 0;
  for (int64_t i = 0; i < count; ++i) {
    const double x = u[i];
    const double amp = 1.0 + std::fabs(x * 2.0 * c * (1.0 + 3.0 * 0.044715 * x * x));
    const double ref_a = naive::gelu_tanh(x), ref_slope = naive::gelu_tanh_slope(x);
    const double half_one_plus_t = 1.0 / (1.0 + std::exp(-2.0 * c * (x + 0.044715 * x * x * x)));
    const double slope_terms = half_one_plus_t + std::fabs(ref_slope - half_one_plus_t);
    bad_a += !(std::fabs(a[i] - ref_a) <= 8 * kUnit * amp * std::fabs(ref_a) + 1e-30);
    bad_slope += !(std::fabs(slope[i] - ref_slope) <= 8 * kUnit * amp * slope_terms + 1e-30);
    bad_du += !(du[i] == da[i] * slope[i]);
  }
  CHECK(bad_a == 0);
  CHECK(bad_slope == 0);
  CHECK(bad_du == 0);
  SECTION("the slope may overwrite the input") {
    vmoe::nn::gelu_forward(a.data(), u.data(), u.data(), count);
    CHECK(testutil::max_abs_diff(u.data(), slope.data(), count) == 0.0);
  }
}

// The inference pass that replaces oneDNN's gelu_tanh post-op below AVX-512: the same
// bound as gelu_forward's value, on strided rows whose padding must stay untouched.
TEST_CASE("gelu_tanh_inplace matches naive GELU and leaves the row padding alone", "[ops][gelu]") {
  const int64_t rows = GENERATE(1, 3, 64, 130);
  const int64_t cols = GENERATE(1, 7, 8, 96, 385);
  const int64_t ld = cols + GENERATE(0, 5);
  const float spread = GENERATE(1.0f, 30.0f);
  auto x = testutil::random_normal(rows * ld, 23 + rows + cols, spread, 0.0f);
  if (rows * cols >= 481)
    for (int64_t i = 0; i < 481; ++i) x[(i / cols) * ld + i % cols] = -12.0f + 0.05f * static_cast<float>(i);
  const std::vector<float> before = x;
  vmoe::nn::gelu_tanh_inplace(x.data(), rows, cols, ld);
  INFO("rows " << rows << " cols " << cols << " ld " << ld << " spread " << spread);
  const double c = std::sqrt(2.0 / M_PI);
  int bad = 0, touched = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < ld; ++j) {
      const int64_t i = r * ld + j;
      if (j >= cols) {
        touched += x[i] != before[i];
        continue;
      }
      const double u = before[i];
      const double amp = 1.0 + std::fabs(u * 2.0 * c * (1.0 + 3.0 * 0.044715 * u * u));
      const double ref = naive::gelu_tanh(u);
      bad += !(std::fabs(x[i] - ref) <= 8 * kUnit * amp * std::fabs(ref) + 1e-30);
    }
  CHECK(bad == 0);
  CHECK(touched == 0);
}

// Attention: a score's error is at most gamma_Dh * sum|q_d k_d| / sqrt(Dh) <=
// (Dh + 2) u Dh max|x|^2 / sqrt(Dh); exp and the row sum add (T + 8) u relative (as for
// Softmax), and since exp turns an absolute score error into a relative probability error,
// that is the probabilities' relative error delta. A convex combination of V rows then
// moves by at most 2 delta max|v|, plus the P V sum's own (T + 2) u max|v|.
TEST_CASE("attention_forward matches naive multi-head attention", "[ops][attention]") {
  // T and Dh cover the fused kernel's register-tile tails (T not a multiple of 4 rows or 8
  // columns, Dh below, at and past multiples of 8), and B * H = 1 and 3 split each pair's
  // rows between threads. keep_probs true (training) also writes the probabilities.
  const bool keep_probs = GENERATE(false, true);
  const int64_t B = GENERATE(1, 2, 5), H = GENERATE(1, 3), T = GENERATE(1, 7, 50, 131);
  const int64_t Dh = GENERATE(1, 8, 32, 33, 64);
  const int64_t D = H * Dh;
  auto qkv = testutil::random_normal(B * T * 3 * D, 81 + B + T + H + Dh);
  std::vector<float> out(B * T * D, 7.0f), ref(B * T * D);
  // The documented workspace (B * H * T * T probabilities with keep_probs, else per-thread
  // scratch); one guard float after it must survive.
  const int64_t workspace = vmoe::nn::attention_workspace_floats(B, T, H, Dh, keep_probs);
  if (keep_probs) CHECK(workspace == B * H * T * T);
  std::vector<float> scores(workspace + 1, 0.0f);
  scores[workspace] = 12345.0f;
  vmoe::nn::attention_forward(out.data(), scores.data(), qkv.data(), B, T, H, Dh, keep_probs);
  CHECK(scores[workspace] == 12345.0f);
  naive::attention(ref.data(), qkv.data(), B, T, H, Dh);
  float vmax = 0;
  for (float v : qkv) vmax = std::max(vmax, std::fabs(v));
  const double score_err = (Dh + 2) * kUnit * Dh * vmax * vmax / std::sqrt(double(Dh)) + (T + 8) * kUnit;
  const double tol = 2 * (score_err + (T + 2) * kUnit) * vmax + 1e-6;
  INFO("B " << B << " T " << T << " H " << H << " Dh " << Dh << " keep_probs " << keep_probs << " tolerance " << tol);
  CHECK(testutil::max_abs_diff(out.data(), ref.data(), out.size()) <= tol);
  {  // the AVX2 tiles too, where the CPU has AVX-512 (on others, the same run again)
    std::fill(out.begin(), out.end(), 7.0f);
    vmoe::nn::attention_allow_avx512(false);
    vmoe::nn::attention_forward(out.data(), scores.data(), qkv.data(), B, T, H, Dh, keep_probs);
    vmoe::nn::attention_allow_avx512(true);
    CHECK(scores[workspace] == 12345.0f);
    CHECK(testutil::max_abs_diff(out.data(), ref.data(), out.size()) <= tol);
  }
  if (keep_probs) {
    // (B, H, T, T) probabilities: row i of head h of image b is softmax(q_i . k_j / sqrt(Dh)).
    int bad = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < T; ++i) {
          std::vector<float> logits(T), want(T);
          for (int64_t j = 0; j < T; ++j) {
            double acc = 0;
            for (int64_t d = 0; d < Dh; ++d)
              acc += double{qkv[(b * T + i) * 3 * D + h * Dh + d]} * qkv[(b * T + j) * 3 * D + D + h * Dh + d];
            logits[j] = static_cast<float>(acc / std::sqrt(double(Dh)));
          }
          naive::softmax_rows(want.data(), logits.data(), 1, T);
          for (int64_t j = 0; j < T; ++j)
            bad += !(std::fabs(scores[((b * H + h) * T + i) * T + j] - want[j]) <= score_err * want[j] * 2 + 1e-6);
        }
    CHECK(bad == 0);
  }
}

// The backward: an output's error is at most (delta + (T + Dh + 8) u) times its bound
// (naive::attention_backward: the same sums over absolute values), with delta the kept
// probabilities' relative error (as in the forward test above), doubled for the two
// roundings dS = P (dP - c) stacks on top of dP's own.
TEST_CASE("attention_backward matches the naive attention gradient", "[ops][attention]") {
  const int64_t B = GENERATE(1, 3), H = GENERATE(1, 3), T = GENERATE(1, 7, 50, 131);
  const int64_t Dh = GENERATE(1, 8, 32, 33, 64);
  const int64_t D = H * Dh;
  auto qkv = testutil::random_normal(B * T * 3 * D, 7 + B + T + H + Dh);
  auto dout = testutil::random_normal(B * T * D, 9 + B + T + H + Dh);
  std::vector<float> out(B * T * D), probs(B * H * T * T);
  vmoe::nn::attention_forward(out.data(), probs.data(), qkv.data(), B, T, H, Dh, /*keep_probs=*/true);
  std::vector<float> dqkv(B * T * 3 * D + 1, 7.0f);
  dqkv.back() = 12345.0f;  // a guard float after the output, and after the workspace
  std::vector<float> workspace(vmoe::nn::attention_backward_workspace_floats(B, T, H) + 1);
  workspace.back() = 12345.0f;
  vmoe::nn::PrimitiveCache cache;
  vmoe::nn::attention_backward(dqkv.data(), workspace.data(), dout.data(), probs.data(), qkv.data(), B, T, H, Dh,
                               cache);
  CHECK(dqkv.back() == 12345.0f);
  CHECK(workspace.back() == 12345.0f);
  std::vector<double> ref(B * T * 3 * D), bound(B * T * 3 * D);
  naive::attention_backward(ref.data(), bound.data(), dout.data(), qkv.data(), B, T, H, Dh);
  float vmax = 0;
  for (float v : qkv) vmax = std::max(vmax, std::fabs(v));
  const double delta = 2 * ((Dh + 2) * kUnit * Dh * vmax * vmax / std::sqrt(double(Dh)) + (T + 8) * kUnit);
  const double rel = 2 * (delta + (T + Dh + 8) * kUnit);
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(dqkv[i] - ref[i]);
    bad += !(err <= rel * bound[i] + 1e-30);
    worst = std::max(worst, err / (rel * bound[i] + 1e-30));
  }
  INFO("B " << B << " T " << T << " H " << H << " Dh " << Dh << " worst error / tolerance " << worst);
  CHECK(bad == 0);
}

// A NaN in one query makes that query's output row NaN (as in the naive twin), and only it.
TEST_CASE("attention_forward propagates a NaN query to its own row", "[ops][attention]") {
  const int64_t B = 2, T = GENERATE(1, 7, 50), H = 3, Dh = GENERATE(8, 33), D = H * Dh;
  auto qkv = testutil::random_normal(B * T * 3 * D, 5 + T + Dh);
  const int64_t b = 1, i = T - 1, h = 2;
  qkv[(b * T + i) * 3 * D + h * Dh] = std::nanf("");
  std::vector<float> out(B * T * D), scores(vmoe::nn::attention_workspace_floats(B, T, H, Dh, false));
  vmoe::nn::attention_forward(out.data(), scores.data(), qkv.data(), B, T, H, Dh);
  int nan_inside = 0, nan_outside = 0;
  for (int64_t row = 0; row < B * T; ++row)
    for (int64_t c = 0; c < D; ++c) {
      const bool inside = row == b * T + i && c / Dh == h;
      (inside ? nan_inside : nan_outside) += std::isnan(out[row * D + c]);
    }
  CHECK(nan_inside == Dh);
  CHECK(nan_outside == 0);
}

// A oneDNN primitive keeps the thread count it was created with, so the cache must not
// hand one created under 1 thread to a caller running 2 (the engine runs small batches on
// one thread, and its expert GEMMs take their row count at run time, shared by all batches).
TEST_CASE("PrimitiveCache keys primitives on the OpenMP thread count", "[ops][onednn]") {
  vmoe::nn::PrimitiveCache cache;
  vmoe::nn::GemmSpec s;
  s.runtime_m = true, s.k = 8, s.n = 4;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto* one = &cache.gemm(s);
  const auto* norm_one = &cache.layer_norm(4, 8, 1e-6f);
  CHECK(&cache.gemm(s) == one);
  omp_set_num_threads(2);
  CHECK(&cache.gemm(s) != one);
  CHECK(&cache.layer_norm(4, 8, 1e-6f) != norm_one);
  CHECK(cache.size() == 4);
  omp_set_num_threads(saved);
}
