// Tests of the FLUX autoencoder (models/flux_vae.h): the layout and names of the real checkpoint, loading
// and its errors, and whole-model gradients (a few entries of every weight tensor, the image and
// the latent) against central differences on a micro VAE.
#include <cmath>
#include <cstdio>
#include <string>
#include <unistd.h>
#include <vector>

#include "core/common.h"
#include "gradcheck.h"
#include "core/safetensors.h"
#include "core/autograd.h"
#include "ops/cpu_image_ops.h"
#include "ops/ops.h"
#include "test.h"
#include "models/flux_vae.h"

using namespace graft;
using namespace graft_test;

namespace {

// The smallest VAE with every layer type: two levels (a downsample, an upsample, nin_shortcuts
// where the width doubles), mid attention, 4 GroupNorm groups of 2 and 4 channels.
VaeConfig micro_config() {
  VaeConfig c;
  c.ch = 8;
  c.ch_mult = {1, 2};
  c.num_res_blocks = 1;
  c.z_channels = 2;
  c.groups = 4;
  return c;
}

std::string temp_path(const std::string& name) {
  return "/tmp/graft_test_vae_" + std::to_string(getpid()) + "_" + name;
}

// Every tensor of a model of `c` by name and shape, without allocating any.
std::map<std::string, Shape> layout_of(const VaeConfig& c) {
  WeightLoader w(nullptr, identity_layout("shapes"), Device::cpu());
  w.shapes_only = true;
  FluxVae m(c, w);
  std::map<std::string, Shape> out;
  for (NamedParam& p : m.params()) out[p.name] = p.t->shape;
  return out;
}

std::vector<float> all_values(FluxVae& m) {
  std::vector<float> v;
  for (NamedParam& p : m.params()) {
    std::vector<float> t = to_floats(*p.t);
    v.insert(v.end(), t.begin(), t.end());
  }
  return v;
}

// Rewrites a checkpoint through `edit`, which may drop or replace tensors and metadata.
void rewrite(const std::string& src, const std::string& dst,
             const std::function<bool(const TensorInfo&, SafeTensorsWriter&, const std::vector<float>&)>& edit,
             std::map<std::string, std::string> metadata) {
  SafeTensorsFile f = SafeTensorsFile::open(src);
  SafeTensorsWriter w;
  w.metadata = std::move(metadata);
  for (const TensorInfo& t : f.tensors) {
    std::vector<float> v = f.read_f32(t.name);
    if (edit(t, w, v)) w.add(t.name, DType::F32, t.shape, v.data());
  }
  w.write(dst);
}

}  // namespace

TEST(vae_layout_has_flux_names_and_size) {
  std::map<std::string, Shape> m = layout_of(flux_vae_config());
  // FLUX.1's ae.safetensors holds 83,819,683 parameters (244 tensors).
  int64_t total = 0;
  for (const auto& [name, shape] : m) total += shape_numel(shape);
  CHECK(total == 83819683);
  CHECK(m.size() == 244u);
  struct Want { const char* name; std::vector<int64_t> shape; };
  for (const Want& w : std::vector<Want>{
           {"encoder.conv_in.weight", {128, 3, 3, 3}},
           {"encoder.down.0.block.1.norm2.weight", {128}},
           {"encoder.down.1.block.0.nin_shortcut.weight", {256, 128, 1, 1}},
           {"encoder.down.2.downsample.conv.weight", {512, 512, 3, 3}},
           {"encoder.mid.attn_1.proj_out.weight", {512, 512, 1, 1}},
           {"encoder.conv_out.weight", {32, 512, 3, 3}},
           {"decoder.conv_in.weight", {512, 16, 3, 3}},
           {"decoder.up.3.block.2.conv2.weight", {512, 512, 3, 3}},
           {"decoder.up.3.upsample.conv.weight", {512, 512, 3, 3}},
           {"decoder.up.1.block.0.nin_shortcut.weight", {256, 512, 1, 1}},
           {"decoder.up.0.block.0.conv1.weight", {128, 256, 3, 3}},
           {"decoder.norm_out.bias", {128}},
           {"decoder.conv_out.weight", {3, 128, 3, 3}},
       }) {
    auto t = m.find(w.name);
    if (t == m.end()) fail_at(__FILE__, __LINE__, std::string("missing ") + w.name);
    if (t->second != w.shape) fail_at(__FILE__, __LINE__, std::string(w.name) + " has shape " + shape_str(t->second));
  }
  CHECK(!m.count("encoder.down.3.downsample.conv.weight"));  // no downsample after the last level
  CHECK(!m.count("decoder.up.0.upsample.conv.weight"));      // nor an upsample at level 0
  CHECK(!m.count("encoder.down.0.block.0.nin_shortcut.weight"));
}

