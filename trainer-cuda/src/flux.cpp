#include "flux.h"

#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "common.h"
#include "ops.h"

namespace graft {

using vec = std::vector<float>;

// ---------------------------------------------------------------- loading

static int64_t dim_of(const SafeTensorsFile& f, const std::string& name, size_t axis) {
  const TensorInfo& t = f.info(name);
  if (t.shape.size() <= axis) fail(f.path + ": tensor '" + name + "' has shape " + shape_str(t.shape) + ", expected more dimensions");
  return t.shape[axis];
}

static void rope_axes(FluxConfig& c, const SafeTensorsFile& f) {
  auto it = f.metadata.find("graft.axes_dim");
  if (it != f.metadata.end()) {
    nlohmann::json j = nlohmann::json::parse(it->second, nullptr, false);
    if (!j.is_array() || j.size() != 3)
      fail(f.path + ": metadata graft.axes_dim must be a list of 3 even integers, got '" + it->second + "'");
    for (int i = 0; i < 3; ++i) {
      if (!j[i].is_number_integer()) fail(f.path + ": metadata graft.axes_dim has a non-integer entry");
      c.axes_dim[i] = j[i].get<int>();
    }
  } else {
    // FLUX.1's split for head_dim 128 is [16, 56, 56]; the same proportions for other widths.
    int a0 = (c.head_dim / 8) & ~1;
    int rest = (c.head_dim - a0) / 2 & ~1;
    c.axes_dim[0] = c.head_dim - 2 * rest;
    c.axes_dim[1] = rest;
    c.axes_dim[2] = rest;
  }
  int sum = c.axes_dim[0] + c.axes_dim[1] + c.axes_dim[2];
  for (int a : c.axes_dim)
    if (a <= 0 || a % 2) fail(f.path + ": RoPE axes must be positive and even");
  if (sum != c.head_dim)
    fail(f.path + ": RoPE axes sum to " + std::to_string(sum) + " but the head dim is " + std::to_string(c.head_dim));
}

FluxModel FluxModel::load(const std::string& path) {
  SafeTensorsFile f = SafeTensorsFile::open(path);
  if (!f.has("img_in.weight") || !f.has("double_blocks.0.img_attn.qkv.weight")) {
    std::string hint = f.has("x_embedder.weight") ? " (this is the diffusers layout; the BFL layout is needed)" : "";
    fail(path + ": not a FLUX.1 transformer in BFL layout: tensor 'img_in.weight' or 'double_blocks.0.img_attn.qkv.weight' is missing" + hint);
  }
  FluxConfig c;
  c.hidden = (int)dim_of(f, "img_in.weight", 0);
  c.in_channels = (int)dim_of(f, "img_in.weight", 1);
  c.context_dim = (int)dim_of(f, "txt_in.weight", 1);
  c.vec_dim = (int)dim_of(f, "vector_in.in_layer.weight", 1);
  c.head_dim = (int)dim_of(f, "double_blocks.0.img_attn.norm.query_norm.scale", 0);
  if (c.head_dim <= 0 || c.hidden % c.head_dim)
    fail(path + ": hidden size " + std::to_string(c.hidden) + " is not a multiple of the head dim " + std::to_string(c.head_dim));
  c.heads = c.hidden / c.head_dim;
  c.mlp_hidden = (int)dim_of(f, "double_blocks.0.img_mlp.0.weight", 0);
  c.out_channels = (int)dim_of(f, "final_layer.linear.weight", 0);
  c.guidance_embed = f.has("guidance_in.in_layer.weight");
  while (f.has("double_blocks." + std::to_string(c.n_double) + ".img_attn.qkv.weight")) ++c.n_double;
  while (f.has("single_blocks." + std::to_string(c.n_single) + ".linear1.weight")) ++c.n_single;
  rope_axes(c, f);

  // The layout from the config, then every tensor by its name; only qkv may lack a bias.
  FluxModel shapes = flux_model_shapes(c);
  shapes.path = path;
  for (FluxLinear* l : shapes.linears()) {
    l->W = f.read_f32(l->name + ".weight", {l->out, l->in});
    const bool optional_bias = l->name.find("_attn.qkv") != std::string::npos;
    if (!optional_bias || f.has(l->name + ".bias")) l->b = f.read_f32(l->name + ".bias", {l->out});
  }
  const int64_t D = c.head_dim;
  for (size_t i = 0; i < shapes.doubles.size(); ++i)
    for (int s = 0; s < 2; ++s) {
      FluxStreamWeights& w = s == 0 ? shapes.doubles[i].img : shapes.doubles[i].txt;
      std::string n = "double_blocks." + std::to_string(i) + (s == 0 ? ".img_attn.norm." : ".txt_attn.norm.");
      w.q_scale = f.read_f32(n + "query_norm.scale", {D});
      w.k_scale = f.read_f32(n + "key_norm.scale", {D});
    }
  for (size_t i = 0; i < shapes.singles.size(); ++i) {
    std::string n = "single_blocks." + std::to_string(i) + ".norm.";
    shapes.singles[i].q_scale = f.read_f32(n + "query_norm.scale", {D});
    shapes.singles[i].k_scale = f.read_f32(n + "key_norm.scale", {D});
  }
  return shapes;
}

FluxModel flux_model_shapes(const FluxConfig& c) {
  FluxModel m;
  m.cfg = c;
  m.path = "(in memory)";
  auto lin = [](const std::string& name, int in, int out) {
    FluxLinear l;
    l.name = name;
    l.in = in;
    l.out = out;
    return l;
  };
  const int C = c.hidden, M = c.mlp_hidden;
  m.img_in = lin("img_in", c.in_channels, C);
  m.txt_in = lin("txt_in", c.context_dim, C);
  m.time_in0 = lin("time_in.in_layer", 256, C);
  m.time_in1 = lin("time_in.out_layer", C, C);
  m.vector_in0 = lin("vector_in.in_layer", c.vec_dim, C);
  m.vector_in1 = lin("vector_in.out_layer", C, C);
  if (c.guidance_embed) {
    m.guidance_in0 = lin("guidance_in.in_layer", 256, C);
    m.guidance_in1 = lin("guidance_in.out_layer", C, C);
  }
  for (int i = 0; i < c.n_double; ++i) {
    std::string p = "double_blocks." + std::to_string(i) + ".";
    FluxDoubleWeights d;
    for (int s = 0; s < 2; ++s) {
      std::string sp = p + (s == 0 ? "img" : "txt");
      FluxStreamWeights& w = s == 0 ? d.img : d.txt;
      w.mod = lin(sp + "_mod.lin", C, 6 * C);
      w.qkv = lin(sp + "_attn.qkv", C, 3 * C);
      w.proj = lin(sp + "_attn.proj", C, C);
      w.mlp0 = lin(sp + "_mlp.0", C, M);
      w.mlp2 = lin(sp + "_mlp.2", M, C);
    }
    m.doubles.push_back(std::move(d));
  }
  for (int i = 0; i < c.n_single; ++i) {
    std::string p = "single_blocks." + std::to_string(i) + ".";
    FluxSingleWeights s;
    s.mod = lin(p + "modulation.lin", C, 3 * C);
    s.linear1 = lin(p + "linear1", C, 3 * C + M);
    s.linear2 = lin(p + "linear2", C + M, C);
    m.singles.push_back(std::move(s));
  }
  m.final_mod = lin("final_layer.adaLN_modulation.1", C, 2 * C);
  m.final_linear = lin("final_layer.linear", C, c.out_channels);
  return m;
}

std::vector<FluxLinear*> FluxModel::linears() {
  std::vector<FluxLinear*> v = {&img_in, &txt_in, &time_in0, &time_in1, &vector_in0, &vector_in1};
  if (cfg.guidance_embed) v.insert(v.end(), {&guidance_in0, &guidance_in1});
  for (auto& d : doubles)
    for (FluxStreamWeights* s : {&d.img, &d.txt}) v.insert(v.end(), {&s->mod, &s->qkv, &s->proj, &s->mlp0, &s->mlp2});
  for (auto& s : singles) v.insert(v.end(), {&s.mod, &s.linear1, &s.linear2});
  v.insert(v.end(), {&final_mod, &final_linear});
  return v;
}

std::vector<ParamRef> FluxModel::params() {
  std::vector<ParamRef> p;
  auto lin = [&](FluxLinear& l) {
    p.push_back({l.name + ".weight", {l.out, l.in}, &l.W, &l.dW});
    if (!l.b.empty()) p.push_back({l.name + ".bias", {l.out}, &l.b, &l.db});
  };
  auto scale = [&](const std::string& name, std::vector<float>& v, std::vector<float>& g) {
    p.push_back({name, {(int64_t)v.size()}, &v, &g});
  };
  for (FluxLinear* l : {&img_in, &txt_in, &time_in0, &time_in1, &vector_in0, &vector_in1}) lin(*l);
  if (cfg.guidance_embed) {
    lin(guidance_in0);
    lin(guidance_in1);
  }
  for (size_t i = 0; i < doubles.size(); ++i) {
    for (int s = 0; s < 2; ++s) {
      FluxStreamWeights& w = s == 0 ? doubles[i].img : doubles[i].txt;
      std::string n = "double_blocks." + std::to_string(i) + (s == 0 ? ".img_attn.norm." : ".txt_attn.norm.");
      for (FluxLinear* l : {&w.mod, &w.qkv, &w.proj, &w.mlp0, &w.mlp2}) lin(*l);
      scale(n + "query_norm.scale", w.q_scale, w.dq_scale);
      scale(n + "key_norm.scale", w.k_scale, w.dk_scale);
    }
  }
  for (size_t i = 0; i < singles.size(); ++i) {
    FluxSingleWeights& w = singles[i];
    std::string n = "single_blocks." + std::to_string(i) + ".norm.";
    for (FluxLinear* l : {&w.mod, &w.linear1, &w.linear2}) lin(*l);
    scale(n + "query_norm.scale", w.q_scale, w.dq_scale);
    scale(n + "key_norm.scale", w.k_scale, w.dk_scale);
  }
  lin(final_mod);
  lin(final_linear);
  return p;
}

void FluxModel::enable_full_grads() {
  for (ParamRef& p : params()) p.grad->assign(p.value->size(), 0.0f);
}

void FluxModel::zero_full_grads() {
  for (ParamRef& p : params()) std::fill(p.grad->begin(), p.grad->end(), 0.0f);
}

void FluxModel::save(const std::string& path, DType dtype, const std::map<std::string, std::string>& metadata) {
  SafeTensorsWriter w;
  w.metadata = metadata;
  w.metadata["graft.axes_dim"] = nlohmann::json({cfg.axes_dim[0], cfg.axes_dim[1], cfg.axes_dim[2]}).dump();
  for (ParamRef& p : params()) w.add(p.name, dtype, p.shape, p.value->data());
  w.write(path);
}

// ---------------------------------------------------------------- inputs

FluxInputs flux_inputs_load(const SafeTensorsFile& f, const FluxConfig& c) {
  FluxInputs in;
  const TensorInfo& img = f.info("img");
  const TensorInfo& txt = f.info("txt");
  if (img.shape.size() != 3) fail(f.path + ": tensor 'img' must be [B, L_img, " + std::to_string(c.in_channels) + "], got " + shape_str(img.shape));
  if (txt.shape.size() != 3) fail(f.path + ": tensor 'txt' must be [B, L_txt, " + std::to_string(c.context_dim) + "], got " + shape_str(txt.shape));
  in.B = (int)img.shape[0];
  in.L_img = (int)img.shape[1];
  in.L_txt = (int)txt.shape[1];
  const int64_t B = in.B;
  in.img = f.read_f32("img", {B, in.L_img, c.in_channels});
  in.img_ids = f.read_f32("img_ids", {B, in.L_img, 3});
  in.txt = f.read_f32("txt", {B, in.L_txt, c.context_dim});
  in.txt_ids = f.read_f32("txt_ids", {B, in.L_txt, 3});
  in.timesteps = f.read_f32("timesteps", {B});
  in.y = f.read_f32("y", {B, c.vec_dim});
  if (c.guidance_embed) in.guidance = f.read_f32("guidance", {B});
  return in;
}

void flux_img_ids(float* ids, int B, int gh, int gw) {
  for (int b = 0; b < B; ++b)
    for (int r = 0; r < gh; ++r)
      for (int q = 0; q < gw; ++q) {
        float* p = ids + (((size_t)b * gh + r) * gw + q) * 3;
        p[0] = 0.0f;
        p[1] = (float)r;
        p[2] = (float)q;
      }
}

// ---------------------------------------------------------------- activations

struct StreamActs {    // one stream of a double block
  vec x, mean1, rstd1, n1, m1, qkv, q_pre, k_pre, rrms_q, rrms_k, attn, proj, x1, mean2, rstd2, n2, m2, h1, g, h2;
};

struct DoubleActs { StreamActs img, txt; vec Qn, Kn, Qr, Kr, V, probs, attn; };

struct SingleActs {
  vec x, mean, rstd, n, m, lin1, q_pre, k_pre, rrms_q, rrms_k, Qn, Kn, Qr, Kr, V, probs, cat, out;
};

struct FluxActivations {
  int B = 0, Li = 0, Lt = 0;
  vec silu_vec, cos_sin;
  // Embedders: inputs and hidden values of time_in, guidance_in, vector_in (for full training).
  vec temb_t, h_t, hs_t, temb_g, h_g, hs_g, h_y, hs_y, vecsum, img_x, txt_x, y_x;
  bool need_dvec = false;  // this backward needs d(silu(vec)): full training or input gradients
  vec dsilu_vec;
  std::vector<DoubleActs> doubles;
  std::vector<SingleActs> singles;
  vec final_in, final_mod, final_mean, final_rstd, final_n, final_m;
  std::vector<vec> lora_h;  // per adapter: A x of its last forward
};

void flux_attach_lora(FluxModel& m, LoraSet* lora) {
  std::vector<FluxLinear*> lins = m.linears();
  for (FluxLinear* lin : lins) lin->adapters.clear();
  if (!lora) return;
  for (size_t i = 0; i < lora->adapters.size(); ++i) {
    const LoraTarget& t = lora->adapters[i].target;
    FluxLinear* found = nullptr;
    for (FluxLinear* lin : lins)
      if (lin->name == t.base) found = lin;
    if (!found) fail("LoRA module '" + t.module + "' targets layer '" + t.base + "', which this model does not have");
    if (found->in != t.in || t.row_offset + t.rows > found->out)
      fail("LoRA module '" + t.module + "' does not fit layer '" + t.base + "'");
    found->adapters.push_back((int)i);
  }
}

FluxRunner::FluxRunner(FluxModel* m, LoraSet* l) : model(m), lora(l), acts(new FluxActivations) {
  flux_attach_lora(*m, l);
  if (l) acts->lora_h.resize(l->adapters.size());
}

FluxRunner::~FluxRunner() { delete acts; }

// Frozen linear layer plus its adapters.
static void lin_forward(const FluxLinear& l, LoraSet* lora, FluxActivations* a, float* out, const float* inp, int N) {
  linear_forward(out, inp, l.W.data(), l.b.empty() ? nullptr : l.b.data(), N, l.in, l.out);
  for (int ai : l.adapters) {
    const LoraAdapter& ad = lora->adapters[ai];
    vec& h = a->lora_h[ai];
    h.resize((size_t)N * ad.rank);
    lora_forward(out + ad.target.row_offset, l.out, h.data(), inp, lora->A(ai), lora->B(ai), N, l.in, ad.target.rows,
                 ad.rank, ad.scale);
  }
}

static void lin_backward(const FluxLinear& l, LoraSet* lora, FluxActivations* a, float* dinp, const float* dout,
                         const float* inp, int N) {
  float* dW = l.dW.empty() ? nullptr : const_cast<float*>(l.dW.data());
  float* db = l.db.empty() ? nullptr : const_cast<float*>(l.db.data());
  if (dinp || dW) linear_backward(dinp, dW, db, dout, inp, l.W.data(), N, l.in, l.out);
  for (int ai : l.adapters) {
    const LoraAdapter& ad = lora->adapters[ai];
    lora_backward(dinp, lora->dA(ai), lora->dB(ai), dout + ad.target.row_offset, l.out, a->lora_h[ai].data(), inp,
                  lora->A(ai), lora->B(ai), N, l.in, ad.target.rows, ad.rank, ad.scale);
  }
}

static void copy_rows(float* dst, size_t dst_stride, const float* src, size_t src_stride, size_t rows, size_t cols) {
  for (size_t r = 0; r < rows; ++r) std::memcpy(dst + r * dst_stride, src + r * src_stride, cols * sizeof(float));
}

static void zero(vec& v, size_t n) { v.assign(n, 0.0f); }

// ---------------------------------------------------------------- forward

// q/k of one stream from its fused projection (row stride `stride`), RMS-normed per head into the
// joint [B, L, H, D] buffers at sequence offset `off`; v copied likewise.
static void qkv_to_joint(const float* qkv, int stride, int B, int Ls, int L, int off, int C, int H, int D,
                         const vec& q_scale, const vec& k_scale, vec& q_pre, vec& k_pre, vec& rrms_q, vec& rrms_k,
                         vec& Qn, vec& Kn, vec& V) {
  q_pre.resize((size_t)B * Ls * C);
  k_pre.resize((size_t)B * Ls * C);
  rrms_q.resize((size_t)B * Ls * H);
  rrms_k.resize((size_t)B * Ls * H);
  copy_rows(q_pre.data(), C, qkv, stride, (size_t)B * Ls, C);
  copy_rows(k_pre.data(), C, qkv + C, stride, (size_t)B * Ls, C);
  for (int b = 0; b < B; ++b) {
    size_t src = (size_t)b * Ls * C, dst = ((size_t)b * L + off) * C;
    rmsnorm_forward(Qn.data() + dst, rrms_q.data() + (size_t)b * Ls * H, q_pre.data() + src, q_scale.data(), Ls * H, D);
    rmsnorm_forward(Kn.data() + dst, rrms_k.data() + (size_t)b * Ls * H, k_pre.data() + src, k_scale.data(), Ls * H, D);
    copy_rows(V.data() + dst, C, qkv + (size_t)b * Ls * stride + 2 * C, stride, Ls, C);
  }
}

// The inverse of qkv_to_joint for gradients: dQn/dKn/dV (joint) -> dqkv rows of one stream.
static void joint_to_dqkv(float* dqkv, int stride, int B, int Ls, int L, int off, int C, int H, int D,
                          const vec& q_scale, const vec& k_scale, const vec& q_pre, const vec& k_pre,
                          const vec& rrms_q, const vec& rrms_k, const vec& dQn, const vec& dKn, const vec& dV,
                          vec& dq_scale, vec& dk_scale) {
  float* dqs = dq_scale.empty() ? nullptr : dq_scale.data();
  float* dks = dk_scale.empty() ? nullptr : dk_scale.data();
  vec dq((size_t)Ls * C), dk((size_t)Ls * C);
  for (int b = 0; b < B; ++b) {
    size_t src = (size_t)b * Ls * C, j = ((size_t)b * L + off) * C;
    std::fill(dq.begin(), dq.end(), 0.0f);
    std::fill(dk.begin(), dk.end(), 0.0f);
    rmsnorm_backward(dq.data(), dqs, dQn.data() + j, q_pre.data() + src, q_scale.data(),
                     rrms_q.data() + (size_t)b * Ls * H, Ls * H, D);
    rmsnorm_backward(dk.data(), dks, dKn.data() + j, k_pre.data() + src, k_scale.data(),
                     rrms_k.data() + (size_t)b * Ls * H, Ls * H, D);
    float* row = dqkv + (size_t)b * Ls * stride;
    copy_rows(row, stride, dq.data(), C, Ls, C);
    copy_rows(row + C, stride, dk.data(), C, Ls, C);
    copy_rows(row + 2 * C, stride, dV.data() + j, C, Ls, C);
  }
}

// Joint attention over Qn/Kn/V with RoPE; result in out [B, L, C].
static void rope_attention_forward(vec& Qn, vec& Kn, vec& Qr, vec& Kr, vec& V, vec& probs, vec& out,
                                   const vec& cos_sin, int B, int L, int H, int D) {
  size_t n = (size_t)B * L * H * D;
  Qr.resize(n);
  Kr.resize(n);
  out.resize(n);
  probs.resize((size_t)B * H * L * L);
  rope_forward(Qr.data(), Qn.data(), cos_sin.data(), B, L, H, D);
  rope_forward(Kr.data(), Kn.data(), cos_sin.data(), B, L, H, D);
  attention_forward(out.data(), probs.data(), Qr.data(), Kr.data(), V.data(), B, L, H, D);
}

static void rope_attention_backward(vec& dQn, vec& dKn, vec& dV, const vec& dout, const vec& Qr, const vec& Kr,
                                    const vec& V, const vec& probs, const vec& cos_sin, int B, int L, int H, int D) {
  size_t n = (size_t)B * L * H * D;
  vec dQr(n, 0.0f), dKr(n, 0.0f);
  zero(dV, n);
  zero(dQn, n);
  zero(dKn, n);
  attention_backward(dQr.data(), dKr.data(), dV.data(), dout.data(), probs.data(), Qr.data(), Kr.data(), V.data(), B, L, H, D);
  rope_backward(dQn.data(), dQr.data(), cos_sin.data(), B, L, H, D);
  rope_backward(dKn.data(), dKr.data(), cos_sin.data(), B, L, H, D);
}

// First half of a double-block stream: modulation, norm, qkv into the joint buffers.
static void stream_pre_forward(const FluxStreamWeights& w, StreamActs& s, LoraSet* lora, FluxActivations* a,
                               DoubleActs& d, vec& mod, const float* x, int B, int Ls, int L, int off,
                               const FluxConfig& c) {
  const int C = c.hidden, H = c.heads, D = c.head_dim;
  const size_t N = (size_t)B * Ls;
  mod.resize((size_t)B * 6 * C);
  lin_forward(w.mod, lora, a, mod.data(), a->silu_vec.data(), B);
  s.x.assign(x, x + N * C);
  s.mean1.resize(N);
  s.rstd1.resize(N);
  s.n1.resize(N * C);
  s.m1.resize(N * C);
  s.qkv.resize(N * 3 * C);
  layernorm_forward(s.n1.data(), s.mean1.data(), s.rstd1.data(), s.x.data(), (int)N, C);
  modulate_forward(s.m1.data(), s.n1.data(), mod.data(), mod.data() + C, 6 * C, B, Ls, C);
  lin_forward(w.qkv, lora, a, s.qkv.data(), s.m1.data(), (int)N);
  qkv_to_joint(s.qkv.data(), 3 * C, B, Ls, L, off, C, H, D, w.q_scale, w.k_scale, s.q_pre, s.k_pre, s.rrms_q,
               s.rrms_k, d.Qn, d.Kn, d.V);
}

// Second half: attention output projection, gated residuals and MLP. Returns the new stream in x_out.
static void stream_post_forward(const FluxStreamWeights& w, StreamActs& s, LoraSet* lora, FluxActivations* a,
                                const DoubleActs& d, const vec& mod, float* x_out, int B, int Ls, int L, int off,
                                const FluxConfig& c) {
  const int C = c.hidden, M = c.mlp_hidden;
  const size_t N = (size_t)B * Ls;
  s.attn.resize(N * C);
  for (int b = 0; b < B; ++b)
    copy_rows(s.attn.data() + (size_t)b * Ls * C, C, d.attn.data() + ((size_t)b * L + off) * C, C, Ls, C);
  s.proj.resize(N * C);
  lin_forward(w.proj, lora, a, s.proj.data(), s.attn.data(), (int)N);
  s.x1 = s.x;
  gate_residual_forward(s.x1.data(), s.proj.data(), mod.data() + 2 * C, 6 * C, B, Ls, C);
  s.mean2.resize(N);
  s.rstd2.resize(N);
  s.n2.resize(N * C);
  s.m2.resize(N * C);
  layernorm_forward(s.n2.data(), s.mean2.data(), s.rstd2.data(), s.x1.data(), (int)N, C);
  modulate_forward(s.m2.data(), s.n2.data(), mod.data() + 3 * C, mod.data() + 4 * C, 6 * C, B, Ls, C);
  s.h1.resize(N * M);
  s.g.resize(N * M);
  s.h2.resize(N * C);
  lin_forward(w.mlp0, lora, a, s.h1.data(), s.m2.data(), (int)N);
  gelu_forward(s.g.data(), s.h1.data(), (int)(N * M));
  lin_forward(w.mlp2, lora, a, s.h2.data(), s.g.data(), (int)N);
  std::memcpy(x_out, s.x1.data(), N * C * sizeof(float));
  gate_residual_forward(x_out, s.h2.data(), mod.data() + 5 * C, 6 * C, B, Ls, C);
}

struct ModBuffers { vec img, txt; };

void FluxRunner::forward(const FluxInputs& in, std::vector<float>& out) {
  FluxModel& m = *model;
  const FluxConfig& c = m.cfg;
  FluxActivations* a = acts;
  const int B = in.B, Li = in.L_img, Lt = in.L_txt, L = Li + Lt;
  const int C = c.hidden, H = c.heads, D = c.head_dim, M = c.mlp_hidden;
  a->B = B;
  a->Li = Li;
  a->Lt = Lt;

  // Conditioning vector: time (+ guidance) + pooled text, then SiLU once for every modulation.
  const size_t BC = (size_t)B * C;
  vec tmp(BC);
  vec& v = a->vecsum;
  v.resize(BC);
  for (vec* x : {&a->h_t, &a->hs_t, &a->h_g, &a->hs_g, &a->h_y, &a->hs_y}) x->resize(BC);
  a->temb_t.resize((size_t)B * 256);
  timestep_embedding_forward(a->temb_t.data(), in.timesteps.data(), B, 256, 1000.0f, 10000.0f);
  lin_forward(m.time_in0, lora, a, a->h_t.data(), a->temb_t.data(), B);
  silu_forward(a->hs_t.data(), a->h_t.data(), B * C);
  lin_forward(m.time_in1, lora, a, v.data(), a->hs_t.data(), B);
  if (c.guidance_embed) {
    if ((int)in.guidance.size() != B) fail("this model has guidance_in: a guidance value per batch item is needed");
    a->temb_g.resize((size_t)B * 256);
    timestep_embedding_forward(a->temb_g.data(), in.guidance.data(), B, 256, 1000.0f, 10000.0f);
    lin_forward(m.guidance_in0, lora, a, a->h_g.data(), a->temb_g.data(), B);
    silu_forward(a->hs_g.data(), a->h_g.data(), B * C);
    lin_forward(m.guidance_in1, lora, a, tmp.data(), a->hs_g.data(), B);
    for (size_t i = 0; i < BC; ++i) v[i] += tmp[i];
  }
  a->y_x = in.y;
  lin_forward(m.vector_in0, lora, a, a->h_y.data(), in.y.data(), B);
  silu_forward(a->hs_y.data(), a->h_y.data(), B * C);
  lin_forward(m.vector_in1, lora, a, tmp.data(), a->hs_y.data(), B);
  for (size_t i = 0; i < BC; ++i) v[i] += tmp[i];
  a->silu_vec.resize(BC);
  silu_forward(a->silu_vec.data(), v.data(), B * C);

  // RoPE table over the joint sequence [txt; img].
  vec ids((size_t)B * L * 3);
  for (int b = 0; b < B; ++b) {
    std::memcpy(&ids[(size_t)b * L * 3], &in.txt_ids[(size_t)b * Lt * 3], (size_t)Lt * 3 * sizeof(float));
    std::memcpy(&ids[((size_t)b * L + Lt) * 3], &in.img_ids[(size_t)b * Li * 3], (size_t)Li * 3 * sizeof(float));
  }
  a->cos_sin.resize((size_t)B * L * D);
  rope_table(a->cos_sin.data(), ids.data(), B * L, c.axes_dim, 3, c.theta);

  vec img((size_t)B * Li * C), txt((size_t)B * Lt * C);
  a->img_x = in.img;
  a->txt_x = in.txt;
  lin_forward(m.img_in, lora, a, img.data(), in.img.data(), B * Li);
  lin_forward(m.txt_in, lora, a, txt.data(), in.txt.data(), B * Lt);

  a->doubles.resize(m.doubles.size());
  ModBuffers mods;
  for (size_t i = 0; i < m.doubles.size(); ++i) {
    const FluxDoubleWeights& w = m.doubles[i];
    DoubleActs& d = a->doubles[i];
    size_t n = (size_t)B * L * C;
    d.Qn.resize(n);
    d.Kn.resize(n);
    d.V.resize(n);
    stream_pre_forward(w.txt, d.txt, lora, a, d, mods.txt, txt.data(), B, Lt, L, 0, c);
    stream_pre_forward(w.img, d.img, lora, a, d, mods.img, img.data(), B, Li, L, Lt, c);
    rope_attention_forward(d.Qn, d.Kn, d.Qr, d.Kr, d.V, d.probs, d.attn, a->cos_sin, B, L, H, D);
    stream_post_forward(w.txt, d.txt, lora, a, d, mods.txt, txt.data(), B, Lt, L, 0, c);
    stream_post_forward(w.img, d.img, lora, a, d, mods.img, img.data(), B, Li, L, Lt, c);
  }

  vec x((size_t)B * L * C);
  for (int b = 0; b < B; ++b) {
    std::memcpy(&x[(size_t)b * L * C], &txt[(size_t)b * Lt * C], (size_t)Lt * C * sizeof(float));
    std::memcpy(&x[((size_t)b * L + Lt) * C], &img[(size_t)b * Li * C], (size_t)Li * C * sizeof(float));
  }
  a->singles.resize(m.singles.size());
  vec mod;
  for (size_t i = 0; i < m.singles.size(); ++i) {
    const FluxSingleWeights& w = m.singles[i];
    SingleActs& s = a->singles[i];
    const size_t N = (size_t)B * L;
    mod.resize((size_t)B * 3 * C);
    lin_forward(w.mod, lora, a, mod.data(), a->silu_vec.data(), B);
    s.x = x;
    s.mean.resize(N);
    s.rstd.resize(N);
    s.n.resize(N * C);
    s.m.resize(N * C);
    s.lin1.resize(N * (3 * C + M));
    layernorm_forward(s.n.data(), s.mean.data(), s.rstd.data(), s.x.data(), (int)N, C);
    modulate_forward(s.m.data(), s.n.data(), mod.data(), mod.data() + C, 3 * C, B, L, C);
    lin_forward(w.linear1, lora, a, s.lin1.data(), s.m.data(), (int)N);
    s.Qn.resize(N * C);
    s.Kn.resize(N * C);
    s.V.resize(N * C);
    qkv_to_joint(s.lin1.data(), 3 * C + M, B, L, L, 0, C, H, D, w.q_scale, w.k_scale, s.q_pre, s.k_pre, s.rrms_q,
                 s.rrms_k, s.Qn, s.Kn, s.V);
    vec attn;
    rope_attention_forward(s.Qn, s.Kn, s.Qr, s.Kr, s.V, s.probs, attn, a->cos_sin, B, L, H, D);
    s.cat.resize(N * (C + M));
    copy_rows(s.cat.data(), C + M, attn.data(), C, N, C);
    for (size_t r = 0; r < N; ++r) gelu_forward(&s.cat[r * (C + M) + C], &s.lin1[r * (3 * C + M) + 3 * C], M);
    s.out.resize(N * C);
    lin_forward(w.linear2, lora, a, s.out.data(), s.cat.data(), (int)N);
    gate_residual_forward(x.data(), s.out.data(), mod.data() + 2 * C, 3 * C, B, L, C);
  }

  // Final layer on the image tokens: shift comes FIRST in FLUX's LastLayer.
  const size_t Ni = (size_t)B * Li;
  a->final_in.resize(Ni * C);
  for (int b = 0; b < B; ++b)
    std::memcpy(&a->final_in[(size_t)b * Li * C], &x[((size_t)b * L + Lt) * C], (size_t)Li * C * sizeof(float));
  a->final_mod.resize((size_t)B * 2 * C);
  lin_forward(m.final_mod, lora, a, a->final_mod.data(), a->silu_vec.data(), B);
  a->final_mean.resize(Ni);
  a->final_rstd.resize(Ni);
  a->final_n.resize(Ni * C);
  a->final_m.resize(Ni * C);
  layernorm_forward(a->final_n.data(), a->final_mean.data(), a->final_rstd.data(), a->final_in.data(), (int)Ni, C);
  modulate_forward(a->final_m.data(), a->final_n.data(), a->final_mod.data(), a->final_mod.data() + C, 2 * C, B, Li, C);
  out.resize(Ni * c.out_channels);
  lin_forward(m.final_linear, lora, a, out.data(), a->final_m.data(), (int)Ni);
}

// ---------------------------------------------------------------- backward

// Gradient of a modulation layer's output [B, k*C]: to its adapters and, when this backward needs
// it (full training, input gradients), on to silu(vec).
static void mod_backward(const FluxLinear& l, LoraSet* lora, FluxActivations* a, const vec& dmod, int B) {
  if (!l.adapters.empty() || a->need_dvec || !l.dW.empty())
    lin_backward(l, lora, a, a->need_dvec ? a->dsilu_vec.data() : nullptr, dmod.data(), a->silu_vec.data(), B);
}

// Backward of stream_post_forward: dx (in: d of the stream output; out: d of x1 minus the
// part through norm2 is added) and the gradient of the joint attention output.
static void stream_post_backward(const FluxStreamWeights& w, StreamActs& s, LoraSet* lora, FluxActivations* a,
                                 const vec& mod, vec& dmod, vec& dx, vec& dattn_joint, int B, int Ls, int L, int off,
                                 const FluxConfig& c) {
  const int C = c.hidden, M = c.mlp_hidden;
  const size_t N = (size_t)B * Ls;
  // x2 = x1 + gate2 * h2
  vec dh2(N * C, 0.0f), dg(N * M, 0.0f), dh1(N * M, 0.0f), dm2(N * C, 0.0f), dn2(N * C, 0.0f);
  gate_residual_backward(dh2.data(), dmod.data() + 5 * C, dx.data(), s.h2.data(), mod.data() + 5 * C, 6 * C, B, Ls, C);
  lin_backward(w.mlp2, lora, a, dg.data(), dh2.data(), s.g.data(), (int)N);
  gelu_backward(dh1.data(), dg.data(), s.h1.data(), (int)(N * M));
  lin_backward(w.mlp0, lora, a, dm2.data(), dh1.data(), s.m2.data(), (int)N);
  modulate_backward(dn2.data(), dmod.data() + 3 * C, dmod.data() + 4 * C, dm2.data(), s.n2.data(), mod.data() + 4 * C,
                    6 * C, B, Ls, C);
  layernorm_backward(dx.data(), dn2.data(), s.x1.data(), s.mean2.data(), s.rstd2.data(), (int)N, C);  // dx is now dx1
  // x1 = x + gate1 * proj
  vec dproj(N * C, 0.0f), dattn(N * C, 0.0f);
  gate_residual_backward(dproj.data(), dmod.data() + 2 * C, dx.data(), s.proj.data(), mod.data() + 2 * C, 6 * C, B, Ls, C);
  lin_backward(w.proj, lora, a, dattn.data(), dproj.data(), s.attn.data(), (int)N);
  for (int b = 0; b < B; ++b)
    copy_rows(dattn_joint.data() + ((size_t)b * L + off) * C, C, dattn.data() + (size_t)b * Ls * C, C, Ls, C);
}

static void stream_pre_backward(const FluxStreamWeights& w, StreamActs& s, LoraSet* lora, FluxActivations* a,
                                const DoubleActs& d, const vec& mod, vec& dmod, vec& dx, const vec& dQn,
                                const vec& dKn, const vec& dV, int B, int Ls, int L, int off, const FluxConfig& c) {
  const int C = c.hidden, H = c.heads, D = c.head_dim;
  const size_t N = (size_t)B * Ls;
  vec dqkv(N * 3 * C, 0.0f), dm1(N * C, 0.0f), dn1(N * C, 0.0f);
  joint_to_dqkv(dqkv.data(), 3 * C, B, Ls, L, off, C, H, D, w.q_scale, w.k_scale, s.q_pre, s.k_pre, s.rrms_q, s.rrms_k,
                dQn, dKn, dV, const_cast<vec&>(w.dq_scale), const_cast<vec&>(w.dk_scale));
  lin_backward(w.qkv, lora, a, dm1.data(), dqkv.data(), s.m1.data(), (int)N);
  modulate_backward(dn1.data(), dmod.data(), dmod.data() + C, dm1.data(), s.n1.data(), mod.data() + C, 6 * C, B, Ls, C);
  layernorm_backward(dx.data(), dn1.data(), s.x.data(), s.mean1.data(), s.rstd1.data(), (int)N, C);
  mod_backward(w.mod, lora, a, dmod, B);
}

void FluxRunner::backward(const std::vector<float>& dout, FluxInputGrads* dinputs) {
  FluxModel& m = *model;
  const FluxConfig& c = m.cfg;
  FluxActivations* a = acts;
  const int B = a->B, Li = a->Li, Lt = a->Lt, L = Li + Lt;
  const int C = c.hidden, H = c.heads, D = c.head_dim, M = c.mlp_hidden;
  const size_t Ni = (size_t)B * Li;
  const bool full = m.full_grads();
  a->need_dvec = full || dinputs;
  if (a->need_dvec) a->dsilu_vec.assign((size_t)B * C, 0.0f);

  // Final layer.
  vec dfm(Ni * C, 0.0f), dfn(Ni * C, 0.0f), dfmod((size_t)B * 2 * C, 0.0f);
  lin_backward(m.final_linear, lora, a, dfm.data(), dout.data(), a->final_m.data(), (int)Ni);
  modulate_backward(dfn.data(), dfmod.data(), dfmod.data() + C, dfm.data(), a->final_n.data(), a->final_mod.data() + C,
                    2 * C, B, Li, C);
  mod_backward(m.final_mod, lora, a, dfmod, B);
  vec dx((size_t)B * L * C, 0.0f);
  vec dfin(Ni * C, 0.0f);
  layernorm_backward(dfin.data(), dfn.data(), a->final_in.data(), a->final_mean.data(), a->final_rstd.data(), (int)Ni, C);
  for (int b = 0; b < B; ++b)
    std::memcpy(&dx[((size_t)b * L + Lt) * C], &dfin[(size_t)b * Li * C], (size_t)Li * C * sizeof(float));

  // Single blocks, last first. dx holds d(block output) and becomes d(block input).
  vec mod, dmod;
  for (int i = (int)m.singles.size() - 1; i >= 0; --i) {
    const FluxSingleWeights& w = m.singles[i];
    SingleActs& s = a->singles[i];
    const size_t N = (size_t)B * L;
    mod.resize((size_t)B * 3 * C);  // recomputed: cheaper than keeping it per block
    linear_forward(mod.data(), a->silu_vec.data(), w.mod.W.data(), w.mod.b.data(), B, C, 3 * C);
    for (int ai : w.mod.adapters) {
      const LoraAdapter& ad = lora->adapters[ai];
      vec hh((size_t)B * ad.rank);
      lora_forward(mod.data() + ad.target.row_offset, 3 * C, hh.data(), a->silu_vec.data(), lora->A(ai), lora->B(ai), B,
                   C, ad.target.rows, ad.rank, ad.scale);
    }
    zero(dmod, (size_t)B * 3 * C);
    vec dout2(N * C, 0.0f), dcat(N * (C + M), 0.0f);
    gate_residual_backward(dout2.data(), dmod.data() + 2 * C, dx.data(), s.out.data(), mod.data() + 2 * C, 3 * C, B, L, C);
    lin_backward(w.linear2, lora, a, dcat.data(), dout2.data(), s.cat.data(), (int)N);
    vec dlin1(N * (3 * C + M), 0.0f), dattn(N * C);
    for (size_t r = 0; r < N; ++r)
      gelu_backward(&dlin1[r * (3 * C + M) + 3 * C], &dcat[r * (C + M) + C], &s.lin1[r * (3 * C + M) + 3 * C], M);
    copy_rows(dattn.data(), C, dcat.data(), C + M, N, C);
    vec dQn, dKn, dV;
    rope_attention_backward(dQn, dKn, dV, dattn, s.Qr, s.Kr, s.V, s.probs, a->cos_sin, B, L, H, D);
    joint_to_dqkv(dlin1.data(), 3 * C + M, B, L, L, 0, C, H, D, w.q_scale, w.k_scale, s.q_pre, s.k_pre, s.rrms_q,
                  s.rrms_k, dQn, dKn, dV, const_cast<vec&>(w.dq_scale), const_cast<vec&>(w.dk_scale));
    vec dm(N * C, 0.0f), dn(N * C, 0.0f);
    lin_backward(w.linear1, lora, a, dm.data(), dlin1.data(), s.m.data(), (int)N);
    modulate_backward(dn.data(), dmod.data(), dmod.data() + C, dm.data(), s.n.data(), mod.data() + C, 3 * C, B, L, C);
    layernorm_backward(dx.data(), dn.data(), s.x.data(), s.mean.data(), s.rstd.data(), (int)N, C);
    mod_backward(w.mod, lora, a, dmod, B);
  }

  // Split the joint gradient back into the two streams.
  vec dimg(Ni * C), dtxt((size_t)B * Lt * C);
  for (int b = 0; b < B; ++b) {
    std::memcpy(&dtxt[(size_t)b * Lt * C], &dx[(size_t)b * L * C], (size_t)Lt * C * sizeof(float));
    std::memcpy(&dimg[(size_t)b * Li * C], &dx[((size_t)b * L + Lt) * C], (size_t)Li * C * sizeof(float));
  }

  ModBuffers mods, dmods;
  for (int i = (int)m.doubles.size() - 1; i >= 0; --i) {
    const FluxDoubleWeights& w = m.doubles[i];
    DoubleActs& d = a->doubles[i];
    for (int sidx = 0; sidx < 2; ++sidx) {  // recompute modulations (cheap, [B, 6C])
      const FluxLinear& l = sidx == 0 ? w.img.mod : w.txt.mod;
      vec& mv = sidx == 0 ? mods.img : mods.txt;
      mv.resize((size_t)B * 6 * C);
      linear_forward(mv.data(), a->silu_vec.data(), l.W.data(), l.b.data(), B, C, 6 * C);
      for (int ai : l.adapters) {
        const LoraAdapter& ad = lora->adapters[ai];
        vec hh((size_t)B * ad.rank);
        lora_forward(mv.data() + ad.target.row_offset, 6 * C, hh.data(), a->silu_vec.data(), lora->A(ai), lora->B(ai),
                     B, C, ad.target.rows, ad.rank, ad.scale);
      }
    }
    zero(dmods.img, (size_t)B * 6 * C);
    zero(dmods.txt, (size_t)B * 6 * C);
    vec dattn_joint((size_t)B * L * C, 0.0f);
    stream_post_backward(w.txt, d.txt, lora, a, mods.txt, dmods.txt, dtxt, dattn_joint, B, Lt, L, 0, c);
    stream_post_backward(w.img, d.img, lora, a, mods.img, dmods.img, dimg, dattn_joint, B, Li, L, Lt, c);
    vec dQn, dKn, dV;
    rope_attention_backward(dQn, dKn, dV, dattn_joint, d.Qr, d.Kr, d.V, d.probs, a->cos_sin, B, L, H, D);
    stream_pre_backward(w.txt, d.txt, lora, a, d, mods.txt, dmods.txt, dtxt, dQn, dKn, dV, B, Lt, L, 0, c);
    stream_pre_backward(w.img, d.img, lora, a, d, mods.img, dmods.img, dimg, dQn, dKn, dV, B, Li, L, Lt, c);
  }
  if (!full && !dinputs) return;  // img_in, txt_in and the embedders carry no adapters

  lin_backward(m.img_in, lora, a, nullptr, dimg.data(), a->img_x.data(), (int)Ni);
  if (dinputs) dinputs->txt.assign((size_t)B * Lt * c.context_dim, 0.0f);
  lin_backward(m.txt_in, lora, a, dinputs ? dinputs->txt.data() : nullptr, dtxt.data(), a->txt_x.data(), B * Lt);
  // vec = time_in(temb(t)) [+ guidance_in(temb(g))] + vector_in(y); every modulation read silu(vec).
  const size_t BC = (size_t)B * C;
  vec dv(BC, 0.0f), dh(BC), dhs(BC);
  silu_backward(dv.data(), a->dsilu_vec.data(), a->vecsum.data(), B * C);
  auto mlp_embedder_backward = [&](const FluxLinear& l0, const FluxLinear& l1, const vec& x, const vec& h,
                                   const vec& hs, float* dx) {
    std::fill(dhs.begin(), dhs.end(), 0.0f);
    std::fill(dh.begin(), dh.end(), 0.0f);
    lin_backward(l1, lora, a, dhs.data(), dv.data(), hs.data(), B);
    silu_backward(dh.data(), dhs.data(), h.data(), B * C);
    lin_backward(l0, lora, a, dx, dh.data(), x.data(), B);
  };
  mlp_embedder_backward(m.time_in0, m.time_in1, a->temb_t, a->h_t, a->hs_t, nullptr);
  if (c.guidance_embed) mlp_embedder_backward(m.guidance_in0, m.guidance_in1, a->temb_g, a->h_g, a->hs_g, nullptr);
  if (dinputs) dinputs->y.assign((size_t)B * c.vec_dim, 0.0f);
  mlp_embedder_backward(m.vector_in0, m.vector_in1, a->y_x, a->h_y, a->hs_y, dinputs ? dinputs->y.data() : nullptr);
}

}  // namespace graft

