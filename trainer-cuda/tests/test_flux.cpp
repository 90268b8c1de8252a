// Model-level checks of the FLUX transformer, LoRA files, job.json and the optimizer.
// (The comparison against an independent PyTorch implementation is tests/test_flux_torch.py.)
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <memory>
#include <set>
#include <cstdio>
#include <fstream>
#include <string>

#include "models/flux.h"
#include "core/storage.h"
#include "ops/quant.h"
#include "train/job.h"
#include "train/lora.h"
#include "ops/cpu_ops.h"
#include "train/optim.h"
#include "core/rng.h"
#include "core/autograd.h"
#include "ops/ops.h"
#include "test.h"
#include "demo/tiny.h"
#include "fp8_files.h"

using namespace graft;

namespace {

std::string temp_dir() {
  char tmpl[] = "/tmp/graft-test-XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

FluxConfig micro_config() {
  FluxConfig c;
  c.in_channels = 16;
  c.out_channels = 16;
  c.hidden = 16;
  c.heads = 2;
  c.head_dim = 8;
  c.mlp_hidden = 32;
  c.context_dim = 8;
  c.vec_dim = 4;
  c.n_double = 1;
  c.n_single = 1;
  c.guidance_embed = true;
  c.axes_dim[0] = 2;
  c.axes_dim[1] = 2;
  c.axes_dim[2] = 4;
  return c;
}

FluxInputs random_inputs(const FluxConfig& c, int B, int gh, int gw, int Lt, uint64_t seed) {
  FluxInputs in;
  in.B = B;
  in.L_img = gh * gw;
  in.L_txt = Lt;
  Rng rng(seed);
  auto fill = [&](std::vector<float>& v, size_t n) {
    v.resize(n);
    for (float& x : v) x = rng.normal();
  };
  fill(in.img, (size_t)B * in.L_img * c.in_channels);
  fill(in.txt, (size_t)B * Lt * c.context_dim);
  fill(in.y, (size_t)B * c.vec_dim);
  in.img_ids.resize((size_t)B * in.L_img * 3);
  flux_img_ids(in.img_ids.data(), B, gh, gw);
  in.txt_ids.assign((size_t)B * Lt * 3, 0.0f);
  for (int b = 0; b < B; ++b) {
    in.timesteps.push_back(rng.uniform());
    in.guidance.push_back(1.0f + 3.0f * rng.uniform());
  }
  return in;
}

// Random non-zero B so that every A gets a gradient too.
void randomize_lora(LoraSet& set, uint64_t seed) {
  Rng rng(seed, 3);
  std::vector<float> p(set.size());
  for (float& v : p) v = 0.2f * rng.normal();
  set.set_params(p);
}

std::vector<float> predict(const FluxTransformer& m, const FluxInputs& in) {
  NoGrad no_grad;
  return to_floats(m.forward(in));
}

double loss_of(const FluxTransformer& m, const FluxInputs& in, const std::vector<float>& target) {
  std::vector<float> out = predict(m, in);
  double s = 0.0;
  for (size_t i = 0; i < out.size(); ++i) s += (double)(out[i] - target[i]) * (out[i] - target[i]);
  return s / out.size();
}

std::vector<float> random_target(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> t(n);
  for (float& v : t) v = rng.normal();
  return t;
}

// The LoRA gradients of mean((out - target)^2), through the tape.
std::vector<float> lora_gradients(const FluxTransformer& m, LoraSet& lora, const FluxInputs& in,
                                  const std::vector<float>& target) {
  lora.zero_grad();
  Tensor out = m.forward(in);
  const Tensor t = from_vector(target, out.shape, Device::cpu());
  backward(out, mse_grad(out, t, 1.0f));
  return to_floats(lora.grads);
}

}  // namespace

// Every 2-D ".weight" of a FLUX checkpoint is a linear layer's.
static bool is_linear_weight(const std::string& name) {
  return name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 && name.find("norm") == std::string::npos;
}

// Central differences on a spread of every adapter's parameters (first, middle and last entry of
// each matrix) against the tape's gradients of mean((out - target)^2).
static void check_adapter_gradients(LoraSet& lora, const char* what) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 5);
  FluxTransformer m = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
  randomize_lora(lora, 8);
  lora_attach(m.linears(), &lora);
  FluxInputs in = random_inputs(c, 2, 2, 3, 3, 9);
  const std::vector<float> target = random_target(predict(m, in).size(), 10);
  const std::vector<float> grads = lora_gradients(m, lora, in, target);
  const float eps = 1e-2f;
  double worst = 0.0;
  int checked = 0;
  float* params = lora.params.data<float>();
  for (const LoraAdapter& ad : lora.adapters) {
    for (const AdapterMatrix& mat : ad.mats) {
      const size_t n = (size_t)mat.rows * mat.cols;
      for (size_t k : {mat.offset, mat.offset + n / 2, mat.offset + n - 1}) {
        float saved = params[k];
        params[k] = saved + eps;
        double lp = loss_of(m, in, target);
        params[k] = saved - eps;
        double lm = loss_of(m, in, target);
        params[k] = saved;
        double fd = (lp - lm) / (2 * eps), an = grads[k];
        double err = std::fabs(fd - an) / std::max(1e-3, std::fabs(fd) + std::fabs(an));
        worst = std::max(worst, err);
        if (err > 2e-2)
          std::printf("      %s.%s param %zu: analytic %.6g vs finite difference %.6g\n", ad.target.module.c_str(),
                      mat.key.c_str(), k, an, fd);
        ++checked;
      }
    }
  }
  std::printf("      %s: %d parameters across %zu adapters, worst relative error %.2e\n", what, checked,
              lora.adapters.size(), worst);
  CHECK(worst < 2e-2);
}