TEST(vae_config_rejects_groups_not_dividing_channels) {
  VaeConfig c = micro_config();
  c.groups = 32;
  CHECK_THROWS(FluxVae::random(c, 1), "graft.groups");
}

TEST(vae_write_load_roundtrip) {
  std::string path = temp_path("roundtrip.safetensors");
  VaeConfig c = micro_config();
  c.ch_mult = {1, 2, 3};
  c.num_res_blocks = 2;
  c.in_channels = 4;
  c.out_channels = 2;
  c.scale_factor = 0.5f;
  c.shift_factor = -0.25f;
  write_random_vae(path, c, 7);
  FluxVae m = FluxVae::load(path);
  CHECK(m.cfg.ch == 8 && m.cfg.ch_mult == std::vector<int>({1, 2, 3}) && m.cfg.num_res_blocks == 2);
  CHECK(m.cfg.z_channels == 2 && m.cfg.in_channels == 4 && m.cfg.out_channels == 2 && m.cfg.groups == 4);
  CHECK(m.cfg.scale_factor == 0.5f && m.cfg.shift_factor == -0.25f);
  FluxVae ref = FluxVae::random(c, 7);
  CHECK(all_values(m) == all_values(ref));

  // Without the graft.* metadata, FLUX's factors are the defaults (and 32 groups, which a width of
  // 8 cannot use: the error says which key to set).
  std::string bare = temp_path("bare.safetensors");
  rewrite(path, bare, [](const TensorInfo&, SafeTensorsWriter&, const std::vector<float>&) { return true; }, {{"graft.groups", "4"}});
  FluxVae d = FluxVae::load(bare);
  CHECK(d.cfg.scale_factor == 0.3611f && d.cfg.shift_factor == 0.1159f);
  rewrite(path, bare, [](const TensorInfo&, SafeTensorsWriter&, const std::vector<float>&) { return true; }, {});
  CHECK_THROWS(FluxVae::load(bare), "graft.groups");
  std::remove(path.c_str());
  std::remove(bare.c_str());
}

TEST(vae_load_errors_name_file_and_tensor) {
  std::string path = temp_path("good.safetensors"), bad = temp_path("bad.safetensors");
  write_random_vae(path, micro_config(), 3);
  std::map<std::string, std::string> meta = {{"graft.groups", "4"}};
  auto keep_all = [](const TensorInfo&, SafeTensorsWriter&, const std::vector<float>&) { return true; };

  rewrite(path, bad, [](const TensorInfo& t, SafeTensorsWriter&, const std::vector<float>&) {
    return t.name != "decoder.up.1.block.0.conv2.weight";
  }, meta);
  CHECK_THROWS(FluxVae::load(bad), bad);
  CHECK_THROWS(FluxVae::load(bad), "'decoder.up.1.block.0.conv2.weight' is missing (BFL layout)");

  rewrite(path, bad, [](const TensorInfo& t, SafeTensorsWriter& w, const std::vector<float>& v) {
    if (t.name != "encoder.mid.attn_1.q.weight") return true;
    w.add(t.name, DType::F32, {8, 32}, v.data());  // as many values, the wrong shape
    return false;
  }, meta);
  CHECK_THROWS(FluxVae::load(bad), "encoder.mid.attn_1.q.weight");
  // A 1x1 conv stored as a linear [C, C] (diffusers' attention layers) is the same tensor: it loads.
  rewrite(path, bad, [](const TensorInfo& t, SafeTensorsWriter& w, const std::vector<float>& v) {
    if (t.name != "encoder.mid.attn_1.q.weight") return true;
    w.add(t.name, DType::F32, {16, 16}, v.data());
    return false;
  }, meta);
  CHECK(FluxVae::load(bad).cfg.ch == 8);

  rewrite(path, bad, keep_all, {{"graft.groups", "four"}});
  CHECK_THROWS(FluxVae::load(bad), "graft.groups must be a positive integer");
  rewrite(path, bad, keep_all, {{"graft.groups", "4"}, {"graft.scale_factor", "x"}});
  CHECK_THROWS(FluxVae::load(bad), "graft.scale_factor must be a number");

  rewrite(path, bad, [](const TensorInfo& t, SafeTensorsWriter&, const std::vector<float>&) {
    return t.name.rfind("encoder.", 0) != 0;  // a decoder-only file
  }, meta);
  CHECK_THROWS(FluxVae::load(bad), "tensor 'encoder.conv_in.weight' or 'decoder.conv_in.weight' is missing");
  std::remove(path.c_str());
  std::remove(bad.c_str());
}

