// job.json v2 (`datasets`) parsing and its errors, and the loader's batch plan: weighted dataset
// draws, caption dropout, repeats, buckets, and resume exactness.
#include <unistd.h>

#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "train/data.h"
#include "train/job.h"
#include "train/prompt_encoder.h"
#include "job_fixture.h"
#include "demo/text_encoder.h"
#include "models/flux_vae.h"

using namespace graft;
using namespace graft_test;
using nlohmann::json;

namespace {

// Writes `j` as <dir>/job.json, loads it and runs the model checks of the tiny pipeline.
Job load_checked(const std::string& dir, const json& j) {
  write_json(dir + "/job.json", j);
  Job job = job_load(dir);
  struct TinyEncoder : PromptEncoder {  // the tiny pipeline's: byte vocabulary (259), max_len 16
    TinyEncoder() { parts = {{"text_encoder", "text_encoder.safetensors", kMaxLen, kByteVocab}}; }
    Output encode(const std::vector<int>&, int) const override { return {}; }
  } te;
  VaeConfig vc;
  vc.ch_mult = {1, 2};  // factor 2: picture sides must be multiples of 4
  job_check_models(job, te, vc);
  return job;
}

// A loader over synthetic data: dataset d holds sizes[d] samples of one 2x2 latent shape (or two
// shapes when `two_buckets`), each with its own caption text and one shared dropout text.
TrainData synthetic(const std::vector<int>& sizes, const std::vector<double>& weights, float dropout,
                    bool two_buckets = false) {
  TrainData d;
  TextEmbedding trigger;
  trigger.L = 4;
  d.texts.push_back(trigger);  // text 0: what dropout trains on
  for (size_t ds = 0; ds < sizes.size(); ++ds) {
    d.datasets.emplace_back();
    d.datasets[ds].weight = weights[ds];
    d.datasets[ds].dropout_rate = dropout;
    for (int i = 0; i < sizes[ds]; ++i) {
      Latent l;
      l.C = 4, l.H = 2, l.W = two_buckets && i % 2 ? 4 : 2;
      l.z.assign((size_t)l.C * l.H * l.W, (float)i);
      TextEmbedding t;
      t.L = 4;
      TrainSample s;
      s.latent = (int)d.latents.size();
      s.text = (int)d.texts.size();
      s.dropout_text = 0;
      d.latents.push_back(l);
      d.texts.push_back(t);
      d.samples.push_back(s);
      d.add_to_dataset((int)ds, (int)d.samples.size() - 1);
    }
  }
  return d;
}

}  // namespace

TEST(job_v2_parses_datasets) {
  TempDir tmp;
  const std::string& dir = tmp.path;
  Job job = load_checked(dir, v2_job(dir));
  CHECK(job.items.empty());
  CHECK(job.datasets.size() == 2);
  CHECK(job.datasets[0].items.size() == 8 && job.datasets[1].items.size() == 2);
  CHECK(job.datasets[0].weight == 2.0 && job.datasets[1].weight == 1.0);
  CHECK(!job.datasets[0].is_reg && job.datasets[1].is_reg);
  CHECK_NEAR(job.datasets[0].caption_dropout_rate, 0.25, 1e-7);
  const JobImage& a = job.datasets[0].items[1];
  CHECK(a.image == dir + "/prepared/thing_1.png" && a.key == "key-thing_1" && a.flip_x && !a.flip_y);
  CHECK(a.width == 16 && a.height == 16 && a.repeats == 1 && a.source == "/data/thing_1.jpg");
  CHECK(a.tokens == toks("zxq, thing 1") && a.dropout_tokens == toks("zxq"));
  CHECK(job.datasets[0].items[3].repeats == 2 && job.datasets[0].items[2].flip_y);
  CHECK(job.datasets[0].items[6].width == 16 && job.datasets[0].items[6].height == 8);
  CHECK(job.text_ids == kMaxLen && job.text_parts.size() == 1 && job.empty_tokens == toks(""));
  CHECK(job.cache_dir == dir + "/cache");
  CHECK(job.cache_latents && job.cache_text_embeddings && !job.unload_text_encoder && !job.gradient_checkpointing);
  CHECK(job_item_count(job) == 10);
  json j = v2_job(dir);
  j["cache_dir"] = "elsewhere";
  j["train"]["cache_latents"] = false;
  j["train"]["unload_text_encoder"] = true;
  j["train"]["gradient_checkpointing"] = true;
  job = load_checked(dir, j);
  CHECK(job.cache_dir == dir + "/elsewhere" && !job.cache_latents && job.unload_text_encoder && job.gradient_checkpointing);
}

