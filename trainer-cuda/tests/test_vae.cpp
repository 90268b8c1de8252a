// Tests of the FLUX autoencoder (src/vae.h): the layout and names of the real checkpoint, loading
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

const VaeTensor* find_tensor(const VaeModel& m, const std::string& name) {
  for (const VaeTensor& t : m.tensors)
    if (t.name == name) return &t;
  return nullptr;
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
  VaeModel m = VaeModel::create(flux_vae_config());
  // FLUX.1's ae.safetensors holds 83,819,683 parameters (244 tensors).
  CHECK(m.params.size() == 83819683u);
  CHECK(m.tensors.size() == 244u);
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
    const VaeTensor* t = find_tensor(m, w.name);
    if (!t) fail_at(__FILE__, __LINE__, std::string("missing ") + w.name);
    if (t->shape != w.shape) fail_at(__FILE__, __LINE__, std::string(w.name) + " has shape " + shape_str(t->shape));
  }
  CHECK(!find_tensor(m, "encoder.down.3.downsample.conv.weight"));  // no downsample after the last level
  CHECK(!find_tensor(m, "decoder.up.0.upsample.conv.weight"));      // nor an upsample at level 0
  CHECK(!find_tensor(m, "encoder.down.0.block.0.nin_shortcut.weight"));
}

TEST(vae_config_rejects_groups_not_dividing_channels) {
  VaeConfig c = micro_config();
  c.groups = 32;
  CHECK_THROWS(VaeModel::create(c), "graft.groups");
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
  VaeModel m = VaeModel::load(path);
  CHECK(m.cfg.ch == 8 && m.cfg.ch_mult == std::vector<int>({1, 2, 3}) && m.cfg.num_res_blocks == 2);
  CHECK(m.cfg.z_channels == 2 && m.cfg.in_channels == 4 && m.cfg.out_channels == 2 && m.cfg.groups == 4);
  CHECK(m.cfg.scale_factor == 0.5f && m.cfg.shift_factor == -0.25f);
  VaeModel ref = VaeModel::create(c);
  vae_init_random(ref, 7);
  CHECK(m.params == ref.params);

  // Without the graft.* metadata, FLUX's factors are the defaults (and 32 groups, which a width of
  // 8 cannot use: the error says which key to set).
  std::string bare = temp_path("bare.safetensors");
  rewrite(path, bare, [](const TensorInfo&, SafeTensorsWriter&, const std::vector<float>&) { return true; }, {{"graft.groups", "4"}});
  VaeModel d = VaeModel::load(bare);
  CHECK(d.cfg.scale_factor == 0.3611f && d.cfg.shift_factor == 0.1159f);
  rewrite(path, bare, [](const TensorInfo&, SafeTensorsWriter&, const std::vector<float>&) { return true; }, {});
  CHECK_THROWS(VaeModel::load(bare), "graft.groups");
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
  CHECK_THROWS(VaeModel::load(bad), bad);
  CHECK_THROWS(VaeModel::load(bad), "decoder.up.1.block.0.conv2.weight' is missing");

  rewrite(path, bad, [](const TensorInfo& t, SafeTensorsWriter& w, const std::vector<float>& v) {
    if (t.name != "encoder.mid.attn_1.q.weight") return true;
    w.add(t.name, DType::F32, {16, 16}, v.data());  // a linear's shape instead of the 1x1 conv's
    return false;
  }, meta);
  CHECK_THROWS(VaeModel::load(bad), "encoder.mid.attn_1.q.weight");

  rewrite(path, bad, keep_all, {{"graft.groups", "four"}});
  CHECK_THROWS(VaeModel::load(bad), "graft.groups must be a positive integer");
  rewrite(path, bad, keep_all, {{"graft.groups", "4"}, {"graft.scale_factor", "x"}});
  CHECK_THROWS(VaeModel::load(bad), "graft.scale_factor must be a number");

  rewrite(path, bad, [](const TensorInfo& t, SafeTensorsWriter&, const std::vector<float>&) {
    return t.name.rfind("encoder.", 0) != 0;  // a decoder-only file
  }, meta);
  CHECK_THROWS(VaeModel::load(bad), "tensor 'encoder.conv_in.weight' is missing");
  std::remove(path.c_str());
  std::remove(bad.c_str());
}

