// Tests of the image ops (ops/cpu_image_ops.h): every backward against central finite differences of
// its forward (gradcheck.h, which also checks the accumulate / nullptr conventions), forwards
// against hand-computed cases and a direct-loop convolution.
//
// Outputs start as NaN, so a forward that leaves any element unwritten poisons the loss.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/common.h"
#include "gradcheck.h"
#include "ops/cpu_image_ops.h"
#include "test.h"

using namespace graft;
using namespace graft::cpu;
using namespace graft_test;

namespace {

const float NaN = std::numeric_limits<float>::quiet_NaN();

Buf nan_buf(size_t n) { return Buf(n, NaN); }

void check_all_near(const Buf& got, const std::vector<double>& want, double tol) {
  CHECK(got.size() == want.size());
  for (size_t i = 0; i < got.size(); i++) CHECK_NEAR(got[i], want[i], tol);
}

size_t conv_out_size(const Conv2dShape& s) { return (size_t)s.B * s.OC * s.out_h() * s.out_w(); }

// The convolution written as its definition, in double: the yardstick for im2col + sgemm.
std::vector<double> conv_direct(const Buf& inp, const Buf& W, const Buf* bias, const Conv2dShape& s) {
  const int OH = s.out_h(), OW = s.out_w();
  std::vector<double> out(conv_out_size(s));
  for (int b = 0; b < s.B; b++)
    for (int oc = 0; oc < s.OC; oc++)
      for (int oy = 0; oy < OH; oy++)
        for (int ox = 0; ox < OW; ox++) {
          double acc = bias ? (*bias)[oc] : 0.0;
          for (int ic = 0; ic < s.IC; ic++)
            for (int kh = 0; kh < s.KH; kh++)
              for (int kw = 0; kw < s.KW; kw++) {
                int iy = oy * s.stride - s.pad_top + kh, ix = ox * s.stride - s.pad_left + kw;
                if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) continue;
                acc += (double)inp[(((size_t)b * s.IC + ic) * s.H + iy) * s.W + ix] *
                       W[(((size_t)oc * s.IC + ic) * s.KH + kh) * s.KW + kw];
              }
          out[(((size_t)b * s.OC + oc) * OH + oy) * OW + ox] = acc;
        }
  return out;
}

