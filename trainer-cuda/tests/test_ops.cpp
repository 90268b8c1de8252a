// Tests of the CPU ops (ops/cpu_ops.h): every backward against central finite differences of its forward
// (gradcheck.h, which also checks the accumulate / nullptr conventions), forwards against small
// hand-computed cases, and determinism across thread counts.
//
// Inputs are drawn from fixed seeds; outputs start as NaN, so a forward that leaves any element
// unwritten poisons the loss and fails the check.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/common.h"
#include "gradcheck.h"
#include "ops/cpu_ops.h"
#include "test.h"

using namespace graft;
using namespace graft::cpu;
using namespace graft_test;

namespace {

const float NaN = std::numeric_limits<float>::quiet_NaN();
const double PI = 3.14159265358979323846;

Buf nan_buf(size_t n) { return Buf(n, NaN); }

void check_all_near(const Buf& got, const std::vector<double>& want, double tol) {
  CHECK(got.size() == want.size());
  for (size_t i = 0; i < got.size(); i++) CHECK_NEAR(got[i], want[i], tol);
}

bool bitwise_equal(const Buf& a, const Buf& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs a gradient check that is supposed to reject its op.
void expect_rejected(GradCheck g) {
  g.verbose = false;
  try {
    check_gradients(g);
  } catch (const Failure&) {
    return;
  }
  fail_at(__FILE__, __LINE__, "the gradient checker accepted a wrong backward: " + g.op);
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// The checker itself must catch wrong gradients, overwriting backwards and do-nothing backwards.

TEST(ops_gradcheck_rejects_wrong_backwards) {
  // out = x^2 elementwise, so dx = 2 x dout.
  Buf x = random_buf(6, 1), w = random_buf(6, 2), out(6);
  auto loss = [&] {
    for (size_t i = 0; i < x.size(); i++) out[i] = x[i] * x[i];
    return dot(out, w);
  };
  auto make = [&](std::string name, float factor, bool overwrite) {
    GradCheck g;
    g.op = name;
    g.inputs = {{"x", &x}};
    g.loss = loss;
    g.backward = [&, factor, overwrite](const std::vector<float*>& d) {
      if (!d[0]) return;
      for (size_t i = 0; i < x.size(); i++) {
        float v = factor * x[i] * w[i];
        d[0][i] = overwrite ? v : d[0][i] + v;
      }
    };
    return g;
  };
  check_gradients(make("square", 2.0f, false));  // the right backward passes
  expect_rejected(make("square, gradient 1% off", 2.02f, false));
  expect_rejected(make("square, overwriting backward", 2.0f, true));
  expect_rejected(make("square, zero backward", 0.0f, false));
}

// ----------------------------------------------------------------------------------------------
// linear

TEST(ops_linear_forward_small) {
  Buf inp = {1, 2, 3, 4};                 // [2, 2]
  Buf W = {1, 0, 0, 1, 1, 1};             // [3, 2]
  Buf bias = {0.5f, -1, 2};
  Buf out = nan_buf(6);
  linear_forward(out.data(), inp.data(), W.data(), bias.data(), 2, 2, 3);
  check_all_near(out, {1.5, 1, 5, 3.5, 3, 9}, 0);
  out = nan_buf(6);
  linear_forward(out.data(), inp.data(), W.data(), nullptr, 2, 2, 3);
  check_all_near(out, {1, 2, 3, 3, 4, 7}, 0);
}

TEST(ops_linear_gradients) {
  const int N = 3, IC = 5, OC = 4;
  Buf inp = random_buf(N * IC, 10), W = random_buf(OC * IC, 11), bias = random_buf(OC, 12);
  Buf w = random_buf(N * OC, 13), out = nan_buf(N * OC);
  GradCheck g;
  g.op = "linear";
  g.inputs = {{"inp", &inp}, {"W", &W}, {"bias", &bias}};
  g.loss = [&] {
    linear_forward(out.data(), inp.data(), W.data(), bias.data(), N, IC, OC);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    linear_backward(d[0], d[1], d[2], w.data(), inp.data(), W.data(), N, IC, OC);
  };
  check_gradients(g);

  // Without a bias the forward reads none and the backward is asked for none.
  g.op = "linear (no bias)";
  g.inputs = {{"inp", &inp}, {"W", &W}};
  g.loss = [&] {
    linear_forward(out.data(), inp.data(), W.data(), nullptr, N, IC, OC);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    linear_backward(d[0], d[1], nullptr, w.data(), inp.data(), W.data(), N, IC, OC);
  };
  check_gradients(g);
}

// ----------------------------------------------------------------------------------------------
// LoRA

TEST(ops_lora_forward_small) {
  // N=1, IC=2, rank=1, OC=2, written into columns [1, 3) of a row of 4.
  Buf inp = {1, 2}, A = {3, 4}, B = {1, 2};
  Buf out = {10, 20, 30, 40}, h = nan_buf(1);
  lora_forward(out.data() + 1, 4, h.data(), inp.data(), A.data(), B.data(), 1, 2, 2, 1, 0.5f);
  check_all_near(h, {11}, 0);                  // h = 1*3 + 2*4
  check_all_near(out, {10, 25.5, 41, 40}, 0);  // += 0.5 * [1, 2] * 11

  // B = 0 (a fresh adapter) leaves the output exactly as it was.
  Buf zero_B = {0, 0}, before = out;
  lora_forward(out.data() + 1, 4, h.data(), inp.data(), A.data(), zero_B.data(), 1, 2, 2, 1, 0.5f);
  CHECK(bitwise_equal(out, before));
}

TEST(ops_lora_gradients) {
  // One adapter on a slice (columns [offset, offset+OC)) of a wider fused output, as for to_k
  // inside BFL's fused qkv.
  const int N = 3, IC = 5, OC = 4, rank = 2, out_stride = OC + 5, offset = 3;
  const float scale = 0.75f;
  Buf inp = random_buf(N * IC, 20), A = random_buf(rank * IC, 21), B = random_buf(OC * rank, 22);  // B != 0
  Buf base = random_buf(N * out_stride, 23), w = random_buf(N * out_stride, 24);
  Buf out, h = nan_buf(N * rank);
  GradCheck g;
  g.op = "lora";
  g.inputs = {{"inp", &inp}, {"A", &A}, {"B", &B}};
  g.loss = [&] {
    out = base;
    lora_forward(out.data() + offset, out_stride, h.data(), inp.data(), A.data(), B.data(), N, IC, OC, rank, scale);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    lora_backward(d[0], d[1], d[2], w.data() + offset, out_stride, h.data(), inp.data(), A.data(), B.data(), N, IC,
                  OC, rank, scale);
  };
  check_gradients(g);

  // Columns outside the slice are untouched, those inside changed.
  g.loss();
  for (int n = 0; n < N; n++)
    for (int c = 0; c < out_stride; c++) {
      bool inside = c >= offset && c < offset + OC;
      size_t i = (size_t)n * out_stride + c;
      CHECK(inside ? out[i] != base[i] : out[i] == base[i]);
    }
}

// ----------------------------------------------------------------------------------------------
// LayerNorm, RMSNorm

TEST(ops_layernorm_forward_small) {
  Buf x = {1, 2, 3, 4, 5, 5, 5, 5};  // [2, 4]; the second row is constant
  Buf out = nan_buf(8), mean = nan_buf(2), rstd = nan_buf(2);
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), 2, 4);
  double r = 1.0 / std::sqrt(1.25 + 1e-6);  // biased variance of 1..4 is 1.25
  check_all_near(mean, {2.5, 5}, 1e-7);
  check_all_near(rstd, {r, 1000}, 1e-4);  // a constant row: 1/sqrt(0 + eps), eps = 1e-6
  check_all_near(out, {-1.5 * r, -0.5 * r, 0.5 * r, 1.5 * r, 0, 0, 0, 0}, 1e-6);
}

TEST(ops_layernorm_gradients) {
  const int N = 4, C = 8;
  Buf inp = random_buf(N * C, 30, -2, 2), w = random_buf(N * C, 31);
  Buf out = nan_buf(N * C), mean = nan_buf(N), rstd = nan_buf(N);
  GradCheck g;
  g.op = "layernorm";
  g.inputs = {{"inp", &inp}};
  g.loss = [&] {
    layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), N, C);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    layernorm_backward(d[0], w.data(), inp.data(), mean.data(), rstd.data(), N, C);
  };
  check_gradients(g);
}

