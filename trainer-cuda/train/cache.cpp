#include "train/cache.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include "core/common.h"
#include "core/image_io.h"
#include "core/safetensors.h"
#include "core/sha256.h"
#include "core/autograd.h"
#include "train/model_hash.h"

namespace graft {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// SHA-256 of the tensors' bytes as stored (F32, little-endian), one after the other.
std::string checksum(std::initializer_list<const std::vector<float>*> parts) {
  Sha256 h;
  for (const std::vector<float>* p : parts) h.update(p->data(), p->size() * sizeof(float));
  return h.hex();
}

// Checks a cache file's key metadata and one F32 tensor's shape; returns the tensor or nullptr with *why.
const TensorInfo* expect_tensor(const SafeTensorsFile& f, const std::string& name, const std::vector<int64_t>& shape,
                                std::string* why) {
  if (!f.has(name)) {
    *why = f.path + ": tensor '" + name + "' is missing";
    return nullptr;
  }
  const TensorInfo& t = f.info(name);
  if (t.dtype != DType::F32) {
    *why = f.path + ": tensor '" + name + "' is " + dtype_name(t.dtype) + ", not F32";
    return nullptr;
  }
  if (t.shape != shape) {
    *why = f.path + ": tensor '" + name + "' has shape " + shape_str(t.shape) + " but " + shape_str(shape) +
           " was expected";
    return nullptr;
  }
  return &t;
}

bool expect_key(const SafeTensorsFile& f, const std::string& key, std::string* why) {
  auto it = f.metadata.find("key");
  if (it != f.metadata.end() && it->second == key) return true;
  *why = f.path + ": its key metadata is " + (it == f.metadata.end() ? "missing" : "\"" + it->second + "\"") +
         ", not the file's key";
  return false;
}

bool expect_checksum(const SafeTensorsFile& f, std::initializer_list<const TensorInfo*> tensors, std::string* why) {
  Sha256 h;
  for (const TensorInfo* t : tensors) h.update(f.raw(*t), t->end - t->begin);
  auto it = f.metadata.find("checksum");
  if (it != f.metadata.end() && it->second == h.hex()) return true;
  *why = f.path + ": checksum " + (it == f.metadata.end() ? "metadata missing" : "does not match the data (damaged file)");
  return false;
}

// "caching latents 120/1000 (12.3 s)": on a terminal one line rewritten, else about every tenth.
struct Progress {
  const char* what;
  size_t total;
  clock_type::time_point t0 = clock_type::now();
  bool tty = isatty(1);
  size_t next = 0;
  void tick(size_t done) {
    if (tty) {
      std::printf("\r%s %zu/%zu (%.1f s)\033[K%s", what, done, total, seconds_since(t0), done == total ? "\n" : "");
    } else if (done >= next || done == total) {
      std::printf("%s %zu/%zu (%.1f s)\n", what, done, total, seconds_since(t0));
      next = done + std::max<size_t>(1, total / 10);
    }
    std::fflush(stdout);
  }
};

}  // namespace

std::string latent_cache_key(const std::string& item_key, bool flip_x, bool flip_y, const std::string& ae_sha256) {
  return sha256_hex("graft-latent/1 " + item_key + " flip_x=" + (flip_x ? "1" : "0") + " flip_y=" + (flip_y ? "1" : "0") +
                    " " + ae_sha256);
}

std::string text_cache_key(const std::vector<int>& tokens, const std::string& te_sha256) {
  std::string s = "graft-text/1 ";
  for (size_t i = 0; i < tokens.size(); ++i) s += (i ? "," : "") + std::to_string(tokens[i]);
  return sha256_hex(s + " " + te_sha256);
}

void latent_cache_write(const std::string& path, const std::string& key, const Latent& l) {
  SafeTensorsWriter w;
  w.metadata = {{"format", "graft-latent/1"}, {"key", key}, {"checksum", checksum({&l.z})}};
  w.add("latent", DType::F32, {l.C, l.H, l.W}, l.z.data());
  w.write(path);
}