TEST(flux_lora_gradients_match_finite_differences) {
  LoraSet lora = lora_create(flux_lora_targets(micro_config(), /*include_modulation=*/true), 2, 4.0f, 7);
  check_adapter_gradients(lora, "LoRA");
}

// LoKr with both kinds of second factor: low-rank (w2_a @ w2_b) and full (lokr_full_rank).
TEST(flux_lokr_gradients_match_finite_differences) {
  const std::vector<LoraTarget> targets = flux_lora_targets(micro_config(), true);
  LoraSet low = lokr_create(targets, 2, 4.0f, -1, false, 7);
  size_t decomposed = 0;
  for (const LoraAdapter& a : low.adapters) decomposed += a.mats.size() == 3;
  CHECK(decomposed > 0);
  check_adapter_gradients(low, "LoKr (w2 low-rank)");
  LoraSet full = lokr_create(targets, 2, 4.0f, 4, true, 7);
  for (const LoraAdapter& a : full.adapters) CHECK(a.mats.size() == 2 && a.scale == 1.0f);
  check_adapter_gradients(full, "LoKr (full rank, factor 4)");
}

// ComfyUI's scaled fp8 checkpoints (every linear weight fp8(W / s) with its scale_weight s beside it)
// train adapters exactly as the same model with those weights dequantized to fp32: the adapters add
// onto the scaled layer's output. LoRA and LoKr, outputs and every adapter gradient.
TEST(flux_adapters_on_scaled_fp8_weights_match_the_dequantized_model) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 5);
  graft_test::write_fp8_twins(dir + "/m.safetensors", dir + "/fp8.safetensors", dir + "/deq.safetensors", is_linear_weight, false);
  FluxInputs in = random_inputs(c, 2, 2, 3, 3, 9);
  for (const bool lokr : {false, true}) {
    std::vector<float> outs[2], grads[2];
    for (int k = 0; k < 2; ++k) {
      FluxTransformer m = FluxTransformer::load(dir + (k ? "/deq.safetensors" : "/fp8.safetensors"), Device::cpu());
      const std::vector<LoraTarget> targets = flux_lora_targets(m.cfg, true);
      LoraSet set = lokr ? lokr_create(targets, 2, 4.0f, -1, false, 7) : lora_create(targets, 2, 4.0f, 7);
      randomize_lora(set, 8);
      lora_attach(m.linears(), &set);
      const std::vector<float> target = random_target(predict(m, in).size(), 10);
      outs[k] = predict(m, in);
      grads[k] = lora_gradients(m, set, in, target);
    }
    double out_err = 0, out_max = 0, g_err = 0, g_max = 0;
    for (size_t i = 0; i < outs[0].size(); ++i)
      out_err = std::max(out_err, (double)std::fabs(outs[0][i] - outs[1][i])), out_max = std::max(out_max, (double)std::fabs(outs[1][i]));
    for (size_t i = 0; i < grads[0].size(); ++i)
      g_err = std::max(g_err, (double)std::fabs(grads[0][i] - grads[1][i])), g_max = std::max(g_max, (double)std::fabs(grads[1][i]));
    std::printf("      %s on scaled fp8 vs dequantized fp32: output rel %.2e, gradients rel %.2e\n", lokr ? "LoKr" : "LoRA",
                out_err / out_max, g_err / g_max);
    CHECK(out_err < 1e-5 * out_max);
    CHECK(g_err < 1e-4 * g_max);
  }
}

// A scaled fp8 checkpoint with one scale missing is refused naming the tensor, not computed off by
// that scale; an fp8 checkpoint with no scales at all (plain e4m3fn) computes with scale 1.
TEST(flux_scaled_fp8_checkpoint_missing_a_scale_is_refused) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 5);
  graft_test::write_fp8_twins(dir + "/m.safetensors", dir + "/fp8.safetensors", dir + "/deq.safetensors", is_linear_weight, false);
  SafeTensorsFile f = SafeTensorsFile::open(dir + "/fp8.safetensors");
  SafeTensorsWriter missing, plain;
  missing.metadata = plain.metadata = f.metadata;
  for (const TensorInfo& t : f.tensors) {
    const bool scale = t.name.size() > 13 && t.name.compare(t.name.size() - 13, 13, ".scale_weight") == 0;
    if (t.name != "double_blocks.0.img_mlp.2.scale_weight") missing.add_raw(t.name, t.dtype, t.shape, f.raw(t), (size_t)numel(t.shape) * dtype_size(t.dtype));
    if (!scale) plain.add_raw(t.name, t.dtype, t.shape, f.raw(t), (size_t)numel(t.shape) * dtype_size(t.dtype));
  }
  missing.write(dir + "/missing.safetensors");
  plain.write(dir + "/plain.safetensors");
  CHECK_THROWS(FluxTransformer::load(dir + "/missing.safetensors", Device::cpu()),
               "tensor 'double_blocks.0.img_mlp.2.scale_weight' is missing beside the F8_E4M3 weight in a scaled fp8 checkpoint");
  FluxTransformer m = FluxTransformer::load(dir + "/plain.safetensors", Device::cpu());
  CHECK(m.linears()[0]->W.dtype == DType::F8_E4M3 && !m.linears()[0]->w_scale.defined());
}

