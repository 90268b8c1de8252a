// Z-Image as users have it: a whole random model folder (make-random zimage-model) in the diffusers and
// ComfyUI layouts trains a LoRA through job.json's "qwen3" text encoder (prompts of their own lengths
// in one batch), samples, saves the reference toolkit's "diffusion_model." keys, resumes exactly, and
// merges an assistant adapter for training that samples take out again.
#include <dirent.h>
#include <sys/stat.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/autograd.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/storage.h"
#include "demo/random_models.h"
#include "demo/tokenizer_files.h"
#include "job_fixture.h"
#include "models/llm.h"
#include "models/zimage.h"
#include "test.h"
#include "train/lora.h"
#include "train/memory_plan.h"
#include "train/train.h"

using namespace graft;
using namespace graft_test;
using json = nlohmann::json;

namespace {

const int kLen = 40;  // the job's Qwen3 length (Z-Image's is 512; shorter keeps the test fast)

// A prompt's ids as the chat template and Qwen's tokenizer give them: <|im_start|> ... words ...
// <|im_end|>, then <|endoftext|> padding; `words` sets its length, so prompts differ in length.
std::vector<int> prompt_ids(int words, int seed) {
  const int pad = qwen_tokenizer_pad_id();
  std::vector<int> ids(kLen, pad);
  ids[0] = pad + 1;  // <|im_start|>
  for (int i = 0; i < words; ++i) ids[1 + i] = 3 + (seed * 13 + i * 7) % (pad - 3);
  ids[1 + words] = pad + 2;  // <|im_end|>
  return ids;
}

struct ZImagePaths {
  std::string transformer, ae, te;
};

json zimage_job(const std::string& dir, const ZImagePaths& m, int steps) {
  json items = json::array();
  for (int i = 0; i < 4; ++i) {
    json it = prepared_item(dir, "pic_" + std::to_string(i), 16, 16, i, "zxq, thing " + std::to_string(i), {});
    it["tokens"] = {{"qwen3", prompt_ids(3 + 5 * i, i + 1)}};  // 5 to 20 tokens: mixed lengths in a batch
    it["dropout_tokens"] = {{"qwen3", prompt_ids(1, 0)}};
    items.push_back(it);
  }
  return {
      {"format", "graft-job/2"},
      {"name", "zimage"},
      {"device", "cpu"},
      {"model", {{"arch", "zimage"}, {"variant", "turbo"}, {"name_or_path", "random"}, {"transformer", m.transformer},
                 {"ae", m.ae}, {"text_encoders", {{"qwen3", m.te}}}}},
      {"network", {{"type", "lora"}, {"linear", 4}, {"linear_alpha", 4}}},
      {"train", {{"steps", steps}, {"batch_size", 2}, {"lr", 1e-3}, {"seed", 3}}},
      {"save", {{"dtype", "fp32"}, {"save_every", 100}}},
      {"text", {{"encoders", {{"qwen3", {{"max_len", kLen}, {"pad_id", qwen_tokenizer_pad_id()}}}}},
                {"empty_tokens", {{"qwen3", prompt_ids(0, 0)}}}}},
      {"datasets", {{{"folder", "/data/pics"}, {"items", items}}}},
      {"sample", {{"sample_every", steps}, {"width", 16}, {"height", 16}, {"sample_steps", 2}, {"guidance_scale", 1.0},
                  {"shift", 3.0}, {"prompts", {{{"prompt", "zxq on a beach"}, {"tokens", {{"qwen3", prompt_ids(4, 9)}}}}}}}},
  };
}

std::vector<double> losses(const std::string& dir) {
  std::vector<double> out;
  for (const json& e : events_of(read_events(dir + "/metrics.jsonl"), "step")) out.push_back(e["loss"].get<double>());
  return out;
}

bool exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

// A tiny random Z-Image model folder in both layouts, once for every test.
const std::string& model_root() {
  static TempDir root;
  static bool made = false;
  if (!made) {
    RandomZImageModelOptions o;
    o.seed = 11;
    write_random_zimage_model(root.path + "/diffusers", o);
    o.layout = "comfyui";
    write_random_zimage_model(root.path + "/comfyui", o);
    made = true;
  }
  return root.path;
}

ZImagePaths diffusers_paths() {
  const std::string d = model_root() + "/diffusers";
  return {d + "/transformer", d + "/vae", d + "/text_encoder"};
}

}  // namespace