bool latent_cache_read(const std::string& path, const std::string& key, int C, int H, int W, Latent* out,
                       std::string* why) {
  try {
    SafeTensorsFile f = SafeTensorsFile::open(path);
    if (!expect_key(f, key, why)) return false;
    const TensorInfo* t = expect_tensor(f, "latent", {C, H, W}, why);
    if (!t || !expect_checksum(f, {t}, why)) return false;
    out->C = C, out->H = H, out->W = W;
    out->z = f.read_f32("latent");
    return true;
  } catch (const Error& e) {
    *why = e.what();
    return false;
  }
}

void text_cache_write(const std::string& path, const std::string& key, const TextEmbedding& t) {
  SafeTensorsWriter w;
  w.metadata = {{"format", "graft-text/1"}, {"key", key}, {"checksum", checksum({&t.txt, &t.y})}};
  const int64_t width = t.L ? (int64_t)(t.txt.size() / t.L) : 0;
  w.add("txt", DType::F32, {t.L, width}, t.txt.data());
  w.add("y", DType::F32, {(int64_t)t.y.size()}, t.y.data());
  w.write(path);
}

bool text_cache_read(const std::string& path, const std::string& key, int L, int context_dim, int vec_dim,
                     TextEmbedding* out, std::string* why) {
  try {
    SafeTensorsFile f = SafeTensorsFile::open(path);
    if (!expect_key(f, key, why)) return false;
    const TensorInfo* txt = expect_tensor(f, "txt", {L, context_dim}, why);
    if (!txt) return false;
    const TensorInfo* y = expect_tensor(f, "y", {vec_dim}, why);
    if (!y || !expect_checksum(f, {txt, y}, why)) return false;
    out->L = L;
    out->txt = f.read_f32("txt");
    out->y = f.read_f32("y");
    return true;
  } catch (const Error& e) {
    *why = e.what();
    return false;
  }
}

std::vector<float> load_prepared_image(const JobImage& im) {
  const std::string from = im.source.empty() ? "" : " (source " + im.source + ")";
  int W = 0, H = 0;
  std::vector<float> px;
  try {
    px = png_read(im.image, &W, &H);
  } catch (const Error& e) {
    fail(std::string(e.what()) + from + "; prepare the job again");
  }
  if (W != im.width || H != im.height)
    fail(im.image + ": is " + std::to_string(W) + "x" + std::to_string(H) + " pixels, job.json says " +
         std::to_string(im.width) + "x" + std::to_string(im.height) + from + "; prepare the job again");
  mirror_image(px.data(), 3, W, H, im.flip_x, im.flip_y);
  return px;
}