// The fp32 weight a quantized linear layer computes with: its codes decoded and scaled.
static Tensor dequantized_weight(const Linear& l) {
  std::vector<float> w((size_t)l.out * l.in);
  if (l.w_absmax.defined()) {
    dequantize_nf4(l.W.data<uint8_t>(), l.w_absmax.data<float>(), 0, w.size(), w.data());
  } else {
    w = to_floats(l.W);
    const std::vector<float> s = to_floats(l.w_scale);
    for (int r = 0; r < l.out; ++r)
      for (int k = 0; k < l.in; ++k) w[(size_t)r * l.in + k] *= s[r];
  }
  return from_vector(w, {l.out, l.in}, Device::cpu());
}

// model.quantize: each linear weight is quantized as it loads (fp8 or int8 codes with a scale per
// output channel, or NF4 blocks). The model then computes, and trains a LoRA, exactly as an fp32 model
// holding those dequantized weights; against the original fp32 model it differs by the format's
// rounding only (the formats' codes themselves are checked against PyTorch in test_quant_torch.py).
TEST(flux_quantized_on_load_computes_as_its_dequantized_weights) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 15);
  graft_test::write_fp8_twins(dir + "/m.safetensors", "", dir + "/deq8.safetensors", is_linear_weight, /*per_row=*/true);
  FluxTransformer full = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
  FluxInputs in = random_inputs(c, 2, 2, 3, 3, 19);
  auto rel = [](const std::vector<float>& a, const std::vector<float>& b) {
    double e = 0, m = 0;
    for (size_t i = 0; i < a.size(); ++i) e = std::max(e, (double)std::fabs(a[i] - b[i])), m = std::max(m, (double)std::fabs(b[i]));
    return e / m;
  };
  const std::vector<float> of = predict(full, in);
  const std::vector<float> target = random_target(of.size(), 20);
  // How far each format may move the output from the fp32 model's: its rounding is there, and only that.
  const struct { WeightFormat f; DType codes; double lo, hi; } formats[] = {
      {WeightFormat::fp8, DType::F8_E4M3, 1e-4, 0.1}, {WeightFormat::int8, DType::I8, 1e-5, 0.02},
      {WeightFormat::nf4, DType::U8, 1e-3, 0.3}};
  for (const auto& fmt : formats) {
    FluxTransformer q = FluxTransformer::load(dir + "/m.safetensors", Device::cpu(), fmt.f);
    FluxTransformer deq = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
    size_t kept = 0;
    std::vector<Linear*> ql = q.linears(), dl = deq.linears();
    for (size_t i = 0; i < ql.size(); ++i) {
      kept += ql[i]->W.dtype == fmt.codes && (fmt.f == WeightFormat::nf4 ? ql[i]->w_absmax.defined() : ql[i]->w_scale.numel() == ql[i]->out);
      dl[i]->W = dequantized_weight(*ql[i]);
    }
    CHECK(kept == ql.size());
    if (fmt.f == WeightFormat::fp8) {  // the per-row fp8 the test files write, independently
      FluxTransformer twin = FluxTransformer::load(dir + "/deq8.safetensors", Device::cpu());
      CHECK(rel(predict(twin, in), predict(deq, in)) < 1e-6);
    }
    const std::vector<float> oq = predict(q, in), od = predict(deq, in);
    std::vector<float> grads[2];
    for (int k = 0; k < 2; ++k) {
      FluxTransformer& m = k ? deq : q;
      LoraSet set = lora_create(flux_lora_targets(m.cfg, true), 2, 4.0f, 7);
      randomize_lora(set, 8);
      lora_attach(m.linears(), &set);
      grads[k] = lora_gradients(m, set, in, target);
    }
    std::printf("      %s on load vs its dequantized weights: output rel %.2e, LoRA gradients rel %.2e; vs the fp32 model: "
                "output rel %.2e\n", weight_format_name(fmt.f), rel(oq, od), rel(grads[0], grads[1]), rel(oq, of));
    CHECK(rel(oq, od) < 1e-5);
    CHECK(rel(grads[0], grads[1]) < 1e-4);
    CHECK(rel(oq, of) > fmt.lo && rel(oq, of) < fmt.hi);
  }
}

