#include "vae.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common.h"
#include "ops.h"
#include "ops_image.h"
#include "rng.h"

namespace graft {

using vec = std::vector<float>;

VaeConfig flux_vae_config() { return VaeConfig(); }

// ---------------------------------------------------------------- layout

namespace {

// Registers tensors in the order given and hands out their offsets; the one place that knows the
// BFL names, so create(), load() and save() cannot disagree.
struct Layout {
  VaeModel& m;
  size_t next = 0;

  size_t add(const std::string& name, std::vector<int64_t> shape) {
    VaeTensor t;
    t.name = name;
    t.shape = std::move(shape);
    t.offset = next;
    t.size = (size_t)numel(t.shape);
    next += t.size;
    m.tensors.push_back(std::move(t));
    return m.tensors.back().offset;
  }
  VaeConv conv(const std::string& name, int in, int out, int k) {
    VaeConv c;
    c.in = in, c.out = out, c.k = k;
    c.w = add(name + ".weight", {out, in, k, k});
    c.b = add(name + ".bias", {out});
    return c;
  }
  VaeNorm norm(const std::string& name, int c) {
    VaeNorm n;
    n.c = c;
    n.gamma = add(name + ".weight", {c});
    n.beta = add(name + ".bias", {c});
    return n;
  }
  VaeResnet resnet(const std::string& p, int in, int out) {
    VaeResnet r;
    r.in = in, r.out = out;
    r.norm1 = norm(p + ".norm1", in);
    r.conv1 = conv(p + ".conv1", in, out, 3);
    r.norm2 = norm(p + ".norm2", out);
    r.conv2 = conv(p + ".conv2", out, out, 3);
    if (in != out) r.nin_shortcut = conv(p + ".nin_shortcut", in, out, 1);
    return r;
  }
  VaeAttn attn(const std::string& p, int c) {
    VaeAttn a;
    a.c = c;
    a.norm = norm(p + ".norm", c);
    a.q = conv(p + ".q", c, c, 1);
    a.k = conv(p + ".k", c, c, 1);
    a.v = conv(p + ".v", c, c, 1);
    a.proj_out = conv(p + ".proj_out", c, c, 1);
    return a;
  }
};

void check_config(const VaeConfig& c, const std::string& where) {
  if (c.levels() < 1 || c.ch <= 0 || c.num_res_blocks < 1 || c.z_channels <= 0 || c.in_channels <= 0 ||
      c.out_channels <= 0)
    fail(where + ": invalid autoencoder config (ch, ch_mult, num_res_blocks, z_channels and channels must be positive)");
  if (!(c.scale_factor != 0.0f) || !std::isfinite(c.scale_factor) || !std::isfinite(c.shift_factor))
    fail(where + ": scale_factor must be finite and non-zero, shift_factor finite");
  for (int m : c.ch_mult) {
    int channels = c.ch * m;
    if (m <= 0) fail(where + ": ch_mult entries must be positive");
    if (c.groups <= 0 || channels % c.groups != 0)
      fail(where + ": GroupNorm groups " + std::to_string(c.groups) + " (metadata graft.groups, default 32) do not divide " +
           std::to_string(channels) + " channels; set graft.groups to a divisor of every ch * ch_mult");
  }
}

}  // namespace

VaeModel VaeModel::create(const VaeConfig& cfg) {
  check_config(cfg, "autoencoder");
  VaeModel m;
  m.cfg = cfg;
  Layout L{m};
  const int nl = cfg.levels(), ch = cfg.ch;

  VaeEncoder& e = m.enc;
  e.conv_in = L.conv("encoder.conv_in", cfg.in_channels, ch, 3);
  int block_in = ch;
  e.down.resize(nl);
  for (int i = 0; i < nl; ++i) {
    int block_out = ch * cfg.ch_mult[i];
    std::string p = "encoder.down." + std::to_string(i);
    for (int j = 0; j < cfg.num_res_blocks; ++j) {
      e.down[i].push_back(L.resnet(p + ".block." + std::to_string(j), block_in, block_out));
      block_in = block_out;
    }
    if (i != nl - 1) e.downsample.push_back(L.conv(p + ".downsample.conv", block_in, block_in, 3));
  }
  e.mid_block_1 = L.resnet("encoder.mid.block_1", block_in, block_in);
  e.mid_attn_1 = L.attn("encoder.mid.attn_1", block_in);
  e.mid_block_2 = L.resnet("encoder.mid.block_2", block_in, block_in);
  e.norm_out = L.norm("encoder.norm_out", block_in);
  e.conv_out = L.conv("encoder.conv_out", block_in, 2 * cfg.z_channels, 3);

  VaeDecoder& d = m.dec;
  block_in = ch * cfg.ch_mult[nl - 1];
  d.conv_in = L.conv("decoder.conv_in", cfg.z_channels, block_in, 3);
  d.mid_block_1 = L.resnet("decoder.mid.block_1", block_in, block_in);
  d.mid_attn_1 = L.attn("decoder.mid.attn_1", block_in);
  d.mid_block_2 = L.resnet("decoder.mid.block_2", block_in, block_in);
  d.up.resize(nl);
  d.upsample.resize(nl);
  for (int i = nl - 1; i >= 0; --i) {  // in the order they run; each keeps its BFL index
    int block_out = ch * cfg.ch_mult[i];
    std::string p = "decoder.up." + std::to_string(i);
    for (int j = 0; j <= cfg.num_res_blocks; ++j) {
      d.up[i].push_back(L.resnet(p + ".block." + std::to_string(j), block_in, block_out));
      block_in = block_out;
    }
    if (i != 0) d.upsample[i] = L.conv(p + ".upsample.conv", block_in, block_in, 3);
  }
  d.norm_out = L.norm("decoder.norm_out", block_in);
  d.conv_out = L.conv("decoder.conv_out", block_in, cfg.out_channels, 3);

  m.params.assign(L.next, 0.0f);
  m.grads.assign(L.next, 0.0f);
  return m;
}

const VaeTensor& VaeModel::tensor(const std::string& name) const {
  for (const VaeTensor& t : tensors)
    if (t.name == name) return t;
  fail("autoencoder has no tensor '" + name + "'");
}

void VaeModel::zero_grad() { std::fill(grads.begin(), grads.end(), 0.0f); }

// ---------------------------------------------------------------- loading and saving

static int64_t dim0(const SafeTensorsFile& f, const std::string& name, size_t rank) {
  const TensorInfo& t = f.info(name);  // throws naming the file and the missing tensor
  if (t.shape.size() != rank)
    fail(f.path + ": tensor '" + name + "' has shape " + shape_str(t.shape) + ", expected " + std::to_string(rank) +
         " dimensions");
  return t.shape[0];
}

static float meta_float(const SafeTensorsFile& f, const char* key, float fallback) {
  auto it = f.metadata.find(key);
  if (it == f.metadata.end()) return fallback;
  char* end = nullptr;
  float v = std::strtof(it->second.c_str(), &end);
  if (it->second.empty() || *end != '\0' || !std::isfinite(v))
    fail(f.path + ": metadata " + key + " must be a number, got '" + it->second + "'");
  return v;
}

VaeModel VaeModel::load(const std::string& path) {
  SafeTensorsFile f = SafeTensorsFile::open(path);
  if (!f.has("encoder.conv_in.weight") || !f.has("decoder.conv_in.weight") ||
      !f.has("encoder.down.0.block.0.conv1.weight")) {
    std::string hint = f.has("encoder.down_blocks.0.resnets.0.conv1.weight")
                           ? " (this is the diffusers AutoencoderKL layout; the BFL ae.safetensors layout is needed)"
                           : "";
    const char* missing = !f.has("encoder.conv_in.weight")   ? "encoder.conv_in.weight"
                          : !f.has("decoder.conv_in.weight") ? "decoder.conv_in.weight"
                                                             : "encoder.down.0.block.0.conv1.weight";
    fail(path + ": not a FLUX autoencoder in BFL layout: tensor '" + missing + "' is missing" + hint);
  }
  VaeConfig c;
  c.ch = (int)dim0(f, "encoder.conv_in.weight", 4);
  c.in_channels = (int)f.info("encoder.conv_in.weight").shape[1];
  c.ch_mult.clear();
  for (int i = 0; f.has("encoder.down." + std::to_string(i) + ".block.0.conv1.weight"); ++i) {
    std::string name = "encoder.down." + std::to_string(i) + ".block.0.conv1.weight";
    int64_t out = dim0(f, name, 4);
    if (c.ch <= 0 || out % c.ch != 0)
      fail(path + ": tensor '" + name + "' has " + std::to_string(out) + " output channels, not a multiple of ch " +
           std::to_string(c.ch));
    c.ch_mult.push_back((int)(out / c.ch));
  }
  c.num_res_blocks = 0;
  while (f.has("encoder.down.0.block." + std::to_string(c.num_res_blocks) + ".conv1.weight")) ++c.num_res_blocks;
  int64_t moments = dim0(f, "encoder.conv_out.weight", 4);
  if (moments % 2) fail(path + ": tensor 'encoder.conv_out.weight' has an odd number of outputs (" +
                        std::to_string(moments) + "); expected 2 * z_channels (mean and logvar)");
  c.z_channels = (int)(moments / 2);
  c.out_channels = (int)dim0(f, "decoder.conv_out.weight", 4);
  c.groups = 32;
  if (f.metadata.count("graft.groups")) {
    const std::string& s = f.metadata.at("graft.groups");
    char* end = nullptr;
    long g = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || g <= 0 || g > 1 << 20)
      fail(path + ": metadata graft.groups must be a positive integer, got '" + s + "'");
    c.groups = (int)g;
  }
  c.scale_factor = meta_float(f, "graft.scale_factor", c.scale_factor);
  c.shift_factor = meta_float(f, "graft.shift_factor", c.shift_factor);
  check_config(c, path);

