// SHA-256, the latent and text-embedding cache of `datasets` jobs, and training such a job end to end
// on the tiny random pipeline.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>

#include "train/cache.h"
#include "train/prompt_encoder.h"
#include "train/data.h"
#include "core/image_io.h"
#include "train/job.h"
#include "job_fixture.h"
#include "train/metrics.h"
#include "core/sha256.h"
#include "core/autograd.h"
#include "train/pipeline.h"
#include "train/train.h"

using namespace graft;
using namespace graft_test;
using nlohmann::json;

namespace {

struct Encoded {
  TrainData data;
  CacheStats stats;
  std::vector<json> events;  // what data_encode wrote to metrics.jsonl
};

// job_load + the models + data_encode, as train_run does it, with a fresh metrics.jsonl.
Encoded encode(const std::string& dir) {
  Job job = job_load(dir);
  std::unique_ptr<PromptEncoder> te = load_prompt_encoder(job.text_parts, Device::cpu(), job.file, job.quantize_te);
  FluxVae ae = FluxVae::load(job.ae);
  job_check_models(job, *te, ae.cfg);
  const std::string mp = dir + "/metrics.jsonl";
  unlink(mp.c_str());
  Metrics m;
  m.open(mp);
  Encoded e;
  e.data = data_encode(job, ae, *te, m, &e.stats);
  m.close();
  e.events = read_events(mp);
  return e;
}

size_t count_files(const std::string& dir) {
  size_t n = 0;
  if (FILE* p = popen(("ls '" + dir + "' 2>/dev/null | grep -c safetensors$").c_str(), "r")) {
    if (std::fscanf(p, "%zu", &n) != 1) n = 0;
    pclose(p);
  }
  return n;
}

std::string latent_file(const std::string& dir, const json& item) {
  const std::string ae = sha256_file_hex(tiny_model_dir() + "/ae.safetensors");
  return dir + "/cache/latents/" + latent_cache_key(item["key"], item["flip_x"], item["flip_y"], ae) + ".safetensors";
}

std::string text_file(const std::string& dir, const std::vector<int>& ids) {
  const std::string te = sha256_file_hex(tiny_model_dir() + "/text_encoder.safetensors");
  return dir + "/cache/text/" + text_cache_key(ids, te) + ".safetensors";
}

// tol 0: bit for bit (read back from the cache). A picture encoded again in a batch of another size
// differs in the last bits (the BLAS products block differently), hence a tolerance there.
bool same_latents(const TrainData& a, const TrainData& b, float tol = 0.0f) {
  if (a.latents.size() != b.latents.size()) return false;
  for (size_t i = 0; i < a.latents.size(); ++i) {
    const Latent &x = a.latents[i], &y = b.latents[i];
    if (x.C != y.C || x.H != y.H || x.W != y.W || x.z.size() != y.z.size()) return false;
    for (size_t k = 0; k < x.z.size(); ++k)
      if (!(std::fabs(x.z[k] - y.z[k]) <= tol)) return false;
  }
  return true;
}

TextEmbedding encode_tokens(const std::vector<int>& ids) {
  std::unique_ptr<PromptEncoder> te =
      load_prompt_encoder({{"text_encoder", tiny_model_dir() + "/text_encoder.safetensors", 0}}, Device::cpu(), "test");
  TextCond c = encode_prompt(*te, ids);
  TextEmbedding t;
  t.L = c.L;
  t.txt = c.txt;
  t.y = c.y;
  return t;
}

// The v2 job of job_fixture.h: 10 pictures with distinct keys; 12 distinct token lists (the empty
// prompt, also the reg items' dropout text; the trigger alone; 8 captions of things; 2 of reg).
const int kLatents = 10, kTexts = 12;

}  // namespace