// L = sum(conv(inp) * w) as a GradCheck over inp, W and bias.
void check_conv_gradients(const std::string& name, const Conv2dShape& s, uint32_t seed) {
  Buf inp = random_buf((size_t)s.B * s.IC * s.H * s.W, seed), W = random_buf((size_t)s.OC * s.IC * s.KH * s.KW, seed + 1);
  Buf bias = random_buf(s.OC, seed + 2), w = random_buf(conv_out_size(s), seed + 3), out = nan_buf(conv_out_size(s));
  GradCheck g;
  g.op = name;
  g.inputs = {{"inp", &inp}, {"W", &W}, {"bias", &bias}};
  g.loss = [&] {
    conv2d_forward(out.data(), inp.data(), W.data(), bias.data(), s);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    conv2d_backward(d[0], d[1], d[2], w.data(), inp.data(), W.data(), s);
  };
  check_gradients(g);
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// conv2d

TEST(ops_image_conv2d_forward_small) {
  // One 3x3 image 1..9, a 2x2 kernel [[1, 0], [0, 1]]: each output is a diagonal pair's sum.
  Buf inp = {1, 2, 3, 4, 5, 6, 7, 8, 9}, W = {1, 0, 0, 1}, bias = {0.5f};
  Conv2dShape s = conv2d_shape(1, 1, 3, 3, 1, 2, 0);
  Buf out = nan_buf(4);
  conv2d_forward(out.data(), inp.data(), W.data(), bias.data(), s);
  check_all_near(out, {6.5, 8.5, 12.5, 14.5}, 0);
  conv2d_forward(out.data(), inp.data(), W.data(), nullptr, s);
  check_all_near(out, {6, 8, 12, 14}, 0);
}

TEST(ops_image_conv2d_forward_flux_downsample) {
  // FLUX's Downsample on a 4x4 image 1..16: pad one zero row at the bottom and one zero column at
  // the right, then a 3x3 all-ones kernel at stride 2 sums each window: 2x2 out.
  Buf inp(16), W(9, 1.0f);
  for (int i = 0; i < 16; i++) inp[i] = (float)(i + 1);
  Conv2dShape s = conv2d_shape(1, 1, 4, 4, 1, 3, 0, 2);
  s.pad_bottom = s.pad_right = 1;
  CHECK(s.out_h() == 2 && s.out_w() == 2);
  Buf out = nan_buf(4);
  conv2d_forward(out.data(), inp.data(), W.data(), nullptr, s);
  // rows 0-2 x cols 0-2; rows 0-2 x cols 2-3; rows 2-3 x cols 0-2; rows 2-3 x cols 2-3
  check_all_near(out, {54, 45, 72, 54}, 0);
}

TEST(ops_image_conv2d_forward_matches_direct_loops) {
  struct Case { const char* name; Conv2dShape s; };
  std::vector<Case> cases;
  cases.push_back({"3x3 pad 1", conv2d_shape(2, 3, 5, 6, 4, 3, 1)});
  cases.push_back({"1x1 pointwise", conv2d_shape(2, 5, 4, 3, 3, 1, 0)});
  Conv2dShape down = conv2d_shape(2, 3, 7, 6, 2, 3, 0, 2);
  down.pad_bottom = down.pad_right = 1;
  cases.push_back({"3x3 stride 2 pad (0,1,0,1)", down});
  Conv2dShape odd = conv2d_shape(1, 2, 5, 5, 3, 3, 0, 2);
  odd.pad_top = 2, odd.pad_left = 1, odd.pad_bottom = 0, odd.pad_right = 3;
  cases.push_back({"asymmetric pads", odd});
  uint32_t seed = 40;
  for (const Case& c : cases) {
    Buf inp = random_buf((size_t)c.s.B * c.s.IC * c.s.H * c.s.W, seed++);
    Buf W = random_buf((size_t)c.s.OC * c.s.IC * c.s.KH * c.s.KW, seed++), bias = random_buf(c.s.OC, seed++);
    Buf out = nan_buf(conv_out_size(c.s));
    conv2d_forward(out.data(), inp.data(), W.data(), bias.data(), c.s);
    check_all_near(out, conv_direct(inp, W, &bias, c.s), 1e-5);
  }
}

TEST(ops_image_conv2d_gradients) {
  check_conv_gradients("conv2d 3x3 pad 1", conv2d_shape(2, 3, 5, 4, 4, 3, 1), 100);
  check_conv_gradients("conv2d 1x1", conv2d_shape(2, 4, 3, 3, 3, 1, 0), 110);
  Conv2dShape down = conv2d_shape(2, 3, 6, 5, 2, 3, 0, 2);
  down.pad_bottom = down.pad_right = 1;
  check_conv_gradients("conv2d downsample", down, 120);
  Conv2dShape odd = conv2d_shape(1, 2, 5, 4, 3, 2, 0, 2);
  odd.pad_top = 1, odd.pad_right = 2;
  check_conv_gradients("conv2d asymmetric", odd, 130);
}

// Forward, dinp and dW of a conv too large for the finite-difference checks, against direct loops
// in double (backward of L = sum(out * w): dW[oc, k] = sum_p w[oc, p] col[k, p]; dinp by the adjoint).
static void check_conv_against_direct_loops(const Conv2dShape& s) {
  Buf inp = random_buf((size_t)s.B * s.IC * s.H * s.W, 7), W = random_buf((size_t)s.OC * s.IC * s.KH * s.KW, 8);
  Buf out = nan_buf(conv_out_size(s));
  conv2d_forward(out.data(), inp.data(), W.data(), nullptr, s);
  std::vector<double> want = conv_direct(inp, W, nullptr, s);
  double err = 0.0;
  for (size_t i = 0; i < out.size(); i++) err = std::max(err, std::fabs(out[i] - want[i]));
  CHECK_NEAR(err, 0.0, 1e-4);

  Buf w = random_buf(out.size(), 9), dinp(inp.size(), 0.0f), dW(W.size(), 0.0f);
  conv2d_backward(dinp.data(), dW.data(), nullptr, w.data(), inp.data(), W.data(), s);
  std::vector<double> dinp_ref(inp.size(), 0.0), dW_ref(W.size(), 0.0);
  const int OH = s.out_h(), OW = s.out_w();
  for (int b = 0; b < s.B; b++)
    for (int oc = 0; oc < s.OC; oc++)
      for (int oy = 0; oy < OH; oy++)
        for (int ox = 0; ox < OW; ox++) {
          double d = w[(((size_t)b * s.OC + oc) * OH + oy) * OW + ox];
          for (int ic = 0; ic < s.IC; ic++)
            for (int kh = 0; kh < s.KH; kh++)
              for (int kw = 0; kw < s.KW; kw++) {
                int iy = oy * s.stride - s.pad_top + kh, ix = ox * s.stride - s.pad_left + kw;
                if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) continue;
                size_t xi = (((size_t)b * s.IC + ic) * s.H + iy) * s.W + ix;
                size_t wi = (((size_t)oc * s.IC + ic) * s.KH + kh) * s.KW + kw;
                dinp_ref[xi] += d * W[wi];
                dW_ref[wi] += d * inp[xi];
              }
        }
  double err_x = 0.0, err_w = 0.0, scale_w = 0.0;
  for (size_t i = 0; i < dinp.size(); i++) err_x = std::max(err_x, std::fabs(dinp[i] - dinp_ref[i]));
  for (size_t i = 0; i < dW.size(); i++) {
    err_w = std::max(err_w, std::fabs(dW[i] - dW_ref[i]));
    scale_w = std::max(scale_w, std::fabs(dW_ref[i]));
  }
  CHECK_NEAR(err_x, 0.0, 1e-4);
  CHECK_NEAR(err_w / scale_w, 0.0, 1e-5);
}

