#include <chrono>
#include <cstdio>
#include <vector>
#include "nn/gelu.hpp"
using namespace vmoe::nn;
using clk = std::chrono::steady_clock;
static double now() { return std::chrono::duration<double>(clk::now().time_since_epoch()).count(); }
int main() {
  for (int64_t count : {256L * 384, 1600L * 384, 6400L * 384, 6 * 6400L * 384}) {
    std::vector<float> u(count, 0.3f), a(count), s(count);
    for (int64_t i = 0; i < count; ++i) u[i] = (i % 97) * 0.05f - 2.0f;
    int reps = 0; double t0 = now(), t;
    const int64_t chunk = std::min<int64_t>(count, 6400L * 384);
    do { int64_t off = (reps * chunk) % count; gelu_forward(a.data() + off, s.data() + off, u.data() + off, chunk); ++reps; t = now() - t0; } while (t < 0.5);
    printf("count %9ld: %.1f ns/1000 values, %.3f ms per 2.46M\n", count, t / reps / chunk * 1e12, t / reps / chunk * 2.4576e6 * 1e3);
  }
}
