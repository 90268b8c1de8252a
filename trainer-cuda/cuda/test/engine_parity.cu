// Engine-level GPU parity: the same ops and models, written once, run on the CPU (fp32, the
// reference) and on cuda:0 (bf16 storage, fp32 arithmetic) from the same bf16-rounded values, and
// compared: every op of ops/ops.h that the kernel tests (gpu_tests.cu) do not cover through the
// tape, forward and input gradients; the FLUX transformer's output and every LoRA gradient (with and
// without gradient checkpointing); the autoencoder and the text encoder forward and backward; the
// optimizer's fused update.
//
// Tolerances (relative L2, ||gpu - cpu|| / ||cpu||): one op 1e-2 (one bf16 rounding of inputs and
// outputs is ~3e-3), a model's output after ~40 roundings 3e-2, all its gradients together 5e-2,
// each LoRA adapter's [dA, dB] 1.5e-1 (the smallest adapters' gradients are the noisiest).
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/rng.h"
#include "demo/text_encoder.h"
#include "demo/tiny.h"
#include "gpu_test_util.h"
#include "demo/random_models.h"
#include "models/flux.h"
#include "models/llm.h"
#include "models/zimage.h"
#include "ops/weight_stream.h"
#include "models/flux_vae.h"
#include "ops/ops.h"
#include "ops/update_ops.h"
#include "train/lora.h"
#include "train/optim.h"
#include "train/optimizers.h"