// Full training (every weight) and the input gradients that train the text encoder through the
// transformer, against central differences: a few entries of every tensor of the checkpoint.
TEST(flux_full_and_input_gradients_match_finite_differences) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 31);
  FluxTransformer m = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
  std::vector<NamedParam> params = m.params();
  make_trainable(params);
  FluxInputs in = random_inputs(c, 2, 2, 2, 3, 32);
  const Device cpu = Device::cpu();
  Tensor txt = from_vector(in.txt, {in.B, in.L_txt, c.context_dim}, cpu), y = from_vector(in.y, {in.B, c.vec_dim}, cpu);
  make_leaf(txt);
  make_leaf(y);
  auto run = [&] {
    return m.forward(from_vector(in.img, {in.B, in.L_img, c.in_channels}, cpu), txt, y, from_vector(in.timesteps, {in.B}, cpu),
                     from_vector(in.guidance, {in.B}, cpu), m.rope_for(in));
  };
  Tensor out = run();
  const std::vector<float> target = random_target(out.numel(), 33);
  const Tensor t = from_vector(target, out.shape, cpu);
  backward(out, mse_grad(out, t, 1.0f));
  auto loss = [&] {
    NoGrad no_grad;
    std::vector<float> o = to_floats(run());
    double s = 0.0;
    for (size_t i = 0; i < o.size(); ++i) s += (double)(o[i] - target[i]) * (o[i] - target[i]);
    return s / o.size();
  };
  const float eps = 1e-2f;
  double worst = 0.0;
  std::string worst_name;
  auto check = [&](const std::string& name, float& x, double analytic) {
    float saved = x;
    x = saved + eps;
    double lp = loss();
    x = saved - eps;
    double lm = loss();
    x = saved;
    double fd = (lp - lm) / (2 * eps);
    double err = std::fabs(fd - analytic) / std::max(1e-3, std::fabs(fd) + std::fabs(analytic));
    if (err > worst) worst = err, worst_name = name;
  };
  int n = 0;
  for (NamedParam& p : params) {
    CHECK(p.t->meta && p.t->meta->grad.numel() == p.t->numel());
    const size_t size = (size_t)p.t->numel();
    for (size_t k : {(size_t)0, size / 3, size - 1}) {
      check(p.name, p.t->data<float>()[k], p.t->meta->grad.data<float>()[k]);
      ++n;
    }
  }
  const size_t nt = (size_t)txt.numel();
  for (size_t k : {(size_t)0, nt / 2, nt - 1}) check("input txt", txt.data<float>()[k], txt.meta->grad.data<float>()[k]);
  for (size_t k : {(size_t)0, (size_t)y.numel() - 1}) check("input y", y.data<float>()[k], y.meta->grad.data<float>()[k]);
  std::printf("      %d weights of %zu tensors and the txt/y inputs, worst relative error %.2e (%s)\n", n,
              params.size(), worst, worst_name.c_str());
  CHECK(worst < 2e-2);
}

// Gradient checkpointing recomputes each block in backward: the same LoRA gradients, bit for bit,
// and the same weight gradients in full training.
TEST(flux_checkpointing_gives_the_same_gradients) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  c.n_double = 2, c.n_single = 2;
  write_random_flux(dir + "/m.safetensors", c, 51);
  FluxTransformer m = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
  LoraSet lora = lora_create(flux_lora_targets(m.cfg, true), 2, 2.0f, 52);
  randomize_lora(lora, 53);
  lora_attach(m.linears(), &lora);
  FluxInputs in = random_inputs(c, 2, 2, 2, 3, 54);
  const std::vector<float> target = random_target(predict(m, in).size(), 55);
  m.checkpointing = false;
  const std::vector<float> plain = lora_gradients(m, lora, in, target);
  m.checkpointing = true;
  const std::vector<float> recomputed = lora_gradients(m, lora, in, target);
  CHECK(plain == recomputed);
  double norm = 0.0;
  for (float g : plain) norm += (double)g * g;
  CHECK(norm > 0.0);

  // Full training: every weight's gradient, the blocks' inputs included, through the recompute.
  lora_attach(m.linears(), nullptr);
  std::vector<NamedParam> params = m.params();
  make_trainable(params);
  auto weight_grads = [&] {
    zero_grads(params);
    Tensor out = m.forward(in);
    backward(out, mse_grad(out, from_vector(target, out.shape, Device::cpu()), 1.0f));
    std::vector<float> all;
    for (NamedParam& p : params) {
      std::vector<float> g = to_floats(p.t->meta->grad);
      all.insert(all.end(), g.begin(), g.end());
    }
    return all;
  };
  m.checkpointing = false;
  const std::vector<float> a = weight_grads();
  m.checkpointing = true;
  const std::vector<float> b = weight_grads();
  CHECK(a.size() == b.size());
  double worst = 0.0, scale = 0.0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, (double)std::fabs(a[i] - b[i])), scale = std::max(scale, (double)std::fabs(a[i]));
  std::printf("      full training: max |difference| %.2e of gradients up to %.2e\n", worst, scale);
  CHECK(worst <= 1e-6 * scale);  // the shared conditioning vector's gradient adds up in another order
}