TEST(ops_rmsnorm_forward_small) {
  Buf x = {3, 4, 0, 0}, scale = {1, 2};  // [2, 2]
  Buf out = nan_buf(4), rrms = nan_buf(2);
  rmsnorm_forward(out.data(), rrms.data(), x.data(), scale.data(), 2, 2, 1e-6f);
  double r = 1.0 / std::sqrt(12.5 + 1e-6);  // mean(x^2) = (9 + 16) / 2
  check_all_near(rrms, {r, 1000}, 1e-4);
  check_all_near(out, {3 * r, 8 * r, 0, 0}, 1e-6);
}

TEST(ops_rmsnorm_gradients) {
  const int N = 4, C = 8;
  Buf inp = random_buf(N * C, 40, -2, 2), scale = random_buf(C, 41, 0.5f, 1.5f), w = random_buf(N * C, 42);
  Buf out = nan_buf(N * C), rrms = nan_buf(N);
  GradCheck g;
  g.op = "rmsnorm";
  g.inputs = {{"inp", &inp}, {"scale", &scale}};
  g.loss = [&] {
    rmsnorm_forward(out.data(), rrms.data(), inp.data(), scale.data(), N, C, 1e-6f);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    rmsnorm_backward(d[0], d[1], w.data(), inp.data(), scale.data(), rrms.data(), N, C);
  };
  check_gradients(g);
}

