// A job.json v2 (graft-job/2, `datasets`) on the tiny random pipeline, with its prepared pictures, for
// the job, loader, cache and training tests.
#pragma once
#include <stdlib.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/image_io.h"
#include "core/rng.h"
#include "test.h"
#include "demo/text_encoder.h"
#include "demo/tiny.h"

namespace graft_test {

// A folder under /tmp, removed with everything in it when the object goes (the test ends or fails).
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/graft-test-XXXXXX";
    if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    path = tmpl;
  }
  ~TempDir() {
    if (std::system(("rm -rf '" + path + "'").c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", path.c_str());
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  operator const std::string&() const { return path; }
};

// One tiny pipeline (transformer, text encoder max_len 16, autoencoder factor 2) for every test.
inline const std::string& tiny_model_dir() {
  static TempDir root;
  static std::string dir;
  if (dir.empty()) {
    dir = root.path + "/model";
    graft::make_tiny_pipeline(dir, 5);
  }
  return dir;
}

constexpr int kMaxLen = 16;
inline std::vector<int> toks(const std::string& text) { return graft::tokenize_bytes(text, kMaxLen); }

// A smooth picture with a bright square whose place depends on `seed`, [3, H, W] in [-1, 1].
inline std::vector<float> test_picture(int W, int H, int seed) {
  graft::Rng rng(seed, 0x91C, 0);
  const float r = rng.uniform(), g = rng.uniform(), b = rng.uniform();
  const int sx = (int)(rng.uniform() * W / 2), sy = (int)(rng.uniform() * H / 2);
  std::vector<float> px((size_t)3 * W * H);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        float base = (c == 0 ? r : c == 1 ? g : b) * 2.0f - 1.0f;
        float v = base * 0.5f + 0.4f * std::sin(0.5f * x + 0.3f * y + c);
        if (x >= sx && x < sx + W / 3 && y >= sy && y < sy + H / 3) v = 0.9f;
        px[((size_t)c * H + y) * W + x] = v;
      }
  return px;
}

inline void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream f(path);
  f << j.dump(2) << "\n";
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return nlohmann::json::parse(s.str());
}

inline std::vector<nlohmann::json> read_events(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

inline std::vector<nlohmann::json> events_of(const std::vector<nlohmann::json>& ev, const std::string& kind) {
  std::vector<nlohmann::json> out;
  for (const nlohmann::json& e : ev)
    if (e["event"] == kind) out.push_back(e);
  return out;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// <dir>/prepared/<name>.png for item i, and its job.json entry.
inline nlohmann::json prepared_item(const std::string& dir, const std::string& name, int W, int H, int seed,
                                    const std::string& caption, const std::vector<int>& dropout_tokens,
                                    bool flip_x = false, bool flip_y = false, int repeats = 1) {
  mkdir((dir + "/prepared").c_str(), 0755);
  std::vector<float> px = test_picture(W, H, seed);
  graft::png_write(dir + "/prepared/" + name + ".png", px.data(), W, H);
  return {{"image", "prepared/" + name + ".png"}, {"key", "key-" + name}, {"width", W}, {"height", H},
          {"flip_x", flip_x}, {"flip_y", flip_y}, {"repeats", repeats}, {"source", "/data/" + name + ".jpg"},
          {"caption", caption}, {"tokens", toks(caption)}, {"dropout_tokens", dropout_tokens}};
}

// Two datasets: "things" (weight 2, trigger zxq, dropout 0.25; six 16x16 pictures, one flipped in x,
// one in y, one with 2 repeats, and two 16x8) and "reg" (weight 1, is_reg, two 16x16 pictures, their
// dropout the empty prompt). Four steps of batch 2, no sampling.
inline nlohmann::json v2_job(const std::string& dir) {
  const std::string& model = tiny_model_dir();
  nlohmann::json things = nlohmann::json::array(), reg = nlohmann::json::array();
  for (int i = 0; i < 6; ++i)
    things.push_back(prepared_item(dir, "thing_" + std::to_string(i), 16, 16, i, "zxq, thing " + std::to_string(i),
                                   toks("zxq"), i == 1, i == 2, i == 3 ? 2 : 1));
  for (int i = 0; i < 2; ++i)
    things.push_back(prepared_item(dir, "wide_" + std::to_string(i), 16, 8, 10 + i, "zxq, wide " + std::to_string(i),
                                   toks("zxq")));
  for (int i = 0; i < 2; ++i)
    reg.push_back(prepared_item(dir, "reg_" + std::to_string(i), 16, 16, 20 + i, "a thing " + std::to_string(i), toks("")));
  return {
      {"format", "graft-job/2"},
      {"name", "v2"},
      {"device", "cpu"},
      {"trigger_word", "zxq"},
      {"model", {{"arch", "flux"}, {"name_or_path", "tiny"}, {"transformer", model + "/transformer.safetensors"},
                 {"text_encoder", model + "/text_encoder.safetensors"}, {"ae", model + "/ae.safetensors"}}},
      {"network", {{"type", "lora"}, {"linear", 4}, {"linear_alpha", 4}}},
      {"train", {{"steps", 4}, {"batch_size", 2}, {"lr", 1e-3}, {"lr_scheduler", "constant"}, {"optimizer", "adamw"},
                 {"seed", 11}, {"cache_latents", true}, {"cache_text_embeddings", true},
                 {"unload_text_encoder", false}, {"gradient_checkpointing", false}}},
      {"save", {{"dtype", "fp32"}, {"save_every", 100}, {"max_step_saves_to_keep", 2}}},
      {"text", {{"max_len", kMaxLen}, {"empty_tokens", toks("")}}},
      {"datasets",
       {{{"folder", "/data/things"}, {"weight", 2.0}, {"is_reg", false}, {"caption_dropout_rate", 0.25}, {"items", things}},
        {{"folder", "/data/reg"}, {"weight", 1.0}, {"is_reg", true}, {"caption_dropout_rate", 0.1}, {"items", reg}}}},
  };
}

}  // namespace graft_test
