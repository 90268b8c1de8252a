// The tensor-level operations (ops/ops.h) through the tape: each one's gradients against central
// differences of L = sum(op(inputs) * w), including the ops that exist only at this level (narrow,
// cat, reshape, the token mean) and checkpointing of a small block; weights in other dtypes give the
// fp32 results of their rounded values; the tape's own rules (no record without a gradient to
// compute, NoGrad, accumulation across backward calls).
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "gradcheck.h"
#include "ops/ops.h"
#include "test.h"

using namespace graft;
using namespace graft_test;

namespace {

const Device kCpu = Device::cpu();

// Checks every input's gradient of L = sum(f(inputs) * w) against central differences.
void check_op(const std::string& name, std::vector<Shape> shapes, const std::function<Tensor(const std::vector<Tensor>&)>& f,
              double tol = 5e-4, float eps = 3e-3f) {
  std::vector<Tensor> in;
  for (size_t i = 0; i < shapes.size(); ++i) {
    Tensor t = from_vector(random_buf(shape_numel(shapes[i]), 10 + (uint32_t)i), shapes[i], kCpu);
    make_leaf(t);
    in.push_back(t);
  }
  Tensor out = f(in);
  const Buf w = random_buf(out.numel(), 99);
  backward(out, from_vector(w, out.shape, kCpu));
  auto loss = [&] {
    NoGrad no_grad;
    return dot(to_floats(f(in)), w);
  };
  for (size_t k = 0; k < in.size(); ++k) {
    const std::vector<float> analytic = to_floats(in[k].meta->grad);
    float* x = in[k].data<float>();
    double worst = 0.0, scale = 0.0;
    for (float a : analytic) scale = std::max(scale, (double)std::fabs(a));
    if (!(scale > 0.0)) fail_at(__FILE__, __LINE__, name + " input " + std::to_string(k) + ": gradient is identically zero");
    for (size_t i = 0; i < analytic.size(); ++i) {
      const float orig = x[i];
      x[i] = orig + eps;
      const double up = loss();
      x[i] = orig - eps;
      const double down = loss();
      x[i] = orig;
      worst = std::max(worst, std::fabs((up - down) / (2.0 * eps) - analytic[i]) / scale);
    }
    std::printf("      %-34s d%zu max rel err %.2e\n", name.c_str(), k, worst);
    if (!(worst <= tol)) fail_at(__FILE__, __LINE__, name + " input " + std::to_string(k) + ": relative error " + std::to_string(worst));
  }
}

Tensor bf16_copy(const Tensor& t) { return to_dtype(t, DType::BF16); }

}  // namespace

TEST(tensor_ops_gradients_match_finite_differences) {
  check_op("narrow (last dim and dim 1)", {{2, 5, 6}}, [](const std::vector<Tensor>& t) {
    return narrow(narrow(t[0], -1, 2, 3), 1, 1, 3);
  });
  check_op("cat along dim 1 and the last dim", {{2, 3, 4}, {2, 2, 4}, {2, 5, 1}}, [](const std::vector<Tensor>& t) {
    return cat({cat({t[0], t[1]}, 1), t[2]}, -1);
  });
  check_op("reshape then gelu", {{3, 8}}, [](const std::vector<Tensor>& t) { return gelu(reshape(t[0], {2, 12})); });
  check_op("add (one input twice)", {{4, 5}, {4, 5}}, [](const std::vector<Tensor>& t) { return add(add(t[0], t[1]), t[0]); });
  check_op("mean over tokens", {{2, 7, 3}}, [](const std::vector<Tensor>& t) { return mean_tokens(t[0]); });
  check_op("embedding (the table's gradient)", {{9, 4}}, [](const std::vector<Tensor>& t) {
    return embedding(from_ints({3, 1, 3, 8, 0}, {5}, kCpu), t[0]);
  });
  check_op("linear with two LoRA slices", {{3, 6}, {8, 6}, {8}, {2, 6}, {3, 2}, {2, 6}, {5, 2}},
           [](const std::vector<Tensor>& t) {
             return linear(t[0], t[1], t[2], {LoraRef{t[3], t[4], 0, 3, 0.7f}, LoraRef{t[5], t[6], 3, 5, 1.5f}});
           });
  check_op("modulate + gate_residual", {{2, 3, 4}, {2, 3, 4}, {2, 12}}, [](const std::vector<Tensor>& t) {
    return gate_residual(t[0], modulate(t[1], t[2], 0, 1), t[2], 2);
  });
  // Z-Image's block: scale-only modulation of an RMSNorm (eps 1e-5) and tanh-gated residuals.
  check_op("rmsnorm eps 1e-5, modulate no shift, tanh gate", {{2, 3, 4}, {2, 3, 4}, {4}, {2, 12}},
           [](const std::vector<Tensor>& t) {
             return gate_residual(t[0], modulate(rmsnorm(t[1], t[2], 1e-5f), t[3], -1, 0), tanh(t[3]), 1);
           });
  check_op("gaussian KL", {{2, 3}, {2, 3}}, [](const std::vector<Tensor>& t) { return gaussian_kl(t[0], t[1]); });
  check_op("mul (gated GELU, T5's FFN)", {{3, 5}, {3, 5}}, [](const std::vector<Tensor>& t) { return mul(gelu(t[0]), t[1]); });
  check_op("quick_gelu (CLIP's)", {{4, 6}}, [](const std::vector<Tensor>& t) { return quick_gelu(t[0]); });
  check_op("layernorm eps 1e-5 + affine", {{3, 8}, {8}, {8}}, [](const std::vector<Tensor>& t) {
    return affine(layernorm(t[0], 1e-5f), t[1], t[2]);
  });
  check_op("attention, causal", {{2, 4, 6}, {2, 4, 6}, {2, 4, 6}}, [](const std::vector<Tensor>& t) {
    return attention(t[0], t[1], t[2], 2, AttentionOptions{0.0f, true, Tensor()});
  });
  // T5's: unscaled scores plus a per-head bias.
  const Tensor bias = from_vector(random_buf(2 * 5 * 5, 7), {2, 5, 5}, kCpu);
  check_op("attention, scale 1 + bias", {{1, 5, 8}, {1, 5, 8}, {1, 5, 8}}, [&](const std::vector<Tensor>& t) {
    return attention(t[0], t[1], t[2], 2, AttentionOptions{1.0f, false, bias});
  });
}