TEST(zimage_model_trains_the_same_from_both_layouts) {
  TempDir tmp;
  const std::string c = model_root() + "/comfyui";
  const std::vector<ZImagePaths> models = {
      diffusers_paths(),
      {c + "/diffusion_models/z_image_turbo_bf16.safetensors", c + "/vae/ae.safetensors", c + "/text_encoders/qwen_3_4b.safetensors"}};
  std::vector<std::vector<double>> traces;
  for (size_t k = 0; k < models.size(); ++k) {
    const std::string job = tmp.path + "/job" + std::to_string(k);
    make_dirs(job);
    write_json(job + "/job.json", zimage_job(job, models[k], 4));
    CHECK(train_run(job) == 0);
    traces.push_back(losses(job));
    CHECK(exists(job + "/samples/000000004_0.png"));
  }
  CHECK(traces[0].size() == 4);
  for (double l : traces[0]) CHECK(std::isfinite(l) && l > 0.0);
  CHECK(traces[1] == traces[0]);
  // The reference toolkit's names: diffusers' modules under "diffusion_model.", q/k/v split.
  const SafeTensorsFile lora = SafeTensorsFile::open(tmp.path + "/job0/zimage.safetensors");
  const ZImageConfig cfg = ZImageTransformer::shapes(models[0].transformer).cfg;
  CHECK(lora.tensors.size() == 2 * zimage_lora_targets(cfg).size());
  for (const char* key : {"diffusion_model.layers.0.attention.to_q.lora_A.weight", "diffusion_model.layers.1.attention.to_v.lora_B.weight",
                          "diffusion_model.layers.0.attention.to_out.0.lora_A.weight", "diffusion_model.layers.1.feed_forward.w3.lora_B.weight",
                          "diffusion_model.layers.0.adaLN_modulation.0.lora_A.weight"})
    CHECK(lora.has(key));
  // Prompts of their own lengths were cached at those lengths: <|im_start|> + words + <|im_end|> (captions of
  // 3 to 18 words, the dropout caption of 1, the empty prompt).
  const std::vector<json> cache = events_of(read_events(tmp.path + "/job0/metrics.jsonl"), "cache");
  CHECK(cache.size() == 1 && cache[0]["text_encoded"].get<int>() == 6);
  std::set<int64_t> rows;
  DIR* d = opendir((tmp.path + "/job0/cache/text").c_str());
  CHECK(d != nullptr);
  while (dirent* e = d ? readdir(d) : nullptr)
    if (std::string(e->d_name).find(".safetensors") != std::string::npos)
      rows.insert(SafeTensorsFile::open(tmp.path + "/job0/cache/text/" + e->d_name).info("txt").shape.at(0));
  if (d) closedir(d);
  CHECK((rows == std::set<int64_t>{2, 3, 5, 10, 15, 20}));
}

// Trained 2 steps, then resumed to 4: the LoRA of an uninterrupted 4-step run, bit for bit.
TEST(zimage_resume_equals_uninterrupted) {
  TempDir ta, tb;
  write_json(ta.path + "/job.json", zimage_job(ta.path, diffusers_paths(), 4));
  CHECK(train_run(ta.path) == 0);
  json jb = zimage_job(tb.path, diffusers_paths(), 2);
  jb["sample"]["sample_every"] = 4;
  write_json(tb.path + "/job.json", jb);
  CHECK(train_run(tb.path) == 0);
  jb["train"]["steps"] = 4;
  write_json(tb.path + "/job.json", jb);
  CHECK(train_run(tb.path) == 0);
  const std::vector<double> la = losses(ta.path), lb = losses(tb.path);
  CHECK(la.size() == 4 && lb.size() == 4 && la == lb);
  CHECK(read_bytes(ta.path + "/zimage.safetensors") == read_bytes(tb.path + "/zimage.safetensors"));
  CHECK(read_bytes(ta.path + "/samples/000000004_0.png") == read_bytes(tb.path + "/samples/000000004_0.png"));
}

