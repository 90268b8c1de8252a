// graft-trainer: the command line of the trainer. Every failure prints one line naming the file or
// field and what to do, and exits non-zero.
#include <omp.h>
#include <unistd.h>

#include <cstdlib>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/common.h"
#include "demo/demo_model.h"
#include "core/image_io.h"
#include "core/autograd.h"
#include "ops/ops.h"
#include "train/pipeline.h"
#include "models/flux.h"
#include "train/lora.h"
#include "ops/cpu_ops.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "demo/text_encoder.h"
#include "demo/tiny.h"
#include "train/train.h"

using namespace graft;

static const char* kUsage =
    "usage: graft-trainer <command> ...\n"
    "  train <job-dir>                                   train (or resume) the job in <job-dir>\n"
    "  forward <ckpt> <inputs> <outputs> [--lora F]      one FLUX forward; writes `out`\n"
    "  lora-grad <ckpt> <inputs> <lora> <outputs>        loss = mean((out-target)^2); writes out, loss, grad.<key>\n"
    "  make-tiny <dir> [--seed N]                        tiny random FLUX checkpoint + synthetic job\n"
    "  bench [--steps N]                                 CPU ms per LoRA step: tiny model, demo model (16 and 64 image tokens)\n"
    "  demo-model <dir> [--quick] [--seed N] [--pictures N] [--ae-steps N] [--dit-steps N] [--batch N]\n"
    "             [--latent-factor 2|4] [--resume [--transformer-from <model-dir>]] [--decoder-steps N] [--lr X] [--stop-at N]\n"
    "             [--ema-decay X] [--shape-contrast X] [--contrast-margin X] [--count-contrast X] [--novel-words X]\n"
    "                                                    train the built-in demo model from scratch\n"
    "  demo-job <model-dir> <job-dir> [--steps N]        the demo LoRA job: dataset, regularization set, config.yaml\n"
    "  demo-eval <model-dir> <lora> [--seeds N]          measure the demo LoRA: concept learnt, leak, colours kept\n"
    "  demo-model-eval <model-dir> [--seeds N]           measure the base model: shapes, colours, backgrounds drawn as asked\n"
    "  sample <model-dir> --out F.png [--prompt P]... [--size N] [--steps N] [--cfg X] [--seed N] [--lora F[:scale]] [--scale N]\n"
    "                                                    images for prompts (several prompts: a contact sheet)\n"
    "  tokenize <text> [--max-len N]                     the demo text encoder's byte-level token ids, as JSON\n"
    "  --version\n";

static void need_args(const std::vector<std::string>& a, size_t n, const char* cmd) {
  if (a.size() < n) fail(std::string(cmd) + ": missing arguments\n" + kUsage);
}