// ----------------------------------------------------------------------------------------------
// RoPE

TEST(ops_rope_table_small) {
  // Axis 0 of dim 2 (one pair, omega 1), axis 1 of dim 8 (omegas 1, 0.1, 0.01, 0.001 with theta 1e4).
  const int axes_dim[2] = {2, 8};
  Buf ids = {3, 1000, -2, 0};  // P = 2 positions
  Buf cs = nan_buf(2 * 5 * 2);
  rope_table(cs.data(), ids.data(), 2, axes_dim, 2, 10000.0f);
  std::vector<double> want;
  for (double angle : {3.0, 1000.0, 100.0, 10.0, 1.0, -2.0, 0.0, 0.0, 0.0, 0.0}) {
    want.push_back(std::cos(angle));
    want.push_back(std::sin(angle));
  }
  check_all_near(cs, want, 1e-6);
  const int odd_dim[1] = {3};
  CHECK_THROWS(rope_table(cs.data(), ids.data(), 1, odd_dim, 1, 10000.0f), "even");
}

TEST(ops_rope_forward_small) {
  // Position row r = b*L + l carries angle r * pi/2; every head of that position turns (1, 0) into
  // (cos, sin) of that angle.
  const int B = 2, L = 2, H = 2, D = 2;
  Buf cs;
  for (int r = 0; r < B * L; r++) cs.push_back((float)std::cos(r * PI / 2)), cs.push_back((float)std::sin(r * PI / 2));
  Buf x;
  for (int i = 0; i < B * L * H; i++) x.push_back(1), x.push_back(0);
  Buf out = nan_buf(x.size());
  rope_forward(out.data(), x.data(), cs.data(), B, L, H, D);
  for (int r = 0; r < B * L; r++)
    for (int h = 0; h < H; h++) {
      CHECK_NEAR(out[(r * H + h) * 2 + 0], std::cos(r * PI / 2), 1e-6);
      CHECK_NEAR(out[(r * H + h) * 2 + 1], std::sin(r * PI / 2), 1e-6);
    }

  // Adjacent pairs: (x0, x1) by angle a, (x2, x3) by angle b.
  Buf cs1 = {0, 1, -1, 0};  // a = pi/2, b = pi
  Buf x1 = {1, 2, 3, 4}, out1 = nan_buf(4);
  rope_forward(out1.data(), x1.data(), cs1.data(), 1, 1, 1, 4);
  check_all_near(out1, {-2, 1, -3, -4}, 0);
}

TEST(ops_rope_gradients) {
  const int B = 2, L = 3, H = 2, D = 6;
  const int axes_dim[2] = {2, 4};
  Buf ids = random_buf(B * L * 2, 50, 0, 10), cs(B * L * D);
  rope_table(cs.data(), ids.data(), B * L, axes_dim, 2, 10000.0f);
  Buf inp = random_buf(B * L * H * D, 51), w = random_buf(B * L * H * D, 52), out = nan_buf(B * L * H * D);
  GradCheck g;
  g.op = "rope";
  g.inputs = {{"inp", &inp}};
  g.loss = [&] {
    rope_forward(out.data(), inp.data(), cs.data(), B, L, H, D);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) { rope_backward(d[0], w.data(), cs.data(), B, L, H, D); };
  check_gradients(g);
}

// ----------------------------------------------------------------------------------------------
// Attention

