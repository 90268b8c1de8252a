// graft-trainer's demo commands: train the demo model, write the demo job, measure both, sample a
// model folder, and the demo text encoder's tokenizer.
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
#include "core/image_io.h"
#include "demo/demo_model.h"
#include "demo/shapes.h"
#include "demo/text_encoder.h"
#include "train/lora.h"
#include "train/pipeline.h"

namespace graft {

namespace {

int cmd_demo_model(const std::vector<std::string>& a) {
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

int cmd_demo_job(const std::vector<std::string>& a) {
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
void eval_options(const std::vector<std::string>& a, size_t first, const std::string& cmd, int* seeds,
                         int* steps) {
  *seeds = 4, *steps = 20;
  for (size_t i = first; i < a.size(); ++i) {
    if (a[i] == "--seeds" && i + 1 < a.size()) *seeds = count_arg(a, ++i, cmd.c_str(), 1);
    else if (a[i] == "--steps" && i + 1 < a.size()) *steps = count_arg(a, ++i, cmd.c_str(), 1);
    else fail(cmd + ": unknown argument '" + a[i] + "'");
  }
}

int cmd_demo_eval(const std::vector<std::string>& a) {
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

int cmd_demo_model_eval(const std::vector<std::string>& a) {
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

int cmd_sample(const std::vector<std::string>& a) {
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
int cmd_tokenize(const std::vector<std::string>& a) {
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

}  // namespace

std::vector<Command> demo_commands() {
  return {
      {"demo-model", "<dir> [--quick] [--seed N] [--pictures N] [--ae-steps N] [--dit-steps N] [--batch N] "
                     "[--latent-factor 2|4] [--resume [--transformer-from <model-dir>]] [--decoder-steps N] [--lr X] "
                     "[--stop-at N] [--ema-decay X] [--shape-contrast X] [--contrast-margin X] [--count-contrast X] "
                     "[--novel-words X]  train the built-in demo model from scratch", cmd_demo_model},
      {"demo-job", "<model-dir> <job-dir> [--steps N]  the demo LoRA job: dataset, regularization set, config.yaml",
       cmd_demo_job},
      {"demo-eval", "<model-dir> <lora> [--seeds N] [--steps N]  measure the demo LoRA: concept learnt, leak, colours kept",
       cmd_demo_eval},
      {"demo-model-eval", "<model-dir> [--seeds N] [--steps N]  measure the base model: shapes, colours, backgrounds, counts",
       cmd_demo_model_eval},
      {"sample", "<model-dir> --out F.png [--prompt P]... [--size N] [--steps N] [--cfg X] [--seed N] [--lora F[:scale]] "
                 "[--scale N]  images for prompts (several prompts: a contact sheet)", cmd_sample},
      {"tokenize", "<text> [--max-len N]  the demo text encoder's byte-level token ids, as JSON", cmd_tokenize},
  };
}

}  // namespace graft