// v as a number of type T, all of it; otherwise an error that names `what` (command and option) and v.
template <class T>
static T parse_number(const std::string& v, const std::string& what) {
  size_t used = 0;
  T out{};
  try {
    if constexpr (std::is_same_v<T, float>) out = std::stof(v, &used);
    else if constexpr (std::is_same_v<T, int>) out = std::stoi(v, &used);
    else out = (T)std::stoull(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const bool negative = !std::is_same_v<T, float> && !std::is_same_v<T, int> && v.find('-') != std::string::npos;
  if (used == 0 || used != v.size() || negative) fail(what + " '" + v + "': expected a number");
  return out;
}

// The value of option a[i - 1] of `cmd`, as a number.
template <class T>
static T number_arg(const std::vector<std::string>& a, size_t i, const char* cmd) {
  return parse_number<T>(a[i], std::string(cmd) + ": " + a[i - 1]);
}

// The value of option a[i - 1] of `cmd`, a whole number of at least `min` (steps, pictures, a batch).
static int count_arg(const std::vector<std::string>& a, size_t i, const char* cmd, int min) {
  const int v = number_arg<int>(a, i, cmd);
  if (v < min) fail(std::string(cmd) + ": " + a[i - 1] + " " + a[i] + ": must be at least " + std::to_string(min));
  return v;
}

// --device D (default cpu) from a[first] on; other arguments go to `rest`.
static Device device_option(const std::vector<std::string>& a, size_t first, const char* cmd,
                            std::vector<std::string>* rest) {
  std::string name = "cpu";
  for (size_t i = first; i < a.size(); ++i) {
    if (a[i] == "--device" && i + 1 < a.size()) name = a[++i];
    else rest->push_back(a[i]);
  }
  return parse_device(name, std::string(cmd) + ": --device");
}

static int cmd_forward(const std::vector<std::string>& a) {
  need_args(a, 4, "forward");
  std::vector<std::string> rest;
  const Device device = device_option(a, 4, "forward", &rest);
  std::string lora_path;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--lora" && i + 1 < rest.size()) lora_path = rest[++i];
    else fail("forward: unknown argument '" + rest[i] + "'");
  }
  FluxTransformer model = FluxTransformer::load(a[1], device);
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

static int cmd_lora_grad(const std::vector<std::string>& a) {
  need_args(a, 5, "lora-grad");
  std::vector<std::string> rest;
  const Device device = device_option(a, 5, "lora-grad", &rest);
  bool checkpointing = false;
  for (const std::string& r : rest) {
    if (r == "--checkpointing") checkpointing = true;
    else fail("lora-grad: unknown argument '" + r + "'");
  }
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
  // Gradients under the file's own keys. The file's B carries scale 1 when it has no alpha, so the
  // gradient of the stored B is d/dB of scale*B: scale x the gradient of the effective B.
  SafeTensorsFile lf = SafeTensorsFile::open(a[3]);
  for (size_t i = 0; i < lora.adapters.size(); ++i) {
    const LoraAdapter& ad = lora.adapters[i];
    std::string key = (lf.has("transformer." + ad.target.module + ".lora_A.weight") ? "transformer." : "") + ad.target.module;
    w.add("grad." + key + ".lora_A.weight", DType::F32, {ad.rank, ad.target.in}, grads.data() + ad.a_off);
    w.add("grad." + key + ".lora_B.weight", DType::F32, {ad.target.rows, ad.rank}, grads.data() + ad.b_off);
  }
  w.write(a[4]);
  return 0;
}

static int cmd_make_tiny(const std::vector<std::string>& a) {
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
static double bench_lora_step(FluxTransformer& model, int B, int side, int L_txt, int steps) {
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

static int cmd_bench(const std::vector<std::string>& a) {
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

static int cmd_demo_model(const std::vector<std::string>& a) {
  need_args(a, 2, "demo-model");
  DemoModelOptions o;
  o.out_dir = a[1];
  for (size_t i = 2; i < a.size(); ++i) {
    if (a[i] == "--quick") {  // a smoke run of every stage, for tests
      o.pictures = 64;
      o.ae_steps = 4;
      o.ae_batch = 4;
      o.dit_steps = 4;
      o.dit_batch = 4;
      o.log_every = 2;
    } else if (a[i] == "--seed" && i + 1 < a.size()) {
      o.seed = number_arg<uint64_t>(a, ++i, "demo-model");
    } else if (a[i] == "--resume") {
      o.resume = true;
    } else if (a[i] == "--latent-factor" && i + 1 < a.size()) {
      o.latent_factor = number_arg<int>(a, ++i, "demo-model");
      if (o.latent_factor != 2 && o.latent_factor != 4)
        fail("demo-model: --latent-factor " + a[i] + ": the demo autoencoder scales by 2 or 4");
    } else if (a[i] == "--transformer-from" && i + 1 < a.size()) {
      o.transformer_from = a[++i];
    } else if (a[i] == "--lr" && i + 1 < a.size()) {
      o.dit_lr = number_arg<float>(a, ++i, "demo-model");
      if (!(o.dit_lr > 0)) fail("demo-model: --lr " + a[i] + ": the learning rate must be above 0");
    } else if (a[i] == "--pictures" && i + 1 < a.size()) {
      o.pictures = count_arg(a, ++i, "demo-model", 1);
    } else if (a[i] == "--ae-steps" && i + 1 < a.size()) {
      o.ae_steps = count_arg(a, ++i, "demo-model", 0);
    } else if (a[i] == "--decoder-steps" && i + 1 < a.size()) {
      o.decoder_steps = count_arg(a, ++i, "demo-model", 0);
    } else if (a[i] == "--dit-steps" && i + 1 < a.size()) {
      o.dit_steps = count_arg(a, ++i, "demo-model", 0);
    } else if (a[i] == "--batch" && i + 1 < a.size()) {
      o.ae_batch = o.dit_batch = count_arg(a, ++i, "demo-model", 1);
    } else if (a[i] == "--stop-at" && i + 1 < a.size()) {
      o.stop_at = number_arg<int>(a, ++i, "demo-model");
      if (o.stop_at < 1) fail("demo-model: --stop-at " + a[i] + ": give the step (1 or more) to stop the run at");
    } else if (a[i] == "--ema-decay" && i + 1 < a.size()) {
      o.ema_decay = number_arg<float>(a, ++i, "demo-model");
      if (!(o.ema_decay >= 0 && o.ema_decay < 1))
        fail("demo-model: --ema-decay " + a[i] + ": give the averaging decay, from 0 (no average) to below 1");
    } else if (a[i] == "--shape-contrast" && i + 1 < a.size()) {
      o.shape_contrast = number_arg<float>(a, ++i, "demo-model");
    } else if (a[i] == "--contrast-margin" && i + 1 < a.size()) {
      o.contrast_margin = number_arg<float>(a, ++i, "demo-model");
    } else if (a[i] == "--count-contrast" && i + 1 < a.size()) {
      o.count_contrast = number_arg<float>(a, ++i, "demo-model");
    } else if (a[i] == "--novel-words" && i + 1 < a.size()) {
      o.novel_words = number_arg<float>(a, ++i, "demo-model");
      if (!(o.novel_words >= 0 && o.novel_words <= 1))
        fail("demo-model: --novel-words " + a[i] + ": give the share of captions (0 to 1) that name the shape by a made-up word");
    } else {
      fail("demo-model: unknown argument '" + a[i] + "'");
    }
  }
  if (!o.transformer_from.empty() && !o.resume)
    fail("demo-model: --transformer-from takes the transformer of another model onto the autoencoder of " + o.out_dir +
         "; add --resume (first train that autoencoder: demo-model " + o.out_dir + " --dit-steps 0)");
  if (o.decoder_steps > 0 && !o.resume)
    fail("demo-model: --decoder-steps fine-tunes the decoder of a model trained before; add --resume");
  train_demo_model(o);
  return 0;
}

static int cmd_demo_job(const std::vector<std::string>& a) {
  need_args(a, 3, "demo-job");
  DemoJobOptions o;
  o.model_dir = a[1];
  o.job_dir = a[2];
  for (size_t i = 3; i < a.size(); ++i) {
    if (a[i] == "--steps" && i + 1 < a.size()) o.steps = count_arg(a, ++i, "demo-job", 1);
    else fail("demo-job: unknown argument '" + a[i] + "'");
  }
  make_demo_job(o);
  std::printf("wrote the demo LoRA job to %s: dataset/, dataset_reg/ and config.yaml (queue it with: graft queue add %s/config.yaml)\n",
              o.job_dir.c_str(), o.job_dir.c_str());
  return 0;
}

// --seeds N and --steps N of the two measuring commands, from a[first] on; both at least 1.
static void eval_options(const std::vector<std::string>& a, size_t first, const std::string& cmd, int* seeds,
                         int* steps) {
  *seeds = 4, *steps = 20;
  for (size_t i = first; i < a.size(); ++i) {
    if (a[i] == "--seeds" && i + 1 < a.size()) *seeds = count_arg(a, ++i, cmd.c_str(), 1);
    else if (a[i] == "--steps" && i + 1 < a.size()) *steps = count_arg(a, ++i, cmd.c_str(), 1);
    else fail(cmd + ": unknown argument '" + a[i] + "'");
  }
}

static int cmd_demo_eval(const std::vector<std::string>& a) {
  need_args(a, 3, "demo-eval");
  int seeds, steps;
  eval_options(a, 3, "demo-eval", &seeds, &steps);
  DemoEval e = demo_eval(a[1], a[2], seeds, steps);
  std::printf("demo-eval over %d samples: bar (zxq) IoU %.3f -> %.3f (closest base shape %.3f -> %.3f); "
              "colours as asked %.0f%% -> %.0f%%; pixel change with the trigger %.4f, without it (leak) %.4f (another seed: %.4f)\n",
              e.samples, e.concept_base, e.concept_lora, e.other_base, e.other_lora, 100 * e.colours_base,
              100 * e.colours_lora, e.activation_change, e.leak_change, e.seed_change);
  nlohmann::json j = {{"samples", e.samples}, {"concept_iou_base", e.concept_base}, {"concept_iou_lora", e.concept_lora},
                      {"other_iou_base", e.other_base}, {"other_iou_lora", e.other_lora},
                      {"activation_change", e.activation_change}, {"leak_change", e.leak_change},
                      {"seed_change", e.seed_change}, {"colours_base", e.colours_base}, {"colours_lora", e.colours_lora}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

static int cmd_demo_model_eval(const std::vector<std::string>& a) {
  need_args(a, 2, "demo-model-eval");
  int seeds, steps;
  eval_options(a, 2, "demo-model-eval", &seeds, &steps);
  BaseEval e = base_eval(a[1], seeds, steps);
  // Per base shape, as JSON and as "circle 75%, square 12%, ...".
  auto by_shape = [](const double* v) {
    nlohmann::json o;
    for (int k = 0; k < kBaseShapes; ++k) o[shape_name(kBaseShapeList[k])] = v[k];
    return o;
  };
  auto by_shape_text = [](const double* v) {
    std::string t;
    for (int k = 0; k < kBaseShapes; ++k)
      t += (k ? ", " : "") + std::string(shape_name(kBaseShapeList[k])) + " " + std::to_string((int)std::lround(100 * v[k])) + "%";
    return t;
  };
  std::printf("demo-model-eval over %d pictures of one large shape: shape right %.0f%% (chance 20%%), colour right "
              "%.0f%%, background right %.0f%%; shape right by shape: %s; the autoencoder's ceiling (drawn shapes read "
              "back after one round trip): small %.0f%%, large %.0f%%\n",
              e.samples, 100 * e.shape, 100 * e.colour, 100 * e.background, by_shape_text(e.per_shape).c_str(),
              100 * e.autoencoder_small, 100 * e.autoencoder_large);
  nlohmann::json j = {{"samples", e.samples}, {"shape", e.shape}, {"colour", e.colour}, {"background", e.background},
                      {"per_shape", by_shape(e.per_shape)},
                      {"autoencoder", {{"small", e.autoencoder_small}, {"large", e.autoencoder_large}}}};
  std::printf("small shapes: right %.0f%% (%s)\n", 100 * e.small_shape, by_shape_text(e.per_small_shape).c_str());
  j["small"] = {{"shape", e.small_shape}, {"per_shape", by_shape(e.per_small_shape)}};
  std::printf("counts over %d pictures: right %.0f%% (the same captions drawn: %.0f%%); a large %.0f%%, two large "
              "%.0f%%, a small %.0f%%, two small %.0f%%, three small %.0f%%\n",
              e.count_samples, 100 * e.count, 100 * e.count_drawn, 100 * e.per_count[0], 100 * e.per_count[1],
              100 * e.per_count[2], 100 * e.per_count[3], 100 * e.per_count[4]);
  j["counts"] = {{"samples", e.count_samples}, {"right", e.count}, {"drawn", e.count_drawn},
                 {"a_large", e.per_count[0]}, {"two_large", e.per_count[1]}, {"a_small", e.per_count[2]},
                 {"two_small", e.per_count[3]}, {"three_small", e.per_count[4]}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

static int cmd_sample(const std::vector<std::string>& a) {
  need_args(a, 2, "sample");
  Pipeline pipe = Pipeline::load(a[1]);
  SampleParams sp = pipe.defaults;
  std::vector<std::string> prompts;
  std::string out, lora_arg;
  int size = pipe.image_size, scale_up = 1;  // --scale: nearest-neighbour enlargement, to look at 32 px pictures
  for (size_t i = 2; i < a.size(); ++i) {
    auto next = [&]() -> std::string {
      if (i + 1 >= a.size()) fail("sample: " + a[i] + " needs a value");
      return a[++i];
    };
    if (a[i] == "--prompt") prompts.push_back(next());
    else if (a[i] == "--out") out = next();
    else if (a[i] == "--size") size = parse_number<int>(next(), "sample: --size");
    else if (a[i] == "--steps") sp.steps = parse_number<int>(next(), "sample: --steps");
    else if (a[i] == "--cfg") sp.cfg_scale = parse_number<float>(next(), "sample: --cfg");
    else if (a[i] == "--seed") sp.seed = parse_number<uint64_t>(next(), "sample: --seed");
    else if (a[i] == "--lora") lora_arg = next();
    else if (a[i] == "--scale") scale_up = parse_number<int>(next(), "sample: --scale");
    else fail("sample: unknown argument '" + a[i] + "'");
  }
  if (out.empty()) fail("sample: --out <file.png> is required");
  const int multiple = 2 * pipe.ae.cfg.downscale();  // the autoencoder's factor times the transformer's 2x2 patches
  if (size < multiple || size % multiple)
    fail("sample: --size " + std::to_string(size) + ": give the picture's side in pixels, a multiple of " +
         std::to_string(multiple) + " for " + a[1]);
  if (scale_up < 1) fail("sample: --scale " + std::to_string(scale_up) + ": give the enlargement, 1 or more");
  if (prompts.empty()) prompts.push_back("");
  LoraSet lora;
  if (!lora_arg.empty()) {
    float scale = 1.0f;
    std::string path = lora_arg;
    size_t colon = lora_arg.rfind(':');
    if (colon != std::string::npos && colon > 0) {
      path = lora_arg.substr(0, colon);
      scale = parse_number<float>(lora_arg.substr(colon + 1), "sample: --lora " + lora_arg + ": the scale");
    }
    lora = lora_load(path, flux_lora_targets(pipe.transformer.cfg, true), scale);
  }
  std::vector<std::vector<float>> pics;
  for (const std::string& p : prompts) pics.push_back(pipe.generate(p, size, sp, lora_arg.empty() ? nullptr : &lora));
  int w = size, h = size;
  std::vector<float> img = pics.size() == 1 ? pics[0] : contact_sheet(pics, size, size, std::min<int>(5, (int)pics.size()), &w, &h);
  if (scale_up > 1) img = upscale_nearest(img, w, h, scale_up), w *= scale_up, h *= scale_up;
  png_write(out, img.data(), w, h);
  std::printf("wrote %s (%zu prompt%s, %d steps, cfg %g, seed %llu)\n", out.c_str(), prompts.size(),
              prompts.size() > 1 ? "s" : "", sp.steps, sp.cfg_scale, (unsigned long long)sp.seed);
  return 0;
}

// [bos] UTF-8 bytes [eos] (tokenize_bytes), padded or truncated to --max-len when given: the
// TypeScript side checks its tokenizer.json against this.
static int cmd_tokenize(const std::vector<std::string>& a) {
  need_args(a, 2, "tokenize");
  int max_len = -1;
  for (size_t i = 2; i < a.size(); ++i) {
    if (a[i] == "--max-len" && i + 1 < a.size()) {
      const std::string& v = a[++i];
      if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 7 || std::stoi(v) < 2)
        fail("tokenize: --max-len must be an integer >= 2, got '" + v + "'");
      max_len = std::stoi(v);
    } else {
      fail("tokenize: unknown argument '" + a[i] + "'");
    }
  }
  std::vector<int> ids = tokenize_bytes(a[1], max_len > 0 ? max_len : (int)a[1].size() + 2);
  std::printf("%s\n", nlohmann::json(ids).dump().c_str());
  return 0;
}

int main(int argc, char** argv) {
  // Idle OpenMP threads spin by default; on a box where anything else runs (the TUI, a second job,
  // a compiler) that spinning made steps 5-6x slower here. libgomp reads the policy when it loads,
  // so set it and start again once.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);  // only returns on failure: then run as we are
  }
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.empty() || a[0] == "-h" || a[0] == "--help" || a[0] == "help") {
    std::fputs(kUsage, a.empty() ? stderr : stdout);
    return a.empty() ? 2 : 0;
  }
  try {
    if (a[0] == "--version") {
      std::printf("graft-trainer %s\n", GRAFT_VERSION);
      return 0;
    }
    if (a[0] == "train") {
      need_args(a, 2, "train");
      return train_run(a[1]);
    }
    if (a[0] == "forward") return cmd_forward(a);
    if (a[0] == "lora-grad") return cmd_lora_grad(a);
    if (a[0] == "make-tiny") return cmd_make_tiny(a);
    if (a[0] == "bench") return cmd_bench(a);
    if (a[0] == "demo-model") return cmd_demo_model(a);
    if (a[0] == "sample") return cmd_sample(a);
    if (a[0] == "demo-job") return cmd_demo_job(a);
    if (a[0] == "demo-eval") return cmd_demo_eval(a);
    if (a[0] == "demo-model-eval") return cmd_demo_model_eval(a);
    if (a[0] == "tokenize") return cmd_tokenize(a);
    std::fprintf(stderr, "graft-trainer: unknown command '%s'\n%s", a[0].c_str(), kUsage);
    return 2;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: internal: %s\n", e.what());
    return 1;
  }
}