// Straightforward double-precision attention: probs [B,H,L,L] and out [B,L,H*D].
static void attention_reference(std::vector<double>& out, std::vector<double>& probs, const Buf& q, const Buf& k,
                                const Buf& v, int B, int L, int H, int D) {
  out.assign((size_t)B * L * H * D, 0.0);
  probs.assign((size_t)B * H * L * L, 0.0);
  auto at = [&](int b, int l, int h) { return (((size_t)b * L + l) * H + h) * D; };
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int i = 0; i < L; i++) {
        std::vector<double> s(L);
        double mx = -1e300, sum = 0;
        for (int j = 0; j < L; j++) {
          for (int d = 0; d < D; d++) s[j] += (double)q[at(b, i, h) + d] * k[at(b, j, h) + d];
          s[j] /= std::sqrt((double)D);
          mx = std::max(mx, s[j]);
        }
        for (int j = 0; j < L; j++) sum += s[j] = std::exp(s[j] - mx);
        for (int j = 0; j < L; j++) {
          double p = s[j] / sum;
          probs[(((size_t)b * H + h) * L + i) * L + j] = p;
          for (int d = 0; d < D; d++) out[at(b, i, h) + d] += p * v[at(b, j, h) + d];
        }
      }
}

TEST(ops_attention_forward_matches_reference) {
  const int B = 2, L = 5, H = 2, D = 4;
  Buf q = random_buf(B * L * H * D, 60, -2, 2), k = random_buf(B * L * H * D, 61, -2, 2);
  Buf v = random_buf(B * L * H * D, 62);
  Buf out = nan_buf(B * L * H * D), probs = nan_buf(B * H * L * L);
  attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, L, H, D);
  std::vector<double> want_out, want_probs;
  attention_reference(want_out, want_probs, q, k, v, B, L, H, D);
  check_all_near(out, want_out, 1e-6);
  check_all_near(probs, want_probs, 1e-6);
}

TEST(ops_attention_forward_special_cases) {
  const int B = 1, L = 4, H = 1, D = 2;
  Buf q = {1, 2, -3, 0.5f, 0, 0, 7, 7}, v = {1, 10, 2, 20, 3, 30, 6, 40};
  Buf out = nan_buf(L * D), probs = nan_buf(L * L);
  // Identical keys: uniform probabilities, every output the mean of v.
  Buf same_k = {1, -1, 1, -1, 1, -1, 1, -1};
  attention_forward(out.data(), probs.data(), q.data(), same_k.data(), v.data(), B, L, H, D);
  for (float p : probs) CHECK_NEAR(p, 0.25, 1e-7);
  for (int i = 0; i < L; i++) {
    CHECK_NEAR(out[i * D], 3.0, 1e-6);
    CHECK_NEAR(out[i * D + 1], 25.0, 1e-5);
  }
  // Scores in the thousands: exp would overflow without subtracting the max; the largest key wins.
  Buf big_q = {1000, 0, 1000, 0, 1000, 0, 1000, 0}, k = {1, 0, 3, 0, 2, 0, -5, 0};
  attention_forward(out.data(), probs.data(), big_q.data(), k.data(), v.data(), B, L, H, D);
  for (int i = 0; i < L; i++) {
    CHECK_NEAR(out[i * D], 2.0, 1e-6);
    CHECK_NEAR(out[i * D + 1], 20.0, 1e-6);
  }
}

TEST(ops_attention_gradients) {
  const int B = 2, L = 5, H = 2, D = 4, n = B * L * H * D;
  Buf q = random_buf(n, 70, -2, 2), k = random_buf(n, 71, -2, 2), v = random_buf(n, 72), w = random_buf(n, 73);
  Buf out = nan_buf(n), probs = nan_buf(B * H * L * L);
  GradCheck g;
  g.op = "attention";
  g.inputs = {{"q", &q}, {"k", &k}, {"v", &v}};
  g.loss = [&] {
    attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, L, H, D);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    attention_backward(d[0], d[1], d[2], w.data(), probs.data(), q.data(), k.data(), v.data(), B, L, H, D);
  };
  check_gradients(g);
}

// ----------------------------------------------------------------------------------------------
// GELU, SiLU

