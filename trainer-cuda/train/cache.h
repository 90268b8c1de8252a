// The latent and text-embedding cache of a job with `datasets` (JOB_JSON.md, "Trainer semantics"):
// prepared pictures go through the autoencoder, token lists through the text encoder, once per
// content; the results live in cache_dir, keyed by content hash, and are reused across runs and jobs.
//
//   latent key = SHA-256 of "graft-latent/1 <item key> flip_x=<0|1> flip_y=<0|1> <SHA-256 of the ae>"
//   text key   = SHA-256 of "graft-text/1 <id>,<id>,...,<id> <SHA-256 of the text encoders>"
//                (quantized encoders, model.quantize_te: that hash is SHA-256 of "<it> quantize_te=<format>")
// (model_hash.h: a file's SHA-256, a folder's over its files; several text encoders' combined, their
// prompts' ids concatenated in the order of their names).
//   cache_dir/latents/<key>.safetensors: latent F32 [C, h, w] (the transformer's latent space)
//   cache_dir/text/<key>.safetensors:    txt F32 [L, context_dim], y F32 [vec_dim]
//   metadata: key (the file's key), checksum (SHA-256 of the tensor bytes, latent; or txt then y)
//
// A cache file that does not parse, or whose key, checksum, dtype or shape is wrong, is reported (a
// `warning` event naming it) and encoded again. Every file is written atomically.
#pragma once
#include <csignal>
#include <string>
#include <vector>

#include "train/data.h"
#include "train/job.h"
#include "train/metrics.h"
#include "train/prompt_encoder.h"
#include "models/flux_vae.h"

namespace graft {

struct CacheStats {
  int latents_encoded = 0, latents_reused = 0;
  int text_encoded = 0, text_reused = 0;
  double seconds = 0.0;
  double encode_seconds = 0.0;  // of that, time in the autoencoder (per image: / latents_encoded)
  bool stopped = false;         // interrupted (SIGINT) before everything was encoded
};

std::string latent_cache_key(const std::string& item_key, bool flip_x, bool flip_y, const std::string& ae_sha256);
std::string text_cache_key(const std::vector<int>& tokens, const std::string& te_sha256);

// Cache files. read_* return false with the reason in *why when the file is unusable (does not
// parse, key or checksum or dtype or shape wrong); they throw nothing for a bad file.
void latent_cache_write(const std::string& path, const std::string& key, const Latent& l);
bool latent_cache_read(const std::string& path, const std::string& key, int C, int H, int W, Latent* out,
                       std::string* why);
void text_cache_write(const std::string& path, const std::string& key, const TextEmbedding& t);
bool text_cache_read(const std::string& path, const std::string& key, int L, int context_dim, int vec_dim,
                     TextEmbedding* out, std::string* why);

// The prepared picture of `im` as the autoencoder's input: [3, height, width] in [-1, 1], mirrored for
// flip_x / flip_y. Throws Error naming the file (and job.json's `source`) when it cannot be read or
// its size is not width x height.
std::vector<float> load_prepared_image(const JobImage& im);

// Encodes (or reuses from cache_dir) every picture and token list of the job's datasets and returns
// them as training data: one TrainDataset per job dataset. Prints progress on stdout; writes
// `warning` events for bad cache files and one `cache` event with the counts into `metrics`. When
// *stop becomes non-zero (SIGINT) it returns after the current batch, with stats->stopped set and
// no usable data; what was written to the cache stays.
TrainData data_encode(const Job& job, const FluxVae& ae, const PromptEncoder& te, Metrics& metrics, CacheStats* stats = nullptr,
                      const volatile sig_atomic_t* stop = nullptr);

}  // namespace graft