  VaeModel m = VaeModel::create(c);
  m.path = path;
  for (const VaeTensor& t : m.tensors) {
    std::vector<float> v = f.read_f32(t.name, t.shape);  // throws naming file, tensor and shapes
    std::memcpy(m.params.data() + t.offset, v.data(), t.size * sizeof(float));
  }
  return m;
}

static std::string float_str(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void VaeModel::save(const std::string& out_path, DType dtype) const {
  SafeTensorsWriter w;
  for (const VaeTensor& t : tensors) w.add(t.name, dtype, t.shape, params.data() + t.offset);
  w.metadata["graft.groups"] = std::to_string(cfg.groups);
  w.metadata["graft.scale_factor"] = float_str(cfg.scale_factor);
  w.metadata["graft.shift_factor"] = float_str(cfg.shift_factor);
  w.write(out_path);
}

void vae_init_random(VaeModel& m, uint64_t seed) {
  Rng rng(seed, 0xAE, 0);
  for (const VaeTensor& t : m.tensors) {
    float* p = m.params.data() + t.offset;
    bool is_bias = t.name.size() > 5 && t.name.compare(t.name.size() - 5, 5, ".bias") == 0;
    if (t.shape.size() == 4) {  // conv weight [out, in, k, k]
      float std = 1.0f / std::sqrt((float)(t.shape[1] * t.shape[2] * t.shape[3]));
      for (size_t i = 0; i < t.size; ++i) p[i] = std * rng.normal();
    } else if (t.name.find("norm") != std::string::npos) {  // GroupNorm weight / bias
      for (size_t i = 0; i < t.size; ++i) p[i] = (is_bias ? 0.0f : 1.0f) + 0.1f * rng.normal();
    } else {  // conv bias
      for (size_t i = 0; i < t.size; ++i) p[i] = 0.02f * rng.normal();
    }
  }
}

void write_random_vae(const std::string& path, const VaeConfig& cfg, uint64_t seed) {
  VaeModel m = VaeModel::create(cfg);
  vae_init_random(m, seed);
  m.save(path, DType::F32);
}

// ---------------------------------------------------------------- latent helpers

void vae_latent_to_dit(const VaeConfig& cfg, float* z, long n) {
  for (long i = 0; i < n; ++i) z[i] = cfg.scale_factor * (z[i] - cfg.shift_factor);
}

void vae_latent_from_dit(const VaeConfig& cfg, float* z, long n) {
  for (long i = 0; i < n; ++i) z[i] = z[i] / cfg.scale_factor + cfg.shift_factor;
}

void gaussian_sample_forward(float* z, const float* mean, const float* logvar, const float* noise, long n) {
  for (long i = 0; i < n; ++i) z[i] = mean[i] + std::exp(0.5f * logvar[i]) * noise[i];
}

void gaussian_sample_backward(float* dmean, float* dlogvar, const float* dz, const float* logvar, const float* noise,
                              long n) {
  for (long i = 0; i < n; ++i) {
    if (dmean) dmean[i] += dz[i];
    if (dlogvar) dlogvar[i] += dz[i] * 0.5f * std::exp(0.5f * logvar[i]) * noise[i];
  }
}

float gaussian_kl_forward(const float* mean, const float* logvar, long n) {
  if (n <= 0) return 0.0f;
  double sum = 0.0;
  for (long i = 0; i < n; ++i) sum += 0.5 * ((double)mean[i] * mean[i] + std::exp((double)logvar[i]) - 1.0 - logvar[i]);
  return (float)(sum / n);
}

void gaussian_kl_backward(float* dmean, float* dlogvar, const float* mean, const float* logvar, long n, float dkl) {
  if (n <= 0) return;
  const float coef = dkl / (float)n;
  for (long i = 0; i < n; ++i) {
    if (dmean) dmean[i] += coef * mean[i];
    if (dlogvar) dlogvar[i] += coef * 0.5f * (std::exp(logvar[i]) - 1.0f);
  }
}

// ---------------------------------------------------------------- activations

namespace {

struct ResnetActs { vec n1, mean1, rstd1, s1, h1, n2, mean2, rstd2, s2, out; };
struct AttnActs { vec n, mean, rstd, tok, q, k, v, probs, att, proj, out; };
struct HeadActs { vec n, mean, rstd, s, out; };  // norm_out, swish, conv_out

}  // namespace

struct VaeEncoderActs {
  int B = 0, H = 0, W = 0;
  std::vector<int> level_h, level_w;  // spatial size of each level
  vec img, conv_in;
  std::vector<std::vector<ResnetActs>> down;
  std::vector<vec> downsample;
  ResnetActs mid1, mid2;
  AttnActs attn;
  HeadActs head;  // head.out: the moments [B, 2z, h, w]
};

struct VaeDecoderActs {
  int B = 0, h = 0, w = 0;
  std::vector<int> level_h, level_w;
  vec z, conv_in;
  ResnetActs mid1, mid2;
  AttnActs attn;
  std::vector<std::vector<ResnetActs>> up;
  std::vector<vec> up_x, upsample;  // the 2x nearest copy and the conv after it, per level
  HeadActs head;
};

VaeRunner::VaeRunner(VaeModel* m) : model(m), enc(new VaeEncoderActs), dec(new VaeDecoderActs) {}
VaeRunner::~VaeRunner() {
  delete enc;
  delete dec;
}

// ---------------------------------------------------------------- layers

namespace {

struct Ctx {  // the model's buffers and the GroupNorm group count, for the layer functions below
  const float* p;
  float* g;
  int G;
};

// out [B, conv.out, OH, OW] for a KxK conv, `pad` on every side (stride 1).
void conv_fwd(const Ctx& c, const VaeConv& cv, vec& out, const float* inp, int B, int H, int W) {
  Conv2dShape s = conv2d_shape(B, cv.in, H, W, cv.out, cv.k, cv.k / 2);
  out.resize((size_t)B * cv.out * s.out_h() * s.out_w());
  conv2d_forward(out.data(), inp, c.p + cv.w, c.p + cv.b, s);
}

void conv_bwd(const Ctx& c, const VaeConv& cv, float* dinp, const float* dout, const float* inp, int B, int H, int W) {
  conv2d_backward(dinp, c.g + cv.w, c.g + cv.b, dout, inp, c.p + cv.w, conv2d_shape(B, cv.in, H, W, cv.out, cv.k, cv.k / 2));
}

// FLUX's Downsample: zero pad one row at the bottom and one column at the right, 3x3 stride 2.
Conv2dShape downsample_shape(const VaeConv& cv, int B, int H, int W) {
  Conv2dShape s = conv2d_shape(B, cv.in, H, W, cv.out, 3, 0, 2);
  s.pad_bottom = s.pad_right = 1;
  return s;
}

void norm_fwd(const Ctx& c, const VaeNorm& nm, vec& out, vec& mean, vec& rstd, const float* inp, int B, int HW) {
  out.resize((size_t)B * nm.c * HW);
  mean.resize((size_t)B * c.G);
  rstd.resize((size_t)B * c.G);
  groupnorm_forward(out.data(), mean.data(), rstd.data(), inp, c.p + nm.gamma, c.p + nm.beta, B, nm.c, HW, c.G);
}

void norm_bwd(const Ctx& c, const VaeNorm& nm, float* dinp, const float* dout, const float* inp, const vec& mean,
              const vec& rstd, int B, int HW) {
  groupnorm_backward(dinp, c.g + nm.gamma, c.g + nm.beta, dout, inp, mean.data(), rstd.data(), c.p + nm.gamma, B, nm.c,
                     HW, c.G);
}

void swish_fwd(vec& out, const vec& inp) {
  out.resize(inp.size());
  silu_forward(out.data(), inp.data(), (int)inp.size());
}

void resnet_fwd(const Ctx& c, const VaeResnet& r, ResnetActs& a, const float* x, int B, int H, int W) {
  const int HW = H * W;
  norm_fwd(c, r.norm1, a.n1, a.mean1, a.rstd1, x, B, HW);
  swish_fwd(a.s1, a.n1);
  conv_fwd(c, r.conv1, a.h1, a.s1.data(), B, H, W);
  norm_fwd(c, r.norm2, a.n2, a.mean2, a.rstd2, a.h1.data(), B, HW);
  swish_fwd(a.s2, a.n2);
  conv_fwd(c, r.conv2, a.out, a.s2.data(), B, H, W);
  if (r.has_nin()) {
    vec skip;
    conv_fwd(c, r.nin_shortcut, skip, x, B, H, W);
    for (size_t i = 0; i < a.out.size(); ++i) a.out[i] += skip[i];
  } else {
    for (size_t i = 0; i < a.out.size(); ++i) a.out[i] += x[i];
  }
}

// dx accumulates dL/dx (the skip's share and the residual branch's share).
void resnet_bwd(const Ctx& c, const VaeResnet& r, const ResnetActs& a, float* dx, const float* dout, const float* x,
                int B, int H, int W) {
  const int HW = H * W;
  const size_t n_out = (size_t)B * r.out * HW, n_in = (size_t)B * r.in * HW;
  if (r.has_nin()) conv_bwd(c, r.nin_shortcut, dx, dout, x, B, H, W);
  else for (size_t i = 0; i < n_in; ++i) dx[i] += dout[i];
  vec ds2(n_out, 0.0f), dn2(n_out, 0.0f), dh1(n_out, 0.0f), ds1(n_in, 0.0f), dn1(n_in, 0.0f);
  conv_bwd(c, r.conv2, ds2.data(), dout, a.s2.data(), B, H, W);
  silu_backward(dn2.data(), ds2.data(), a.n2.data(), (int)n_out);
  norm_bwd(c, r.norm2, dh1.data(), dn2.data(), a.h1.data(), a.mean2, a.rstd2, B, HW);
  conv_bwd(c, r.conv1, ds1.data(), dh1.data(), a.s1.data(), B, H, W);
  silu_backward(dn1.data(), ds1.data(), a.n1.data(), (int)n_in);
  norm_bwd(c, r.norm1, dx, dn1.data(), x, a.mean1, a.rstd1, B, HW);
}

// AttnBlock: the 1x1 q/k/v/proj_out convs run as linear layers over tokens [B*HW, C] (a [C, C, 1, 1]
// weight is the [C, C] matrix), attention is one head of dimension C (scale 1/sqrt(C), as SDPA's).
void attn_fwd(const Ctx& c, const VaeAttn& at, AttnActs& a, const float* x, int B, int H, int W) {
  const int C = at.c, HW = H * W, N = B * HW;
  const size_t n = (size_t)N * C;
  norm_fwd(c, at.norm, a.n, a.mean, a.rstd, x, B, HW);
  a.tok.resize(n), a.q.resize(n), a.k.resize(n), a.v.resize(n), a.att.resize(n), a.proj.resize(n), a.out.resize(n);
  a.probs.resize((size_t)B * HW * HW);
  channels_to_tokens_forward(a.tok.data(), a.n.data(), B, C, HW);
  linear_forward(a.q.data(), a.tok.data(), c.p + at.q.w, c.p + at.q.b, N, C, C);
  linear_forward(a.k.data(), a.tok.data(), c.p + at.k.w, c.p + at.k.b, N, C, C);
  linear_forward(a.v.data(), a.tok.data(), c.p + at.v.w, c.p + at.v.b, N, C, C);
  attention_forward(a.att.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(), B, HW, 1, C);
  linear_forward(a.proj.data(), a.att.data(), c.p + at.proj_out.w, c.p + at.proj_out.b, N, C, C);
  tokens_to_channels_forward(a.out.data(), a.proj.data(), B, C, HW);
  for (size_t i = 0; i < n; ++i) a.out[i] += x[i];
}

void attn_bwd(const Ctx& c, const VaeAttn& at, const AttnActs& a, float* dx, const float* dout, const float* x, int B,
              int H, int W) {
  const int C = at.c, HW = H * W, N = B * HW;
  const size_t n = (size_t)N * C;
  for (size_t i = 0; i < n; ++i) dx[i] += dout[i];
  vec dproj(n, 0.0f), datt(n, 0.0f), dq(n, 0.0f), dk(n, 0.0f), dv(n, 0.0f), dtok(n, 0.0f), dnorm(n, 0.0f);
  channels_to_tokens_forward(dproj.data(), dout, B, C, HW);  // the adjoint of tokens_to_channels
  linear_backward(datt.data(), c.g + at.proj_out.w, c.g + at.proj_out.b, dproj.data(), a.att.data(), c.p + at.proj_out.w,
                  N, C, C);
  attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(), B,
                     HW, 1, C);
  linear_backward(dtok.data(), c.g + at.q.w, c.g + at.q.b, dq.data(), a.tok.data(), c.p + at.q.w, N, C, C);
  linear_backward(dtok.data(), c.g + at.k.w, c.g + at.k.b, dk.data(), a.tok.data(), c.p + at.k.w, N, C, C);
  linear_backward(dtok.data(), c.g + at.v.w, c.g + at.v.b, dv.data(), a.tok.data(), c.p + at.v.w, N, C, C);
  channels_to_tokens_backward(dnorm.data(), dtok.data(), B, C, HW);
  norm_bwd(c, at.norm, dx, dnorm.data(), x, a.mean, a.rstd, B, HW);
}

// norm_out, swish, conv_out.
void head_fwd(const Ctx& c, const VaeNorm& nm, const VaeConv& cv, HeadActs& a, const float* x, int B, int H, int W) {
  norm_fwd(c, nm, a.n, a.mean, a.rstd, x, B, H * W);
  swish_fwd(a.s, a.n);
  conv_fwd(c, cv, a.out, a.s.data(), B, H, W);
}

void head_bwd(const Ctx& c, const VaeNorm& nm, const VaeConv& cv, const HeadActs& a, float* dx, const float* dout,
              const float* x, int B, int H, int W) {
  const size_t n = a.n.size();
  vec ds(n, 0.0f), dn(n, 0.0f);
  conv_bwd(c, cv, ds.data(), dout, a.s.data(), B, H, W);
  silu_backward(dn.data(), ds.data(), a.n.data(), (int)n);
  norm_bwd(c, nm, dx, dn.data(), x, a.mean, a.rstd, B, H * W);
}

}  // namespace