TEST(ops_activations_forward_small) {
  Buf x = {0, 1, -1, 3}, out = nan_buf(4);
  gelu_forward(out.data(), x.data(), 4);
  check_all_near(out, {0, 0.8411919906082768, -0.15880800939172324, 2.996362607918227}, 1e-6);
  silu_forward(out.data(), x.data(), 4);
  check_all_near(out, {0, 0.7310585786300049, -0.2689414213699951, 2.8577223804673}, 1e-6);
}

TEST(ops_activations_gradients) {
  const int n = 16;
  Buf x = random_buf(n, 80, -4, 4), w = random_buf(n, 81), out = nan_buf(n);
  GradCheck g;
  g.op = "gelu";
  g.inputs = {{"inp", &x}};
  g.loss = [&] {
    gelu_forward(out.data(), x.data(), n);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) { gelu_backward(d[0], w.data(), x.data(), n); };
  check_gradients(g);

  g.op = "silu";
  g.loss = [&] {
    silu_forward(out.data(), x.data(), n);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) { silu_backward(d[0], w.data(), x.data(), n); };
  check_gradients(g);
}

// ----------------------------------------------------------------------------------------------
// modulate, gated residual

TEST(ops_modulate_forward_small) {
  // One modulation row [shift(2) | scale(2) | gate(2)], mod_stride 6.
  Buf mod = {0.5f, -1, 1, 0.5f, 99, 99}, x = {1, 2}, out = nan_buf(2);
  modulate_forward(out.data(), x.data(), mod.data(), mod.data() + 2, 6, 1, 1, 2);
  check_all_near(out, {2 * 1 + 0.5, 1.5 * 2 - 1}, 0);
}

TEST(ops_modulate_gradients) {
  // shift and scale are read from rows of mod_stride = 3C (the layout of a modulation output), scale
  // at column offset C; entries outside [offset, offset + C) of each row must get zero gradient.
  const int B = 2, L = 3, C = 4, mod_stride = 3 * C;
  Buf x = random_buf(B * L * C, 90), shift = random_buf(B * mod_stride, 91), scale = random_buf(B * mod_stride, 92);
  Buf w = random_buf(B * L * C, 93), out = nan_buf(B * L * C);
  GradCheck g;
  g.op = "modulate";
  g.inputs = {{"x", &x}, {"shift", &shift}, {"scale", &scale}};
  g.loss = [&] {
    modulate_forward(out.data(), x.data(), shift.data(), scale.data() + C, mod_stride, B, L, C);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    modulate_backward(d[0], d[1], d[2] ? d[2] + C : nullptr, w.data(), x.data(), scale.data() + C, mod_stride, B,
                      L, C);
  };
  check_gradients(g);
}

TEST(ops_gate_residual_forward_small) {
  Buf res = {1, 1}, y = {2, 3}, gate = {7, 0.5f, -1};  // gate at offset 1, mod_stride 3
  gate_residual_forward(res.data(), y.data(), gate.data() + 1, 3, 1, 1, 2);
  check_all_near(res, {2, -2}, 0);  // res += gate * y, in place
}

