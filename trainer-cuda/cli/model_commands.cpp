// graft-trainer's model commands: one FLUX forward or LoRA gradient from files (the checks against
// other implementations), random checkpoints in every layout, and what a step or an encode costs.
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/zimage_commands.h"
#include "core/autograd.h"
#include "core/cuda_runtime.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "demo/demo_model.h"
#include "demo/text_encoder.h"
#include "demo/tiny.h"
#include "demo/tokenizer_files.h"
#include "models/clip.h"
#include "models/t5.h"
#include "models/flux.h"
#include "models/flux_vae.h"
#include "ops/ops.h"
#include "train/lora.h"
#include "train/memory_plan.h"
#include "train/optim.h"

namespace graft {

namespace {

int cmd_forward(const std::vector<std::string>& a) {
  need_args(a, 4, "forward");
  std::vector<std::string> rest;
  const Device device = device_option(a, 4, "forward", &rest);
  std::string lora_path;
  WeightFormat quantize = WeightFormat::dense;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--lora" && i + 1 < rest.size()) lora_path = rest[++i];
    else if (rest[i] == "--quantize" && i + 1 < rest.size()) {
      if (!weight_format_from_name(rest[++i], &quantize)) fail("forward: --quantize " + rest[i] + ": one of none, fp8, int8, nf4");
    } else fail("forward: unknown argument '" + rest[i] + "'");
  }
  if (is_zimage_path(a[1])) return zimage_forward(a[1], a[2], a[3], device, lora_path, quantize);
  FluxTransformer model = FluxTransformer::load(a[1], device, quantize);
  FluxInputs in = flux_inputs_load(SafeTensorsFile::open(a[2]), model.cfg);
  LoraSet lora;
  if (!lora_path.empty()) {
    lora = lora_load(lora_path, flux_lora_targets(model.cfg, true));
    lora.to(device);
    lora_attach(model.linears(), &lora);
  }
  NoGrad no_grad;
  std::vector<float> out = to_floats(model.forward(in));
  SafeTensorsWriter w;
  w.add("out", DType::F32, {in.B, in.L_img, model.cfg.out_channels}, out.data());
  w.write(a[3]);
  return 0;
}

int cmd_lora_grad(const std::vector<std::string>& a) {
  need_args(a, 5, "lora-grad");
  std::vector<std::string> rest;
  const Device device = device_option(a, 5, "lora-grad", &rest);
  bool checkpointing = false;
  for (const std::string& r : rest) {
    if (r == "--checkpointing") checkpointing = true;
    else fail("lora-grad: unknown argument '" + r + "'");
  }
  if (is_zimage_path(a[1])) return zimage_lora_grad(a[1], a[2], a[3], a[4], device, checkpointing);
  FluxTransformer model = FluxTransformer::load(a[1], device);
  model.checkpointing = checkpointing;
  SafeTensorsFile inputs = SafeTensorsFile::open(a[2]);
  FluxInputs in = flux_inputs_load(inputs, model.cfg);
  std::vector<float> target = inputs.read_f32("target", {in.B, in.L_img, model.cfg.out_channels});
  LoraSet lora = lora_load(a[3], flux_lora_targets(model.cfg, true));
  lora.to(device);
  lora_attach(model.linears(), &lora);
  Tensor out = model.forward(in);
  const Tensor t = from_vector(target, out.shape, device, out.dtype);
  float loss = (float)mse(out, t);
  backward(out, mse_grad(out, t, 1.0f));
  SafeTensorsWriter w;
  std::vector<float> out_host = to_floats(out), grads = to_floats(lora.grads);
  w.add("out", DType::F32, {in.B, in.L_img, model.cfg.out_channels}, out_host.data());
  w.add("loss", DType::F32, {1}, &loss);
  write_lora_grads(w, lora, a[3], grads);
  w.write(a[4]);
  return 0;
}

int cmd_make_tiny(const std::vector<std::string>& a) {
  need_args(a, 2, "make-tiny");
  uint64_t seed = 1;
  for (size_t i = 2; i < a.size(); ++i) {
    if (a[i] == "--seed" && i + 1 < a.size()) seed = number_arg<uint64_t>(a, ++i, "make-tiny");
    else fail("make-tiny: unknown argument '" + a[i] + "'");
  }
  make_tiny(a[1], seed);
  std::printf("wrote tiny FLUX job to %s (train it with: graft-trainer train %s)\n", a[1].c_str(), a[1].c_str());
  return 0;
}

// ms per LoRA training step (forward + backward, rank 8) of model on random inputs: batch B, a side x
// side grid of image tokens and L_txt text tokens.
double bench_lora_step(FluxTransformer& model, int B, int side, int L_txt, int steps) {
  LoraSet lora = lora_create(flux_lora_targets(model.cfg, false), 8, 8, 1);
  lora.to(model.device);
  lora_attach(model.linears(), &lora);
  const FluxConfig& c = model.cfg;
  FluxInputs in;
  in.B = B;
  in.L_img = side * side;
  in.L_txt = L_txt;
  Rng rng(1);
  auto fill = [&](std::vector<float>& v, size_t n) { v.resize(n); for (float& x : v) x = rng.normal(); };
  fill(in.img, (size_t)in.B * in.L_img * c.in_channels);
  fill(in.txt, (size_t)in.B * in.L_txt * c.context_dim);
  fill(in.y, (size_t)in.B * c.vec_dim);
  in.img_ids.resize((size_t)in.B * in.L_img * 3);
  flux_img_ids(in.img_ids.data(), in.B, side, side);
  in.txt_ids.assign((size_t)in.B * in.L_txt * 3, 0.0f);
  for (int b = 0; b < B; ++b) in.timesteps.push_back(0.3f + 0.4f * b / std::max(1, B - 1));
  in.guidance.assign(B, 1.0f);
  auto run = [&]() {
    lora.zero_grad();
    Tensor out = model.forward(in);
    std::vector<float> d(out.numel(), 1e-3f);
    backward(out, from_vector(d, out.shape, model.device, out.dtype));
  };
  for (int i = 0; i < 5; ++i) run();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) run();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / steps;
}