// The assistant adapter (Z-Image Turbo's de-distillation LoRA, the reference toolkit's
// assistant_lora_path) is merged while training: the losses move with it. Samples take it out: a
// zero-step-trained adapter's first sample equals the plain model's.
TEST(zimage_assistant_adapter_trains_merged_and_samples_without_it) {
  TempDir tmp;
  const ZImagePaths m = diffusers_paths();
  const ZImageConfig cfg = ZImageTransformer::shapes(m.transformer).cfg;
  LoraSet assistant = lora_create(zimage_lora_targets(cfg), 8, 8, 5);
  std::vector<float> p = assistant.host_params();
  for (size_t i = 0; i < p.size(); ++i) p[i] = 0.05f * std::sin(0.37f * (float)i);  // B nonzero too
  assistant.set_params(p);
  assistant.prefix = "diffusion_model.";
  lora_save(assistant, tmp.path + "/assistant.safetensors", DType::F32, {});

  auto run = [&](const std::string& name, bool with_assistant) {
    const std::string job = tmp.path + "/" + name;
    make_dirs(job);
    json j = zimage_job(job, m, 2);
    j["sample"]["skip_first_sample"] = false;
    if (with_assistant) j["model"]["assistant_lora"] = tmp.path + "/assistant.safetensors";
    write_json(job + "/job.json", j);
    CHECK(train_run(job) == 0);
    return job;
  };
  const std::string plain = run("plain", false), merged = run("merged", true);
  const std::vector<double> lp = losses(plain), lm = losses(merged);
  CHECK(lp.size() == 2 && lm.size() == 2);
  CHECK(std::fabs(lp[0] - lm[0]) > 1e-4 * lp[0]);  // training sees the merged model
  // Step 0's sample (the adapter still zero) is the base model's in both runs, up to the merge's
  // rounding (merged into fp32 weights, then subtracted as an adapter).
  const std::string a = read_bytes(plain + "/samples/000000000_0.png"), b = read_bytes(merged + "/samples/000000000_0.png");
  CHECK(!a.empty() && !b.empty());
  int W = 0, H = 0;
  const std::vector<float> pa = png_read(plain + "/samples/000000000_0.png", &W, &H);
  const std::vector<float> pb = png_read(merged + "/samples/000000000_0.png", &W, &H);
  double worst = 0;
  for (size_t i = 0; i < pa.size(); ++i) worst = std::max(worst, (double)std::fabs(pa[i] - pb[i]));
  std::printf("      assistant: first loss %.5f plain, %.5f merged; step-0 samples differ by at most %.4f\n", lp[0], lm[0], worst);
  CHECK(worst <= 2.0 / 255.0 + 1e-6);
}

// The memory plan counts Z-Image's weights as loading keeps them, to the byte, in every format (the
// patch embedder and the final projection stay dense).
TEST(zimage_memory_plan_counts_the_weights_as_loaded) {
  TempDir dir;
  const std::string path = dir.path + "/z.safetensors";
  write_random_zimage(path, tiny_zimage_config(), 3, "comfyui", DType::BF16);
  ZImageTransformer shapes = ZImageTransformer::shapes(path);
  for (const WeightFormat f : {WeightFormat::dense, WeightFormat::fp8, WeightFormat::int8, WeightFormat::nf4}) {
    PlanInputs in;
    in.arch = "zimage";
    in.zimage = shapes.cfg;
    in.transformer = plan_tensors(shapes.quantized_linears(), shapes.params());
    in.quantize = f;
    in.rank = 4, in.image_tokens = 16, in.text_tokens = 8;
    ZImageTransformer m = ZImageTransformer::load(path, Device::cpu(), f);
    double loaded = 0;
    for (NamedParam& p : m.params()) loaded += (double)p.t->nbytes();
    for (Linear* l : m.linears()) loaded += (double)(l->weight_bytes() - l->W.nbytes());  // the scales
    const MemoryPlan plan = plan_memory(in);
    const double planned = plan.training.at(0).bytes + plan.training.at(1).bytes;
    std::printf("      %s: planned %.0f bytes, loaded %.0f\n", weight_format_name(f), planned, loaded);
    CHECK(planned == loaded);
  }
}