// Each bad field fails with one message naming job.json, the field's path, the value and what is allowed.
TEST(job_v2_errors_name_the_field_path) {
  TempDir tmp;
  const std::string& dir = tmp.path;
  const json good = v2_job(dir);
  auto expect = [&](const std::function<void(json&)>& change, const std::vector<std::string>& needles) {
    json j = good;
    change(j);
    bool threw = false;
    try {
      load_checked(dir, j);
    } catch (const Error& e) {
      threw = true;
      std::string msg = e.what();
      if (msg.find(dir + "/job.json: ") != 0) fail_at(__FILE__, __LINE__, "message does not start with job.json: " + msg);
      for (const std::string& n : needles)
        if (msg.find(n) == std::string::npos) fail_at(__FILE__, __LINE__, "message '" + msg + "' lacks '" + n + "'");
    }
    if (!threw) fail_at(__FILE__, __LINE__, "expected an error for " + j.dump().substr(0, 80));
  };
  auto item = [](json& j, int d, int i) -> json& { return j["datasets"][d]["items"][i]; };
  expect([&](json& j) { item(j, 0, 1)["width"] = "wide"; }, {"datasets[0].items[1].width must be an integer", "\"wide\""});
  expect([&](json& j) { item(j, 0, 1)["height"] = 0; }, {"datasets[0].items[1].height must be an integer in [8,", "got 0"});
  expect([&](json& j) { j["datasets"][0]["weight"] = 0; }, {"datasets[0].weight must be a number in", "got 0"});
  expect([&](json& j) { j["datasets"][1]["caption_dropout_rate"] = 1.5; },
         {"datasets[1].caption_dropout_rate must be a number in [0, 1]", "1.5"});
  expect([&](json& j) { j["datasets"][1]["is_reg"] = "yes"; }, {"datasets[1].is_reg must be true or false"});
  expect([&](json& j) { item(j, 0, 0)["flip_x"] = 1; }, {"datasets[0].items[0].flip_x must be true or false"});
  expect([&](json& j) { item(j, 0, 0)["repeats"] = 0; }, {"datasets[0].items[0].repeats must be an integer in [1,"});
  expect([&](json& j) { item(j, 0, 0)["key"] = ""; }, {"datasets[0].items[0].key must be a non-empty string"});
  expect([&](json& j) { item(j, 1, 1).erase("key"); }, {"datasets[1].items[1].key is missing"});
  expect([&](json& j) { item(j, 0, 0)["tokens"] = std::vector<int>(15, 3); },
         {"datasets[0].items[0].tokens must be a list of 16 token ids", "got 15 ids"});
  expect([&](json& j) { item(j, 0, 0)["tokens"][2] = -1; }, {"datasets[0].items[0].tokens[2] must be a token id", "-1"});
  expect([&](json& j) { item(j, 0, 2).erase("dropout_tokens"); }, {"datasets[0].items[2].dropout_tokens is missing"});
  expect([&](json& j) { item(j, 0, 4)["image"] = "prepared/nope.png"; },
         {"datasets[0].items[4].image: " + dir + "/prepared/nope.png does not exist", "(source /data/thing_4.jpg)"});
  expect([&](json& j) { item(j, 0, 5)["width"] = 20; },
         {"datasets[0].items[5]: " + dir + "/prepared/thing_5.png is 16x16 pixels but width x height is 20x16",
          "source /data/thing_5.jpg"});
  {
    std::ofstream f(dir + "/prepared/broken.png");
    f << "not a picture";
  }
  expect([&](json& j) { item(j, 1, 0)["image"] = "prepared/broken.png"; },
         {"datasets[1].items[0].image: " + dir + "/prepared/broken.png is not a readable PNG"});
  expect([&](json& j) { j["datasets"][0]["items"] = json::array(); }, {"datasets[0].items must be a non-empty list", "/data/things"});
  expect([&](json& j) { j["datasets"] = json::array(); }, {"datasets must be a non-empty list"});
  expect([&](json& j) { j["items"] = json::array({{{"latent", "a"}, {"text", "b"}}}); }, {"has both datasets and items"});
  expect([&](json& j) { j.erase("datasets"); }, {"no training data"});
  expect([&](json& j) { j["model"].erase("ae"); }, {"model.ae is missing"});
  expect([&](json& j) { j["model"].erase("text_encoder"); }, {"model.text_encoder is missing"});
  expect([&](json& j) { j.erase("text"); }, {"text is missing"});
  expect([&](json& j) { j["text"]["empty_tokens"] = json::array({1, 2}); }, {"text.empty_tokens must be a list of 16 token ids"});
  expect([&](json& j) { j["train"]["cache_latents"] = "no"; }, {"train.cache_latents must be true or false"});
  expect([&](json& j) { j["train"]["unload_text_encoder"] = 0; }, {"train.unload_text_encoder must be true or false"});
  expect([&](json& j) { j["train"]["gradient_checkpointing"] = "on"; }, {"train.gradient_checkpointing must be true or false"});
  expect([&](json& j) { j["cache_dir"] = 3; }, {"cache_dir must be a string"});
  expect([&](json& j) { j["format"] = "graft-job/9"; }, {"format must be one of graft-job/1, graft-job/2"});
  expect([&](json& j) { j["sample"] = {{"prompts", {{{"prompt", "zxq"}, {"tokens", {1, 2}}}}}}; },
         {"sample.prompts[0].tokens must be a list of 16 token ids"});
  // The checks against the models.
  expect([&](json& j) { item(j, 0, 1)["tokens"][3] = 300; },
         {"datasets[0].items[1].tokens[3] must be a token id below 259", "got 300"});
  expect([&](json& j) { item(j, 1, 0)["dropout_tokens"][0] = 259; }, {"datasets[1].items[0].dropout_tokens[0] must be a token id below 259"});
  expect([&](json& j) {
    j["datasets"][0]["items"][0] = prepared_item(dir, "odd", 18, 16, 3, "zxq", toks("zxq"));
  }, {"datasets[0].items[0].width must be a multiple of 4", "got 18", "source /data/odd.jpg"});
  expect([&](json& j) {
    j["text"]["max_len"] = 12;
    j["text"]["empty_tokens"] = tokenize_bytes("", 12);
    for (auto& ds : j["datasets"])
      for (auto& it : ds["items"]) it["tokens"] = it["dropout_tokens"] = tokenize_bytes("zxq", 12);
  }, {"text.max_len is 12 but the text encoder", "takes 16 tokens"});
}