// One random checkpoint written in the BFL layout, the diffusers layout (three shards, fused layers
// split, the final modulation's halves swapped) and ComfyUI's: the same model from each.
TEST(flux_layouts_load_the_same_model) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  RandomFluxOptions bfl, diffusers, comfy;
  diffusers.layout = "diffusers";
  diffusers.shards = 3;
  comfy.layout = "comfyui";
  bfl.dtype = diffusers.dtype = comfy.dtype = DType::BF16;
  write_random_flux(dir + "/bfl.safetensors", c, 61, bfl);
  write_random_flux(dir + "/transformer", c, 61, diffusers);
  write_random_flux(dir + "/comfy.safetensors", c, 61, comfy);
  Checkpoint d = Checkpoint::open(dir + "/transformer");
  CHECK(d.files.size() == 3 && d.has("transformer_blocks.0.attn.to_q.weight") && d.has("norm_out.linear.weight"));
  CHECK(!d.has("double_blocks.0.img_attn.qkv.weight"));

  FluxInputs in = random_inputs(c, 2, 2, 2, 3, 62);
  std::vector<std::vector<float>> outs, grads;
  for (const std::string& path : {dir + "/bfl.safetensors", dir + "/transformer", dir + "/comfy.safetensors"}) {
    FluxTransformer m = FluxTransformer::load(path, Device::cpu());
    CHECK(m.cfg.hidden == c.hidden && m.cfg.n_double == c.n_double && m.cfg.n_single == c.n_single && m.cfg.guidance_embed);
    CHECK(m.cfg.axes_dim[1] == c.axes_dim[1]);
    LoraSet lora = lora_create(flux_lora_targets(m.cfg, true), 2, 2.0f, 63);
    randomize_lora(lora, 64);
    lora_attach(m.linears(), &lora);
    outs.push_back(predict(m, in));
    grads.push_back(lora_gradients(m, lora, in, random_target(outs.back().size(), 65)));
  }
  CHECK(outs[0] == outs[1] && outs[0] == outs[2]);
  CHECK(grads[0] == grads[1] && grads[0] == grads[2]);

  // A shard that went missing: one line naming the folder, the stored tensor and the layout.
  std::remove((dir + "/transformer/diffusion_pytorch_model-00003-of-00003.safetensors").c_str());
  CHECK_THROWS(FluxTransformer::load(dir + "/transformer", Device::cpu()), "diffusion_pytorch_model-00003-of-00003.safetensors");
  write_random_flux(dir + "/t2", c, 61, diffusers);
  SafeTensorsFile shard = SafeTensorsFile::open(dir + "/t2/diffusion_pytorch_model-00001-of-00003.safetensors");
  SafeTensorsWriter w;
  w.metadata = shard.metadata;
  for (const TensorInfo& t : shard.tensors)
    if (t.name != "x_embedder.bias") w.add(t.name, DType::BF16, t.shape, shard.read_f32(t.name).data());
  w.write(dir + "/t2/diffusion_pytorch_model-00001-of-00003.safetensors");
  CHECK_THROWS(FluxTransformer::load(dir + "/t2", Device::cpu()), "'x_embedder.bias' is missing (img_in.bias in the diffusers layout)");
}

TEST(flux_model_save_round_trips) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 41);
  FluxTransformer m = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
  m.save(dir + "/again.safetensors", DType::F32, {{"note", "x"}});
  FluxTransformer back = FluxTransformer::load(dir + "/again.safetensors", Device::cpu());
  FluxInputs in = random_inputs(c, 1, 2, 2, 2, 42);
  CHECK(predict(m, in) == predict(back, in));
  CHECK(SafeTensorsFile::open(dir + "/again.safetensors").tensors.size() ==
        SafeTensorsFile::open(dir + "/m.safetensors").tensors.size());
}

TEST(flux_zero_lora_leaves_the_model_unchanged) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 11);
  FluxTransformer m = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
  FluxInputs in = random_inputs(c, 1, 3, 2, 4, 12);
  const std::vector<float> base = predict(m, in);
  LoraSet lora = lora_create(flux_lora_targets(m.cfg, false), 4, 4.0f, 13);  // B = 0
  lora_attach(m.linears(), &lora);
  const std::vector<float> adapted = predict(m, in);
  CHECK(base.size() == adapted.size());
  for (size_t i = 0; i < base.size(); ++i) CHECK_NEAR(base[i], adapted[i], 1e-6);
}

TEST(flux_lora_file_reloads_to_the_same_predictions) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 21);
  FluxTransformer m = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
  auto targets = flux_lora_targets(m.cfg, false);
  LoraSet lora = lora_create(targets, 4, 8.0f, 22);  // alpha != rank: the scale is folded into B on save
  randomize_lora(lora, 23);
  FluxInputs in = random_inputs(c, 2, 2, 2, 3, 24);
  lora_attach(m.linears(), &lora);
  const std::vector<float> before = predict(m, in);
  lora_save(lora, dir + "/l.safetensors", DType::F32, {{"software", "graft"}});
  SafeTensorsFile f = SafeTensorsFile::open(dir + "/l.safetensors");
  CHECK(f.has("transformer.transformer_blocks.0.attn.to_q.lora_A.weight"));
  CHECK(f.has("transformer.transformer_blocks.0.ff_context.net.2.lora_B.weight"));
  CHECK(f.has("transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight"));
  CHECK(f.has("transformer.single_transformer_blocks.0.proj_out.lora_B.weight"));
  CHECK(!f.has("transformer.transformer_blocks.0.norm1.linear.lora_A.weight"));  // modulation off by default
  CHECK(f.metadata.at("software") == "graft");
  LoraSet back = lora_load(dir + "/l.safetensors", flux_lora_targets(m.cfg, true));
  CHECK(back.adapters.size() == lora.adapters.size());
  lora_attach(m.linears(), &back);
  const std::vector<float> after = predict(m, in);
  for (size_t i = 0; i < before.size(); ++i) CHECK_NEAR(before[i], after[i], 1e-5 * (1 + std::fabs(before[i])));
}