TEST(vae_shapes_and_latent_scaling) {
  VaeConfig c = micro_config();
  c.ch_mult = {1, 2, 2};
  VaeModel m = VaeModel::create(c);
  vae_init_random(m, 1);
  VaeRunner r(&m);
  const int B = 2, H = 16, W = 12;
  Buf img = random_buf((size_t)B * 3 * H * W, 5);
  std::vector<float> mean, logvar, out;
  int h = 0, w = 0;
  r.encode(img.data(), B, H, W, mean, logvar, &h, &w);
  CHECK(h == 4 && w == 3 && c.downscale() == 4);
  CHECK(mean.size() == (size_t)B * 2 * h * w && logvar.size() == mean.size());
  r.decode(mean.data(), B, h, w, out);
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
    gaussian_sample_forward(z.data(), mean.data(), logvar.data(), noise.data(), n);
    return dot(z, w);
  };
  g.backward = [&](const std::vector<float*>& d) {
    gaussian_sample_backward(d[0], d[1], w.data(), logvar.data(), noise.data(), n);
  };
  check_gradients(g);
  GradCheck k;
  k.op = "gaussian_kl";
  k.inputs = {{"mean", &mean}, {"logvar", &logvar}};
  k.loss = [&] { return 3.0 * gaussian_kl_forward(mean.data(), logvar.data(), n); };
  k.backward = [&](const std::vector<float*>& d) {
    gaussian_kl_backward(d[0], d[1], mean.data(), logvar.data(), n, 3.0f);
  };
  check_gradients(k);
  // KL of N(0, 1) to itself is zero.
  Buf zeros(n, 0.0f);
  CHECK_NEAR(gaussian_kl_forward(zeros.data(), zeros.data(), n), 0.0, 0);
}

// ----------------------------------------------------------------------------------------------
// Whole-model gradients. L is a fixed random weighting of the outputs; for every weight tensor,
// three of its entries (first, middle, last) are perturbed by +-eps and the central difference of
// L compared with the analytic gradient. The error of a tensor is max |analytic - numeric| over
// the entries checked, divided by the largest analytic entry of that tensor (the gradient's scale).

namespace {

struct ModelGradCheck {
  std::string what;
  std::vector<float>* values;  // perturbed in place
  size_t offset, size;         // the tensor's slice of *values
  const float* analytic;       // its analytic gradient (same slice)
};

// Returns the worst relative error; fails on any tensor above tol or with an all-zero gradient.
double check_model_gradients(const std::vector<ModelGradCheck>& checks, const std::function<double()>& loss, float eps,
                             double tol) {
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
      float& x = (*c.values)[c.offset + i];
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

}  // namespace

TEST(vae_encoder_gradients_every_weight) {
  VaeModel m = VaeModel::create(micro_config());
  vae_init_random(m, 11);
  VaeRunner r(&m);
  const int B = 2, H = 8, W = 8;
  Buf img = random_buf((size_t)B * 3 * H * W, 12);
  std::vector<float> mean, logvar;
  int h = 0, w = 0;
  r.encode(img.data(), B, H, W, mean, logvar, &h, &w);
  Buf wm = random_buf(mean.size(), 13), wl = random_buf(logvar.size(), 14);
  auto loss = [&] {
    r.encode(img.data(), B, H, W, mean, logvar);
    return dot(mean, wm) + dot(logvar, wl);
  };
  loss();
  m.zero_grad();
  Buf dimg(img.size(), 0.0f);
  r.encode_backward(wm.data(), wl.data(), dimg.data());
  std::vector<float> grads = m.grads;

  // Backward accumulates: a second call adds the same again.
  r.encode_backward(wm.data(), wl.data(), nullptr);
  for (size_t i = 0; i < grads.size(); i += 97) CHECK_NEAR(m.grads[i], 2.0f * grads[i], 1e-5 * (1 + std::fabs(grads[i])));

  std::vector<ModelGradCheck> checks;
  for (const VaeTensor& t : m.tensors) {
    if (t.name.rfind("encoder.", 0) != 0) {  // the decoder gets nothing from the encoder's backward
      for (size_t i = 0; i < t.size; i++) CHECK(grads[t.offset + i] == 0.0f);
      continue;
    }
    checks.push_back({t.name, &m.params, t.offset, t.size, grads.data() + t.offset});
  }
  checks.push_back({"image", &img, 0, img.size(), dimg.data()});
  check_model_gradients(checks, loss, MODEL_EPS, MODEL_TOL);
}

TEST(vae_decoder_gradients_every_weight) {
  VaeModel m = VaeModel::create(micro_config());
  vae_init_random(m, 21);
  VaeRunner r(&m);
  const int B = 2, h = 4, w = 3;
  Buf z = random_buf((size_t)B * 2 * h * w, 22);
  std::vector<float> img;
  r.decode(z.data(), B, h, w, img);
  CHECK(img.size() == (size_t)B * 3 * 8 * 6);
  Buf wi = random_buf(img.size(), 23);
  auto loss = [&] {
    r.decode(z.data(), B, h, w, img);
    return dot(img, wi);
  };
  loss();
  m.zero_grad();
  Buf dz(z.size(), 0.0f);
  r.decode_backward(wi.data(), dz.data());
  std::vector<float> grads = m.grads;

  std::vector<ModelGradCheck> checks;
  for (const VaeTensor& t : m.tensors) {
    if (t.name.rfind("decoder.", 0) != 0) {
      for (size_t i = 0; i < t.size; i++) CHECK(grads[t.offset + i] == 0.0f);
      continue;
    }
    checks.push_back({t.name, &m.params, t.offset, t.size, grads.data() + t.offset});
  }
  checks.push_back({"latent", &z, 0, z.size(), dz.data()});
  check_model_gradients(checks, loss, MODEL_EPS, MODEL_TOL);
}
