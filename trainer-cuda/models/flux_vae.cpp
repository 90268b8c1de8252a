#include "models/flux_vae.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/common.h"
#include "core/rng.h"
#include "ops/ops.h"

namespace graft {

VaeConfig flux_vae_config() { return VaeConfig(); }

// ------------------------------------------------------------------------------------------------
// Layouts

Layout flux_vae_diffusers_layout(int levels) {
  // BFL -> diffusers: down.i.block.j -> down_blocks.i.resnets.j; up.i (BFL's index) ->
  // up_blocks.(levels-1-i) (diffusers numbers them in the order they run); mid.block_1/2 ->
  // mid_block.resnets.0/1; mid.attn_1 -> mid_block.attentions.0 (norm -> group_norm, q/k/v ->
  // to_q/to_k/to_v, proj_out -> to_out.0: linear [C, C] where BFL has 1x1 convs); norm_out ->
  // conv_norm_out; nin_shortcut -> conv_shortcut; downsample / upsample -> downsamplers.0 / upsamplers.0.
  return Layout{"diffusers AutoencoderKL", [levels](const std::string& n) -> Stored {
    static const std::map<std::string, std::string> renames = {
        {"nin_shortcut", "conv_shortcut"}, {"norm_out", "conv_norm_out"}, {"downsample", "downsamplers.0"},
        {"upsample", "upsamplers.0"},      {"block_1", "resnets.0"},      {"block_2", "resnets.1"},
        {"attn_1", "attentions.0"},        {"mid", "mid_block"},          {"proj_out", "to_out.0"},
        {"q", "to_q"},                     {"k", "to_k"},                 {"v", "to_v"}};
    std::vector<std::string> parts;
    std::stringstream ss(n);
    for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
    std::string out;
    auto put = [&](const std::string& s) { out += (out.empty() ? "" : ".") + s; };
    const bool attn = n.find(".attn_1.") != std::string::npos;
    for (size_t i = 0; i < parts.size(); ++i) {
      const std::string& p = parts[i];
      const bool last = i + 1 == parts.size();
      if ((p == "down" || p == "up") && i + 1 < parts.size()) {
        int level = std::atoi(parts[i + 1].c_str());
        put(p == "down" ? "down_blocks" : "up_blocks");
        put(std::to_string(p == "down" ? level : levels - 1 - level));
        ++i;
      } else if (p == "block" && i + 1 < parts.size()) {
        put("resnets");
      } else if (attn && p == "norm" && !last) {
        put("group_norm");
      } else if (!last && renames.count(p) && (attn || (p != "q" && p != "k" && p != "v" && p != "proj_out"))) {
        put(renames.at(p));
      } else {
        put(p);
      }
    }
    return Stored{{out}, false};
  }};
}

// ------------------------------------------------------------------------------------------------
// Construction

namespace {

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

// Reads the layers by their BFL names, in the order BFL's modules define them.
struct Reader {
  WeightLoader& w;
  FluxVae::Conv conv(const std::string& name, int in, int out, int k) {
    FluxVae::Conv c;
    c.in = in, c.out = out, c.k = k;
    c.W = w.get(name + ".weight", {out, in, k, k});
    c.b = w.get(name + ".bias", {out});
    return c;
  }
  FluxVae::Norm norm(const std::string& name, int c) {
    FluxVae::Norm n;
    n.c = c;
    n.gamma = w.get(name + ".weight", {c});
    n.beta = w.get(name + ".bias", {c});
    return n;
  }
  FluxVae::Resnet resnet(const std::string& p, int in, int out) {
    FluxVae::Resnet r;
    r.in = in, r.out = out;
    r.norm1 = norm(p + ".norm1", in);
    r.conv1 = conv(p + ".conv1", in, out, 3);
    r.norm2 = norm(p + ".norm2", out);
    r.conv2 = conv(p + ".conv2", out, out, 3);
    if (in != out) r.nin_shortcut = conv(p + ".nin_shortcut", in, out, 1);
    return r;
  }
  FluxVae::Attn attn(const std::string& p, int c) {
    FluxVae::Attn a;
    a.c = c;
    a.norm = norm(p + ".norm", c);
    a.q = conv(p + ".q", c, c, 1);
    a.k = conv(p + ".k", c, c, 1);
    a.v = conv(p + ".v", c, c, 1);
    a.proj_out = conv(p + ".proj_out", c, c, 1);
    return a;
  }
};

}  // namespace

FluxVae::FluxVae(const VaeConfig& c, WeightLoader& w) : cfg(c), device(w.device) {
  check_config(c, w.ckpt ? w.ckpt->path : "autoencoder");
  Reader r{w};
  const int nl = c.levels(), ch = c.ch;
  enc.conv_in = r.conv("encoder.conv_in", c.in_channels, ch, 3);
  int block_in = ch;
  enc.down.resize(nl);
  for (int i = 0; i < nl; ++i) {
    const int block_out = ch * c.ch_mult[i];
    const std::string p = "encoder.down." + std::to_string(i);
    for (int j = 0; j < c.num_res_blocks; ++j) {
      enc.down[i].push_back(r.resnet(p + ".block." + std::to_string(j), block_in, block_out));
      block_in = block_out;
    }
    if (i != nl - 1) enc.downsample.push_back(r.conv(p + ".downsample.conv", block_in, block_in, 3));
  }
  enc.mid_block_1 = r.resnet("encoder.mid.block_1", block_in, block_in);
  enc.mid_attn_1 = r.attn("encoder.mid.attn_1", block_in);
  enc.mid_block_2 = r.resnet("encoder.mid.block_2", block_in, block_in);
  enc.norm_out = r.norm("encoder.norm_out", block_in);
  enc.conv_out = r.conv("encoder.conv_out", block_in, 2 * c.z_channels, 3);

  block_in = ch * c.ch_mult[nl - 1];
  dec.conv_in = r.conv("decoder.conv_in", c.z_channels, block_in, 3);
  dec.mid_block_1 = r.resnet("decoder.mid.block_1", block_in, block_in);
  dec.mid_attn_1 = r.attn("decoder.mid.attn_1", block_in);
  dec.mid_block_2 = r.resnet("decoder.mid.block_2", block_in, block_in);
  dec.up.resize(nl);
  dec.upsample.resize(nl);
  for (int i = nl - 1; i >= 0; --i) {  // in the order they run; each keeps its BFL index
    const int block_out = ch * c.ch_mult[i];
    const std::string p = "decoder.up." + std::to_string(i);
    for (int j = 0; j <= c.num_res_blocks; ++j) {
      dec.up[i].push_back(r.resnet(p + ".block." + std::to_string(j), block_in, block_out));
      block_in = block_out;
    }
    if (i != 0) dec.upsample[i] = r.conv(p + ".upsample.conv", block_in, block_in, 3);
  }
  dec.norm_out = r.norm("decoder.norm_out", block_in);
  dec.conv_out = r.conv("decoder.conv_out", block_in, c.out_channels, 3);
}

namespace {
void collect(std::vector<NamedParam>& p, const std::string& name, FluxVae::Conv& c) {
  p.push_back({name + ".weight", &c.W});
  p.push_back({name + ".bias", &c.b});
}
void collect(std::vector<NamedParam>& p, const std::string& name, FluxVae::Norm& n) {
  p.push_back({name + ".weight", &n.gamma});
  p.push_back({name + ".bias", &n.beta});
}
void collect(std::vector<NamedParam>& p, const std::string& name, FluxVae::Resnet& r) {
  collect(p, name + ".norm1", r.norm1);
  collect(p, name + ".conv1", r.conv1);
  collect(p, name + ".norm2", r.norm2);
  collect(p, name + ".conv2", r.conv2);
  if (r.has_nin()) collect(p, name + ".nin_shortcut", r.nin_shortcut);
}
void collect(std::vector<NamedParam>& p, const std::string& name, FluxVae::Attn& a) {
  collect(p, name + ".norm", a.norm);
  collect(p, name + ".q", a.q);
  collect(p, name + ".k", a.k);
  collect(p, name + ".v", a.v);
  collect(p, name + ".proj_out", a.proj_out);
}
}  // namespace

std::vector<NamedParam> FluxVae::decoder_params() {
  std::vector<NamedParam> p;
  const int nl = cfg.levels();
  collect(p, "decoder.conv_in", dec.conv_in);
  collect(p, "decoder.mid.block_1", dec.mid_block_1);
  collect(p, "decoder.mid.attn_1", dec.mid_attn_1);
  collect(p, "decoder.mid.block_2", dec.mid_block_2);
  for (int i = nl - 1; i >= 0; --i) {
    const std::string pre = "decoder.up." + std::to_string(i);
    for (size_t j = 0; j < dec.up[i].size(); ++j) collect(p, pre + ".block." + std::to_string(j), dec.up[i][j]);
    if (i != 0) collect(p, pre + ".upsample.conv", dec.upsample[i]);
  }
  collect(p, "decoder.norm_out", dec.norm_out);
  collect(p, "decoder.conv_out", dec.conv_out);
  return p;
}

std::vector<NamedParam> FluxVae::params() {
  std::vector<NamedParam> p;
  const int nl = cfg.levels();
  collect(p, "encoder.conv_in", enc.conv_in);
  for (int i = 0; i < nl; ++i) {
    const std::string pre = "encoder.down." + std::to_string(i);
    for (size_t j = 0; j < enc.down[i].size(); ++j) collect(p, pre + ".block." + std::to_string(j), enc.down[i][j]);
    if (i != nl - 1) collect(p, pre + ".downsample.conv", enc.downsample[i]);
  }
  collect(p, "encoder.mid.block_1", enc.mid_block_1);
  collect(p, "encoder.mid.attn_1", enc.mid_attn_1);
  collect(p, "encoder.mid.block_2", enc.mid_block_2);
  collect(p, "encoder.norm_out", enc.norm_out);
  collect(p, "encoder.conv_out", enc.conv_out);
  std::vector<NamedParam> d = decoder_params();
  p.insert(p.end(), d.begin(), d.end());
  return p;
}

// ------------------------------------------------------------------------------------------------
// Loading and saving

namespace {

float meta_float(const std::map<std::string, std::string>& md, const std::string& path, const char* key, float fallback) {
  auto it = md.find(key);
  if (it == md.end()) return fallback;
  char* end = nullptr;
  float v = std::strtof(it->second.c_str(), &end);
  if (it->second.empty() || *end != '\0' || !std::isfinite(v))
    fail(path + ": metadata " + key + " must be a number, got '" + it->second + "'");
  return v;
}

// A diffusers vae/config.json beside the weights, when there is one (null otherwise).
nlohmann::json diffusers_config(const std::string& path) {
  struct stat sb;
  const bool dir = stat(path.c_str(), &sb) == 0 && S_ISDIR(sb.st_mode);
  const std::string folder = dir ? path : path.substr(0, path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/'));
  std::ifstream f((folder.empty() ? std::string(".") : folder) + "/config.json");
  if (!f) return nullptr;
  std::stringstream buf;
  buf << f.rdbuf();
  nlohmann::json j = nlohmann::json::parse(buf.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(folder + "/config.json: not valid JSON");
  return j;
}

}  // namespace

FluxVae FluxVae::load(const std::string& path, Device device) {
  Checkpoint ckpt = Checkpoint::open(path);
  Layout layout = identity_layout("BFL");
  if (!ckpt.has("encoder.conv_in.weight") || !ckpt.has("decoder.conv_in.weight"))
    fail(path + ": not a FLUX autoencoder: tensor 'encoder.conv_in.weight' or 'decoder.conv_in.weight' is missing");
  const bool diffusers = ckpt.has("encoder.down_blocks.0.resnets.0.conv1.weight");
  if (diffusers) {
    int levels = 0;
    while (ckpt.has("encoder.down_blocks." + std::to_string(levels) + ".resnets.0.conv1.weight")) ++levels;
    layout = flux_vae_diffusers_layout(levels);
  } else if (!ckpt.has("encoder.down.0.block.0.conv1.weight")) {
    fail(path + ": not a FLUX autoencoder: found neither 'encoder.down.0.block.0.conv1.weight' (BFL layout) nor "
         "'encoder.down_blocks.0.resnets.0.conv1.weight' (diffusers)");
  }
  WeightLoader w(&ckpt, layout, device);
  VaeConfig c;
  auto dim0 = [&](const std::string& name, size_t rank) {
    Shape s = w.shape(name);
    if (s.size() != rank)
      fail(w.problem(name, "has shape " + shape_str(s) + ", expected " + std::to_string(rank) + " dimensions"));
    return s[0];
  };
  c.ch = (int)dim0("encoder.conv_in.weight", 4);
  c.in_channels = (int)w.dim("encoder.conv_in.weight", 1);
  c.ch_mult.clear();
  for (int i = 0; w.has("encoder.down." + std::to_string(i) + ".block.0.conv1.weight"); ++i) {
    const std::string name = "encoder.down." + std::to_string(i) + ".block.0.conv1.weight";
    const int64_t out = dim0(name, 4);
    if (c.ch <= 0 || out % c.ch != 0)
      fail(w.problem(name, "has " + std::to_string(out) + " output channels, not a multiple of ch " + std::to_string(c.ch)));
    c.ch_mult.push_back((int)(out / c.ch));
  }
  c.num_res_blocks = 0;
  while (w.has("encoder.down.0.block." + std::to_string(c.num_res_blocks) + ".conv1.weight")) ++c.num_res_blocks;
  const int64_t moments = dim0("encoder.conv_out.weight", 4);
  if (moments % 2)
    fail(w.problem("encoder.conv_out.weight", "has an odd number of outputs (" + std::to_string(moments) +
                                                   "); expected 2 * z_channels (mean and logvar)"));
  c.z_channels = (int)(moments / 2);
  c.out_channels = (int)dim0("decoder.conv_out.weight", 4);
  const auto& md = ckpt.metadata();
  c.groups = 32;
  if (md.count("graft.groups")) {
    const std::string& s = md.at("graft.groups");
    char* end = nullptr;
    long g = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || g <= 0 || g > 1 << 20)
      fail(path + ": metadata graft.groups must be a positive integer, got '" + s + "'");
    c.groups = (int)g;
  }
  c.scale_factor = meta_float(md, path, "graft.scale_factor", c.scale_factor);
  c.shift_factor = meta_float(md, path, "graft.shift_factor", c.shift_factor);
  if (diffusers) {
    nlohmann::json j = diffusers_config(path);
    if (j.is_object()) {
      c.groups = j.value("norm_num_groups", c.groups);
      if (j.contains("scaling_factor") && j["scaling_factor"].is_number()) c.scale_factor = j["scaling_factor"].get<float>();
      if (j.contains("shift_factor") && j["shift_factor"].is_number()) c.shift_factor = j["shift_factor"].get<float>();
    }
  }
  FluxVae m(c, w);
  m.path = path;
  return m;
}

static std::string float_str(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void FluxVae::save(const std::string& out_path, DType dtype) {
  SafeTensorsWriter w;
  for (NamedParam& p : params()) {
    std::vector<float> v = to_floats(*p.t);
    w.add(p.name, dtype, p.t->shape, v.data());
  }
  w.metadata["graft.groups"] = std::to_string(cfg.groups);
  w.metadata["graft.scale_factor"] = float_str(cfg.scale_factor);
  w.metadata["graft.shift_factor"] = float_str(cfg.shift_factor);
  w.write(out_path);
}

void FluxVae::save_diffusers(const std::string& dir, DType dtype) {
  make_dirs(dir);
  const Layout layout = flux_vae_diffusers_layout(cfg.levels());
  SafeTensorsWriter w;
  for (NamedParam& p : params()) {
    Shape shape = p.t->shape;
    // diffusers stores the mid-block attention's 1x1 convs as linear layers.
    if (p.name.find(".attn_1.") != std::string::npos && shape.size() == 4) shape = {shape[0], shape[1]};
    std::vector<float> v = to_floats(*p.t);
    w.add(layout.map(p.name).parts.at(0), dtype, shape, v.data());
  }
  w.write(dir + "/diffusion_pytorch_model.safetensors");
  std::vector<int> block_out;
  for (int m : cfg.ch_mult) block_out.push_back(cfg.ch * m);
  const nlohmann::json config = {{"_class_name", "AutoencoderKL"}, {"in_channels", cfg.in_channels},
                                 {"out_channels", cfg.out_channels}, {"latent_channels", cfg.z_channels},
                                 {"block_out_channels", block_out}, {"layers_per_block", cfg.num_res_blocks},
                                 {"norm_num_groups", cfg.groups}, {"scaling_factor", cfg.scale_factor},
                                 {"shift_factor", cfg.shift_factor}, {"use_quant_conv", false},
                                 {"use_post_quant_conv", false}};
  const std::string text = config.dump(2);
  write_file_atomic(dir + "/config.json", text.data(), text.size());
}

FluxVae FluxVae::random(const VaeConfig& cfg, uint64_t seed, Device device) {
  check_config(cfg, "autoencoder");
  WeightLoader w(nullptr, identity_layout("random"), Device::cpu());
  FluxVae m(cfg, w);
  Rng rng(seed, 0xAE, 0);
  for (NamedParam& p : m.params()) {
    const std::string& name = p.name;
    const Shape& s = p.t->shape;
    std::vector<float> v((size_t)shape_numel(s));
    const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (s.size() == 4) {  // conv weight [out, in, k, k]
      const float std = 1.0f / std::sqrt((float)(s[1] * s[2] * s[3]));
      for (float& x : v) x = std * rng.normal();
    } else if (name.find("norm") != std::string::npos) {  // GroupNorm weight / bias
      for (float& x : v) x = (is_bias ? 0.0f : 1.0f) + 0.1f * rng.normal();
    } else {  // conv bias
      for (float& x : v) x = 0.02f * rng.normal();
    }
    *p.t = from_vector(v, s, device, DType::F32);
  }
  m.device = device;
  m.path = "(random)";
  return m;
}

void write_random_vae(const std::string& path, const VaeConfig& cfg, uint64_t seed) {
  FluxVae::random(cfg, seed).save(path, DType::F32);
}

// ------------------------------------------------------------------------------------------------
// Forward

namespace {

Tensor conv(const FluxVae::Conv& c, const Tensor& x) { return conv2d(x, c.W, c.b, c.k / 2); }
Tensor norm(const FluxVae::Norm& n, const Tensor& x, int G) { return groupnorm(x, n.gamma, n.beta, G); }

Tensor resnet(const FluxVae::Resnet& r, const Tensor& x, int G) {
  Tensor h = conv(r.conv1, silu(norm(r.norm1, x, G)));
  h = conv(r.conv2, silu(norm(r.norm2, h, G)));
  return add(r.has_nin() ? conv(r.nin_shortcut, x) : x, h);
}

// The 1x1 q/k/v/proj_out convs run as linear layers over tokens (a [C, C, 1, 1] weight is the
// [C, C] matrix); attention is one head of dimension C (scale 1/sqrt(C), as SDPA's).
Tensor attn(const FluxVae::Attn& a, const Tensor& x, int G) {
  const int H = (int)x.size(2), W = (int)x.size(3);
  Tensor tok = channels_to_tokens(norm(a.norm, x, G));
  Tensor att = attention(linear(tok, a.q.W, a.q.b), linear(tok, a.k.W, a.k.b), linear(tok, a.v.W, a.v.b), 1);
  return add(tokens_to_channels(linear(att, a.proj_out.W, a.proj_out.b), H, W), x);
}

// BFL's Downsample: zero pad one row at the bottom and one column at the right, 3x3 stride 2.
Tensor downsample(const FluxVae::Conv& c, const Tensor& x) {
  const int pad[4] = {0, 0, 1, 1};
  return conv2d(x, c.W, c.b, 2, pad);
}

}  // namespace

FluxVae::Moments FluxVae::encode(const Tensor& img) const {
  const VaeConfig& c = cfg;
  if (img.dim() != 4 || img.size(1) != c.in_channels || img.size(0) <= 0 || img.size(2) <= 0 || img.size(3) <= 0)
    fail("autoencoder encode: image batch " + shape_str(img.shape) + " is not [B, " + std::to_string(c.in_channels) + ", H, W]");
  const int G = c.groups, nl = c.levels();
  Tensor x = conv(enc.conv_in, img);
  for (int i = 0; i < nl; ++i) {
    for (const Resnet& r : enc.down[i]) x = resnet(r, x, G);
    if (i != nl - 1) x = downsample(enc.downsample[i], x);
  }
  x = resnet(enc.mid_block_1, x, G);
  x = attn(enc.mid_attn_1, x, G);
  x = resnet(enc.mid_block_2, x, G);
  x = conv(enc.conv_out, silu(norm(enc.norm_out, x, G)));
  // DiagonalGaussian: the first z_channels of the moments are the mean, the rest the logvar.
  return {narrow(x, 1, 0, c.z_channels), narrow(x, 1, c.z_channels, c.z_channels)};
}

Tensor FluxVae::decode(const Tensor& z) const {
  const VaeConfig& c = cfg;
  if (z.dim() != 4 || z.size(1) != c.z_channels || z.size(0) <= 0 || z.size(2) <= 0 || z.size(3) <= 0)
    fail("autoencoder decode: latent batch " + shape_str(z.shape) + " is not [B, " + std::to_string(c.z_channels) + ", h, w]");
  const int G = c.groups, nl = c.levels();
  Tensor x = conv(dec.conv_in, z);
  x = resnet(dec.mid_block_1, x, G);
  x = attn(dec.mid_attn_1, x, G);
  x = resnet(dec.mid_block_2, x, G);
  for (int i = nl - 1; i >= 0; --i) {
    for (const Resnet& r : dec.up[i]) x = resnet(r, x, G);
    if (i != 0) x = conv(dec.upsample[i], upsample_nearest2x(x));
  }
  return conv(dec.conv_out, silu(norm(dec.norm_out, x, G)));
}

// ------------------------------------------------------------------------------------------------
// Latent helpers

void vae_latent_to_dit(const VaeConfig& cfg, float* z, long n) {
  for (long i = 0; i < n; ++i) z[i] = cfg.scale_factor * (z[i] - cfg.shift_factor);
}

void vae_latent_from_dit(const VaeConfig& cfg, float* z, long n) {
  for (long i = 0; i < n; ++i) z[i] = z[i] / cfg.scale_factor + cfg.shift_factor;
}

}  // namespace graft