// A LoKr file in ComfyUI's names (lokr_w1, lokr_w2_a/_b or lokr_w2, alpha) predicts what the
// trained set predicted, at strength 1 and scaled.
TEST(flux_lokr_file_reloads_to_the_same_predictions) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 21);
  FluxTransformer m = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
  auto targets = flux_lora_targets(m.cfg, false);
  LoraSet lokr = lokr_create(targets, 2, 6.0f, -1, false, 22);  // alpha 6 / rank 2: scale 3 on the low-rank ones
  randomize_lora(lokr, 23);
  FluxInputs in = random_inputs(c, 2, 2, 2, 3, 24);
  lora_attach(m.linears(), nullptr);
  const std::vector<float> base = predict(m, in);
  lora_attach(m.linears(), &lokr);
  const std::vector<float> before = predict(m, in);
  lora_save(lokr, dir + "/k.safetensors", DType::F32, {});
  SafeTensorsFile f = SafeTensorsFile::open(dir + "/k.safetensors");
  CHECK(f.has("transformer.transformer_blocks.0.attn.to_q.lokr_w1"));
  CHECK(f.has("transformer.transformer_blocks.0.attn.to_q.lokr_w2"));       // 16 -> 16: (4, 4), rank 2 >= 4/2: full
  CHECK(f.has("transformer.transformer_blocks.0.ff.net.0.proj.lokr_w2_a"));  // 16 -> 32: w2 [8, 4], rank 2 < 4
  CHECK(f.has("transformer.transformer_blocks.0.ff.net.0.proj.lokr_w2_b"));
  CHECK(f.has("transformer.transformer_blocks.0.ff.net.0.proj.alpha"));
  CHECK_NEAR(f.read_f32("transformer.transformer_blocks.0.ff.net.0.proj.alpha")[0], 6.0, 0);
  LoraSet back = lora_load(dir + "/k.safetensors", flux_lora_targets(m.cfg, true));
  lora_attach(m.linears(), &back);
  const std::vector<float> after = predict(m, in);
  double changed = 0.0;
  for (size_t i = 0; i < before.size(); ++i) {
    CHECK_NEAR(before[i], after[i], 1e-5 * (1 + std::fabs(before[i])));
    changed = std::max(changed, (double)std::fabs(before[i] - base[i]));
  }
  CHECK(changed > 1e-2);  // the adapter does act
  LoraSet half = lora_load(dir + "/k.safetensors", flux_lora_targets(m.cfg, true), 0.5f);
  lora_attach(m.linears(), &half);
  const std::vector<float> halfway = predict(m, in);
  double diff = 0.0;
  for (size_t i = 0; i < before.size(); ++i) diff = std::max(diff, (double)std::fabs(halfway[i] - before[i]));
  CHECK(diff > 1e-3);
  FluxConfig other = c;
  other.mlp_hidden = 48;
  CHECK_THROWS(lora_load(dir + "/k.safetensors", flux_lora_targets(other, false)), "lokr_w2_a has shape [8, 2], expected [12, rank]");
}

TEST(flux_lora_file_for_another_model_is_refused) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  LoraSet lora = lora_create(flux_lora_targets(c, false), 2, 2.0f, 1);
  lora_save(lora, dir + "/l.safetensors", DType::BF16, {});
  FluxConfig other = c;
  other.hidden = 32;  // same names, other widths
  other.heads = 4;
  CHECK_THROWS(lora_load(dir + "/l.safetensors", flux_lora_targets(other, false)), "expected [rank, 32]");
  FluxConfig fewer = c;
  fewer.n_single = 0;
  CHECK_THROWS(lora_load(dir + "/l.safetensors", flux_lora_targets(fewer, false)), "which this model does not have");
}

TEST(flux_load_names_the_missing_tensor) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 1);
  SafeTensorsFile f = SafeTensorsFile::open(dir + "/m.safetensors");
  SafeTensorsWriter w;
  w.metadata = f.metadata;
  for (const TensorInfo& t : f.tensors) {
    if (t.name == "single_blocks.0.linear2.bias") continue;
    std::vector<float> v = f.read_f32(t.name);
    w.add(t.name, DType::BF16, t.shape, v.data());
  }
  w.write(dir + "/broken.safetensors");
  CHECK_THROWS(FluxTransformer::load(dir + "/broken.safetensors", Device::cpu()), "single_blocks.0.linear2.bias");
  CHECK_THROWS(FluxTransformer::load(dir + "/broken.safetensors", Device::cpu()), "broken.safetensors");
  // A file that is not a FLUX transformer at all: read as the layout its names suggest, and the
  // first tensor that layout lacks is named.
  SafeTensorsWriter x;
  float one = 1.0f;
  x.add("x_embedder.weight", DType::F32, {1}, &one);
  x.write(dir + "/diffusers.safetensors");
  CHECK_THROWS(FluxTransformer::load(dir + "/diffusers.safetensors", Device::cpu()), "is missing (part 1 of 3 of double_blocks.0.img_attn.qkv.weight in the diffusers layout)");
  x.entries.clear();
  x.add("something.else", DType::F32, {1}, &one);
  x.write(dir + "/other.safetensors");
  CHECK_THROWS(FluxTransformer::load(dir + "/other.safetensors", Device::cpu()), "not a FLUX.1 transformer");
}

