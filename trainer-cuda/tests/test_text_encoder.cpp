// The demo model's byte-level text encoder: tokenizer, gradients of every weight, files.
#include <stdlib.h>

#include <cmath>
#include <cstdio>

#include "ops/cpu_ops.h"
#include "core/rng.h"
#include "core/autograd.h"
#include "test.h"
#include "demo/text_encoder.h"

using namespace graft;

namespace {

TextEncoderConfig micro_te() {
  TextEncoderConfig c;
  c.dim = 8;
  c.heads = 2;
  c.layers = 2;
  c.mlp = 16;
  c.max_len = 6;
  c.context_dim = 5;
  c.vec_dim = 3;
  return c;
}

// L = sum(context * wc) + sum(pooled * wp) for fixed random weights wc, wp.
double te_loss(const TextEncoder& te, const std::vector<int>& ids, int B, int L, const std::vector<float>& wc,
               const std::vector<float>& wp) {
  NoGrad no_grad;
  TextEncoder::Output o = te.forward(ids, B, L);
  std::vector<float> ctx = to_floats(o.context), pooled = to_floats(o.pooled);
  double s = 0.0;
  for (size_t i = 0; i < ctx.size(); ++i) s += (double)ctx[i] * wc[i];
  for (size_t i = 0; i < pooled.size(); ++i) s += (double)pooled[i] * wp[i];
  return s;
}

}  // namespace

TEST(text_tokenize_bytes) {
  std::vector<int> ids = tokenize_bytes("ab", 6);
  CHECK((ids == std::vector<int>{kTokBos, kTokByte0 + 'a', kTokByte0 + 'b', kTokEos, kTokPad, kTokPad}));
  std::vector<int> cut = tokenize_bytes("abcdef", 4);  // truncated, eos kept
  CHECK((cut == std::vector<int>{kTokBos, kTokByte0 + 'a', kTokByte0 + 'b', kTokEos}));
  std::vector<int> utf8 = tokenize_bytes("\xc3\xa9", 5);  // é is two bytes
  CHECK(utf8[1] == kTokByte0 + 0xc3 && utf8[2] == kTokByte0 + 0xa9);
  CHECK_THROWS(tokenize_bytes("x", 1), "max_len");
}

TEST(text_encoder_gradients_match_finite_differences) {
  TextEncoder te = TextEncoder::random(micro_te(), 1);
  Rng rng(2);
  std::vector<NamedParam> params = te.params();
  make_trainable(params);
  for (NamedParam& p : params)  // non-trivial norms and biases, so their gradients are tested too
    for (int64_t i = 0; i < p.t->numel(); ++i) p.t->data<float>()[i] += 0.1f * rng.normal();
  const int B = 2, L = 5;
  std::vector<int> ids;
  for (const char* s : {"red", "zxq!"}) {
    std::vector<int> t = tokenize_bytes(s, L);
    ids.insert(ids.end(), t.begin(), t.end());
  }
  TextEncoder::Output o = te.forward(ids, B, L);
  std::vector<float> wc(o.context.numel()), wp(o.pooled.numel());
  for (float& v : wc) v = rng.normal();
  for (float& v : wp) v = rng.normal();
  backward({o.context, o.pooled}, {from_vector(wc, o.context.shape, Device::cpu()), from_vector(wp, o.pooled.shape, Device::cpu())});
  const float eps = 1e-2f;
  double worst = 0.0;
  std::string worst_name;
  int n = 0;
  for (NamedParam& p : params) {
    size_t size = (size_t)p.t->numel();
    // For the embeddings, entries of tokens that occur (rows of 'r' and of position 0).
    std::vector<size_t> idx = {0, size / 2, size - 1};
    if (p.name == "token_embedding.weight") idx = {(size_t)(kTokByte0 + 'r') * te.cfg.dim, (size_t)kTokBos * te.cfg.dim + 1};
    for (size_t k : idx) {
      float& x = p.t->data<float>()[k];
      float saved = x;
      x = saved + eps;
      double lp = te_loss(te, ids, B, L, wc, wp);
      x = saved - eps;
      double lm = te_loss(te, ids, B, L, wc, wp);
      x = saved;
      double fd = (lp - lm) / (2 * eps), an = p.t->meta->grad.data<float>()[k];
      // Absolute floor for the fp32 noise of the difference quotient (about 2e-4 here): the key bias
      // has an exactly zero gradient (softmax ignores a shift shared by all keys).
      double err = std::fabs(fd - an) / (1e-3 + 1e-2 * std::fabs(fd));  // 1.0 = at tolerance
      if (err > worst) worst = err, worst_name = p.name + " fd " + std::to_string(fd) + " analytic " + std::to_string(an);
      ++n;
    }
  }
  std::printf("      %d weights of %zu tensors, worst |fd - analytic| / (1e-3 + 1e-2 |fd|) = %.2f (%s)\n", n, te.params().size(), worst,
              worst_name.c_str());
  CHECK(worst < 1.0);
}

TEST(text_encoder_file_round_trip) {
  char tmpl[] = "/tmp/graft-te-XXXXXX";
  CHECK(mkdtemp(tmpl) != nullptr);
  std::string path = std::string(tmpl) + "/te.safetensors";
  TextEncoderConfig c = micro_te();
  c.heads = 4;  // not derivable from shapes: must travel in the metadata
  TextEncoder te = TextEncoder::random(c, 3);
  te.save(path, DType::F32, {});
  TextEncoder back = TextEncoder::load(path);
  CHECK(back.cfg.heads == 4 && back.cfg.layers == 2 && back.cfg.max_len == 6 && back.cfg.context_dim == 5);
  std::vector<int> ids = tokenize_bytes("blue", 6);
  NoGrad no_grad;
  TextEncoder::Output a = te.forward(ids, 1, 6), b = back.forward(ids, 1, 6);
  CHECK(to_floats(a.context) == to_floats(b.context) && to_floats(a.pooled) == to_floats(b.pooled));
  CHECK_THROWS(TextEncoder::load(std::string(tmpl) + "/missing.safetensors"), "missing.safetensors");
}
