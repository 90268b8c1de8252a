// FLUX.1 as users have it: a whole random model folder (make-random flux-model) in the diffusers,
// BFL and ComfyUI layouts trains through job.json's several-encoder form, encodes with its own CLIP,
// T5 and autoencoder, samples, and gives the same loss trace from every layout.
#include <sys/stat.h>

#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "demo/random_models.h"
#include "demo/tokenizer_files.h"
#include "job_fixture.h"
#include "test.h"
#include "train/train.h"

using namespace graft;
using namespace graft_test;
using json = nlohmann::json;

namespace {

const int kT5Len = 24;  // the job's T5 length (FLUX.1-dev's is 512; shorter keeps the test fast)

// A prompt's ids as FLUX's tokenizers give them: CLIP [bos, words, eos, eos...] (77), T5 [words, </s>,
// <pad>...]; `words` picks ids from the middle of each small vocabulary.
json prompt_ids(int words, int seed) {
  const int cv = clip_tokenizer_vocab_size(), tv = t5_tokenizer_vocab_size();
  std::vector<int> clip(77, cv - 1), t5(kT5Len, 0);
  clip[0] = cv - 2;
  for (int i = 0; i < words; ++i) clip[1 + i] = 300 + (seed * 13 + i * 7) % 200, t5[i] = 3 + (seed * 11 + i * 5) % (tv - 3);
  t5[words] = 1;
  return {{"clip_l", clip}, {"t5", t5}};
}

struct ModelPaths {
  std::string transformer, ae, clip, t5;
};

json flux_job(const std::string& dir, const ModelPaths& m) {
  json items = json::array();
  for (int i = 0; i < 4; ++i) {
    json it = prepared_item(dir, "pic_" + std::to_string(i), 16, 16, i, "zxq, thing " + std::to_string(i), {});
    it["tokens"] = prompt_ids(3 + i, i + 1);
    it["dropout_tokens"] = prompt_ids(1, 0);
    items.push_back(it);
  }
  return {
      {"format", "graft-job/2"},
      {"name", "flux"},
      {"device", "cpu"},
      {"model", {{"arch", "flux"}, {"name_or_path", "random"}, {"transformer", m.transformer}, {"ae", m.ae},
                 {"text_encoders", {{"clip_l", m.clip}, {"t5", m.t5}}}}},
      {"network", {{"type", "lora"}, {"linear", 4}, {"linear_alpha", 4}}},
      {"train", {{"steps", 4}, {"batch_size", 2}, {"lr", 1e-3}, {"seed", 3}, {"guidance", 1.0}}},
      {"save", {{"dtype", "fp32"}, {"save_every", 100}}},
      {"text", {{"encoders", {{"clip_l", {{"max_len", 77}}}, {"t5", {{"max_len", kT5Len}}}}}, {"empty_tokens", prompt_ids(0, 0)}}},
      {"datasets", {{{"folder", "/data/pics"}, {"items", items}}}},
      {"sample", {{"sample_every", 4}, {"width", 16}, {"height", 16}, {"sample_steps", 2}, {"guidance_scale", 1.0},
                  {"prompts", {{{"prompt", "zxq on a beach"}, {"tokens", prompt_ids(4, 9)}}}}}},
  };
}

bool file_exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

std::vector<double> losses(const std::string& dir) {
  std::vector<double> out;
  for (const json& e : events_of(read_events(dir + "/metrics.jsonl"), "step")) out.push_back(e["loss"].get<double>());
  return out;
}

}  // namespace

TEST(flux_model_trains_the_same_from_every_layout) {
  TempDir tmp;
  const std::string root = tmp.path;
  RandomFluxModelOptions o;
  o.seed = 7;
  for (const char* layout : {"diffusers", "bfl", "comfyui"}) {
    o.layout = layout;
    write_random_flux_model(root + "/" + layout, o);
  }
  const std::string d = root + "/diffusers", b = root + "/bfl", c = root + "/comfyui";
  const std::vector<ModelPaths> models = {
      {d + "/transformer", d + "/vae", d + "/text_encoder", d + "/text_encoder_2"},
      {b + "/flux1-dev.safetensors", b + "/ae.safetensors", b + "/text_encoder", b + "/text_encoder_2"},
      {c + "/diffusion_models/flux1-dev.safetensors", c + "/vae/ae.safetensors", c + "/text_encoders/clip_l.safetensors",
       c + "/text_encoders/t5xxl_fp16.safetensors"}};
  std::vector<std::vector<double>> traces;
  for (size_t k = 0; k < models.size(); ++k) {
    const std::string job = root + "/job" + std::to_string(k);
    make_dirs(job);
    write_json(job + "/job.json", flux_job(job, models[k]));
    CHECK(train_run(job) == 0);
    traces.push_back(losses(job));
    CHECK(file_exists(job + "/flux.safetensors"));
    CHECK(file_exists(job + "/samples/000000004_0.png"));
  }
  CHECK(traces[0].size() == 4);
  for (double l : traces[0]) CHECK(std::isfinite(l) && l > 0.0);
  CHECK(traces[1] == traces[0]);
  CHECK(traces[2] == traces[0]);
}