int cmd_bench(const std::vector<std::string>& a) {
  int steps = 50;
  for (size_t i = 1; i < a.size(); ++i) {
    if (a[i] == "--steps" && i + 1 < a.size()) steps = number_arg<int>(a, ++i, "bench");
    else fail("bench: unknown argument '" + a[i] + "'");
  }
  char tmpl[] = "/tmp/graft-bench-XXXXXX";
  if (!mkdtemp(tmpl)) fail("bench: cannot create a temporary folder");
  std::string dir = tmpl;
  make_tiny(dir, 1);
  FluxTransformer tiny = FluxTransformer::load(dir + "/model/transformer.safetensors", Device::cpu());
  double ms = bench_lora_step(tiny, 2, 4, 8, steps);
  std::printf("bench cpu tiny-flux (hidden %d, %d+%d blocks, batch 2, 16 img + 8 txt tokens, LoRA rank 8): "
              "%.2f ms/step over %d steps, %d threads\n",
              tiny.cfg.hidden, tiny.cfg.n_double, tiny.cfg.n_single, ms, steps, omp_get_max_threads());
  // The demo LoRA job's step (batch 4, 48 text tokens) on the demo model's transformer, with the image
  // tokens of a factor-4 autoencoder (8x8 latents) and of a factor-2 one (16x16).
  TextEncoderConfig tc;
  write_random_flux(dir + "/demo.safetensors", demo_flux_config(tc.context_dim, tc.vec_dim), 1);
  FluxTransformer demo = FluxTransformer::load(dir + "/demo.safetensors", Device::cpu());
  for (int side : {4, 8}) {
    ms = bench_lora_step(demo, 4, side, tc.max_len, steps);
    std::printf("bench cpu demo model (hidden %d, %d+%d blocks, batch 4, %d img + %d txt tokens, LoRA rank 8): "
                "%.2f ms/step over %d steps, %d threads\n",
                demo.cfg.hidden, demo.cfg.n_double, demo.cfg.n_single, side * side, tc.max_len, ms, steps,
                omp_get_max_threads());
  }
  std::string cleanup = "rm -rf '" + dir + "'";
  if (std::system(cleanup.c_str()) != 0) std::fprintf(stderr, "bench: could not remove %s\n", dir.c_str());
  return 0;
}