TEST(vae_shapes_and_latent_scaling) {
  VaeConfig c = micro_config();
  c.ch_mult = {1, 2, 2};
  FluxVae m = FluxVae::random(c, 1);
  const int B = 2, H = 16, W = 12;
  Buf img = random_buf((size_t)B * 3 * H * W, 5);
  NoGrad no_grad;
  FluxVae::Moments mo = m.encode(from_vector(img, {B, 3, H, W}, Device::cpu()));
  const int h = (int)mo.mean.size(2), w = (int)mo.mean.size(3);
  CHECK(h == 4 && w == 3 && c.downscale() == 4);
  CHECK(mo.mean.shape == Shape({B, 2, h, w}) && mo.logvar.shape == mo.mean.shape);
  std::vector<float> out = to_floats(m.decode(mo.mean)), mean = to_floats(mo.mean);
  CHECK(out.size() == img.size());
  for (float v : out) CHECK(std::isfinite(v));

  std::vector<float> z = mean;
  vae_latent_to_dit(c, z.data(), (long)z.size());
  CHECK_NEAR(z[3], c.scale_factor * (mean[3] - c.shift_factor), 1e-7);
  vae_latent_from_dit(c, z.data(), (long)z.size());
  for (size_t i = 0; i < z.size(); i++) CHECK_NEAR(z[i], mean[i], 1e-6);
}