TEST(flux_config_is_read_from_shapes) {
  std::string dir = temp_dir();
  FluxConfig c = tiny_flux_config();
  write_random_flux(dir + "/m.safetensors", c, 3);
  FluxTransformer m = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
  CHECK(m.cfg.hidden == 64 && m.cfg.heads == 2 && m.cfg.head_dim == 32 && m.cfg.mlp_hidden == 256);
  CHECK(m.cfg.n_double == 2 && m.cfg.n_single == 2 && m.cfg.guidance_embed);
  CHECK(m.cfg.context_dim == 32 && m.cfg.vec_dim == 16 && m.cfg.in_channels == 16 && m.cfg.out_channels == 16);
  CHECK(m.cfg.axes_dim[0] == 4 && m.cfg.axes_dim[1] == 14 && m.cfg.axes_dim[2] == 14);
  // 14 LoRA targets per double block + 5 per single block, modulation off.
  CHECK(flux_lora_targets(m.cfg, false).size() == 2 * 12 + 2 * 5);
}

TEST(job_errors_name_the_field) {
  std::string dir = temp_dir();
  CHECK_THROWS(job_load(dir + "/nope"), "job folder not found");
  CHECK_THROWS(job_load(dir), "job.json: cannot read");
  write_text(dir + "/job.json", "{\"name\": \"x\", ");
  CHECK_THROWS(job_load(dir), "not valid JSON");
  write_text(dir + "/job.json", "{\"name\": \"x\", \"model\": {\"transformer\": \"m\"}, \"train\": {\"lr\": \"fast\"}}");
  CHECK_THROWS(job_load(dir), "train.lr must be a number");
  write_text(dir + "/job.json", "{\"name\": \"x\", \"model\": {\"transformer\": \"m\"}, \"train\": {\"steps\": 0}}");
  CHECK_THROWS(job_load(dir), "train.steps must be an integer in [1,");
  write_text(dir + "/job.json", "{\"name\": \"x\", \"model\": {\"transformer\": \"m\"}, \"train\": {\"optimizer\": \"sgd\"}}");
  CHECK_THROWS(job_load(dir), "one of adamw, adamw8bit");
  write_text(dir + "/job.json", "{\"name\": \"x\", \"model\": {\"transformer\": \"m\"}}");
  CHECK_THROWS(job_load(dir), "no training data: needs datasets");
  write_text(dir + "/job.json", "{\"name\": \"x\", \"model\": {\"transformer\": \"m\"}, \"items\": []}");
  CHECK_THROWS(job_load(dir), "items must be a non-empty list");
  write_text(dir + "/job.json", "{\"model\": {\"transformer\": \"m\"}}");
  CHECK_THROWS(job_load(dir), "name is missing");
}

TEST(adamw_matches_hand_computation) {
  // Two updates of torch.optim.AdamW(lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.5) on p=1,
  // grads 0.5 then -1, worked by hand.
  AdamW opt;
  opt.beta1 = 0.9f;
  opt.beta2 = 0.99f;
  opt.weight_decay = 0.5f;
  Tensor pt = from_vector({1.0f}, {1}, Device::cpu()), g1 = from_vector({0.5f}, {1}, Device::cpu()),
         g2 = from_vector({-1.0f}, {1}, Device::cpu());
  const float& p = pt.data<float>()[0];
  opt.step(pt, g1, 0.1f);
  double m = 0.05, v = 0.0025;
  double pe = 1.0 * (1 - 0.05) - 0.1 * (m / 0.1) / (std::sqrt(v / 0.01) + 1e-8);
  CHECK_NEAR(p, pe, 1e-6);
  opt.step(pt, g2, 0.1f);
  m = 0.9 * m + 0.1 * -1.0;
  v = 0.99 * v + 0.01 * 1.0;
  pe = pe * (1 - 0.05) - 0.1 * (m / (1 - 0.81)) / (std::sqrt(v / (1 - 0.9801)) + 1e-8);
  CHECK_NEAR(p, pe, 1e-6);
}