// A model with two text encoders (FLUX.1's clip_l and t5): every token field is an object of one list
// per encoder, concatenated in the order of the names; errors name the encoder's list.
TEST(job_v2_several_text_encoders) {
  TempDir tmp;
  const std::string& dir = tmp.path;
  auto two = [](int seed, int n) {
    std::vector<int> v(n);
    for (int i = 0; i < n; ++i) v[i] = (seed * 7 + i * 3) % 50;
    return v;
  };
  auto set_of = [&](int seed) { return json{{"t5", two(seed + 1, 6)}, {"clip_l", two(seed, 4)}}; };
  auto concat = [&](int seed) {
    std::vector<int> v = two(seed, 4), t = two(seed + 1, 6);
    v.insert(v.end(), t.begin(), t.end());
    return v;
  };
  json good = v2_job(dir);
  good["model"].erase("text_encoder");
  good["model"]["text_encoders"] = {{"t5", "te/t5"}, {"clip_l", "te/clip"}};
  good["text"] = {{"encoders", {{"clip_l", {{"max_len", 4}}}, {"t5", {{"max_len", 6}}}}}, {"empty_tokens", set_of(0)}};
  int k = 1;
  for (auto& ds : good["datasets"])
    for (auto& it : ds["items"]) it["tokens"] = set_of(k++), it["dropout_tokens"] = set_of(0);
  good["sample"] = {{"prompts", {{{"prompt", "zxq"}, {"tokens", set_of(40)}}}}};
  struct TwoEncoders : PromptEncoder {
    TwoEncoders() { parts = {{"clip_l", dir_clip, 4, 50}, {"t5", dir_t5, 6, 30}}; }
    Output encode(const std::vector<int>&, int) const override { return {}; }
    std::string dir_clip = "te/clip", dir_t5 = "te/t5";
  } te;
  VaeConfig vc;
  vc.ch_mult = {1, 2};
  auto load = [&](const json& j) {
    write_json(dir + "/job.json", j);
    Job job = job_load(dir);
    job_check_models(job, te, vc);
    return job;
  };
  json ok = good;
  for (auto& ds : ok["datasets"])  // ids of t5 below its vocabulary of 30
    for (auto& it : ds["items"]) it["tokens"]["t5"] = std::vector<int>(6, 5);
  ok["text"]["empty_tokens"]["t5"] = std::vector<int>(6, 1);
  ok["sample"]["prompts"][0]["tokens"]["t5"] = std::vector<int>(6, 2);
  for (auto& ds : ok["datasets"])
    for (auto& it : ds["items"]) it["dropout_tokens"] = ok["text"]["empty_tokens"];
  Job job = load(ok);
  CHECK(job.text_parts.size() == 2 && job.text_parts[0].name == "clip_l" && job.text_parts[1].name == "t5");
  CHECK(job.text_parts[0].path == dir + "/te/clip" && job.text_parts[1].max_len == 6 && job.text_ids == 10);
  std::vector<int> first = two(1, 4);
  first.insert(first.end(), 6, 5);
  CHECK(job.datasets[0].items[0].tokens == first);
  CHECK(job.sample.prompts[0].tokens.size() == 10);
  write_json(dir + "/job.json", good);
  CHECK(job_load(dir).datasets[0].items[1].tokens == concat(2));

  auto expect = [&](const std::function<void(json&)>& change, const std::string& needle) {
    json j = good;
    change(j);
    CHECK_THROWS(load(j), needle);
  };
  auto item = [](json& j) -> json& { return j["datasets"][0]["items"][1]; };
  expect([&](json& j) { item(j)["tokens"] = two(1, 10); }, "datasets[0].items[1].tokens must be an object with the ids of each text encoder (clip_l, t5)");
  expect([&](json& j) { item(j)["tokens"].erase("t5"); }, "datasets[0].items[1].tokens.t5 is missing");
  expect([&](json& j) { item(j)["tokens"]["t5"] = two(1, 5); }, "datasets[0].items[1].tokens.t5 must be a list of 6 token ids");
  expect([&](json& j) { item(j)["tokens"]["clip_g"] = two(1, 4); }, "datasets[0].items[1].tokens.clip_g: no such text encoder");
  expect([&](json& j) { j["text"] = {{"max_len", 10}, {"empty_tokens", two(0, 10)}}; }, "text.max_len is for one text encoder");
  expect([&](json& j) { j["text"]["encoders"].erase("t5"); }, "text.encoders names clip_l but the model has clip_l, t5");
  expect([&](json& j) { j["model"]["text_encoder"] = "te/one"; }, "model has both text_encoder and text_encoders");
  // Against the encoders: t5's vocabulary is 30, and its ids sit after clip_l's 4 in the list.
  expect([](json&) {}, "datasets[0].items[1].tokens.t5[3] must be a token id below 30 (the vocabulary of the text encoder te/t5), got 30");
  expect([&](json& j) { j["text"]["encoders"]["t5"]["max_len"] = 5;
                        for (auto& ds : j["datasets"]) for (auto& it : ds["items"]) it["tokens"]["t5"] = it["dropout_tokens"]["t5"] = two(1, 5);
                        j["text"]["empty_tokens"]["t5"] = two(1, 5); j["sample"]["prompts"][0]["tokens"]["t5"] = two(1, 5); },
         "text.encoders.t5.max_len is 5 but the text encoder te/t5 takes 6 tokens");
}