TEST(vae_gaussian_sample_and_kl_gradients) {
  const int n = 12;
  Buf mean = random_buf(n, 1), logvar = random_buf(n, 2), noise = random_buf(n, 3), w = random_buf(n, 4), z(n);
  GradCheck g;
  g.op = "gaussian_sample";
  g.inputs = {{"mean", &mean}, {"logvar", &logvar}};
  g.loss = [&] {
    cpu::gaussian_sample_forward(z.data(), mean.data(), logvar.data(), noise.data(), n);
    return dot(z, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    cpu::gaussian_sample_backward(d[0], d[1], w.data(), logvar.data(), noise.data(), n);
  };
  check_gradients(g);
  GradCheck k;
  k.op = "gaussian_kl";
  k.inputs = {{"mean", &mean}, {"logvar", &logvar}};
  k.loss = [&] { return 3.0 * cpu::gaussian_kl_forward(mean.data(), logvar.data(), n); };
  k.backward = [&](const std::vector<float*>& d) {
    cpu::gaussian_kl_backward(d[0], d[1], mean.data(), logvar.data(), n, 3.0f);
  };
  check_gradients(k);
  // KL of N(0, 1) to itself is zero.
  Buf zeros(n, 0.0f);
  CHECK_NEAR(cpu::gaussian_kl_forward(zeros.data(), zeros.data(), n), 0.0, 0);
}

// ----------------------------------------------------------------------------------------------
// Whole-model gradients, through the tape. L is a fixed random weighting of the outputs; for every
// weight tensor, three of its entries (first, middle, last) are perturbed by +-eps and the central
// difference of L compared with the analytic gradient. The error of a tensor is max |analytic -
// numeric| over the entries checked, divided by the largest analytic entry of that tensor (the
// gradient's scale).

namespace {

struct ModelGradCheck {
  std::string what;
  float* values;          // perturbed in place
  size_t size;
  const float* analytic;  // its analytic gradient
};

// Returns the worst relative error; fails on any tensor above tol or with an all-zero gradient.
double check_model_gradients(const std::vector<ModelGradCheck>& checks, const std::function<double()>& loss, float eps,
                             double tol) {
  NoGrad no_grad;
  double worst = 0.0, global = 0.0;
  std::string worst_name;
  for (const ModelGradCheck& c : checks)
    for (size_t i = 0; i < c.size; i++) global = std::max(global, (double)std::fabs(c.analytic[i]));
  for (const ModelGradCheck& c : checks) {
    double scale = 0.0;
    for (size_t i = 0; i < c.size; i++) scale = std::max(scale, (double)std::fabs(c.analytic[i]));
    // The key bias of attention adds q.b_k to every score of a row, which softmax cancels: its
    // gradient is zero in exact arithmetic (what is computed is rounding). Checked against the
    // model's gradient scale instead: it must stay that small, and so must the numeric one.
    const std::string kb = "attn_1.k.bias";
    bool zero_in_theory = c.what.size() > kb.size() && c.what.compare(c.what.size() - kb.size(), kb.size(), kb) == 0;
    if (zero_in_theory) scale = global;
    else if (!(scale > 1e-6 * global)) fail_at(__FILE__, __LINE__, c.what + ": gradient is (nearly) identically zero");
    double err = 0.0;
    for (size_t i : {(size_t)0, c.size / 2, c.size - 1}) {
      float& x = c.values[i];
      const float orig = x, up = orig + eps, down = orig - eps;
      x = up;
      double lu = loss();
      x = down;
      double ld = loss();
      x = orig;
      double numeric = (lu - ld) / ((double)up - (double)down);
      err = std::max(err, std::fabs(numeric - c.analytic[i]) / scale);
    }
    if (err > worst) worst = err, worst_name = c.what;
    if (!(err <= tol)) fail_at(__FILE__, __LINE__, c.what + ": relative error " + std::to_string(err));
  }
  std::printf("      %zu tensors, worst rel err %.2e (%s), tol %.0e\n", checks.size(), worst, worst_name.c_str(), tol);
  return worst;
}

// Step and tolerance measured on this micro VAE: the worst error over all tensors is 2e-4
// (encoder) and 3e-4 (decoder) at eps 1e-2, fp32 rounding noise of L over the step; tol 2e-3
// keeps a 7x margin and still fails a gradient 1% off (or a missed term, which is far larger).
const float MODEL_EPS = 1e-2f;
const double MODEL_TOL = 2e-3;

// The model's tensors as trainable leaves, with their input `x` (a leaf too).
struct Trainable {
  std::vector<NamedParam> params;
  Tensor x;
  Trainable(FluxVae& m, const Buf& input, const Shape& shape) : params(m.params()) {
    make_trainable(params);
    x = from_vector(input, shape, Device::cpu());
    make_leaf(x);
  }
  std::vector<float> grad(const NamedParam& p) const { return to_floats(p.t->meta->grad); }
};

}  // namespace

TEST(vae_encoder_gradients_every_weight) {
  FluxVae m = FluxVae::random(micro_config(), 11);
  const int B = 2, H = 8, W = 8;
  Trainable t(m, random_buf((size_t)B * 3 * H * W, 12), {B, 3, H, W});
  FluxVae::Moments mo = m.encode(t.x);
  Buf wm = random_buf(mo.mean.numel(), 13), wl = random_buf(mo.logvar.numel(), 14);
  auto weights = [&] {
    return std::vector<Tensor>{from_vector(wm, mo.mean.shape, Device::cpu()), from_vector(wl, mo.mean.shape, Device::cpu())};
  };
  backward({mo.mean, mo.logvar}, weights());
  std::map<std::string, std::vector<float>> grads;
  for (NamedParam& p : t.params) grads[p.name] = t.grad(p);
  const std::vector<float> dimg = to_floats(t.x.meta->grad);

  // Backward accumulates: a second forward and backward add the same again.
  mo = m.encode(t.x);
  backward({mo.mean, mo.logvar}, weights());
  for (NamedParam& p : t.params) {
    const std::vector<float> twice = t.grad(p), &once = grads[p.name];
    for (size_t i = 0; i < once.size(); i += 7) CHECK_NEAR(twice[i], 2.0f * once[i], 1e-5 * (1 + std::fabs(once[i])));
  }

  auto loss = [&] {
    FluxVae::Moments o = m.encode(t.x);
    return dot(to_floats(o.mean), wm) + dot(to_floats(o.logvar), wl);
  };
  std::vector<ModelGradCheck> checks;
  for (NamedParam& p : t.params) {
    const std::vector<float>& g = grads[p.name];
    if (p.name.rfind("encoder.", 0) != 0) {  // the decoder gets nothing from the encoder's backward
      for (float v : g) CHECK(v == 0.0f);
      continue;
    }
    checks.push_back({p.name, p.t->data<float>(), g.size(), g.data()});
  }
  checks.push_back({"image", t.x.data<float>(), dimg.size(), dimg.data()});
  check_model_gradients(checks, loss, MODEL_EPS, MODEL_TOL);
}

TEST(vae_decoder_gradients_every_weight) {
  FluxVae m = FluxVae::random(micro_config(), 21);
  const int B = 2, h = 4, w = 3;
  Trainable t(m, random_buf((size_t)B * 2 * h * w, 22), {B, 2, h, w});
  Tensor img = m.decode(t.x);
  CHECK(img.shape == Shape({B, 3, 8, 6}));
  Buf wi = random_buf(img.numel(), 23);
  backward(img, from_vector(wi, img.shape, Device::cpu()));
  std::map<std::string, std::vector<float>> grads;
  for (NamedParam& p : t.params) grads[p.name] = t.grad(p);
  const std::vector<float> dz = to_floats(t.x.meta->grad);

  auto loss = [&] { return dot(to_floats(m.decode(t.x)), wi); };
  std::vector<ModelGradCheck> checks;
  for (NamedParam& p : t.params) {
    const std::vector<float>& g = grads[p.name];
    if (p.name.rfind("decoder.", 0) != 0) {
      for (float v : g) CHECK(v == 0.0f);
      continue;
    }
    checks.push_back({p.name, p.t->data<float>(), g.size(), g.data()});
  }
  checks.push_back({"latent", t.x.data<float>(), dz.size(), dz.data()});
  check_model_gradients(checks, loss, MODEL_EPS, MODEL_TOL);
}

// The same random autoencoder written under diffusers' AutoencoderKL names (attention's 1x1 convs as
// [C, C] linears, up blocks numbered in the order they run) and, with that layout's config.json
// beside it, read back: the same encoding and decoding as from BFL's names.
TEST(vae_diffusers_layout_loads_the_same_model) {
  VaeConfig c = micro_config();
  c.ch_mult = {1, 2, 2};
  c.scale_factor = 0.5f;
  c.shift_factor = 0.25f;
  std::string dir = temp_path("diffusers");
  make_dirs(dir);
  write_random_vae(dir + "/ae.safetensors", c, 9);
  Layout layout = flux_vae_diffusers_layout(c.levels());
  CHECK(layout.map("decoder.up.2.block.0.conv1.weight").parts[0] == "decoder.up_blocks.0.resnets.0.conv1.weight");
  CHECK(layout.map("encoder.mid.attn_1.norm.weight").parts[0] == "encoder.mid_block.attentions.0.group_norm.weight");
  CHECK(layout.map("encoder.down.0.downsample.conv.bias").parts[0] == "encoder.down_blocks.0.downsamplers.0.conv.bias");
  FluxVae::load(dir + "/ae.safetensors").save_diffusers(dir + "/vae", DType::F32);
  CHECK(SafeTensorsFile::open(dir + "/vae/diffusion_pytorch_model.safetensors").has("encoder.mid_block.attentions.0.to_q.weight"));
  FluxVae a = FluxVae::load(dir + "/ae.safetensors"), b = FluxVae::load(dir + "/vae");
  CHECK(b.cfg.ch_mult == c.ch_mult && b.cfg.groups == c.groups && b.cfg.scale_factor == 0.5f && b.cfg.shift_factor == 0.25f);
  NoGrad no_grad;
  Tensor img = from_vector(random_buf(2 * 3 * 16 * 16, 10), {2, 3, 16, 16}, Device::cpu());
  FluxVae::Moments ma = a.encode(img), mb = b.encode(img);
  CHECK(to_floats(ma.mean) == to_floats(mb.mean) && to_floats(ma.logvar) == to_floats(mb.logvar));
  CHECK(to_floats(a.decode(ma.mean)) == to_floats(b.decode(mb.mean)));
}