// The plan's activation figure for Z-Image against what the tape keeps (host bytes alive after the
// forward, and at the backward's peak), with and without checkpointing, on Z-Image's proportions (FFN
// 8/3, head size 32) at a small width.
TEST(zimage_activation_estimate_matches_what_the_tape_keeps) {
  ZImageConfig c = tiny_zimage_config();
  c.dim = 128, c.heads = 4, c.ffn_hidden = (int)(128 / 3.0 * 8), c.adaln_dim = 128, c.n_layers = 3;
  ZImageTransformer m = ZImageTransformer::random(c, Device::cpu(), 5);
  const int B = 2, side = 8, Lt = 40, Li = side * side;
  FluxInputs in;
  in.B = B, in.L_img = Li, in.L_txt = Lt;
  Rng rng(9);
  auto fill = [&](std::vector<float>& v, size_t n) { v.resize(n); for (float& x : v) x = rng.normal(); };
  fill(in.img, (size_t)B * Li * c.patch_features());
  fill(in.txt, (size_t)B * Lt * c.cap_dim);
  in.img_ids.resize((size_t)B * Li * 3);
  flux_img_ids(in.img_ids.data(), B, side, side);
  in.timesteps = {0.3f, 0.8f};
  for (const bool ckpt : {false, true}) {
    m.checkpointing = ckpt;
    LoraSet lora = lora_create(zimage_lora_targets(c), 8, 8.0f, 3);
    lora_attach(m.linears(), &lora);
    const size_t before = host_live_bytes();
    host_reset_peak();
    Tensor out = m.forward(in);
    const double kept = (double)(host_live_bytes() - before);
    std::vector<float> target(out.numel());
    for (float& x : target) x = rng.normal();
    backward(out, from_vector(target, out.shape, Device::cpu()));
    const double peak = (double)(host_peak_bytes() - before);
    const FluxActivations est = zimage_activation_bytes(c, B, Li, Lt, 8, ckpt, 4, false);
    std::printf("      checkpointing %s: kept %.2f MiB (estimate %.2f), peak %.2f MiB (estimate %.2f)\n", ckpt ? "on" : "off",
                kept / 1048576, est.kept / 1048576, peak / 1048576, (est.kept + est.transient) / 1048576);
    CHECK(est.kept > 0.8 * kept && est.kept < 1.2 * kept);
    CHECK(est.kept + est.transient > 0.8 * peak && est.kept + est.transient < 1.3 * peak);
    lora_attach(m.linears(), nullptr);
  }
}


// Qwen3 with its linear weights quantized as they load (model.quantize_te): q and k are reordered for the
// engine's RoPE before they are quantized, so each format stays close to the dense encoder.
TEST(qwen3_quantized_stays_close_to_dense) {
  TempDir dir;
  RandomWriteOptions o;
  o.dtype = DType::BF16;
  write_random_llm(dir.path + "/q.safetensors", tiny_qwen3_config(), 4, o);
  std::vector<int> ids;
  for (int i = 0; i < 23; ++i) ids.push_back((i * 41 + 7) % tiny_qwen3_config().vocab);
  NoGrad no_grad;
  const std::vector<float> dense = to_floats(DecoderLlm::load(dir.path + "/q.safetensors", Device::cpu(), -2).forward(ids, 1, 23));
  for (const auto& [f, bound] : {std::pair{WeightFormat::fp8, 0.1}, {WeightFormat::int8, 0.05}, {WeightFormat::nf4, 0.4}}) {
    const DecoderLlm m = DecoderLlm::load(dir.path + "/q.safetensors", Device::cpu(), -2, f);
    CHECK(m.layers[0].q.W.dtype != DType::BF16 && m.layers[0].k.W.dtype != DType::BF16);  // quantized after the reordering
    const std::vector<float> q = to_floats(m.forward(ids, 1, 23));
    double num = 0, den = 0;
    for (size_t i = 0; i < q.size(); ++i) num += (q[i] - dense[i]) * (q[i] - dense[i]), den += dense[i] * dense[i];
    const double rel = std::sqrt(num / den);
    std::printf("      %s: hidden state rel L2 %.2e from the dense encoder\n", weight_format_name(f), rel);
    CHECK(std::isfinite(rel) && rel > 0 && rel < bound);
  }
}