// ---------------------------------------------------------------- encoder

void VaeRunner::encode(const float* img, int B, int H, int W, vec& mean, vec& logvar, int* h_out, int* w_out) {
  VaeModel& m = *model;
  const VaeConfig& cfg = m.cfg;
  const VaeEncoder& e = m.enc;
  const int nl = cfg.levels();
  Ctx c{m.params.data(), m.grads.data(), cfg.groups};
  VaeEncoderActs& a = *enc;
  if (B <= 0 || H <= 0 || W <= 0) fail("autoencoder encode: empty image batch");
  a.B = B, a.H = H, a.W = W;
  a.img.assign(img, img + (size_t)B * cfg.in_channels * H * W);
  a.level_h.assign(nl, 0);
  a.level_w.assign(nl, 0);
  a.down.resize(nl);
  a.downsample.resize(nl);

  conv_fwd(c, e.conv_in, a.conv_in, a.img.data(), B, H, W);
  const float* x = a.conv_in.data();
  int h = H, w = W;
  for (int i = 0; i < nl; ++i) {
    a.level_h[i] = h, a.level_w[i] = w;
    a.down[i].resize(e.down[i].size());
    for (size_t j = 0; j < e.down[i].size(); ++j) {
      resnet_fwd(c, e.down[i][j], a.down[i][j], x, B, h, w);
      x = a.down[i][j].out.data();
    }
    if (i != nl - 1) {
      Conv2dShape s = downsample_shape(e.downsample[i], B, h, w);
      a.downsample[i].resize((size_t)B * s.OC * s.out_h() * s.out_w());
      conv2d_forward(a.downsample[i].data(), x, c.p + e.downsample[i].w, c.p + e.downsample[i].b, s);
      x = a.downsample[i].data();
      h = s.out_h(), w = s.out_w();
    }
  }
  resnet_fwd(c, e.mid_block_1, a.mid1, x, B, h, w);
  attn_fwd(c, e.mid_attn_1, a.attn, a.mid1.out.data(), B, h, w);
  resnet_fwd(c, e.mid_block_2, a.mid2, a.attn.out.data(), B, h, w);
  head_fwd(c, e.norm_out, e.conv_out, a.head, a.mid2.out.data(), B, h, w);

  // DiagonalGaussian: the first z_channels of the moments are the mean, the rest the logvar.
  const size_t plane = (size_t)cfg.z_channels * h * w;
  mean.resize((size_t)B * plane);
  logvar.resize((size_t)B * plane);
  for (int b = 0; b < B; ++b) {
    const float* mo = a.head.out.data() + (size_t)b * 2 * plane;
    std::memcpy(mean.data() + b * plane, mo, plane * sizeof(float));
    std::memcpy(logvar.data() + b * plane, mo + plane, plane * sizeof(float));
  }
  if (h_out) *h_out = h;
  if (w_out) *w_out = w;
}