TEST(grad_clipping_and_lr_schedules) {
  Tensor gt = from_vector({3.0f, 4.0f}, {2}, Device::cpu()), ht = from_vector({0.3f, 0.4f}, {2}, Device::cpu());
  const float *g = gt.data<float>(), *h = ht.data<float>();
  CHECK_NEAR(clip_grad_norm({gt}, 1.0f), 5.0, 1e-6);
  CHECK_NEAR(std::sqrt(g[0] * g[0] + g[1] * g[1]), 1.0, 1e-5);
  clip_grad_norm({ht}, 1.0f);  // under the limit: untouched
  CHECK_NEAR(h[0], 0.3, 1e-7);
  CHECK_NEAR(lr_at("constant", 1e-3f, 7, 100, 10), 1e-3, 1e-9);
  CHECK_NEAR(lr_at("constant_with_warmup", 1e-3f, 5, 100, 10), 5e-4, 1e-9);
  CHECK_NEAR(lr_at("constant_with_warmup", 1e-3f, 50, 100, 10), 1e-3, 1e-9);
  CHECK_NEAR(lr_at("linear", 1e-3f, 55, 100, 10), 1e-3 * (1 - 45.0 / 90.0), 1e-9);
  CHECK_NEAR(lr_at("cosine", 1e-3f, 100, 100, 0), 0.0, 1e-9);
  CHECK_NEAR(lr_at("cosine", 1e-3f, 50, 100, 0), 5e-4, 1e-9);
}

// The memory plan's activation figure against what the tape really keeps: host tensor bytes alive
// after the forward (kept for backward) and at the peak of the backward, on a model of FLUX's
// proportions (MLP 4x, head size 32) at a small width, with and without gradient checkpointing.
TEST(flux_activation_estimate_matches_what_the_tape_keeps) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  c.hidden = 128, c.heads = 4, c.head_dim = 32, c.mlp_hidden = 512, c.n_double = 2, c.n_single = 3;
  c.axes_dim[0] = 8, c.axes_dim[1] = 12, c.axes_dim[2] = 12;
  write_random_flux(dir + "/m.safetensors", c, 41);
  FluxInputs in = random_inputs(c, 2, 8, 8, 16, 42);
  for (const bool ckpt : {false, true}) {
    FluxTransformer m = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
    m.checkpointing = ckpt;
    LoraSet lora = lora_create(flux_lora_targets(m.cfg, false), 8, 8.0f, 3);
    lora_attach(m.linears(), &lora);
    const Tensor pe = m.rope_for(in);
    const size_t before = host_live_bytes();
    host_reset_peak();
    Tensor out = m.forward(in);
    const double kept = (double)(host_live_bytes() - before);
    backward(out, from_vector(random_target(out.numel(), 43), out.shape, Device::cpu()));
    const double peak = (double)(host_peak_bytes() - before);
    const FluxActivations est = flux_activation_bytes(c, in.B, in.L_img, in.L_txt, 8, ckpt, 4, false);
    std::printf("      checkpointing %s: kept %.2f MiB (estimate %.2f), peak %.2f MiB (estimate %.2f)\n", ckpt ? "on" : "off",
                kept / 1048576, est.kept / 1048576, peak / 1048576, (est.kept + est.transient) / 1048576);
    CHECK(est.kept > 0.85 * kept && est.kept < 1.15 * kept);
    CHECK(est.kept + est.transient > 0.85 * peak && est.kept + est.transient < 1.3 * peak);
  }
}

// Layer offloading's schedule around the blocks, recorded on the CPU through a streamer that only
// logs: in forward block k+1 is asked for while block k runs and k is let go after it; in backward each
// block's weights are asked for before its backward (and the block before's, to overlap), the block
// after let go; never more than two blocks wanted at once. The hooks leave the gradients as they were.
TEST(flux_layer_offloading_schedule_keeps_two_blocks_and_the_gradients) {
  struct Log : FluxTransformer::BlockStreamer {
    std::vector<std::string> calls;
    std::set<int> live;
    size_t most = 0;
    void prefetch(int k) override { calls.push_back("p" + std::to_string(k)), live.insert(k), most = std::max(most, live.size()); }
    void release(int k) override { calls.push_back("r" + std::to_string(k)), live.erase(k); }
  };
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  c.n_double = 2, c.n_single = 2;
  write_random_flux(dir + "/m.safetensors", c, 51);
  FluxInputs in = random_inputs(c, 2, 2, 3, 3, 52);
  for (const bool ckpt : {false, true}) {
    std::vector<float> grads[2];
    std::vector<std::string> calls;
    for (int with = 0; with < 2; ++with) {
      FluxTransformer m = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
      m.checkpointing = ckpt;
      auto log = std::make_shared<Log>();
      if (with) m.streamer = log;
      LoraSet set = lora_create(flux_lora_targets(m.cfg, true), 2, 4.0f, 7);
      randomize_lora(set, 8);
      lora_attach(m.linears(), &set);
      grads[with] = lora_gradients(m, set, in, random_target(predict(m, in).size(), 53));
      if (!with) continue;
      calls = log->calls;
      CHECK(log->most <= 2 && log->live.empty());
    }
    std::string joined;
    for (const std::string& s : calls) joined += s + " ";
    std::printf("      checkpointing %s: %s\n", ckpt ? "on " : "off", joined.c_str());
    // predict() runs a forward without recording first (no hooks), then the recorded one.
    const std::string fwd = "p0 p1 r0 p2 r1 p3 r2 r3 ";
    CHECK(joined == fwd + fwd + "p3 p2 r3 p2 p1 r2 p1 p0 r1 p0 r0 ");
    CHECK(grads[0] == grads[1]);
  }
}