// Scale-only modulation is (1 + scale) * x; tanh is std::tanh; rmsnorm's eps is the one given.
TEST(zimage_block_ops_compute_their_definitions) {
  const Buf x = random_buf(2 * 3 * 4, 1), m = random_buf(2 * 8, 2), s = random_buf(4, 3);
  const Tensor xt = from_vector(x, {2, 3, 4}, kCpu), mt = from_vector(m, {2, 8}, kCpu);
  const std::vector<float> mod = to_floats(modulate(xt, mt, -1, 1)), th = to_floats(tanh(mt));
  for (int b = 0; b < 2; ++b)
    for (int i = 0; i < 12; ++i) CHECK_NEAR(mod[b * 12 + i], (1.0f + m[b * 8 + 4 + i % 4]) * x[b * 12 + i], 1e-6);
  for (size_t i = 0; i < m.size(); ++i) CHECK_NEAR(th[i], std::tanh(m[i]), 1e-6);
  const std::vector<float> y = to_floats(rmsnorm(from_vector({3e-3f, 4e-3f}, {1, 2}, kCpu), from_vector({1.0f, 1.0f}, {2}, kCpu), 1e-5f));
  const double r = 1.0 / std::sqrt((9e-6 + 16e-6) / 2 + 1e-5);  // eps 1e-5 matters at this scale
  CHECK_NEAR(y[0], 3e-3 * r, 1e-6);
  CHECK_NEAR(y[1], 4e-3 * r, 1e-6);
}

// The masks change the result the way their definitions say: a causal first token sees only itself
// (its output is its own value row); the bias shifts scores (a huge bias on one key picks that key's
// value); scale 1 differs from 1/sqrt(D).
TEST(attention_options_do_what_they_say) {
  const int B = 1, L = 4, H = 1, D = 4;
  const Tensor q = from_vector(random_buf(B * L * D, 1), {B, L, D}, kCpu), k = from_vector(random_buf(B * L * D, 2), {B, L, D}, kCpu),
               v = from_vector(random_buf(B * L * D, 3), {B, L, D}, kCpu);
  const std::vector<float> vv = to_floats(v), plain = to_floats(attention(q, k, v, H));
  const std::vector<float> causal = to_floats(attention(q, k, v, H, AttentionOptions{0.0f, true, Tensor()}));
  for (int d = 0; d < D; ++d) CHECK_NEAR(causal[d], vv[d], 1e-6);
  for (int i = 0; i < L * D; ++i)
    if (i >= (L - 1) * D) CHECK_NEAR(causal[i], plain[i], 1e-6);  // the last token sees every position anyway
  std::vector<float> b((size_t)L * L, 0.0f);
  for (int i = 0; i < L; ++i) b[(size_t)i * L + 2] = 80.0f;
  const std::vector<float> biased = to_floats(attention(q, k, v, H, AttentionOptions{0.0f, false, from_vector(b, {H, L, L}, kCpu)}));
  for (int i = 0; i < L; ++i)
    for (int d = 0; d < D; ++d) CHECK_NEAR(biased[(size_t)i * D + d], vv[2 * D + d], 1e-5);
  const std::vector<float> unscaled = to_floats(attention(q, k, v, H, AttentionOptions{1.0f, false, Tensor()}));
  double diff = 0.0;
  for (size_t i = 0; i < plain.size(); ++i) diff = std::max(diff, (double)std::fabs(unscaled[i] - plain[i]));
  CHECK(diff > 1e-3);
}