TEST(sha256_known_vectors_and_portable_matches_openssl) {
  // FIPS 180-4 / NIST examples.
  CHECK(sha256_hex(std::string("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex(std::string("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  CHECK(sha256_hex(two_blocks) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  CHECK(sha256_hex(million) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  CHECK(sha256_portable_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_portable_hex(million.data(), million.size()) == sha256_hex(million));
  // Every length around the block and padding edges, and pieces fed one by one.
  std::string buf;
  Rng rng(3);
  for (int n = 0; n < 300; ++n) {
    CHECK(sha256_portable_hex(buf.data(), buf.size()) == sha256_hex(buf));
    Sha256 h;
    for (size_t i = 0; i < buf.size(); i += 7) h.update(buf.substr(i, 7));
    CHECK(h.hex() == sha256_hex(buf));
    buf.push_back((char)(rng.next() & 0xFF));
  }
  TempDir tmp;
  const std::string& dir = tmp.path;
  {
    std::ofstream f(dir + "/m");
    f << million;
  }
  CHECK(sha256_file_hex(dir + "/m") == sha256_hex(million));
  CHECK_THROWS(sha256_file_hex(dir + "/none"), "cannot read to hash it");
  std::printf("      sha256 through %s\n", sha256_uses_openssl() ? "OpenSSL" : "the portable code");
}

// model.quantize_te: the text encoders' linear weights quantized as they load give other embeddings,
// cached under their own keys (the unquantized entries stay and are reused when it is turned off).
TEST(cache_quantized_text_encoder_has_its_own_entries) {
  TempDir tmp;
  const std::string& dir = tmp.path;
  json j = v2_job(dir);
  write_json(dir + "/job.json", j);
  Encoded a = encode(dir);
  j["model"]["quantize_te"] = "nf4";
  write_json(dir + "/job.json", j);
  Encoded b = encode(dir);
  CHECK(b.stats.text_encoded == kTexts && b.stats.text_reused == 0 && b.stats.latents_reused == kLatents);
  CHECK(count_files(dir + "/cache/text") == 2 * (size_t)kTexts);
  double diff = 0, size = 0;
  for (size_t i = 0; i < a.data.texts.size(); ++i)
    for (size_t k = 0; k < a.data.texts[i].txt.size(); ++k)
      diff = std::max(diff, (double)std::fabs(a.data.texts[i].txt[k] - b.data.texts[i].txt[k])),
      size = std::max(size, (double)std::fabs(a.data.texts[i].txt[k]));
  std::printf("      nf4 text encoder against the unquantized one: embeddings differ by %.2e of %.2e\n", diff, size);
  CHECK(diff > 1e-4 * size && diff < 0.5 * size);
  j["model"]["quantize_te"] = "none";
  write_json(dir + "/job.json", j);
  Encoded c = encode(dir);
  CHECK(c.stats.text_encoded == 0 && c.stats.text_reused == kTexts);
}

TEST(cache_second_run_encodes_nothing) {
  TempDir tmp;
  const std::string& dir = tmp.path;
  write_json(dir + "/job.json", v2_job(dir));
  Encoded a = encode(dir);
  CHECK(a.stats.latents_encoded == kLatents && a.stats.latents_reused == 0);
  CHECK(a.stats.text_encoded == kTexts && a.stats.text_reused == 0);
  std::vector<json> cache = events_of(a.events, "cache");
  CHECK(cache.size() == 1 && cache[0]["latents_encoded"] == kLatents && cache[0]["text_encoded"] == kTexts);
  CHECK(cache[0]["latents_reused"] == 0 && cache[0]["text_reused"] == 0 && cache[0]["seconds"].is_number());
  CHECK(events_of(a.events, "warning").empty());
  CHECK(count_files(dir + "/cache/latents") == (size_t)kLatents && count_files(dir + "/cache/text") == (size_t)kTexts);
  // Shapes in the transformer's latent space: 4 channels, half the picture's sides.
  CHECK(a.data.latents[0].C == 4 && a.data.latents[0].H == 8 && a.data.latents[0].W == 8);
  CHECK(a.data.latents[a.data.samples[6].latent].H == 4 && a.data.latents[a.data.samples[6].latent].W == 8);
  CHECK(a.data.datasets.size() == 2 && a.data.datasets[0].buckets.size() == 2 && a.data.datasets[1].is_reg);

  Encoded b = encode(dir);
  CHECK(b.stats.latents_encoded == 0 && b.stats.latents_reused == kLatents);
  CHECK(b.stats.text_encoded == 0 && b.stats.text_reused == kTexts);
  cache = events_of(b.events, "cache");
  CHECK(cache.size() == 1 && cache[0]["latents_encoded"] == 0 && cache[0]["latents_reused"] == kLatents);
  CHECK(same_latents(a.data, b.data));
  for (size_t i = 0; i < a.data.texts.size(); ++i) CHECK(a.data.texts[i].txt == b.data.texts[i].txt && a.data.texts[i].y == b.data.texts[i].y);
}

TEST(cache_changed_key_reencodes_only_that_item) {
  TempDir tmp;
  const std::string& dir = tmp.path;
  json j = v2_job(dir);
  write_json(dir + "/job.json", j);
  Encoded a = encode(dir);
  j["datasets"][0]["items"][4]["key"] = "key-thing_4-recropped";
  write_json(dir + "/job.json", j);
  Encoded b = encode(dir);
  CHECK(b.stats.latents_encoded == 1 && b.stats.latents_reused == kLatents - 1);
  CHECK(b.stats.text_encoded == 0 && b.stats.text_reused == kTexts);
  // Same pixels, same model: the same latent under its new key.
  CHECK(same_latents(a.data, b.data, 1e-5f));
  j["datasets"][1]["items"][0]["tokens"] = toks("another caption");
  write_json(dir + "/job.json", j);
  Encoded c = encode(dir);
  CHECK(c.stats.latents_encoded == 0 && c.stats.text_encoded == 1 && c.stats.text_reused == kTexts - 1);
}

TEST(cache_corrupt_files_are_reported_and_rebuilt) {
  TempDir tmp;
  const std::string& dir = tmp.path;
  json j = v2_job(dir);
  write_json(dir + "/job.json", j);
  Encoded a = encode(dir);
  const json& items = j["datasets"][0]["items"];
  const std::string truncated = latent_file(dir, items[2]), flipped = text_file(dir, toks("zxq, thing 0"));
  const std::string wrong_key = latent_file(dir, items[5]), wrong_shape = latent_file(dir, items[6]);
  CHECK(truncate(truncated.c_str(), 100) == 0);
  {
    std::string bytes = read_bytes(flipped);
    bytes[bytes.size() - 3] ^= 0x10;  // one bit of the last tensor's data
    std::ofstream(flipped, std::ios::binary) << bytes;
  }
  // Item 0's file copied over item 5's (wrong key metadata) and a file with the right key but the
  // shape of a 16x16 picture over item 6's (a 16x8 picture).
  std::ofstream(wrong_key, std::ios::binary) << read_bytes(latent_file(dir, items[0]));
  Latent big = a.data.latents[0];
  const std::string key6 = wrong_shape.substr(wrong_shape.rfind('/') + 1, 64);
  latent_cache_write(wrong_shape, key6, big);

  Encoded b = encode(dir);
  CHECK(b.stats.latents_encoded == 3 && b.stats.latents_reused == kLatents - 3);
  CHECK(b.stats.text_encoded == 1 && b.stats.text_reused == kTexts - 1);
  std::vector<json> warnings = events_of(b.events, "warning");
  CHECK(warnings.size() == 4);
  auto warned = [&](const std::string& file, const std::string& why) {
    for (const json& w : warnings) {
      std::string m = w["message"];
      if (w["file"] == file && m.find(file) != std::string::npos && m.find(why) != std::string::npos &&
          m.find("encoding it again") != std::string::npos)
        return true;
    }
    return false;
  };
  CHECK(warned(truncated, "truncated"));
  CHECK(warned(flipped, "checksum does not match"));
  CHECK(warned(wrong_key, "key metadata"));
  CHECK(warned(wrong_shape, "has shape [4, 8, 8] but [4, 4, 8] was expected"));
  CHECK(same_latents(a.data, b.data, 1e-5f));
  Encoded c = encode(dir);  // rebuilt: nothing left to encode
  CHECK(c.stats.latents_encoded == 0 && c.stats.text_encoded == 0 && events_of(c.events, "warning").empty());
}

TEST(cache_flip_changes_key_and_mirrors_pixels) {
  const std::string h = sha256_hex(std::string("model"));
  std::set<std::string> keys = {latent_cache_key("k", false, false, h), latent_cache_key("k", true, false, h),
                                latent_cache_key("k", false, true, h), latent_cache_key("k", true, true, h),
                                latent_cache_key("k", false, false, sha256_hex(std::string("other model")))};
  CHECK(keys.size() == 5);
  CHECK(text_cache_key({1, 2, 3}, h) != text_cache_key({1, 2, 4}, h));
  CHECK(text_cache_key({1, 2, 3}, h) != text_cache_key({1, 2, 3}, sha256_hex(std::string("x"))));

  TempDir tmp;
  const std::string& dir = tmp.path;
  json j = v2_job(dir);  // item 1 flips in x, item 2 in y
  write_json(dir + "/job.json", j);
  Job job = job_load(dir);
  for (int i : {1, 2}) {
    JobImage flipped = job.datasets[0].items[i], plain = flipped;
    plain.flip_x = plain.flip_y = false;
    std::vector<float> f = load_prepared_image(flipped), p = load_prepared_image(plain);
    CHECK(f != p);
    std::vector<float> m = p;
    mirror_image(m.data(), 3, 16, 16, flipped.flip_x, flipped.flip_y);
    CHECK(m == f);
    mirror_image(m.data(), 3, 16, 16, flipped.flip_x, flipped.flip_y);
    CHECK(m == p);  // mirrored twice: the original pixels
    if (i == 1) CHECK(p[0 * 16 + 0] == f[0 * 16 + 15] && p[5 * 16 + 3] == f[5 * 16 + 12]);
    if (i == 2) CHECK(p[0 * 16 + 0] == f[15 * 16 + 0] && p[5 * 16 + 3] == f[10 * 16 + 3]);
  }
  // The cached latent of the flipped item is the encoding of the mirrored picture, and differs from
  // the unflipped one's.
  Encoded a = encode(dir);
  FluxVae ae = FluxVae::load(job.ae);
  NoGrad no_grad;
  auto encode_one = [&](const std::vector<float>& px) {
    std::vector<float> mean = to_floats(ae.encode(from_vector(px, {1, 3, 16, 16}, Device::cpu())).mean);
    vae_latent_to_dit(ae.cfg, mean.data(), (long)mean.size());
    return mean;
  };
  JobImage plain = job.datasets[0].items[1];
  plain.flip_x = false;
  std::vector<float> px = load_prepared_image(plain), mean = encode_one(px);
  const std::vector<float>& flipped_latent = a.data.latents[a.data.samples[1].latent].z;
  CHECK(flipped_latent != mean);
  mirror_image(px.data(), 3, 16, 16, true, false);
  mean = encode_one(px);
  CHECK(flipped_latent.size() == mean.size());
  for (size_t i = 0; i < mean.size(); ++i) CHECK_NEAR(flipped_latent[i], mean[i], 1e-5);  // batched vs single encode
  j["datasets"][0]["items"][1]["flip_x"] = false;
  write_json(dir + "/job.json", j);
  Encoded b = encode(dir);
  CHECK(b.stats.latents_encoded == 1);  // the unflipped picture is a new key
}

TEST(cache_disabled_keeps_everything_in_memory) {
  TempDir tmp;
  const std::string& dir = tmp.path;
  json j = v2_job(dir);
  j["train"]["cache_latents"] = false;
  j["train"]["cache_text_embeddings"] = false;
  write_json(dir + "/job.json", j);
  Encoded a = encode(dir);
  CHECK(a.stats.latents_encoded == kLatents && a.stats.text_encoded == kTexts);
  CHECK(access((dir + "/cache").c_str(), F_OK) != 0);  // nothing written, not even the folder
  Encoded b = encode(dir);
  CHECK(b.stats.latents_encoded == kLatents && b.stats.latents_reused == 0 && b.stats.text_encoded == kTexts);
  CHECK(same_latents(a.data, b.data));
  // Latents cached, text not: only latents/ appears.
  j["train"]["cache_latents"] = true;
  write_json(dir + "/job.json", j);
  Encoded c = encode(dir);
  CHECK(count_files(dir + "/cache/latents") == (size_t)kLatents && access((dir + "/cache/text").c_str(), F_OK) != 0);
}

// SIGINT while encoding: data_encode returns after the current batch with nothing to train on; what
// it cached stays, and the next run encodes the rest.
TEST(cache_stops_when_asked) {
  TempDir tmp;
  const std::string& dir = tmp.path;
  write_json(dir + "/job.json", v2_job(dir));
  Job job = job_load(dir);
  std::unique_ptr<PromptEncoder> te = load_prompt_encoder(job.text_parts, Device::cpu(), job.file);
  FluxVae ae = FluxVae::load(job.ae);
  Metrics m;
  m.open(dir + "/metrics.jsonl");
  volatile sig_atomic_t stop = 1;
  CacheStats st;
  TrainData d = data_encode(job, ae, *te, m, &st, &stop);
  m.close();
  CHECK(st.stopped && st.latents_encoded == 0 && st.text_encoded == 0 && d.samples.empty() && d.datasets.empty());
  std::vector<json> cache = events_of(read_events(dir + "/metrics.jsonl"), "cache");
  CHECK(cache.size() == 1 && cache[0]["stopped"] == true);
  Encoded a = encode(dir);
  CHECK(!a.stats.stopped && a.stats.latents_encoded == kLatents && a.data.samples.size() == 10);
}

// Caption dropout trains non-regularization items on the trigger alone and regularization items on
// the empty prompt (their dropout_tokens); other slots on their captions.
TEST(cache_dropout_uses_the_items_dropout_tokens) {
  TempDir tmp;
  const std::string& dir = tmp.path;
  write_json(dir + "/job.json", v2_job(dir));
  Encoded a = encode(dir);
  const TrainData& d = a.data;
  const TextEmbedding trigger = encode_tokens(toks("zxq")), empty = encode_tokens(toks(""));
  auto near = [](const TextEmbedding& x, const TextEmbedding& y) {
    if (x.txt.size() != y.txt.size() || x.y.size() != y.y.size()) return false;
    for (size_t i = 0; i < x.txt.size(); ++i)
      if (std::fabs(x.txt[i] - y.txt[i]) > 1e-5f) return false;
    for (size_t i = 0; i < x.y.size(); ++i)
      if (std::fabs(x.y[i] - y.y[i]) > 1e-5f) return false;
    return true;
  };
  int dropped[2] = {0, 0}, kept[2] = {0, 0};
  for (uint64_t g = 0; g < 400; ++g) {
    BatchPick p = d.batch(11, g, 2);
    for (size_t s = 0; s < p.samples.size(); ++s) {
      const TextEmbedding& t = d.texts[p.texts[s]];
      if (p.dropped[s]) {
        ++dropped[p.dataset];
        CHECK(near(t, p.dataset == 0 ? trigger : empty));
      } else {
        ++kept[p.dataset];
        CHECK(!near(t, trigger) && !near(t, empty));
      }
    }
  }
  CHECK(dropped[0] > 0 && dropped[1] > 0 && kept[0] > dropped[0] && kept[1] > dropped[1]);
}

// A hand-written job.json v2 trains: LoRA, metrics with a cache event, samples from the job's tokens;
// a second run from scratch reuses every cached latent and text and ends with the same LoRA, bit for bit.
TEST(train_v2_job_end_to_end) {
  TempDir tmp;
  const std::string& dir = tmp.path;
  json j = v2_job(dir);
  j["sample"] = {{"sample_every", 4}, {"width", 16}, {"height", 16}, {"sample_steps", 2}, {"guidance_scale", 2.0},
                 {"skip_first_sample", true}, {"prompts", {{{"prompt", "zxq"}, {"tokens", toks("zxq")}}}}};
  j["train"]["unload_text_encoder"] = true;
  write_json(dir + "/job.json", j);
  CHECK(train_run(dir) == 0);
  std::vector<json> ev = read_events(dir + "/metrics.jsonl");
  CHECK(ev.front()["event"] == "start" && ev.front()["items"] == 10 && ev.front()["datasets"] == 2);
  std::vector<json> cache = events_of(ev, "cache");
  CHECK(cache.size() == 1 && cache[0]["latents_encoded"] == kLatents && cache[0]["text_encoded"] == kTexts);
  CHECK(events_of(ev, "step").size() == 4 && events_of(ev, "sample").size() == 1);
  CHECK(ev.back()["event"] == "end" && ev.back()["status"] == "finished");
  CHECK(access((dir + "/samples/000000004_0.png").c_str(), F_OK) == 0);
  const std::string lora = read_bytes(dir + "/v2.safetensors");
  CHECK(lora.size() > 1000);

  // From scratch again (outputs and state removed, the cache kept).
  CHECK(std::system(("rm -rf '" + dir + "/state' '" + dir + "/v2.safetensors' '" + dir + "/metrics.jsonl'").c_str()) == 0);
  CHECK(train_run(dir) == 0);
  ev = read_events(dir + "/metrics.jsonl");
  cache = events_of(ev, "cache");
  CHECK(cache.size() == 1 && cache[0]["latents_encoded"] == 0 && cache[0]["latents_reused"] == kLatents);
  CHECK(cache[0]["text_encoded"] == 0 && cache[0]["text_reused"] == kTexts);
  CHECK(read_bytes(dir + "/v2.safetensors") == lora);
}

// Trained 3 steps, then resumed to 6, a datasets job (weights, dropout, repeats, flips) ends with the
// LoRA of an uninterrupted 6-step run, bit for bit. The two jobs share one cache_dir.
TEST(train_v2_resume_equals_uninterrupted) {
  TempDir ta, tb;
  const std::string &a = ta.path, &b = tb.path;
  json ja = v2_job(a);
  ja["train"]["steps"] = 6;
  write_json(a + "/job.json", ja);
  CHECK(train_run(a) == 0);
  json jb = v2_job(b);
  jb["cache_dir"] = a + "/cache";
  jb["train"]["steps"] = 3;
  write_json(b + "/job.json", jb);
  CHECK(train_run(b) == 0);
  jb["train"]["steps"] = 6;
  write_json(b + "/job.json", jb);
  CHECK(train_run(b) == 0);
  std::vector<json> ev = read_events(b + "/metrics.jsonl");
  for (const json& c : events_of(ev, "cache")) CHECK(c["latents_encoded"] == 0 && c["text_encoded"] == 0);
  std::vector<double> la, lb;
  for (const json& e : events_of(read_events(a + "/metrics.jsonl"), "step")) la.push_back(e["loss"]);
  for (const json& e : events_of(ev, "step")) lb.push_back(e["loss"]);
  CHECK(la.size() == 6 && lb.size() == 6 && la == lb);
  CHECK(read_bytes(a + "/v2.safetensors") == read_bytes(b + "/v2.safetensors"));
}
