#include "text_encoder.h"

#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "common.h"
#include "ops.h"
#include "rng.h"

namespace graft {

using vec = std::vector<float>;

std::vector<int> tokenize_bytes(const std::string& text, int max_len) {
  if (max_len < 2) fail("text encoder max_len must be at least 2, got " + std::to_string(max_len));
  std::vector<int> ids = {kTokBos};
  for (unsigned char c : text) {
    if ((int)ids.size() == max_len - 1) break;
    ids.push_back(kTokByte0 + c);
  }
  ids.push_back(kTokEos);
  ids.resize(max_len, kTokPad);
  return ids;
}

// ---------------------------------------------------------------- weights

std::vector<ParamRef> TextEncoder::params() {
  std::vector<ParamRef> p;
  const int64_t D = cfg.dim;
  auto lin = [&](TeLinear& l) {
    p.push_back({l.name + ".weight", {l.out, l.in}, &l.W, &l.dW});
    p.push_back({l.name + ".bias", {l.out}, &l.b, &l.db});
  };
  p.push_back({"token_embedding.weight", {cfg.vocab, D}, &tok_emb, &dtok_emb});
  p.push_back({"position_embedding.weight", {cfg.max_len, D}, &pos_emb, &dpos_emb});
  for (size_t i = 0; i < layers.size(); ++i) {
    TeLayer& l = layers[i];
    std::string n = "layers." + std::to_string(i) + ".";
    p.push_back({n + "norm1.scale", {D}, &l.norm1, &l.dnorm1});
    lin(l.qkv);
    lin(l.out);
    p.push_back({n + "norm2.scale", {D}, &l.norm2, &l.dnorm2});
    lin(l.mlp0);
    lin(l.mlp2);
  }
  p.push_back({"final_norm.scale", {D}, &final_norm, &dfinal_norm});
  lin(context_proj);
  lin(pooled_proj);
  return p;
}

static TeLinear te_linear(const std::string& name, int in, int out) {
  TeLinear l;
  l.name = name;
  l.in = in;
  l.out = out;
  return l;
}

// The structure (names and sizes) of an encoder of this config; values left empty.
static TextEncoder skeleton(const TextEncoderConfig& c) {
  TextEncoder te;
  te.cfg = c;
  for (int i = 0; i < c.layers; ++i) {
    std::string n = "layers." + std::to_string(i) + ".";
    TeLayer l;
    l.qkv = te_linear(n + "attn.qkv", c.dim, 3 * c.dim);
    l.out = te_linear(n + "attn.out", c.dim, c.dim);
    l.mlp0 = te_linear(n + "mlp.0", c.dim, c.mlp);
    l.mlp2 = te_linear(n + "mlp.2", c.mlp, c.dim);
    te.layers.push_back(l);
  }
  te.context_proj = te_linear("context_proj", c.dim, c.context_dim);
  te.pooled_proj = te_linear("pooled_proj", c.dim, c.vec_dim);
  return te;
}

static void check_config(const TextEncoderConfig& c, const std::string& where) {
  if (c.heads <= 0 || c.dim % c.heads || (c.dim / c.heads) % 2)
    fail(where + ": text encoder width " + std::to_string(c.dim) + " must split into " + std::to_string(c.heads) +
         " heads of even size");
}

TextEncoder TextEncoder::random(const TextEncoderConfig& c, uint64_t seed) {
  check_config(c, "text encoder");
  TextEncoder te = skeleton(c);
  Rng rng(seed, 0x7E, 0);
  for (ParamRef& p : te.params()) {
    p.value->resize(numel(p.shape));
    const bool scale = p.name.find(".scale") != std::string::npos;
    const bool bias = p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0;
    const float std = p.shape.size() == 2 ? (p.name.find("embedding") != std::string::npos ? 0.5f : 1.0f / std::sqrt((float)p.shape[1])) : 0.0f;
    for (float& v : *p.value) v = scale ? 1.0f : bias ? 0.0f : std * rng.normal();
  }
  return te;
}

TextEncoder TextEncoder::load(const std::string& path) {
  SafeTensorsFile f = SafeTensorsFile::open(path);
  if (!f.has("token_embedding.weight"))
    fail(path + ": not a graft text encoder: tensor 'token_embedding.weight' is missing");
  TextEncoderConfig c;
  auto dim = [&](const char* name, size_t axis) {
    const TensorInfo& t = f.info(name);
    if (t.shape.size() <= axis) fail(path + ": tensor '" + name + "' has shape " + shape_str(t.shape));
    return (int)t.shape[axis];
  };
  c.vocab = dim("token_embedding.weight", 0);
  c.dim = dim("token_embedding.weight", 1);
  c.max_len = dim("position_embedding.weight", 0);
  c.layers = 0;
  while (f.has("layers." + std::to_string(c.layers) + ".attn.qkv.weight")) ++c.layers;
  c.mlp = c.layers ? dim("layers.0.mlp.0.weight", 0) : 4 * c.dim;
  c.context_dim = dim("context_proj.weight", 0);
  c.vec_dim = dim("pooled_proj.weight", 0);
  auto it = f.metadata.find("graft.heads");
  c.heads = it != f.metadata.end() ? std::atoi(it->second.c_str()) : std::max(1, c.dim / 32);
  check_config(c, path);
  TextEncoder te = skeleton(c);
  for (ParamRef& p : te.params()) *p.value = f.read_f32(p.name, p.shape);
  return te;
}

void TextEncoder::save(const std::string& path, DType dtype, const std::map<std::string, std::string>& metadata) {
  SafeTensorsWriter w;
  w.metadata = metadata;
  w.metadata["graft.heads"] = std::to_string(cfg.heads);
  for (ParamRef& p : params()) w.add(p.name, dtype, p.shape, p.value->data());
  w.write(path);
}

void TextEncoder::enable_grads() {
  for (ParamRef& p : params()) p.grad->assign(p.value->size(), 0.0f);
}

void TextEncoder::zero_grads() {
  for (ParamRef& p : params()) std::fill(p.grad->begin(), p.grad->end(), 0.0f);
}

// ---------------------------------------------------------------- forward / backward

struct TeLayerActs {
  vec x, rrms1, n1, qkv, q, k, v, probs, attn, o, x1, rrms2, n2, h, g;
};

struct TextEncoderActivations {
  int B = 0, L = 0;
  std::vector<int> ids;
  std::vector<TeLayerActs> layers;
  vec x_last, rrms_f, xf, mean_xf;
};

TextEncoderRunner::TextEncoderRunner(TextEncoder* t) : te(t), acts(new TextEncoderActivations) {}
TextEncoderRunner::~TextEncoderRunner() { delete acts; }

static void te_linear_forward(const TeLinear& l, float* out, const float* inp, int N) {
  linear_forward(out, inp, l.W.data(), l.b.data(), N, l.in, l.out);
}

static void te_linear_backward(TeLinear& l, float* dinp, const float* dout, const float* inp, int N) {
  linear_backward(dinp, l.dW.empty() ? nullptr : l.dW.data(), l.db.empty() ? nullptr : l.db.data(), dout, inp,
                  l.W.data(), N, l.in, l.out);
}

static float* grad_or_null(vec& g) { return g.empty() ? nullptr : g.data(); }

void TextEncoderRunner::forward(const std::vector<int>& ids, int B, int L, vec& context, vec& pooled) {
  const TextEncoderConfig& c = te->cfg;
  if (L > c.max_len) fail("text encoder: " + std::to_string(L) + " tokens, more than its " + std::to_string(c.max_len));
  if ((int)ids.size() != B * L) fail("text encoder: expected " + std::to_string(B * L) + " token ids");
  const int C = c.dim, H = c.heads, D = C / H, M = c.mlp;
  const size_t N = (size_t)B * L;
  TextEncoderActivations* a = acts;
  a->B = B;
  a->L = L;
  a->ids = ids;
  vec x(N * C);
  embedding_forward(x.data(), ids.data(), te->tok_emb.data(), (int)N, c.vocab, C);
  for (int b = 0; b < B; ++b)
    for (int l = 0; l < L; ++l)
      for (int d = 0; d < C; ++d) x[((size_t)b * L + l) * C + d] += te->pos_emb[(size_t)l * C + d];
  a->layers.resize(te->layers.size());
  for (size_t i = 0; i < te->layers.size(); ++i) {
    const TeLayer& w = te->layers[i];
    TeLayerActs& s = a->layers[i];
    s.x = x;
    s.rrms1.resize(N);
    s.n1.resize(N * C);
    s.qkv.resize(N * 3 * C);
    rmsnorm_forward(s.n1.data(), s.rrms1.data(), s.x.data(), w.norm1.data(), (int)N, C);
    te_linear_forward(w.qkv, s.qkv.data(), s.n1.data(), (int)N);
    for (vec* t : {&s.q, &s.k, &s.v}) t->resize(N * C);
    for (size_t r = 0; r < N; ++r) {
      std::memcpy(&s.q[r * C], &s.qkv[r * 3 * C], C * sizeof(float));
      std::memcpy(&s.k[r * C], &s.qkv[r * 3 * C + C], C * sizeof(float));
      std::memcpy(&s.v[r * C], &s.qkv[r * 3 * C + 2 * C], C * sizeof(float));
    }
    s.probs.resize((size_t)B * H * L * L);
    s.attn.resize(N * C);
    attention_forward(s.attn.data(), s.probs.data(), s.q.data(), s.k.data(), s.v.data(), B, L, H, D);
    s.o.resize(N * C);
    te_linear_forward(w.out, s.o.data(), s.attn.data(), (int)N);
    s.x1 = s.x;
    for (size_t j = 0; j < N * C; ++j) s.x1[j] += s.o[j];
    s.rrms2.resize(N);
    s.n2.resize(N * C);
    rmsnorm_forward(s.n2.data(), s.rrms2.data(), s.x1.data(), w.norm2.data(), (int)N, C);
    s.h.resize(N * M);
    s.g.resize(N * M);
    te_linear_forward(w.mlp0, s.h.data(), s.n2.data(), (int)N);
    gelu_forward(s.g.data(), s.h.data(), (int)(N * M));
    vec m(N * C);
    te_linear_forward(w.mlp2, m.data(), s.g.data(), (int)N);
    x = s.x1;
    for (size_t j = 0; j < N * C; ++j) x[j] += m[j];
  }
  a->x_last = x;
  a->rrms_f.resize(N);
  a->xf.resize(N * C);
  rmsnorm_forward(a->xf.data(), a->rrms_f.data(), x.data(), te->final_norm.data(), (int)N, C);
  context.resize(N * c.context_dim);
  te_linear_forward(te->context_proj, context.data(), a->xf.data(), (int)N);
  a->mean_xf.assign((size_t)B * C, 0.0f);
  for (int b = 0; b < B; ++b)
    for (int l = 0; l < L; ++l)
      for (int d = 0; d < C; ++d) a->mean_xf[(size_t)b * C + d] += a->xf[((size_t)b * L + l) * C + d] / L;
  pooled.resize((size_t)B * c.vec_dim);
  te_linear_forward(te->pooled_proj, pooled.data(), a->mean_xf.data(), B);
}

void TextEncoderRunner::backward(const vec& dcontext, const vec& dpooled) {
  const TextEncoderConfig& c = te->cfg;
  TextEncoderActivations* a = acts;
  const int B = a->B, L = a->L, C = c.dim, H = c.heads, D = C / H, M = c.mlp;
  const size_t N = (size_t)B * L;
  vec dxf(N * C, 0.0f), dmean((size_t)B * C, 0.0f);
  te_linear_backward(te->context_proj, dxf.data(), dcontext.data(), a->xf.data(), (int)N);
  te_linear_backward(te->pooled_proj, dmean.data(), dpooled.data(), a->mean_xf.data(), B);
  for (int b = 0; b < B; ++b)
    for (int l = 0; l < L; ++l)
      for (int d = 0; d < C; ++d) dxf[((size_t)b * L + l) * C + d] += dmean[(size_t)b * C + d] / L;
  vec dx(N * C, 0.0f);
  rmsnorm_backward(dx.data(), grad_or_null(te->dfinal_norm), dxf.data(), a->x_last.data(), te->final_norm.data(),
                   a->rrms_f.data(), (int)N, C);
  for (int i = (int)te->layers.size() - 1; i >= 0; --i) {
    TeLayer& w = te->layers[i];
    TeLayerActs& s = a->layers[i];
    // x2 = x1 + mlp(norm2(x1)); dx holds d x2 and becomes d x1, then d x.
    vec dg(N * M, 0.0f), dh(N * M, 0.0f), dn2(N * C, 0.0f);
    te_linear_backward(w.mlp2, dg.data(), dx.data(), s.g.data(), (int)N);
    gelu_backward(dh.data(), dg.data(), s.h.data(), (int)(N * M));
    te_linear_backward(w.mlp0, dn2.data(), dh.data(), s.n2.data(), (int)N);
    rmsnorm_backward(dx.data(), grad_or_null(w.dnorm2), dn2.data(), s.x1.data(), w.norm2.data(), s.rrms2.data(), (int)N, C);
    vec dattn(N * C, 0.0f), dq(N * C, 0.0f), dk(N * C, 0.0f), dv(N * C, 0.0f), dqkv(N * 3 * C), dn1(N * C, 0.0f);
    te_linear_backward(w.out, dattn.data(), dx.data(), s.attn.data(), (int)N);
    attention_backward(dq.data(), dk.data(), dv.data(), dattn.data(), s.probs.data(), s.q.data(), s.k.data(), s.v.data(),
                       B, L, H, D);
    for (size_t r = 0; r < N; ++r) {
      std::memcpy(&dqkv[r * 3 * C], &dq[r * C], C * sizeof(float));
      std::memcpy(&dqkv[r * 3 * C + C], &dk[r * C], C * sizeof(float));
      std::memcpy(&dqkv[r * 3 * C + 2 * C], &dv[r * C], C * sizeof(float));
    }
    te_linear_backward(w.qkv, dn1.data(), dqkv.data(), s.n1.data(), (int)N);
    rmsnorm_backward(dx.data(), grad_or_null(w.dnorm1), dn1.data(), s.x.data(), w.norm1.data(), s.rrms1.data(), (int)N, C);
  }
  if (!te->dpos_emb.empty())
    for (int b = 0; b < B; ++b)
      for (int l = 0; l < L; ++l)
        for (int d = 0; d < C; ++d) te->dpos_emb[(size_t)l * C + d] += dx[((size_t)b * L + l) * C + d];
  if (!te->dtok_emb.empty()) embedding_backward(te->dtok_emb.data(), dx.data(), a->ids.data(), (int)N, c.vocab, C);
}

}  // namespace graft
