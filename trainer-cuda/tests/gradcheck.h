// A gradient checker for forward/backward pairs that follow ops.h's conventions.
//
// An op is seen as a scalar function of its differentiable tensors, L = sum(out * w) for a fixed
// random w: the forward gives L, and the op's backward with dout = w gives dL/d(each tensor).
// check_gradients() verifies, for every tensor:
//   - the analytic gradient against central differences of L (L summed in double);
//   - the conventions: backward ACCUMULATES (two calls on a prefilled buffer add twice), and
//     each gradient can be asked for alone with the others nullptr, giving the same values;
//   - the gradient is not identically zero (a backward that does nothing must not pass).
// It prints the error per tensor and fails the current test on any violation.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "test.h"

namespace graft_test {

using Buf = std::vector<float>;

// Uniform values in [lo, hi) from a seed, via a generator spelled out here so that every platform
// and standard library sees the same inputs.
inline Buf random_buf(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  Buf out(n);
  for (size_t i = 0; i < n; i++) {
    s ^= s >> 12; s ^= s << 25; s ^= s >> 27;  // xorshift64*
    uint32_t r = (uint32_t)((s * 0x2545F4914F6CDD1Dull) >> 40);  // 24 random bits
    out[i] = lo + (hi - lo) * (float)r / 16777216.0f;
  }
  return out;
}

inline double dot(const Buf& a, const Buf& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); i++) s += (double)a[i] * b[i];
  return s;
}

// One differentiable tensor of the op: the checker perturbs its values in place.
struct GradInput {
  std::string name;
  Buf* values;
};

struct GradCheck {
  std::string op;
  std::vector<GradInput> inputs;
  // Runs the forward on the current input values and returns L = sum(out * w).
  std::function<double()> loss;
  // Runs the backward with dout = w, into one gradient buffer per input (same order, each sized
  // as its input); a nullptr entry means that gradient is not wanted.
  std::function<void(const std::vector<float*>&)> backward;
  // Step and tolerance, measured on test_ops.cpp: with O(1) inputs the error is fp32 rounding noise
  // in L divided by the step (truncation, O(eps^2), is far below it), up to 3e-4 at eps 1e-3 and
  // under 1e-4 at 3e-3 for every op; tol 5e-4 keeps a 5x margin and still catches a 0.1% error.
  float eps = 3e-3f;
  double tol = 5e-4;  // on the relative error defined below
  bool verbose = true;  // print the error per input
};

// Relative error of a gradient: max_i |analytic_i - numeric_i| / max_i |numeric_i|, i.e. the
// worst entry's error measured against the gradient's scale. (A per-entry relative error would be
// dominated by entries that are nearly zero, where finite differences only see rounding noise.)
// Returns the worst over all inputs.
inline double check_gradients(const GradCheck& g) {
  size_t K = g.inputs.size();
  auto zeros = [&](size_t k) { return Buf(g.inputs[k].values->size(), 0.0f); };

  // Analytic gradients: one forward (it stores what the backward needs), one backward from zero.
  g.loss();
  std::vector<Buf> analytic(K);
  std::vector<float*> ptrs(K);
  for (size_t k = 0; k < K; k++) analytic[k] = zeros(k), ptrs[k] = analytic[k].data();
  g.backward(ptrs);

  for (size_t k = 0; k < K; k++) {
    const std::string what = g.op + " d" + g.inputs[k].name;
    double scale = 0.0;
    for (float a : analytic[k]) scale = std::max(scale, (double)std::fabs(a));
    if (!(scale > 0.0)) fail_at(__FILE__, __LINE__, what + ": gradient is identically zero");

    // Accumulation: on a prefilled buffer, two backward calls add the gradient twice.
    std::vector<Buf> acc(K);
    for (size_t j = 0; j < K; j++) {
      acc[j] = random_buf(g.inputs[j].values->size(), 1000 + (uint32_t)j);
      ptrs[j] = acc[j].data();
    }
    const Buf prior = acc[k];
    g.backward(ptrs);
    g.backward(ptrs);
    for (size_t i = 0; i < prior.size(); i++) {
      double expect = (double)prior[i] + 2.0 * analytic[k][i];
      if (!(std::fabs(acc[k][i] - expect) <= 1e-5 * (1.0 + std::fabs(expect))))
        fail_at(__FILE__, __LINE__, what + ": backward does not accumulate (entry " + std::to_string(i) + ": " +
                                        std::to_string(acc[k][i]) + " vs " + std::to_string(expect) + ")");
    }

    // This gradient alone, the others nullptr.
    Buf alone = zeros(k);
    for (size_t j = 0; j < K; j++) ptrs[j] = j == k ? alone.data() : nullptr;
    g.backward(ptrs);
    for (size_t i = 0; i < alone.size(); i++)
      if (!(std::fabs(alone[i] - analytic[k][i]) <= 1e-6 * (1.0 + std::fabs(analytic[k][i]))))
        fail_at(__FILE__, __LINE__, what + ": differs when the other gradients are nullptr (entry " +
                                        std::to_string(i) + ")");
  }

  // Central differences. The step actually taken is measured from the rounded fp32 values.
  double worst = 0.0;
  for (size_t k = 0; k < K; k++) {
    Buf& x = *g.inputs[k].values;
    std::vector<double> numeric(x.size());
    for (size_t i = 0; i < x.size(); i++) {
      const float orig = x[i];
      const float up = orig + g.eps, down = orig - g.eps;
      x[i] = up;
      double loss_up = g.loss();
      x[i] = down;
      double loss_down = g.loss();
      x[i] = orig;
      numeric[i] = (loss_up - loss_down) / ((double)up - (double)down);
    }
    double max_err = 0.0, scale = 0.0;
    size_t worst_i = 0;
    for (size_t i = 0; i < x.size(); i++) {
      double err = std::fabs(analytic[k][i] - numeric[i]);
      if (err > max_err) max_err = err, worst_i = i;
      scale = std::max(scale, std::fabs(numeric[i]));
    }
    double rel = max_err / std::max(scale, 1e-30);
    worst = std::max(worst, rel);
    if (g.verbose) std::printf("      %-24s max rel err %.2e  (tol %.0e)\n", (g.op + " d" + g.inputs[k].name).c_str(), rel, g.tol);
    if (!(rel <= g.tol))
      fail_at(__FILE__, __LINE__, g.op + " d" + g.inputs[k].name + ": relative error " + std::to_string(rel) +
                                      " at entry " + std::to_string(worst_i) + " (analytic " +
                                      std::to_string(analytic[k][worst_i]) + ", numeric " +
                                      std::to_string(numeric[worst_i]) + ")");
  }
  g.loss();  // leave the forward's stored state at the unperturbed inputs
  return worst;
}

}  // namespace graft_test