TrainData data_encode(const Job& job, const FluxVae& ae, const PromptEncoder& te, Metrics& metrics, CacheStats* stats_out,
                      const volatile sig_atomic_t* stop) {
  const auto t0 = clock_type::now();
  CacheStats st;
  auto stopping = [&]() { return st.stopped = st.stopped || (stop && *stop); };
  const VaeConfig& ac = ae.cfg;
  const int f = ac.downscale();
  const std::string ae_sha = model_sha256(job.ae, job.cache_dir);
  std::vector<NamedHash> te_parts;
  for (const PromptEncoder::Part& p : te.parts) te_parts.push_back({p.name, model_sha256(p.path, job.cache_dir)});
  std::string te_sha = combined_sha256(te_parts);
  // Quantized text encoders give other embeddings: their own entries (unquantized keys stay as they were).
  if (job.quantize_te != WeightFormat::dense) te_sha = sha256_hex(te_sha + " quantize_te=" + weight_format_name(job.quantize_te));
  const std::string lat_dir = job.cache_dir + "/latents", txt_dir = job.cache_dir + "/text";
  if (job.cache_latents) make_dirs(lat_dir);
  if (job.cache_text_embeddings) make_dirs(txt_dir);
  auto warn = [&](const std::string& file, const std::string& why) {
    const std::string msg = "unusable cache file: " + why + "; encoding it again";
    std::printf("warning: %s\n", msg.c_str());
    metrics.event({{"event", "warning"}, {"message", msg}, {"file", file}});
  };
  TrainData data;
  data.ragged_text = te.ragged();

  // ---- latents: one per distinct key; from the cache when it holds a good file, else encoded.
  struct LatentTodo { int latent; const JobImage* im; std::string key, path; };
  std::map<std::string, int> latent_of;
  std::vector<int> item_latent;  // per item, datasets in order
  std::vector<LatentTodo> todo;
  for (const JobDataset& ds : job.datasets)
    for (const JobImage& im : ds.items) {
      const std::string key = latent_cache_key(im.key, im.flip_x, im.flip_y, ae_sha);
      auto found = latent_of.find(key);
      if (found != latent_of.end()) {
        item_latent.push_back(found->second);
        continue;
      }
      const int li = (int)data.latents.size();
      data.latents.emplace_back();
      latent_of[key] = li;
      item_latent.push_back(li);
      const std::string path = lat_dir + "/" + key + ".safetensors";
      if (job.cache_latents && path_exists(path)) {
        std::string why;
        if (latent_cache_read(path, key, ac.z_channels, im.height / f, im.width / f, &data.latents[li], &why)) {
          ++st.latents_reused;
          continue;
        }
        warn(path, why);
      }
      todo.push_back({li, &im, key, path});
    }
  // Encoded in batches of one picture size, as many pictures as fit about 256 K pixels (16 at most):
  // the autoencoder's activations grow with the pixels of a batch.
  std::map<std::pair<int, int>, std::vector<const LatentTodo*>> by_size;
  for (const LatentTodo& t : todo) by_size[{t.im->height, t.im->width}].push_back(&t);
  NoGrad no_grad;  // encoding only: every activation is freed as soon as it is used
  if (!todo.empty()) {
    Progress progress{"caching latents", todo.size()};
    size_t done = 0;
    std::vector<float> img, mean;
    for (const auto& [size, list] : by_size) {
      const int H = size.first, W = size.second;
      const int per = std::max(1, std::min(16, (1 << 18) / (H * W)));
      const size_t plane = (size_t)3 * H * W;
      for (size_t start = 0; start < list.size() && !stopping(); start += per) {
        const int B = (int)std::min<size_t>(per, list.size() - start);
        img.resize((size_t)B * plane);
        for (int b = 0; b < B; ++b) {
          std::vector<float> px = load_prepared_image(*list[start + b]->im);
          std::copy(px.begin(), px.end(), img.begin() + b * plane);
        }
        const auto te0 = clock_type::now();
        FluxVae::Moments m = ae.encode(from_vector(img, {B, 3, H, W}, ae.device, compute_dtype(ae.device)));
        mean = to_floats(m.mean);  // the mean, as BFL's encode does
        const int h = (int)m.mean.size(2), w = (int)m.mean.size(3);
        st.encode_seconds += seconds_since(te0);
        const size_t n = (size_t)ac.z_channels * h * w;
        for (int b = 0; b < B; ++b) {
          const LatentTodo& t = *list[start + b];
          Latent& l = data.latents[t.latent];
          l.C = ac.z_channels, l.H = h, l.W = w;
          l.z.assign(mean.begin() + b * n, mean.begin() + (b + 1) * n);
          vae_latent_to_dit(ac, l.z.data(), (long)n);
          if (job.cache_latents) latent_cache_write(t.path, t.key, l);
        }
        st.latents_encoded += B;
        progress.tick(done += B);
      }
    }
  }

  // ---- text: every distinct token list once (the empty prompt, captions, dropout captions, DOP's
  // class captions).
  std::map<std::vector<int>, int> text_of;
  std::vector<const std::vector<int>*> lists;
  auto add_list = [&](const std::vector<int>& ids) {
    if (text_of.emplace(ids, (int)lists.size()).second) lists.push_back(&ids);
  };
  add_list(job.empty_tokens);
  for (const JobDataset& ds : job.datasets)
    for (const JobImage& im : ds.items) {
      add_list(im.tokens), add_list(im.dropout_tokens);
      if (job.dop) add_list(im.dop_tokens);
    }
  data.texts.resize(lists.size());
  struct TextTodo { int text; std::string key, path; };
  std::vector<TextTodo> text_todo;
  for (size_t i = 0; i < lists.size(); ++i) {
    const std::string key = text_cache_key(*lists[i], te_sha);
    const std::string path = txt_dir + "/" + key + ".safetensors";
    if (job.cache_text_embeddings && path_exists(path)) {
      std::string why;
      if (text_cache_read(path, key, te.prompt_length(lists[i]->data()), te.context_dim, te.vec_dim, &data.texts[i], &why)) {
        ++st.text_reused;
        continue;
      }
      warn(path, why);
    }
    text_todo.push_back({(int)i, key, path});
  }
  if (!text_todo.empty()) {
    Progress progress{"caching text embeddings", text_todo.size()};
    const int L = te.txt_len, C = te.context_dim, V = te.vec_dim, per = 32;
    std::vector<int> ids;
    std::vector<float> ctx, pooled;
    for (size_t start = 0; start < text_todo.size() && !stopping(); start += per) {
      const int B = (int)std::min<size_t>(per, text_todo.size() - start);
      ids.clear();
      for (int b = 0; b < B; ++b) {
        const std::vector<int>& l = *lists[text_todo[start + b].text];
        ids.insert(ids.end(), l.begin(), l.end());
      }
      PromptEncoder::Output o = te.encode(ids, B);
      ctx = to_floats(o.txt);
      pooled = o.y.defined() ? to_floats(o.y) : std::vector<float>();
      for (int b = 0; b < B; ++b) {
        const TextTodo& t = text_todo[start + b];
        TextEmbedding& e = data.texts[t.text];
        e.L = o.lens.empty() ? L : o.lens[b];  // a prompt of its own length keeps its rows only
        e.txt.assign(ctx.begin() + (size_t)b * L * C, ctx.begin() + ((size_t)b * L + e.L) * C);
        e.y.assign(pooled.begin() + (size_t)b * V, pooled.begin() + (size_t)(b + 1) * V);
        if (job.cache_text_embeddings) text_cache_write(t.path, t.key, e);
      }
      st.text_encoded += B;
      progress.tick(start + B);
    }
  }

  // ---- samples and datasets (none when stopped: the caller stops too)
  if (stopping()) {
    data = TrainData();
  } else {
    size_t k = 0;
    data.datasets.resize(job.datasets.size());
    for (size_t d = 0; d < job.datasets.size(); ++d) {
      const JobDataset& ds = job.datasets[d];
      data.datasets[d].weight = ds.weight;
      data.datasets[d].dropout_rate = ds.caption_dropout_rate;
      data.datasets[d].is_reg = ds.is_reg;
      for (const JobImage& im : ds.items) {
        TrainSample s;
        s.latent = item_latent[k++];
        s.text = text_of.at(im.tokens);
        s.dropout_text = text_of.at(im.dropout_tokens);
        if (job.dop) s.preserve_text = text_of.at(im.dop_tokens);
        if (job.blank_prompt_preservation) s.preserve_text = text_of.at(job.empty_tokens);
        s.repeats = im.repeats;
        data.samples.push_back(s);
        data.add_to_dataset((int)d, (int)data.samples.size() - 1);
      }
    }
  }

  st.seconds = seconds_since(t0);
  char per_picture[64] = "";
  if (st.latents_encoded)
    std::snprintf(per_picture, sizeof per_picture, ", %.4f s per picture in the autoencoder",
                  st.encode_seconds / st.latents_encoded);
  std::printf("cache %s: latents %d encoded, %d reused; text %d encoded, %d reused (%.1f s%s)%s\n",
              job.cache_latents || job.cache_text_embeddings ? job.cache_dir.c_str() : "(memory only)",
              st.latents_encoded, st.latents_reused, st.text_encoded, st.text_reused, st.seconds, per_picture,
              st.stopped ? ": stopped (SIGINT)" : "");
  std::fflush(stdout);
  metrics.event({{"event", "cache"}, {"latents_encoded", st.latents_encoded}, {"latents_reused", st.latents_reused},
                 {"text_encoded", st.text_encoded}, {"text_reused", st.text_reused},
                 {"seconds", std::round(st.seconds * 1000.0) / 1000.0}, {"cache_dir", job.cache_dir},
                 {"stopped", st.stopped}});
  if (stats_out) *stats_out = st;
  return data;
}

}  // namespace graft