// Weights 2 and 1: the first dataset's share of N draws is binomial with p = 2/3, standard deviation
// sqrt(p (1 - p) / N) = 0.00272 for N = 30000. The draws are deterministic (fixed seed), so the test
// either always passes or always fails; 4 standard deviations (0.0109) leave a sound sampler no
// realistic chance to fail and catch any bias of a few percent (e.g. weights read as 3:2 give 0.6).
TEST(loader_weighted_dataset_draws) {
  TrainData d = synthetic({5, 3}, {2.0, 1.0}, 0.0f);
  const int N = 30000;
  int first = 0;
  for (int g = 0; g < N; ++g) first += d.dataset_of(7, g) == 0;
  const double share = (double)first / N, sd = std::sqrt((2.0 / 3.0) * (1.0 / 3.0) / N);
  CHECK_NEAR(share, 2.0 / 3.0, 4 * sd);
  for (int g = 0; g < 200; ++g) CHECK(d.batch(7, g, 2).dataset == d.dataset_of(7, g));
  // Equal weights: a half each, same tolerance argument (sd 0.00289).
  TrainData e = synthetic({5, 3}, {1.0, 1.0}, 0.0f);
  first = 0;
  for (int g = 0; g < N; ++g) first += e.dataset_of(7, g) == 0;
  CHECK_NEAR((double)first / N, 0.5, 4 * std::sqrt(0.25 / N));
}