// --shape tiny|demo|dev and --double / --single of make-random flux and lora-step.
FluxConfig shape_option(const std::string& shape, int n_double, int n_single, const char* cmd) {
  FluxConfig c;
  if (shape == "tiny") c = tiny_flux_config();
  else if (shape == "demo") {
    TextEncoderConfig tc;
    c = demo_flux_config(tc.context_dim, tc.vec_dim);
  } else if (shape == "dev") c = flux1_dev_config();
  else fail(std::string(cmd) + ": --shape " + shape + ": one of tiny, demo, dev (FLUX.1-dev's widths)");
  if (n_double >= 0) c.n_double = n_double;
  if (n_single >= 0) c.n_single = n_single;
  return c;
}

// The small T5 and CLIP the tests use (real structure, width 64); --vocab sizes their tables.
T5Config tiny_t5_config(int vocab) {
  T5Config c;
  c.vocab = vocab, c.d_model = 64, c.d_kv = 16, c.heads = 4, c.d_ff = 96, c.layers = 2;
  return c;
}
ClipConfig tiny_clip_config(int vocab) {
  ClipConfig c;
  c.vocab = vocab, c.width = 64, c.heads = 2, c.layers = 2, c.mlp = 128, c.positions = 77;
  return c;
}

int cmd_make_random(const std::vector<std::string>& a) {
  need_args(a, 3, "make-random");
  const std::string what = a[1], path = a[2];
  uint64_t seed = 1;
  std::string shape = "tiny", prefix;
  int n_double = -1, n_single = -1, vocab = 0, n_layers = -1;
  RandomFluxOptions o;
  bool shards_given = false;
  std::string layout, variant = "dev";
  for (size_t i = 3; i < a.size(); ++i) {
    if (a[i] == "--seed" && i + 1 < a.size()) seed = number_arg<uint64_t>(a, ++i, "make-random");
    else if (a[i] == "--shape" && i + 1 < a.size()) shape = a[++i];
    else if (a[i] == "--layout" && i + 1 < a.size()) layout = a[++i];
    else if (a[i] == "--variant" && i + 1 < a.size()) variant = a[++i];
    else if (a[i] == "--shards" && i + 1 < a.size()) o.shards = count_arg(a, ++i, "make-random", 1), shards_given = true;
    else if (a[i] == "--dtype" && i + 1 < a.size()) o.dtype = dtype_option(a[++i], "make-random");
    else if (a[i] == "--double" && i + 1 < a.size()) n_double = count_arg(a, ++i, "make-random", 0);
    else if (a[i] == "--single" && i + 1 < a.size()) n_single = count_arg(a, ++i, "make-random", 0);
    else if (a[i] == "--vocab" && i + 1 < a.size()) vocab = count_arg(a, ++i, "make-random", 2);
    else if (a[i] == "--prefix" && i + 1 < a.size()) prefix = a[++i];
    else if (a[i] == "--layers" && i + 1 < a.size()) n_layers = count_arg(a, ++i, "make-random", 1);
    else fail("make-random: unknown argument '" + a[i] + "'");
  }
  if (!layout.empty()) o.layout = layout;
  if (what == "flux-model") {
    RandomFluxModelOptions m;
    m.layout = layout.empty() ? "diffusers" : layout;
    m.variant = variant, m.shape = shape, m.n_double = n_double, m.n_single = n_single, m.dtype = o.dtype, m.seed = seed;
    write_random_flux_model(path, m);
    std::printf("wrote a random FLUX.1-%s model (%s sizes, %s, %s layout) to %s\n", variant.c_str(), shape.c_str(),
                dtype_name(o.dtype), m.layout.c_str(), path.c_str());
  } else if (what == "flux") {
    const FluxConfig c = shape_option(shape, n_double, n_single, "make-random");
    write_random_flux(path, c, seed, o);
    std::printf("wrote a random FLUX transformer (hidden %d, %d + %d blocks, %s, %s layout) to %s\n", c.hidden, c.n_double,
                c.n_single, dtype_name(o.dtype), o.layout.c_str(), path.c_str());
  } else if (what == "vae") {
    if (shape != "tiny" && shape != "flux") fail("make-random: --shape " + shape + ": the autoencoder's are tiny and flux");
    VaeConfig c = flux_vae_config();
    if (shape == "tiny") c.ch = 8, c.ch_mult = {1, 2}, c.num_res_blocks = 1, c.z_channels = 4, c.groups = 4;
    FluxVae::random(c, seed).save(path, o.dtype);
    std::printf("wrote a random FLUX autoencoder (ch %d, %zu levels, %s) to %s\n", c.ch, c.ch_mult.size(),
                dtype_name(o.dtype), path.c_str());
  } else if (what == "t5" || what == "clip") {
    // A file, or with --shards a folder of shards with config.json as transformers saves.
    RandomWriteOptions w;
    w.dtype = o.dtype;
    w.prefix = prefix;
    w.shards = shards_given ? o.shards : 0;
    if (what == "t5") {
      if (shape != "tiny" && shape != "xxl") fail("make-random: --shape " + shape + ": T5's are tiny and xxl");
      T5Config c = shape == "xxl" ? t5_xxl_config() : tiny_t5_config(512);
      if (n_double >= 0 || n_single >= 0) fail("make-random: --double/--single are the FLUX transformer's");
      if (vocab) c.vocab = vocab;
      write_random_t5(path, c, seed, w);
      std::printf("wrote a random T5 encoder (d_model %d, %d blocks, vocab %d, %s) to %s\n", c.d_model, c.layers, c.vocab,
                  dtype_name(o.dtype), path.c_str());
    } else {
      if (shape != "tiny" && shape != "l") fail("make-random: --shape " + shape + ": CLIP's are tiny and l");
      ClipConfig c = shape == "l" ? clip_l_config() : tiny_clip_config(512);
      if (vocab) c.vocab = vocab;
      write_random_clip(path, c, seed, w);
      std::printf("wrote a random CLIP text model (width %d, %d layers, vocab %d, %s) to %s\n", c.width, c.layers, c.vocab,
                  dtype_name(o.dtype), path.c_str());
    }
  } else if (what == "zimage-model") {
    RandomZImageModelOptions m;
    m.layout = layout.empty() ? "diffusers" : layout;
    m.shape = shape, m.n_layers = n_layers, m.dtype = o.dtype, m.seed = seed;
    write_random_zimage_model(path, m);
    std::printf("wrote a random Z-Image model (%s sizes, %s, %s layout) to %s\n", shape.c_str(), dtype_name(o.dtype),
                m.layout.c_str(), path.c_str());
  } else if (what == "zimage") {
    if (shape != "tiny" && shape != "full") fail("make-random: --shape " + shape + ": Z-Image's are tiny and full");
    ZImageConfig c = shape == "full" ? zimage_config() : tiny_zimage_config();
    if (n_layers > 0) c.n_layers = n_layers;
    const std::string l = layout.empty() ? "comfyui" : layout;
    write_random_zimage(path, c, seed, l, o.dtype, shards_given ? o.shards : 2);
    std::printf("wrote a random Z-Image transformer (dim %d, %d layers, %s, %s layout) to %s\n", c.dim, c.n_layers,
                dtype_name(o.dtype), l.c_str(), path.c_str());
  } else if (what == "qwen3") {
    if (shape != "tiny" && shape != "4b") fail("make-random: --shape " + shape + ": Qwen3's are tiny and 4b");
    LlmConfig c = shape == "4b" ? qwen3_4b_config() : tiny_qwen3_config();
    if (vocab) c.vocab = vocab;
    if (n_layers > 0) c.layers = n_layers;
    RandomWriteOptions w;
    w.dtype = o.dtype;
    w.shards = shards_given ? o.shards : 0;
    write_random_llm(path, c, seed, w);
    std::printf("wrote a random Qwen3 (hidden %d, %d layers, vocab %d, %s) to %s\n", c.hidden, c.layers, c.vocab,
                dtype_name(o.dtype), path.c_str());
  } else {
    fail("make-random: '" + what + "': give flux, vae, t5, clip, qwen3, zimage, flux-model or zimage-model");
  }
  return 0;
}