void VaeRunner::encode_backward(const float* dmean, const float* dlogvar, float* dimg) {
  VaeModel& m = *model;
  const VaeConfig& cfg = m.cfg;
  const VaeEncoder& e = m.enc;
  const int nl = cfg.levels();
  Ctx c{m.params.data(), m.grads.data(), cfg.groups};
  VaeEncoderActs& a = *enc;
  if (a.B == 0) fail("autoencoder encode_backward called before encode");
  const int B = a.B, hl = a.level_h[nl - 1], wl = a.level_w[nl - 1];  // the latent grid: the last level's

  const size_t plane = (size_t)cfg.z_channels * hl * wl;
  vec dmom((size_t)B * 2 * plane, 0.0f);
  for (int b = 0; b < B; ++b) {
    if (dmean) std::memcpy(dmom.data() + (size_t)b * 2 * plane, dmean + b * plane, plane * sizeof(float));
    if (dlogvar) std::memcpy(dmom.data() + (size_t)b * 2 * plane + plane, dlogvar + b * plane, plane * sizeof(float));
  }
  vec d_mid2(a.mid2.out.size(), 0.0f), d_attn(a.attn.out.size(), 0.0f), d_mid1(a.mid1.out.size(), 0.0f);
  head_bwd(c, e.norm_out, e.conv_out, a.head, d_mid2.data(), dmom.data(), a.mid2.out.data(), B, hl, wl);
  resnet_bwd(c, e.mid_block_2, a.mid2, d_attn.data(), d_mid2.data(), a.attn.out.data(), B, hl, wl);
  attn_bwd(c, e.mid_attn_1, a.attn, d_mid1.data(), d_attn.data(), a.mid1.out.data(), B, hl, wl);

  // The input of block j of level i: the previous block, the previous level's downsample, or conv_in.
  auto block_input = [&](int i, int j) -> const vec& {
    if (j > 0) return a.down[i][j - 1].out;
    return i > 0 ? a.downsample[i - 1] : a.conv_in;
  };
  const vec& last = a.down[nl - 1].back().out;
  vec d(last.size(), 0.0f);
  resnet_bwd(c, e.mid_block_1, a.mid1, d.data(), d_mid1.data(), last.data(), B, hl, wl);
  for (int i = nl - 1; i >= 0; --i) {
    const int H = a.level_h[i], W = a.level_w[i];
    if (i != nl - 1) {  // d is the gradient of downsample[i]'s output
      const vec& x = a.down[i].back().out;
      vec dx(x.size(), 0.0f);
      conv2d_backward(dx.data(), c.g + e.downsample[i].w, c.g + e.downsample[i].b, d.data(), x.data(),
                      c.p + e.downsample[i].w, downsample_shape(e.downsample[i], B, H, W));
      d.swap(dx);
    }
    for (int j = (int)e.down[i].size() - 1; j >= 0; --j) {
      const vec& x = block_input(i, j);
      vec dx(x.size(), 0.0f);
      resnet_bwd(c, e.down[i][j], a.down[i][j], dx.data(), d.data(), x.data(), B, H, W);
      d.swap(dx);
    }
  }
  conv_bwd(c, e.conv_in, dimg, d.data(), a.img.data(), B, a.H, a.W);
}