// Layer offloading's schedule around Z-Image's layers, logged on the CPU (where nothing moves): layer k+1
// asked for while layer k runs, k let go after it; in backward the reverse, never more than two wanted
// at once; the gradients bit-identical with and without the hooks, with and without checkpointing. The
// plan on CUDA counts the layers as host memory, two at a time on the device.
TEST(zimage_layer_offloading_schedule_keeps_two_layers_and_the_gradients) {
  struct Log : Denoiser::BlockStreamer {
    std::vector<std::string> calls;
    std::set<int> live;
    size_t most = 0;
    void prefetch(int k) override { calls.push_back("p" + std::to_string(k)), live.insert(k), most = std::max(most, live.size()); }
    void release(int k) override { calls.push_back("r" + std::to_string(k)), live.erase(k); }
  };
  ZImageConfig c = tiny_zimage_config();
  c.n_layers = 3;
  FluxInputs in;
  in.B = 2, in.L_img = 16, in.L_txt = 9;
  Rng rng(4);
  auto fill = [&](std::vector<float>& v, size_t n) { v.resize(n); for (float& x : v) x = rng.normal(); };
  fill(in.img, (size_t)2 * 16 * c.patch_features());
  fill(in.txt, (size_t)2 * 9 * c.cap_dim);
  in.img_ids.resize((size_t)2 * 16 * 3);
  flux_img_ids(in.img_ids.data(), 2, 4, 4);
  in.timesteps = {0.2f, 0.6f};
  in.txt_lens = {9, 4};
  for (const bool ckpt : {false, true}) {
    std::vector<float> grads[2];
    for (int with = 0; with < 2; ++with) {
      ZImageTransformer m = ZImageTransformer::random(c, Device::cpu(), 8);
      m.checkpointing = ckpt;
      auto log = std::make_shared<Log>();
      if (with) m.streamer = log;
      LoraSet lora = lora_create(zimage_lora_targets(c), 2, 2.0f, 5);
      std::vector<float> p = lora.host_params();
      for (size_t i = 0; i < p.size(); ++i) p[i] = 0.1f * std::sin(0.3f * (float)i);
      lora.set_params(p);
      lora_attach(m.linears(), &lora);
      Tensor out = m.forward(in);
      backward(out, from_vector(std::vector<float>(out.numel(), 0.01f), out.shape, Device::cpu()));
      grads[with] = to_floats(lora.grads);
      if (!with) continue;
      std::string calls;
      for (const std::string& s : log->calls) calls += s + " ";
      std::printf("      checkpointing %s: %s\n", ckpt ? "on " : "off", calls.c_str());
      CHECK(calls == "p0 p1 r0 p2 r1 r2 p2 p1 r2 p1 p0 r1 p0 r0 ");
      CHECK(log->most <= 2 && log->live.empty());
    }
    CHECK(grads[0] == grads[1]);
  }
  // The plan: every layer offloaded leaves two of them on the device.
  PlanInputs pin;
  pin.arch = "zimage";
  pin.zimage = zimage_config();
  WeightLoader w(nullptr, identity_layout("shapes"), Device::cpu());
  w.shapes_only = true;
  ZImageTransformer shapes(pin.zimage, w);
  pin.transformer = plan_tensors(shapes.quantized_linears(), shapes.params());
  for (PlanWeight& t : pin.transformer) t.dtype = DType::BF16;
  pin.cuda = true, pin.checkpointing = true, pin.image_tokens = 4096, pin.text_tokens = 128;
  const MemoryPlan resident = plan_memory(pin);
  pin.offload = 1.0;
  const MemoryPlan streamed = plan_memory(pin);
  std::printf("      full Z-Image bf16, 1024 px: %.2f GiB training, %.2f GiB with every layer offloaded (%.2f GiB in host memory)\n",
              resident.training_total / 1073741824.0, streamed.training_total / 1073741824.0, streamed.offloaded / 1073741824.0);
  CHECK(streamed.offloaded > 10.0 * 1073741824.0);  // 30 layers of 11.5 GiB of linear weights, less two on the device
  CHECK(streamed.training_total < resident.training_total - 9.0 * 1073741824.0);
}