// A small tokenizer folder in the real files' formats, for tests and random model folders.
int cmd_make_tokenizers(const std::vector<std::string>& a) {
  need_args(a, 2, "make-tokenizers");
  std::string kind;
  bool json = false;
  for (size_t i = 2; i < a.size(); ++i) {
    if (a[i] == "--kind" && i + 1 < a.size()) kind = a[++i];
    else if (a[i] == "--json") json = true;
    else fail("make-tokenizers: unknown argument '" + a[i] + "'");
  }
  if (kind == "clip") {
    write_clip_tokenizer(a[1], json);
    const int n = clip_tokenizer_vocab_size();
    std::printf("wrote a CLIP tokenizer (vocab %d; <|startoftext|> %d, <|endoftext|> %d; vocab.json, merges.txt%s) to %s\n", n,
                n - 2, n - 1, json ? ", tokenizer.json" : "", a[1].c_str());
  } else if (kind == "t5") {
    if (json) fail("make-tokenizers: --json is for --kind clip (a T5 folder always has its tokenizer.json)");
    write_t5_tokenizer(a[1]);
    std::printf("wrote a T5 tokenizer (vocab %d; <pad> 0, </s> 1, <unk> 2; tokenizer.json, spiece.model) to %s\n",
                t5_tokenizer_vocab_size(), a[1].c_str());
  } else if (kind == "qwen") {
    if (json) fail("make-tokenizers: --json is for --kind clip (a Qwen folder always has its tokenizer.json)");
    write_qwen_tokenizer(a[1]);
    const int n = qwen_tokenizer_vocab_size(), pad = qwen_tokenizer_pad_id();
    std::printf("wrote a Qwen tokenizer (vocab %d; <|endoftext|> %d, <|im_start|> %d, <|im_end|> %d; tokenizer.json, "
                "tokenizer_config.json with its chat_template, vocab.json, merges.txt) to %s\n", n, pad, pad + 1, pad + 2, a[1].c_str());
  } else {
    fail("make-tokenizers: --kind " + (kind.empty() ? std::string("is missing") : "'" + kind + "'") + ": give --kind clip, t5 or qwen");
  }
  return 0;
}