// ---------------------------------------------------------------- decoder

void VaeRunner::decode(const float* z, int B, int h, int w, vec& img) {
  VaeModel& m = *model;
  const VaeConfig& cfg = m.cfg;
  const VaeDecoder& d = m.dec;
  const int nl = cfg.levels();
  Ctx c{m.params.data(), m.grads.data(), cfg.groups};
  VaeDecoderActs& a = *dec;
  if (B <= 0 || h <= 0 || w <= 0) fail("autoencoder decode: empty latent batch");
  a.B = B, a.h = h, a.w = w;
  a.z.assign(z, z + (size_t)B * cfg.z_channels * h * w);
  a.level_h.assign(nl, 0);
  a.level_w.assign(nl, 0);
  a.up.resize(nl);
  a.up_x.resize(nl);
  a.upsample.resize(nl);

  conv_fwd(c, d.conv_in, a.conv_in, a.z.data(), B, h, w);
  resnet_fwd(c, d.mid_block_1, a.mid1, a.conv_in.data(), B, h, w);
  attn_fwd(c, d.mid_attn_1, a.attn, a.mid1.out.data(), B, h, w);
  resnet_fwd(c, d.mid_block_2, a.mid2, a.attn.out.data(), B, h, w);
  const float* x = a.mid2.out.data();
  int H = h, W = w;
  for (int i = nl - 1; i >= 0; --i) {
    a.level_h[i] = H, a.level_w[i] = W;
    a.up[i].resize(d.up[i].size());
    for (size_t j = 0; j < d.up[i].size(); ++j) {
      resnet_fwd(c, d.up[i][j], a.up[i][j], x, B, H, W);
      x = a.up[i][j].out.data();
    }
    if (i != 0) {
      const int C = d.upsample[i].in;
      a.up_x[i].resize((size_t)B * C * 4 * H * W);
      upsample_nearest2x_forward(a.up_x[i].data(), x, B, C, H, W);
      H *= 2, W *= 2;
      conv_fwd(c, d.upsample[i], a.upsample[i], a.up_x[i].data(), B, H, W);
      x = a.upsample[i].data();
    }
  }
  head_fwd(c, d.norm_out, d.conv_out, a.head, x, B, H, W);
  img = a.head.out;
}