namespace graft {
namespace gpu {

using json = nlohmann::json;

namespace {

const double TOL_OP = 1e-2, TOL_MODEL_OUT = 3e-2, TOL_MODEL_GRADS = 5e-2, TOL_ADAPTER = 1.5e-1;
const Device kCpu = Device::cpu(), kGpu = Device::cuda(0);

bool g_ok = true;

double rel_l2(const std::vector<float>& got, const std::vector<float>& ref, long* nonfinite = nullptr) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    if (!std::isfinite(got[i])) {
      if (nonfinite) ++*nonfinite;
      num = INFINITY;
      continue;
    }
    double d = (double)got[i] - ref[i];
    num += d * d;
    den += (double)ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

void report(const std::string& what, const std::vector<float>& gpu, const std::vector<float>& cpu, double tol) {
  long bad = 0;
  const double r = gpu.size() == cpu.size() ? rel_l2(gpu, cpu, &bad) : INFINITY;
  const bool ok = bad == 0 && r <= tol;
  g_ok = g_ok && ok;
  std::printf("  %-4s %-52s rel %.2e (tol %.0e)%s\n", ok ? "ok" : "FAIL", what.c_str(), r, tol,
              bad ? (" NaN/Inf: " + std::to_string(bad)).c_str() : "");
}

std::vector<float> rounded(size_t n, uint64_t seed, float scale = 1.0f, float offset = 0.0f) {
  std::vector<float> v = random_vec(n, seed, scale, offset);
  return round_bf16(v);
}

// One op on both devices: inputs (bf16-rounded values) become leaves on each side, the op runs,
// the output and every input gradient (from one random output gradient) are compared.
void op_parity(const std::string& name, const std::vector<Shape>& shapes, const std::vector<bool>& is_weight,
               const std::function<Tensor(const std::vector<Tensor>&)>& op, uint64_t seed, double tol = TOL_OP) {
  std::vector<std::vector<float>> values;
  for (size_t i = 0; i < shapes.size(); ++i) values.push_back(rounded(shape_numel(shapes[i]), seed + i, 0.5f));
  std::vector<float> outs[2], grads[2][8];
  std::vector<float> dout;
  for (int side = 0; side < 2; ++side) {
    const Device d = side ? kGpu : kCpu;
    std::vector<Tensor> in;
    for (size_t i = 0; i < shapes.size(); ++i) {
      // Weights are fp32 parameters on both devices; activations take the device's compute dtype.
      Tensor t = from_vector(values[i], shapes[i], d, is_weight[i] ? DType::F32 : compute_dtype(d));
      make_leaf(t);
      in.push_back(t);
    }
    Tensor out = op(in);
    outs[side] = to_floats(out);
    if (dout.empty()) dout = rounded(out.numel(), seed + 99, 1.0f);
    backward(out, from_vector(dout, out.shape, d, out.dtype));
    for (size_t i = 0; i < in.size(); ++i) grads[side][i] = in[i].meta->grad.defined() ? to_floats(in[i].meta->grad) : std::vector<float>();
  }
  report(name + ": output", outs[1], outs[0], tol);
  for (size_t i = 0; i < shapes.size(); ++i)
    if (!grads[0][i].empty()) report(name + ": gradient of input " + std::to_string(i), grads[1][i], grads[0][i], tol);
}

// ---- models --------------------------------------------------------------------------------------

std::string temp_dir() {
  char tmpl[] = "/tmp/graft-engine-parity-XXXXXX";
  if (!mkdtemp(tmpl)) fail("mkdtemp failed");
  return tmpl;
}

// `kind` LoRA, LoKr (w2 low-rank where the rank allows, else full), or LoRA on the model quantized as
// it loads (model.quantize fp8, int8, nf4: "LoRA on <format> weights"). Both devices quantize the same
// weights the same way on the host, so the codes are equal and only the products differ), or LoRA with
// every block's weights in pinned host memory, streamed in (model load's offload).
void flux_parity(const std::string& dir, const char* kind) {
  FluxConfig cfg = tiny_flux_config();
  RandomFluxOptions o;
  o.dtype = DType::BF16;  // both devices read the very same weights
  write_random_flux(dir + "/flux.safetensors", cfg, 11, o);
  // A random non-zero adapter (every matrix drawn, so each gets a gradient), modulation layers included.
  const bool lokr = std::string(kind) == "LoKr";
  const double offload = std::string(kind) == "LoRA with every block offloaded" ? 1.0 : 0.0;
  WeightFormat quantize = WeightFormat::dense;
  for (WeightFormat f : {WeightFormat::fp8, WeightFormat::int8, WeightFormat::nf4})
    if (std::string(kind) == std::string("LoRA on ") + weight_format_name(f) + " weights") quantize = f;
  LoraSet lora = lokr ? lokr_create(flux_lora_targets(cfg, true), 8, 8.0f, -1, false, 21)
                      : lora_create(flux_lora_targets(cfg, true), 8, 8.0f, 21);
  {
    std::vector<float> p = lora.host_params();
    Rng rng(21, 3);
    for (float& v : p) v = (lokr ? 0.3f : 0.1f) * rng.normal();
    round_bf16(p);
    lora.set_params(p);
  }
  struct Case { const char* name; int B, gh, gw, Lt; bool checkpointing; };
  const Case cases[] = {{"B2, 4x4 image + 8 text tokens", 2, 4, 4, 8, false},
                        {"B1, 3x5 image + 5 text tokens (odd sizes)", 1, 3, 5, 5, false},
                        {"B2, 4x4 + 8, gradient checkpointing", 2, 4, 4, 8, true}};
  uint64_t seed = 100;
  for (const Case& k : cases) {
    FluxInputs in;
    in.B = k.B, in.L_img = k.gh * k.gw, in.L_txt = k.Lt;
    in.img = rounded((size_t)k.B * in.L_img * cfg.in_channels, seed++);
    in.txt = rounded((size_t)k.B * k.Lt * cfg.context_dim, seed++);
    in.y = rounded((size_t)k.B * cfg.vec_dim, seed++);
    in.img_ids.resize((size_t)k.B * in.L_img * 3);
    flux_img_ids(in.img_ids.data(), k.B, k.gh, k.gw);
    in.txt_ids.assign((size_t)k.B * k.Lt * 3, 0.0f);
    for (int b = 0; b < k.B; ++b) in.timesteps.push_back(0.1f + 0.2f * b), in.guidance.push_back(2.0f + b);
    std::vector<float> dout = rounded((size_t)k.B * in.L_img * cfg.out_channels, seed++, 0.05f);
    std::vector<float> out[2], g[2];
    for (int side = 0; side < 2; ++side) {
      const Device d = side ? kGpu : kCpu;
      FluxTransformer m = FluxTransformer::load(dir + "/flux.safetensors", d, quantize, side ? offload : 0.0);
      m.checkpointing = k.checkpointing;
      LoraSet l = lora;  // the same values, its own copy on this device
      l.to(d);
      lora_attach(m.linears(), &l);
      Tensor o = m.forward(in);
      out[side] = to_floats(o);
      backward(o, from_vector(dout, o.shape, d, o.dtype));
      g[side] = to_floats(l.grads);
      if (side && offload > 0) {  // every streamed copy let go, and the weights still in host memory
        const bool ok = streamed_bytes() == 0 && !m.doubles[0].img.qkv.W.is_cuda();
        g_ok = g_ok && ok;
        std::printf("  %-4s FLUX %s %s: streamed copies left after backward %zu bytes\n", ok ? "ok" : "FAIL", kind, k.name,
                    streamed_bytes());
      }
    }
    const std::string label = std::string("FLUX ") + kind + " " + k.name;
    report(label + ": output", out[1], out[0], TOL_MODEL_OUT);
    report(label + ": every adapter gradient", g[1], g[0], TOL_MODEL_GRADS);
    double worst = 0;
    std::string worst_name;
    for (const LoraAdapter& ad : lora.adapters) {
      const AdapterMatrix &first = ad.mats.front(), &last = ad.mats.back();
      const size_t from = first.offset, n = last.offset + (size_t)last.rows * last.cols - from;
      std::vector<float> a(g[1].begin() + from, g[1].begin() + from + n), b(g[0].begin() + from, g[0].begin() + from + n);
      const double r = rel_l2(a, b);
      if (r > worst) worst = r, worst_name = ad.target.module;
    }
    const bool ok = worst <= TOL_ADAPTER;
    g_ok = g_ok && ok;
    std::printf("  %-4s %s: worst adapter %s rel %.2e (tol %.1e)\n", ok ? "ok" : "FAIL", label.c_str(), worst_name.c_str(),
                worst, TOL_ADAPTER);
  }
}

// Z-Image (tiny, its real structure) with a LoRA on its layers, a batch of two captions of different
// lengths (per-item attention in the layers), with and without checkpointing, in fp8, and with every
// layer's weights in pinned host memory, streamed in.
void zimage_parity(const std::string& dir) {
  const ZImageConfig cfg = tiny_zimage_config();
  write_random_zimage(dir + "/zimage.safetensors", cfg, 12, "comfyui", DType::BF16);
  LoraSet lora = lora_create(zimage_lora_targets(cfg), 8, 8.0f, 22);
  {
    std::vector<float> p = lora.host_params();
    Rng rng(22, 3);
    for (float& v : p) v = 0.1f * rng.normal();
    round_bf16(p);
    lora.set_params(p);
  }
  const int B = 2, gh = 4, gw = 6, Lt = 37;
  FluxInputs in;
  in.B = B, in.L_img = gh * gw, in.L_txt = Lt;
  in.img = rounded((size_t)B * in.L_img * cfg.patch_features(), 300);
  in.txt = rounded((size_t)B * Lt * cfg.cap_dim, 301);
  in.img_ids.resize((size_t)B * in.L_img * 3);
  flux_img_ids(in.img_ids.data(), B, gh, gw);
  in.timesteps = {0.3f, 0.7f};
  in.txt_lens = {Lt, 9};
  const std::vector<float> dout = rounded((size_t)B * in.L_img * cfg.patch_features(), 302, 0.05f);
  struct Case { WeightFormat f; bool ckpt; double offload; };
  for (const Case& k : {Case{WeightFormat::dense, false, 0.0}, Case{WeightFormat::dense, true, 0.0},
                        Case{WeightFormat::fp8, false, 0.0}, Case{WeightFormat::dense, true, 1.0}}) {
    const WeightFormat f = k.f;
    const bool ckpt = k.ckpt;
    std::vector<float> out[2], g[2];
    for (int side = 0; side < 2; ++side) {
      const Device d = side ? kGpu : kCpu;
      ZImageTransformer m = ZImageTransformer::load(dir + "/zimage.safetensors", d, f, side ? k.offload : 0.0);
      m.checkpointing = ckpt;
      LoraSet l = lora;
      l.to(d);
      lora_attach(m.linears(), &l);
      Tensor o = m.forward(in);
      out[side] = to_floats(o);
      backward(o, from_vector(dout, o.shape, d, o.dtype));
      g[side] = to_floats(l.grads);
      if (side && k.offload > 0) {  // every streamed copy let go, and the weights still in host memory
        const bool ok = streamed_bytes() == 0 && !m.layers[0].qkv.W.is_cuda();
        g_ok = g_ok && ok;
        std::printf("  %-4s Z-Image every layer offloaded: streamed copies left after backward %zu bytes\n",
                    ok ? "ok" : "FAIL", streamed_bytes());
      }
    }
    const std::string label = std::string("Z-Image LoRA") + (f == WeightFormat::dense ? "" : " on fp8 weights") +
                              (ckpt ? ", checkpointing" : "") + (k.offload > 0 ? ", every layer offloaded" : "") +
                              ", B2, captions 37 and 9";
    report(label + ": output", out[1], out[0], TOL_MODEL_OUT);
    report(label + ": every adapter gradient", g[1], g[0], TOL_MODEL_GRADS);
    }
}

// Qwen3 (tiny: GQA, QK-norm, rotate-half RoPE through reordered rows) to hidden_states[-2].
void llm_parity(const std::string& dir) {
  RandomWriteOptions o;
  o.dtype = DType::BF16;
  write_random_llm(dir + "/qwen3.safetensors", tiny_qwen3_config(), 13, o);
  std::vector<int> ids;
  for (int i = 0; i < 2 * 29; ++i) ids.push_back((i * 37 + 5) % tiny_qwen3_config().vocab);
  std::vector<float> h[2];
  for (int side = 0; side < 2; ++side) {
    NoGrad no_grad;
    const DecoderLlm m = DecoderLlm::load(dir + "/qwen3.safetensors", side ? kGpu : kCpu, -2);
    h[side] = to_floats(m.forward(ids, 2, 29));
  }
  report("Qwen3 (GQA, QK-norm) hidden_states[-2], B2 x 29 tokens", h[1], h[0], TOL_MODEL_OUT);
}

void vae_parity(const std::string& dir) {
  VaeConfig c;
  c.ch = 32, c.ch_mult = {1, 2}, c.num_res_blocks = 1, c.z_channels = 4, c.groups = 8;
  FluxVae ref = FluxVae::random(c, 5);
  std::vector<NamedParam> ps = ref.params();
  for (NamedParam& p : ps) {  // bf16-exact weights
    std::vector<float> v = to_floats(*p.t);
    *p.t = from_vector(round_bf16(v), p.t->shape, kCpu);
  }
  ref.save(dir + "/ae.safetensors", DType::F32);
  const int B = 2, S = 16;
  const std::vector<float> img = rounded((size_t)B * 3 * S * S, 7, 0.5f);
  std::vector<float> mean[2], dec[2], dimg[2], dconv[2];
  for (int side = 0; side < 2; ++side) {
    const Device d = side ? kGpu : kCpu;
    FluxVae m = FluxVae::load(dir + "/ae.safetensors", d);
    std::vector<NamedParam> params = m.params();
    make_trainable(params);
    Tensor x = from_vector(img, {B, 3, S, S}, d, compute_dtype(d));
    make_leaf(x);
    FluxVae::Moments mo = m.encode(x);
    Tensor out = m.decode(mo.mean);
    mean[side] = to_floats(mo.mean);
    dec[side] = to_floats(out);
    std::vector<float> w = rounded(out.numel(), 8, 0.01f);
    backward(out, from_vector(w, out.shape, d, out.dtype));
    dimg[side] = to_floats(x.meta->grad);
    dconv[side] = to_floats(params[0].t->meta->grad);  // encoder.conv_in.weight, the last gradient reached
  }
  report("autoencoder (ch 32, 16x16, B2): encoded mean", mean[1], mean[0], TOL_MODEL_OUT);
  report("autoencoder: decoded picture", dec[1], dec[0], TOL_MODEL_OUT);
  report("autoencoder: gradient of the picture", dimg[1], dimg[0], TOL_MODEL_GRADS);
  report("autoencoder: gradient of encoder.conv_in.weight", dconv[1], dconv[0], TOL_MODEL_GRADS);
}

void text_encoder_parity() {
  TextEncoderConfig tc;
  tc.dim = 64, tc.heads = 2, tc.layers = 2, tc.mlp = 128, tc.max_len = 16, tc.context_dim = 32, tc.vec_dim = 16;
  TextEncoder ref = TextEncoder::random(tc, 3);
  std::vector<NamedParam> ps = ref.params();
  std::vector<std::vector<float>> values;
  for (NamedParam& p : ps) {
    std::vector<float> v = to_floats(*p.t);
    values.push_back(round_bf16(v));
  }
  std::vector<int> ids;
  for (const char* s : {"a red circle", "zxq on blue"}) {
    std::vector<int> t = tokenize_bytes(s, tc.max_len);
    ids.insert(ids.end(), t.begin(), t.end());
  }
  std::vector<float> ctx[2], pooled[2], dtok[2];
  for (int side = 0; side < 2; ++side) {
    const Device d = side ? kGpu : kCpu;
    TextEncoder te = TextEncoder::random(tc, 3, d);
    std::vector<NamedParam> params = te.params();
    for (size_t i = 0; i < params.size(); ++i) *params[i].t = from_vector(values[i], params[i].t->shape, d);
    make_trainable(params);
    TextEncoder::Output o = te.forward(ids, 2, tc.max_len);
    ctx[side] = to_floats(o.context);
    pooled[side] = to_floats(o.pooled);
    backward({o.context, o.pooled}, {from_vector(rounded(o.context.numel(), 4), o.context.shape, d, o.context.dtype),
                                     from_vector(rounded(o.pooled.numel(), 5), o.pooled.shape, d, o.pooled.dtype)});
    dtok[side] = to_floats(params[0].t->meta->grad);
  }
  report("text encoder: context", ctx[1], ctx[0], TOL_MODEL_OUT);
  report("text encoder: pooled", pooled[1], pooled[0], TOL_MODEL_OUT);
  report("text encoder: gradient of token_embedding.weight", dtok[1], dtok[0], TOL_MODEL_GRADS);
}

void update_parity() {
  const long n = 100003;
  std::vector<float> p = random_vec(n, 1), g = random_vec(n, 2, 0.1f);
  std::vector<float> res[2], norm(2), avg[2];
  for (int side = 0; side < 2; ++side) {
    const Device d = side ? kGpu : kCpu;
    Tensor tp = from_vector(p, {n}, d), tg = from_vector(g, {n}, d);
    AdamW opt;
    opt.weight_decay = 0.01f;
    for (int step = 0; step < 3; ++step) opt.step(tp, tg, 1e-2f);
    res[side] = to_floats(tp);
    norm[side] = (float)std::sqrt(sum_squares(tg));
    Tensor a = clone(tp);
    lerp_(a, tg, 0.9f);
    avg[side] = to_floats(a);
  }
  report("AdamW, three fused updates (fp32)", res[1], res[0], 1e-6);
  report("gradient norm", {norm[1]}, {norm[0]}, 1e-6);
  report("weight average (lerp)", avg[1], avg[0], 1e-6);

  // Every optimizer over matrices and a vector (Adafactor factors the matrices; the 8-bit state cuts
  // each into blocks of 256), four steps of changing gradients: the CUDA updates against the CPU's,
  // parameters and every state tensor.
  const std::vector<ParamSegment> segs = {{0, 300 * 200, 300, 200}, {60000, 40003, 0, 0}};
  const long m = 100003;
  std::vector<std::pair<std::string, json>> optimizers = {
      {"adamw", json::object()}, {"adamw8bit", json::object()}, {"lion", {{"weight_decay", 0.1}}},
      {"adafactor", {{"beta1", 0.9}, {"weight_decay", 0.01}}}, {"adafactor", {{"relative_step", true}, {"scale_parameter", true}}},
      {"prodigy", {{"weight_decay", 0.01}}}};
  for (const auto& [type, params] : optimizers) {
    const json root = {{"train", {{"optimizer", type}, {"optimizer_params", params}}}};
    const OptimizerConfig oc = optimizer_config(JsonFields{root, "engine_parity"});
    std::vector<float> out[2];
    std::vector<std::vector<float>> state[2];
    for (int side = 0; side < 2; ++side) {
      const Device d = side ? kGpu : kCpu;
      Tensor tp = from_vector(random_vec(m, 3), {m}, d);
      std::unique_ptr<Optimizer> opt = make_optimizer(oc, tp, segs);
      for (int step = 0; step < 4; ++step)
        opt->step(tp, from_vector(random_vec(m, 10 + step, 0.1f), {m}, d), type == "prodigy" ? 1.0f : 1e-3f);
      out[side] = to_floats(tp);
      for (auto& [name, t] : opt->state_tensors())
        state[side].push_back(t->dtype == DType::U8 ? std::vector<float>() : to_floats(*t));
    }
    const std::string label = type + " " + params.dump();
    report(label + ": parameters after 4 updates", out[1], out[0], type == "lion" ? 1e-5 : 1e-4);
    for (size_t i = 0; i < state[0].size(); ++i)
      if (!state[0][i].empty()) report(label + ": state " + std::to_string(i), state[1][i], state[0][i], 1e-4);
  }
}

}  // namespace

bool engine_parity_test() {
  g_ok = true;
  const std::string dir = temp_dir();
  auto act = [](int n) { return std::vector<bool>(n, false); };
  op_parity("conv2d 3x3 pad 1, [2,8,9,7] -> 12", {{2, 8, 9, 7}, {12, 8, 3, 3}, {12}}, {false, true, true},
            [](const std::vector<Tensor>& t) { return conv2d(t[0], t[1], t[2], 1); }, 10);
  op_parity("conv2d FLUX downsample (pad 0,0,1,1 stride 2)", {{1, 6, 8, 10}, {6, 6, 3, 3}, {6}}, {false, true, true},
            [](const std::vector<Tensor>& t) { const int pad[4] = {0, 0, 1, 1}; return conv2d(t[0], t[1], t[2], 2, pad); }, 20);
  op_parity("conv2d 1x1", {{2, 8, 5, 5}, {4, 8, 1, 1}, {4}}, {false, true, true},
            [](const std::vector<Tensor>& t) { return conv2d(t[0], t[1], t[2], 0); }, 30);
  op_parity("groupnorm 4 groups, [2,16,6,5]", {{2, 16, 6, 5}, {16}, {16}}, {false, true, true},
            [](const std::vector<Tensor>& t) { return groupnorm(t[0], t[1], t[2], 4); }, 40);
  op_parity("upsample nearest 2x", {{2, 3, 5, 4}}, act(1), [](const std::vector<Tensor>& t) { return upsample_nearest2x(t[0]); }, 50);
  op_parity("channels -> tokens -> channels", {{2, 40, 6, 7}}, act(1),
            [](const std::vector<Tensor>& t) { return tokens_to_channels(gelu(channels_to_tokens(t[0])), 6, 7); }, 60);
  op_parity("attention, head size 96 (the materialised path)", {{2, 37, 96}, {2, 37, 96}, {2, 37, 96}}, act(3),
            [](const std::vector<Tensor>& t) { return attention(t[0], t[1], t[2], 1); }, 70, 2e-2);
  op_parity("narrow + cat (q, k, v of a fused projection)", {{3, 5, 48}}, act(1), [](const std::vector<Tensor>& t) {
    return narrow(cat({narrow(t[0], -1, 32, 16), narrow(t[0], -1, 0, 16)}, -1), 1, 1, 3);
  }, 80);
  op_parity("embedding + mean over tokens", {{300, 24}}, {true}, [](const std::vector<Tensor>& t) {
    std::vector<int> ids = {5, 7, 5, 299, 0, 12, 7, 7};
    return mean_tokens(embedding(from_ints(ids, {2, 4}, t[0].device()), t[0]));
  }, 90);
  op_parity("gaussian sample + KL", {{2, 4, 3, 3}, {2, 4, 3, 3}}, act(2), [](const std::vector<Tensor>& t) {
    Tensor noise = from_vector(rounded(t[0].numel(), 123), t[0].shape, t[0].device(), t[0].dtype);
    return gaussian_sample(t[0], t[1], noise);
  }, 100);
  op_parity("rmsnorm with an fp32 trainable scale", {{4, 6, 32}, {32}}, {false, true},
            [](const std::vector<Tensor>& t) { return rmsnorm(t[0], t[1]); }, 110);
  op_parity("Z-Image's gated block: rmsnorm eps 1e-5, modulate without shift, tanh gate", {{2, 6, 32}, {2, 6, 32}, {32}, {2, 128}},
            {false, false, true, false}, [](const std::vector<Tensor>& t) {
              return gate_residual(t[0], modulate(rmsnorm(t[1], t[2], 1e-5f), t[3], -1, 0), tanh(t[3]), 1);
            }, 115);
  op_parity("mul of gelu (T5's gated FFN) + quick_gelu (CLIP's)", {{3, 7, 40}, {3, 7, 40}}, act(2),
            [](const std::vector<Tensor>& t) { return quick_gelu(mul(gelu(t[0]), t[1])); }, 120);
  op_parity("layernorm eps 1e-5 + trainable affine (CLIP's norms)", {{4, 5, 48}, {48}, {48}}, {false, true, true},
            [](const std::vector<Tensor>& t) { return affine(layernorm(t[0], 1e-5f), t[1], t[2]); }, 130);
  op_parity("attention, causal, head size 64 (CLIP's)", {{2, 19, 128}, {2, 19, 128}, {2, 19, 128}}, act(3),
            [](const std::vector<Tensor>& t) { return attention(t[0], t[1], t[2], 2, AttentionOptions{0.0f, true, Tensor()}); },
            140, 2e-2);
  op_parity("attention, unscaled + per-head bias (T5's)", {{2, 23, 128}, {2, 23, 128}, {2, 23, 128}}, act(3),
            [](const std::vector<Tensor>& t) {
              Tensor bias = from_vector(random_vec(2 * 23 * 23, 150, 1.0f), {2, 23, 23}, t[0].device(), DType::F32);
              return attention(t[0], t[1], t[2], 2, AttentionOptions{0.125f, false, bias});
            }, 150, 2e-2);
  flux_parity(dir, "LoRA");
  flux_parity(dir, "LoKr");
  flux_parity(dir, "LoRA on fp8 weights");
  flux_parity(dir, "LoRA on int8 weights");
  flux_parity(dir, "LoRA on nf4 weights");
  flux_parity(dir, "LoRA with every block offloaded");
  zimage_parity(dir);
  llm_parity(dir);
  vae_parity(dir);
  text_encoder_parity();
  update_parity();
  return g_ok;
}

}  // namespace gpu
}  // namespace graft