// One LoRA training step of a checkpoint on random inputs, as train runs it (forward, backward,
// clipping, AdamW), timed after a first step; with the peak host RSS for /usr/bin/time-free memory
// measurements.
int cmd_lora_step(const std::vector<std::string>& a) {
  need_args(a, 2, "lora-step");
  std::vector<std::string> rest;
  const Device device = device_option(a, 2, "lora-step", &rest);
  int image_tokens = 256, text_tokens = 64, rank = 16, steps = 2;
  bool checkpointing = false;
  WeightFormat quantize = WeightFormat::dense;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--image-tokens" && i + 1 < rest.size()) image_tokens = count_arg(rest, ++i, "lora-step", 1);
    else if (rest[i] == "--text-tokens" && i + 1 < rest.size()) text_tokens = count_arg(rest, ++i, "lora-step", 1);
    else if (rest[i] == "--rank" && i + 1 < rest.size()) rank = count_arg(rest, ++i, "lora-step", 1);
    else if (rest[i] == "--steps" && i + 1 < rest.size()) steps = count_arg(rest, ++i, "lora-step", 1);
    else if (rest[i] == "--checkpointing") checkpointing = true;
    else if (rest[i] == "--quantize" && i + 1 < rest.size()) {
      if (!weight_format_from_name(rest[++i], &quantize)) fail("lora-step: --quantize " + rest[i] + ": one of none, fp8, int8, nf4");
    }
    else fail("lora-step: unknown argument '" + rest[i] + "'");
  }
  const int side = (int)std::lround(std::sqrt((double)image_tokens));
  if (side * side != image_tokens) fail("lora-step: --image-tokens " + std::to_string(image_tokens) + ": give a square (256, 1024, 4096)");
  // What the memory plan says this step needs (the training part: no text encoder here), beside what it takes.
  PlanInputs plan_in;
  {
    FluxTransformer shapes = FluxTransformer::shapes(a[1]);
    plan_in.cfg = shapes.cfg;
    plan_in.transformer = plan_tensors(shapes.linears(), shapes.params());
  }
  plan_in.cuda = device.is_cuda(), plan_in.quantize = quantize, plan_in.rank = rank, plan_in.checkpointing = checkpointing;
  plan_in.image_tokens = image_tokens, plan_in.text_tokens = text_tokens;
  const MemoryPlan plan = plan_memory(plan_in);
  const double rss0 = peak_rss_mib();
  auto t0 = std::chrono::steady_clock::now();
  FluxTransformer model = FluxTransformer::load(a[1], device, quantize);
  model.checkpointing = checkpointing;
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const FluxConfig& c = model.cfg;
  LoraSet lora = lora_create(flux_lora_targets(c, false), rank, (float)rank, 1);
  lora.to(device);
  lora_attach(model.linears(), &lora);
  FluxInputs in;
  in.B = 1, in.L_img = image_tokens, in.L_txt = text_tokens;
  Rng rng(1);
  auto fill = [&](std::vector<float>& v, size_t n) { v.resize(n); for (float& x : v) x = rng.normal(); };
  fill(in.img, (size_t)image_tokens * c.in_channels);
  fill(in.txt, (size_t)text_tokens * c.context_dim);
  fill(in.y, c.vec_dim);
  in.img_ids.resize((size_t)image_tokens * 3);
  flux_img_ids(in.img_ids.data(), 1, side, side);
  in.txt_ids.assign((size_t)text_tokens * 3, 0.0f);
  in.timesteps = {0.5f};
  in.guidance = {3.5f};
  std::vector<float> target((size_t)image_tokens * c.out_channels);
  for (float& x : target) x = rng.normal();
  AdamW opt;
  double loss = 0, step_s = 0;
  for (int s = 0; s < steps; ++s) {
    auto ts = std::chrono::steady_clock::now();
    lora.zero_grad();
    Tensor out = model.forward(in);
    const Tensor t = from_vector(target, out.shape, device, out.dtype);
    loss = mse(out, t);
    backward(out, mse_grad(out, t, 1.0f));
    clip_grad_norm({lora.grads}, 1.0f);
    opt.step(lora.params, lora.grads, 1e-4f);
    if (device.is_cuda()) cuda::synchronize();
    step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
  }
  size_t file_bytes = 0;
  for (NamedParam& p : model.params()) file_bytes += p.t->nbytes();
  for (Linear* l : model.linears()) file_bytes += l->weight_bytes() - l->W.nbytes();  // the scales
  std::printf("lora-step %s on %s: hidden %d, %d + %d blocks, weights %.0f MiB as loaded; %d image + %d text tokens, "
              "LoRA rank %d, checkpointing %s, quantize %s: load %.2f s, last step %.3f s (loss %.4f); peak RSS %.0f MiB (%.0f before "
              "loading)%s; the memory plan: %.0f MiB\n",
              a[1].c_str(), describe_device(device).c_str(), c.hidden, c.n_double, c.n_single, file_bytes / 1048576.0,
              image_tokens, text_tokens, rank, checkpointing ? "on" : "off", weight_format_name(quantize), load_s, step_s, loss, peak_rss_mib(), rss0,
              device.is_cuda() ? (", peak device memory " + std::to_string((long)(cuda::peak_bytes() >> 20)) + " MiB").c_str() : "",
              plan.total / 1048576.0);
  return 0;
}