TEST(ops_image_conv2d_large_image_in_slices) {
  // 64 channels x 3x3 x 180^2 positions needs more column buffer than one slice holds (2^24
  // floats), so this runs the sliced path, with slices that end mid-row.
  Conv2dShape s = conv2d_shape(1, 64, 180, 180, 2, 3, 1);
  CHECK((long)s.IC * 9 * s.out_h() * s.out_w() > (1L << 24));
  check_conv_against_direct_loops(s);
}

TEST(ops_image_conv2d_batch_in_image_groups) {
  // Small images go side by side into one column matrix, as many as fit 2^24 floats: here 7 of
  // 576 x 64^2, so 9 images make a group of 7 and a remainder of 2. Also the strided downsample.
  Conv2dShape s = conv2d_shape(9, 64, 64, 64, 3, 3, 1);
  CHECK((1L << 24) / (576L * 64 * 64) == 7);
  check_conv_against_direct_loops(s);
  Conv2dShape down = conv2d_shape(5, 8, 9, 7, 3, 3, 0, 2);
  down.pad_bottom = down.pad_right = 1;
  check_conv_against_direct_loops(down);
}

TEST(ops_image_conv2d_rejects_bad_geometry) {
  Buf x(4), W(9), out(1);
  CHECK_THROWS(conv2d_forward(out.data(), x.data(), W.data(), nullptr, conv2d_shape(1, 1, 2, 2, 1, 3, 0)),
               "smaller than the kernel");
}

// ----------------------------------------------------------------------------------------------
// GroupNorm

TEST(ops_image_groupnorm_statistics) {
  // 2 images, 6 channels in 3 groups of 2, 4 positions. With gamma 1 and beta 0 every group comes
  // out with mean 0 and variance var/(var+eps); mean and rstd are the group's own statistics.
  const int B = 2, C = 6, HW = 4, G = 3;
  Buf inp = random_buf((size_t)B * C * HW, 50, -2.0f, 3.0f);
  Buf ones(C, 1.0f), zeros(C, 0.0f), out = nan_buf(inp.size()), mean = nan_buf(B * G), rstd = nan_buf(B * G);
  groupnorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), ones.data(), zeros.data(), B, C, HW, G);
  for (int b = 0; b < B; b++)
    for (int g = 0; g < G; g++) {
      const float* x = inp.data() + ((size_t)b * C + g * 2) * HW;
      const float* o = out.data() + ((size_t)b * C + g * 2) * HW;
      double mu = 0, var = 0, omu = 0, ovar = 0;
      for (int i = 0; i < 8; i++) mu += x[i] / 8.0, omu += o[i] / 8.0;
      for (int i = 0; i < 8; i++) var += (x[i] - mu) * (x[i] - mu) / 8.0, ovar += (o[i] - omu) * (o[i] - omu) / 8.0;
      CHECK_NEAR(mean[b * G + g], mu, 1e-6);
      CHECK_NEAR(rstd[b * G + g], 1.0 / std::sqrt(var + 1e-6), 1e-5);
      CHECK_NEAR(omu, 0.0, 1e-6);
      CHECK_NEAR(ovar, var / (var + 1e-6), 1e-5);
    }
  // The affine part is per channel: out = xhat * gamma[c] + beta[c].
  Buf gamma = {1, 2, -1, 0.5f, 3, 0}, beta = {0, 1, 2, 3, 4, 5}, out2 = nan_buf(inp.size());
  groupnorm_forward(out2.data(), mean.data(), rstd.data(), inp.data(), gamma.data(), beta.data(), B, C, HW, G);
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++)
      for (int i = 0; i < HW; i++) {
        size_t k = ((size_t)b * C + c) * HW + i;
        CHECK_NEAR(out2[k], out[k] * gamma[c] + beta[c], 1e-5);
      }
}