TEST(ops_gate_residual_gradients) {
  const int B = 2, L = 3, C = 4, mod_stride = 3 * C, gate_offset = 2 * C;
  Buf res0 = random_buf(B * L * C, 100), y = random_buf(B * L * C, 101), gate = random_buf(B * mod_stride, 102);
  Buf w = random_buf(B * L * C, 103), res;
  GradCheck g;
  g.op = "gate_residual";
  g.inputs = {{"y", &y}, {"gate", &gate}};
  g.loss = [&] {
    res = res0;
    gate_residual_forward(res.data(), y.data(), gate.data() + gate_offset, mod_stride, B, L, C);
    return dot(res, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    gate_residual_backward(d[0], d[1] ? d[1] + gate_offset : nullptr, w.data(), y.data(), gate.data() + gate_offset,
                           mod_stride, B, L, C);
  };
  check_gradients(g);
}

// ----------------------------------------------------------------------------------------------
// Timestep embedding

TEST(ops_timestep_embedding_forward_small) {
  // dim 5: half = 2, freqs = [1, exp(-ln(1e4) / 2)] = [1, 0.01], then one zero of padding.
  Buf t = {0, 0.5f}, emb = nan_buf(10);
  timestep_embedding_forward(emb.data(), t.data(), 2, 5, 1000.0f, 10000.0f);
  check_all_near(emb, {1, 1, 0, 0, 0, std::cos(500.0), std::cos(5.0), std::sin(500.0), std::sin(5.0), 0}, 1e-5);
}

TEST(ops_timestep_embedding_gradients) {
  // time_factor 2.5 (not FLUX's 1000) keeps the angles small enough for finite differences in fp32.
  const int B = 3, dim = 9;
  Buf t = random_buf(B, 110, 0, 2), w = random_buf(B * dim, 111), emb = nan_buf(B * dim);
  GradCheck g;
  g.op = "timestep_embedding";
  g.inputs = {{"t", &t}};
  g.loss = [&] {
    timestep_embedding_forward(emb.data(), t.data(), B, dim, 2.5f, 10000.0f);
    return dot(emb, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    timestep_embedding_backward(d[0], w.data(), t.data(), B, dim, 2.5f, 10000.0f);
  };
  check_gradients(g);
}

// ----------------------------------------------------------------------------------------------
// patchify / unpatchify

TEST(ops_patchify_index_order) {
  // "b c (h ph) (w pw) -> b (h w) (c ph pw)" with B=2, C=2, H=W=4, p=2 on inp[i] = i.
  const int B = 2, C = 2, H = 4, W = 4, p = 2;
  Buf inp(B * C * H * W);
  for (size_t i = 0; i < inp.size(); i++) inp[i] = (float)i;
  Buf out = nan_buf(inp.size());
  patchify_forward(out.data(), inp.data(), B, C, H, W, p);
  std::vector<double> sample0 = {0,  1,  4,  5,  16, 17, 20, 21,   // token (0, 0)
                                 2,  3,  6,  7,  18, 19, 22, 23,   // token (0, 1)
                                 8,  9,  12, 13, 24, 25, 28, 29,   // token (1, 0)
                                 10, 11, 14, 15, 26, 27, 30, 31};  // token (1, 1)
  std::vector<double> want = sample0;
  for (double v : sample0) want.push_back(v + 32);  // sample 1 is sample 0 shifted by C*H*W
  check_all_near(out, want, 0);

  Buf back = nan_buf(inp.size());
  unpatchify_forward(back.data(), out.data(), B, C, H, W, p);
  CHECK(bitwise_equal(back, inp));
  CHECK_THROWS(patchify_forward(out.data(), inp.data(), 1, 1, 4, 3, 2), "divisible");
}

TEST(ops_patchify_gradients) {
  const int B = 2, C = 3, H = 4, W = 6, p = 2, n = B * C * H * W;
  Buf latent = random_buf(n, 120), tokens = random_buf(n, 121), w = random_buf(n, 122), out = nan_buf(n);
  GradCheck g;
  g.op = "patchify";
  g.inputs = {{"inp", &latent}};
  g.loss = [&] {
    patchify_forward(out.data(), latent.data(), B, C, H, W, p);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) { patchify_backward(d[0], w.data(), B, C, H, W, p); };
  check_gradients(g);

  g.op = "unpatchify";
  g.inputs = {{"inp", &tokens}};
  g.loss = [&] {
    unpatchify_forward(out.data(), tokens.data(), B, C, H, W, p);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) { unpatchify_backward(d[0], w.data(), B, C, H, W, p); };
  check_gradients(g);
}

// ----------------------------------------------------------------------------------------------
// MSE

TEST(ops_mse_small) {
  Buf pred = {1, 2, 3}, target = {1, 0, 0}, dpred = {1, 1, 1};
  CHECK_NEAR(mse_forward(pred.data(), target.data(), 3), 13.0 / 3, 1e-6);
  mse_backward(dpred.data(), pred.data(), target.data(), 3, 0.5f);
  check_all_near(dpred, {1, 1 + 0.5 * 4.0 / 3, 1 + 0.5 * 6.0 / 3}, 1e-6);  // += dloss * 2 (pred - target) / n
}

TEST(ops_mse_gradients) {
  const int n = 10;
  const float dloss = 0.7f;
  Buf pred = random_buf(n, 130), target = random_buf(n, 131);
  GradCheck g;
  g.op = "mse";
  g.inputs = {{"pred", &pred}};
  g.loss = [&] { return (double)dloss * mse_forward(pred.data(), target.data(), n); };
  g.backward = [&](const std::vector<float*>& d) { mse_backward(d[0], pred.data(), target.data(), n, dloss); };
  check_gradients(g);
}

TEST(ops_embedding_forward_and_gradients) {
  const int N = 5, V = 4, C = 3;
  int ids[N] = {2, 0, 2, 3, 2};  // repeated ids: their gradients add up in one row
  Buf table = random_buf(V * C, 140), out(N * C);
  embedding_forward(out.data(), ids, table.data(), N, V, C);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) CHECK(out[n * C + c] == table[ids[n] * C + c]);
  Buf w = random_buf(N * C, 141);
  GradCheck g;
  g.op = "embedding";
  g.inputs = {{"table", &table}};
  g.loss = [&] {
    embedding_forward(out.data(), ids, table.data(), N, V, C);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) { embedding_backward(d[0], w.data(), ids, N, V, C); };
  check_gradients(g);
  int bad[1] = {4};
  CHECK_THROWS(embedding_forward(out.data(), bad, table.data(), 1, V, C), "outside the vocabulary");
}

// ----------------------------------------------------------------------------------------------
// Determinism: sizes large enough for the parallel paths give bitwise the same results with 1 thread
// and with 3 (each output is summed by one thread in a fixed order), and the same on a rerun.

TEST(ops_deterministic_across_thread_counts) {
  const int B = 2, L = 24, H = 3, D = 32, n = B * L * H * D;  // attention work ~ 110k >= the parallel cutoff
  const int N = 512, C = 64;                                  // norms and modulation: 32k elements
  Buf q = random_buf(n, 140), k = random_buf(n, 141), v = random_buf(n, 142), dout = random_buf(n, 143);
  Buf x = random_buf(N * C, 144), scale = random_buf(C, 145), dy = random_buf(N * C, 146);
  Buf mod = random_buf(2 * 3 * C, 147);
  Buf latent = random_buf(200000, 148), target = random_buf(200000, 149);

  auto run_all = [&](int threads) {
    int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<Buf> r;
    Buf out(n), probs((size_t)B * H * L * L), dq(n), dk(n), dv(n);
    attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, L, H, D);
    attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(), q.data(), k.data(), v.data(), B,
                       L, H, D);
    r.insert(r.end(), {out, probs, dq, dk, dv});
    Buf y(N * C), rrms(N), dx(N * C), dscale(C);
    rmsnorm_forward(y.data(), rrms.data(), x.data(), scale.data(), N, C, 1e-5f);
    rmsnorm_backward(dx.data(), dscale.data(), dy.data(), x.data(), scale.data(), rrms.data(), N, C);
    r.insert(r.end(), {y, rrms, dx, dscale});
    Buf ln(N * C), mean(N), rstd(N), dln(N * C);
    layernorm_forward(ln.data(), mean.data(), rstd.data(), x.data(), N, C);
    layernorm_backward(dln.data(), dy.data(), x.data(), mean.data(), rstd.data(), N, C);
    r.insert(r.end(), {ln, mean, rstd, dln});
    // modulate / gate over B=2 samples of L=256 tokens
    Buf m(N * C), dmx(N * C), dmod(2 * 3 * C), res = x, dres(N * C);
    modulate_forward(m.data(), x.data(), mod.data(), mod.data() + C, 3 * C, 2, N / 2, C);
    modulate_backward(dmx.data(), dmod.data(), dmod.data() + C, dy.data(), x.data(), mod.data() + C, 3 * C, 2, N / 2, C);
    gate_residual_forward(res.data(), dy.data(), mod.data() + 2 * C, 3 * C, 2, N / 2, C);
    gate_residual_backward(dres.data(), dmod.data() + 2 * C, dy.data(), x.data(), mod.data() + 2 * C, 3 * C, 2, N / 2,
                           C);
    r.insert(r.end(), {m, dmx, dmod, res, dres});
    Buf dlatent(latent.size());
    r.push_back({mse_forward(latent.data(), target.data(), (long)latent.size())});
    mse_backward(dlatent.data(), latent.data(), target.data(), (long)latent.size(), 1.0f);
    r.push_back(dlatent);
    omp_set_num_threads(saved);
    return r;
  };
  std::vector<Buf> one = run_all(1), three = run_all(3), again = run_all(3);
  CHECK(one.size() == three.size());
  for (size_t i = 0; i < one.size(); i++) {
    CHECK(bitwise_equal(one[i], three[i]));
    CHECK(bitwise_equal(three[i], again[i]));
  }
  // The large attention still agrees with the double reference (the parallel path computes the same).
  std::vector<double> want_out, want_probs;
  attention_reference(want_out, want_probs, q, k, v, B, L, H, D);
  check_all_near(one[0], want_out, 1e-5);
}