// One random picture through the autoencoder's encoder (and, with --decode, back), in inference
// mode: time and peak host RSS.
int cmd_vae_encode(const std::vector<std::string>& a) {
  need_args(a, 2, "vae-encode");
  std::vector<std::string> rest;
  const Device device = device_option(a, 2, "vae-encode", &rest);
  int size = 1024;
  bool decode = false;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--size" && i + 1 < rest.size()) size = count_arg(rest, ++i, "vae-encode", 8);
    else if (rest[i] == "--decode") decode = true;
    else fail("vae-encode: unknown argument '" + rest[i] + "'");
  }
  FluxVae ae = FluxVae::load(a[1], device);
  std::vector<float> img((size_t)3 * size * size);
  Rng rng(2);
  for (float& x : img) x = 2.0f * rng.uniform() - 1.0f;
  NoGrad no_grad;
  auto t0 = std::chrono::steady_clock::now();
  FluxVae::Moments m = ae.encode(from_vector(img, {1, 3, size, size}, device, compute_dtype(device)));
  std::vector<float> mean = to_floats(m.mean);
  const double enc_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("vae-encode %s on %s: %dx%d picture -> latent %s in %.1f s; peak RSS %.0f MiB%s\n", a[1].c_str(),
              describe_device(device).c_str(), size, size, shape_str(m.mean.shape).c_str(), enc_s, peak_rss_mib(),
              device.is_cuda() ? (", peak device memory " + std::to_string((long)(cuda::peak_bytes() >> 20)) + " MiB").c_str() : "");
  if (decode) {
    auto t1 = std::chrono::steady_clock::now();
    Tensor back = ae.decode(m.mean);
    std::vector<float> px = to_floats(back);
    std::printf("  decode: %s in %.1f s; peak RSS %.0f MiB\n", shape_str(back.shape).c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count(), peak_rss_mib());
  }
  return 0;
}

}  // namespace