TEST(ops_image_groupnorm_gradients) {
  struct Case { int B, C, HW, G; };
  for (Case cs : {Case{2, 6, 5, 3}, Case{1, 4, 3, 1}, Case{2, 4, 6, 4}}) {
    size_t n = (size_t)cs.B * cs.C * cs.HW;
    Buf inp = random_buf(n, 60 + cs.G, -1.5f, 2.0f), gamma = random_buf(cs.C, 61, 0.5f, 1.5f);
    Buf beta = random_buf(cs.C, 62), w = random_buf(n, 63), out = nan_buf(n);
    Buf mean(cs.B * cs.G), rstd(cs.B * cs.G);
    GradCheck g;
    g.op = "groupnorm G=" + std::to_string(cs.G);
    // Measured: the dinp error of the G=3 case is fp32 rounding noise over the step (8e-4 at
    // eps 1e-3, 2.6e-4 at 3e-3, 1.2e-4 at 1e-2), not truncation, so the larger step is the sharper test.
    g.eps = 1e-2f;
    g.inputs = {{"inp", &inp}, {"gamma", &gamma}, {"beta", &beta}};
    g.loss = [&] {
      groupnorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), gamma.data(), beta.data(), cs.B, cs.C,
                        cs.HW, cs.G);
      return dot(out, w);
    };
    g.backward = [&](const std::vector<float*>& d) {
      groupnorm_backward(d[0], d[1], d[2], w.data(), inp.data(), mean.data(), rstd.data(), gamma.data(), cs.B, cs.C,
                         cs.HW, cs.G);
    };
    check_gradients(g);
  }
}

TEST(ops_image_groupnorm_rejects_groups_not_dividing_channels) {
  Buf x(12), gb(6), out(12), m(4), r(4);
  CHECK_THROWS(groupnorm_forward(out.data(), m.data(), r.data(), x.data(), gb.data(), gb.data(), 1, 6, 2, 4),
               "4 groups do not divide 6 channels");
}

// ----------------------------------------------------------------------------------------------
// Upsampling and layout changes

TEST(ops_image_upsample_pattern) {
  Buf inp = {1, 2, 3, 4, 5, 6};  // [1, 1, 2, 3]
  Buf out = nan_buf(24);
  upsample_nearest2x_forward(out.data(), inp.data(), 1, 1, 2, 3);
  check_all_near(out, {1, 1, 2, 2, 3, 3,
                       1, 1, 2, 2, 3, 3,
                       4, 4, 5, 5, 6, 6,
                       4, 4, 5, 5, 6, 6}, 0);
}

TEST(ops_image_upsample_gradients) {
  const int B = 2, C = 3, H = 3, W = 2;
  Buf inp = random_buf((size_t)B * C * H * W, 70), w = random_buf((size_t)B * C * 4 * H * W, 71);
  Buf out = nan_buf(w.size());
  GradCheck g;
  g.op = "upsample_nearest2x";
  g.inputs = {{"inp", &inp}};
  g.loss = [&] {
    upsample_nearest2x_forward(out.data(), inp.data(), B, C, H, W);
    return dot(out, w);
  };
  g.backward = [&](const std::vector<float*>& d) { upsample_nearest2x_backward(d[0], w.data(), B, C, H, W); };
  check_gradients(g);
}

TEST(ops_image_channels_tokens_roundtrip_and_gradients) {
  const int B = 2, C = 3, HW = 4;
  Buf inp = random_buf((size_t)B * C * HW, 80), tok = nan_buf(inp.size()), back = nan_buf(inp.size());
  channels_to_tokens_forward(tok.data(), inp.data(), B, C, HW);
  CHECK(tok[(1 * HW + 2) * C + 1] == inp[(1 * C + 1) * HW + 2]);  // (b=1, c=1, p=2)
  tokens_to_channels_forward(back.data(), tok.data(), B, C, HW);
  check_all_near(back, std::vector<double>(inp.begin(), inp.end()), 0);

  Buf w = random_buf(inp.size(), 81), out = nan_buf(inp.size());
  for (int dir = 0; dir < 2; dir++) {
    GradCheck g;
    g.op = dir == 0 ? "channels_to_tokens" : "tokens_to_channels";
    g.inputs = {{"inp", &inp}};
    g.loss = [&] {
      if (dir == 0) channels_to_tokens_forward(out.data(), inp.data(), B, C, HW);
      else tokens_to_channels_forward(out.data(), inp.data(), B, C, HW);
      return dot(out, w);
    };
    g.backward = [&](const std::vector<float*>& d) {
      if (dir == 0) channels_to_tokens_backward(d[0], w.data(), B, C, HW);
      else tokens_to_channels_backward(d[0], w.data(), B, C, HW);
    };
    check_gradients(g);
  }
}