// Rate 0.25 over 5000 batches of 4 slots: binomial, sd sqrt(0.25 * 0.75 / 20000) = 0.00306; 4 sd.
TEST(loader_caption_dropout_rate) {
  TrainData d = synthetic({8}, {1.0}, 0.25f);
  int dropped = 0, slots = 0;
  for (int g = 0; g < 5000; ++g) {
    BatchPick p = d.batch(3, g, 4);
    for (size_t s = 0; s < p.samples.size(); ++s, ++slots) {
      dropped += p.dropped[s];
      const TrainSample& smp = d.samples[p.samples[s]];
      CHECK(p.texts[s] == (p.dropped[s] ? smp.dropout_text : smp.text));
    }
  }
  CHECK(slots == 20000);
  CHECK_NEAR((double)dropped / slots, 0.25, 4 * std::sqrt(0.25 * 0.75 / slots));
  TrainData never = synthetic({8}, {1.0}, 0.0f), always = synthetic({8}, {1.0}, 1.0f);
  for (int g = 0; g < 100; ++g) {
    for (bool b : never.batch(3, g, 4).dropped) CHECK(!b);
    for (bool b : always.batch(3, g, 4).dropped) CHECK(b);
  }
}

// Within each epoch of a dataset every sample appears exactly `repeats` times, in batches of one bucket.
TEST(loader_repeats_count_per_epoch) {
  TrainData d = synthetic({5}, {1.0}, 0.0f, true);  // two buckets: samples 0, 2, 4 and 1, 3
  const int reps[5] = {3, 1, 2, 1, 4};
  for (int i = 0; i < 5; ++i) d.samples[i].repeats = reps[i];
  const int bs = 2;
  // Bucket A holds 3 + 2 + 4 = 9 item-repeats -> 5 batches; bucket B 1 + 1 = 2 -> 1 batch.
  CHECK(d.batches_per_epoch(0, bs) == 6);
  for (uint64_t epoch = 0; epoch < 4; ++epoch) {
    std::map<int, int> count;
    for (uint64_t g = epoch * 6; g < epoch * 6 + 6; ++g) {
      BatchPick p = d.batch(9, g, bs);
      CHECK(p.epoch == epoch);
      std::set<int> widths;
      for (int s : p.samples) ++count[s], widths.insert(d.latents[d.samples[s].latent].W);
      CHECK(widths.size() == 1);  // one bucket per batch
    }
    for (int i = 0; i < 5; ++i) CHECK(count[i] == reps[i]);
  }
}

// With two datasets, each dataset's own epochs are whole: its first n draws (n = its batches per
// epoch) hold every one of its samples once, whenever in the run they happen.
TEST(loader_each_dataset_epoch_is_complete) {
  TrainData d = synthetic({6, 3}, {2.0, 1.0}, 0.0f);
  const int bs = 2;
  std::map<int, std::vector<int>> seen;  // dataset -> samples in draw order
  for (uint64_t g = 0; g < 300; ++g) {
    BatchPick p = d.batch(4, g, bs);
    for (int s : p.samples) seen[p.dataset].push_back(s);
  }
  for (int ds = 0; ds < 2; ++ds) {
    const size_t n = ds == 0 ? 6 : 3;
    CHECK(seen[ds].size() >= 3 * n);
    for (size_t e = 0; e + n <= seen[ds].size(); e += n) {
      std::set<int> epoch(seen[ds].begin() + e, seen[ds].begin() + e + n);
      CHECK(epoch.size() == n);
    }
  }
}

// A run resumed at batch g0 (a fresh loader, nothing carried over) draws exactly the batches the
// uninterrupted run drew from g0 on; so does asking for batches in any order.
TEST(loader_resumed_batches_equal_uninterrupted) {
  auto same = [](const BatchPick& a, const BatchPick& b) {
    return a.dataset == b.dataset && a.epoch == b.epoch && a.samples == b.samples && a.texts == b.texts &&
           a.dropped == b.dropped;
  };
  TrainData full = synthetic({7, 4, 3}, {2.0, 1.0, 0.5}, 0.3f, true);
  std::vector<BatchPick> run;
  for (uint64_t g = 0; g < 400; ++g) run.push_back(full.batch(21, g, 3));
  TrainData resumed = synthetic({7, 4, 3}, {2.0, 1.0, 0.5}, 0.3f, true);
  for (uint64_t g = 250; g < 400; ++g) CHECK(same(resumed.batch(21, g, 3), run[g]));
  TrainData backwards = synthetic({7, 4, 3}, {2.0, 1.0, 0.5}, 0.3f, true);
  for (int g = 399; g >= 0; g -= 7) CHECK(same(backwards.batch(21, g, 3), run[g]));
  // Another seed draws another sequence.
  int differ = 0;
  for (uint64_t g = 0; g < 50; ++g) differ += !same(full.batch(22, g, 3), run[g]);
  CHECK(differ > 25);
}