std::vector<Command> model_commands() {
  return {
      {"train", "<job-dir>  train (or resume) the job in <job-dir>", nullptr},
      {"forward", "<ckpt> <inputs> <outputs> [--lora F] [--quantize none|fp8|int8|nf4] [--device D]  one FLUX forward; writes `out`",
       cmd_forward},
      {"lora-grad", "<ckpt> <inputs> <lora> <outputs> [--device D] [--checkpointing]  loss = mean((out-target)^2); "
                    "writes out, loss, grad.<key>", cmd_lora_grad},
      {"make-tiny", "<dir> [--seed N]  tiny random FLUX checkpoint + synthetic job", cmd_make_tiny},
      {"make-random", "flux|vae|t5|clip|qwen3|zimage|flux-model|zimage-model <path> [--shape tiny|demo|dev|flux|xxl|l|4b|full] "
                      "[--layers N] [--double N] [--single N] "
                      "[--dtype f32|bf16|f16|fp8] [--layout bfl|comfyui|diffusers] [--variant dev|schnell] [--shards N] "
                      "[--vocab N] [--prefix P] [--seed N]  a random checkpoint (flux-model: a whole FLUX.1 model folder) in "
                      "a real layout",
       cmd_make_random},
      {"make-tokenizers", "<dir> --kind clip|t5|qwen [--json]  a small CLIP (FLUX.1's tokenizer/), T5 (tokenizer_2/) or "
                          "Qwen (Z-Image's tokenizer/, with a chat template) tokenizer folder in the real formats; --json "
                          "adds CLIP's tokenizer.json",
       cmd_make_tokenizers},
      {"lora-step", "<transformer> [--device D] [--image-tokens N] [--text-tokens N] [--rank R] [--steps N] "
                    "[--checkpointing] [--quantize none|fp8|int8|nf4]  LoRA training steps on random inputs (weights quantized as they load): time, peak RSS and device memory",
       cmd_lora_step},
      {"vae-encode", "<ae> [--size N] [--decode] [--device D]  one random picture through the autoencoder: time, peak RSS",
       cmd_vae_encode},
      {"bench", "[--steps N]  CPU ms per LoRA step: tiny model, demo model (16 and 64 image tokens)", cmd_bench},
  };
}

}  // namespace graft