// A block run through checkpoint(): the same output, and the same gradients of its input and of the
// parameters inside it, as without.
TEST(checkpoint_recomputes_a_block_exactly) {
  Tensor W = from_vector(random_buf(6 * 4, 1), {6, 4}, kCpu), x = from_vector(random_buf(3 * 4, 2), {3, 4}, kCpu);
  make_leaf(W);
  make_leaf(x);
  auto block = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{silu(linear(gelu(in[0]), W, Tensor()))}; };
  const Tensor w = from_vector(random_buf(3 * 6, 3), {3, 6}, kCpu);
  Tensor plain = block({x})[0];
  backward(plain, w);
  const std::vector<float> gW = to_floats(W.meta->grad), gx = to_floats(x.meta->grad);
  zero_(W.meta->grad);
  zero_(x.meta->grad);
  Tensor again = checkpoint(block, {x})[0];
  CHECK(to_floats(again) == to_floats(plain));
  CHECK(again.requires_grad());
  backward(again, w);
  CHECK(to_floats(W.meta->grad) == gW);
  CHECK(to_floats(x.meta->grad) == gx);
  {
    NoGrad no_grad;  // without recording, checkpoint is a plain call
    CHECK(!checkpoint(block, {x})[0].requires_grad());
  }
}

TEST(tape_records_only_what_needs_a_gradient) {
  Tensor frozen = from_vector(random_buf(4 * 4, 1), {4, 4}, kCpu), x = from_vector(random_buf(2 * 4, 2), {2, 4}, kCpu);
  CHECK(!linear(x, frozen, Tensor()).requires_grad());  // nothing trainable: no record
  Tensor A = from_vector(random_buf(2 * 4, 3), {2, 4}, kCpu), B = from_vector(random_buf(4 * 2, 4), {4, 2}, kCpu);
  Tensor gA = zeros({2, 4}, DType::F32, kCpu), gB = zeros({4, 2}, DType::F32, kCpu);
  make_leaf(A, gA);
  make_leaf(B, gB);
  Tensor y = linear(x, frozen, Tensor(), {LoraRef{A, B, 0, 4, 1.0f}});
  CHECK(y.requires_grad());
  CHECK(!linear(x, frozen, Tensor(), {LoraRef{A, B, 0, 4, 0.0f}}).requires_grad());  // scale 0: the base layer alone
  {
    NoGrad no_grad;
    CHECK(!linear(x, frozen, Tensor(), {LoraRef{A, B, 0, 4, 1.0f}}).requires_grad());
  }
  // Gradients accumulate into the parameters' buffers across backward calls.
  const Tensor w = from_vector(random_buf(2 * 4, 5), {2, 4}, kCpu);
  backward(y, w);
  const std::vector<float> once = to_floats(gA);
  backward(linear(x, frozen, Tensor(), {LoraRef{A, B, 0, 4, 1.0f}}), w);
  const std::vector<float> twice = to_floats(gA);
  for (size_t i = 0; i < once.size(); ++i) CHECK_NEAR(twice[i], 2.0 * once[i], 1e-6 * (1 + std::fabs(once[i])));
}

// A weight stored in bf16 (or fp8) on the CPU: the linear, its input gradient and an embedding give
// what the fp32 copy of the same rounded values gives (the bf16 path converts a block of rows at a time).
TEST(weights_in_other_dtypes_act_as_their_values) {
  const int N = 5, IC = 48, OC = 40;
  Tensor W32 = from_vector(random_buf(OC * IC, 1), {OC, IC}, kCpu);
  for (DType dt : {DType::BF16, DType::F16, DType::F8_E4M3}) {
    Tensor Wn = to_dtype(W32, dt), Wr = to_dtype(Wn, DType::F32);  // the stored values, and their exact fp32
    Tensor x1 = from_vector(random_buf(N * IC, 2), {N, IC}, kCpu), x2 = clone(x1);
    make_leaf(x1);
    make_leaf(x2);
    Tensor a = linear(x1, Wn, Tensor()), b = linear(x2, Wr, Tensor());
    const std::vector<float> ya = to_floats(a), yb = to_floats(b);
    for (size_t i = 0; i < ya.size(); ++i) CHECK_NEAR(ya[i], yb[i], 1e-5 * (1 + std::fabs(yb[i])));
    const Tensor w = from_vector(random_buf(N * OC, 3), {N, OC}, kCpu);
    backward(a, w);
    backward(b, w);
    const std::vector<float> ga = to_floats(x1.meta->grad), gb = to_floats(x2.meta->grad);
    for (size_t i = 0; i < ga.size(); ++i) CHECK_NEAR(ga[i], gb[i], 1e-5 * (1 + std::fabs(gb[i])));
  }
  Tensor table = from_vector(random_buf(10 * 6, 4), {10, 6}, kCpu);
  Tensor ids = from_ints({7, 2, 7, 9}, {4}, kCpu);
  CHECK(to_floats(embedding(ids, bf16_copy(table))) == to_floats(embedding(ids, to_dtype(bf16_copy(table), DType::F32))));
}