void VaeRunner::decode_backward(const float* dimg, float* dz) {
  VaeModel& m = *model;
  const VaeConfig& cfg = m.cfg;
  const VaeDecoder& d = m.dec;
  const int nl = cfg.levels();
  Ctx c{m.params.data(), m.grads.data(), cfg.groups};
  VaeDecoderActs& a = *dec;
  if (a.B == 0) fail("autoencoder decode_backward called before decode");
  const int B = a.B, h = a.h, w = a.w;

  // The input of block j of level i: the previous block, the upsample of level i+1, or the mid block.
  auto block_input = [&](int i, int j) -> const vec& {
    if (j > 0) return a.up[i][j - 1].out;
    return i < nl - 1 ? a.upsample[i + 1] : a.mid2.out;
  };
  const vec& last = a.up[0].back().out;  // level 0 has no upsample: its last block feeds the head
  vec dx_head(last.size(), 0.0f);
  const int H0 = a.level_h[0], W0 = a.level_w[0];
  head_bwd(c, d.norm_out, d.conv_out, a.head, dx_head.data(), dimg, last.data(), B, H0, W0);
  vec g;
  g.swap(dx_head);  // gradient of the current stage's output
  for (int i = 0; i < nl; ++i) {
    const int H = a.level_h[i], W = a.level_w[i];
    if (i != 0) {  // g is the gradient of upsample[i]'s output (at 2H x 2W)
      const int C = d.upsample[i].in;
      vec dup(a.up_x[i].size(), 0.0f), dx((size_t)B * C * H * W, 0.0f);
      conv_bwd(c, d.upsample[i], dup.data(), g.data(), a.up_x[i].data(), B, 2 * H, 2 * W);
      upsample_nearest2x_backward(dx.data(), dup.data(), B, C, H, W);
      g.swap(dx);
    }
    for (int j = (int)d.up[i].size() - 1; j >= 0; --j) {
      const vec& x = block_input(i, j);
      vec dx(x.size(), 0.0f);
      resnet_bwd(c, d.up[i][j], a.up[i][j], dx.data(), g.data(), x.data(), B, H, W);
      g.swap(dx);
    }
  }
  vec d_attn(a.attn.out.size(), 0.0f), d_mid1(a.mid1.out.size(), 0.0f), d_in(a.conv_in.size(), 0.0f);
  resnet_bwd(c, d.mid_block_2, a.mid2, d_attn.data(), g.data(), a.attn.out.data(), B, h, w);
  attn_bwd(c, d.mid_attn_1, a.attn, d_mid1.data(), d_attn.data(), a.mid1.out.data(), B, h, w);
  resnet_bwd(c, d.mid_block_1, a.mid1, d_in.data(), d_mid1.data(), a.conv_in.data(), B, h, w);
  conv_bwd(c, d.conv_in, dz, d_in.data(), a.z.data(), B, h, w);
}

}  // namespace graft