namespace graft {

std::vector<LoraTarget> flux_lora_targets(const FluxConfig& c, bool include_modulation) {
  const int C = c.hidden, M = c.mlp_hidden;
  std::vector<LoraTarget> t;
  auto add = [&](std::string module, std::string base, int off, int rows, int in) {
    t.push_back({std::move(module), std::move(base), off, rows, in});
  };
  for (int i = 0; i < c.n_double; ++i) {
    std::string d = "transformer_blocks." + std::to_string(i) + ".";
    std::string b = "double_blocks." + std::to_string(i) + ".";
    add(d + "attn.to_q", b + "img_attn.qkv", 0, C, C);
    add(d + "attn.to_k", b + "img_attn.qkv", C, C, C);
    add(d + "attn.to_v", b + "img_attn.qkv", 2 * C, C, C);
    add(d + "attn.to_out.0", b + "img_attn.proj", 0, C, C);
    add(d + "attn.add_q_proj", b + "txt_attn.qkv", 0, C, C);
    add(d + "attn.add_k_proj", b + "txt_attn.qkv", C, C, C);
    add(d + "attn.add_v_proj", b + "txt_attn.qkv", 2 * C, C, C);
    add(d + "attn.to_add_out", b + "txt_attn.proj", 0, C, C);
    add(d + "ff.net.0.proj", b + "img_mlp.0", 0, M, C);
    add(d + "ff.net.2", b + "img_mlp.2", 0, C, M);
    add(d + "ff_context.net.0.proj", b + "txt_mlp.0", 0, M, C);
    add(d + "ff_context.net.2", b + "txt_mlp.2", 0, C, M);
    if (include_modulation) {
      add(d + "norm1.linear", b + "img_mod.lin", 0, 6 * C, C);
      add(d + "norm1_context.linear", b + "txt_mod.lin", 0, 6 * C, C);
    }
  }
  for (int i = 0; i < c.n_single; ++i) {
    std::string d = "single_transformer_blocks." + std::to_string(i) + ".";
    std::string b = "single_blocks." + std::to_string(i) + ".";
    add(d + "attn.to_q", b + "linear1", 0, C, C);
    add(d + "attn.to_k", b + "linear1", C, C, C);
    add(d + "attn.to_v", b + "linear1", 2 * C, C, C);
    add(d + "proj_mlp", b + "linear1", 3 * C, M, C);
    add(d + "proj_out", b + "linear2", 0, C, C + M);
    if (include_modulation) add(d + "norm.linear", b + "modulation.lin", 0, 3 * C, C);
  }
  return t;
}

}  // namespace graft
