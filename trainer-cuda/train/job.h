// job.json: the resolved job the TypeScript side writes into the job folder (every default
// filled in), read and checked here before anything runs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "ops/quant.h"
#include "train/optim.h"
#include "train/optimizers.h"
#include "train/timesteps.h"

namespace graft {

// A pre-encoded item (job.json `items`, what make-tiny writes).
struct JobItem {
  std::string latent;  // safetensors with "latent" [C, H, W]
  std::string text;    // safetensors with "txt" [L_txt, context_dim] and "y" [vec_dim]
};

// A prepared picture of a dataset (job.json `datasets[d].items[i]`): pixels the trainer encodes.
struct JobImage {
  std::string image;           // absolute path of the prepared 8-bit RGB PNG, exactly width x height
  std::string key;             // identity of these pixels (preparation's hash of source, bucket, crop)
  int width = 0, height = 0;
  bool flip_x = false, flip_y = false;  // mirror the pixels before encoding
  int repeats = 1;             // times the item counts per epoch of its dataset
  std::string source;          // the user's file, for messages
  std::string caption;         // for messages
  std::vector<int> tokens;          // the caption: text_ids ids (every part's, concatenated)
  std::vector<int> dropout_tokens;  // what caption dropout trains on instead
  std::vector<int> dop_tokens;      // the caption with the trigger replaced by the DOP class (DOP only)
};

// One dataset of prepared pictures (job.json `datasets[d]`).
struct JobDataset {
  std::string folder;            // for messages
  double weight = 1.0;           // drawn in proportion to it
  bool is_reg = false;           // regularization (prior preservation) set
  float caption_dropout_rate = 0.0f;
  std::vector<JobImage> items;
};

// One sample prompt; width/height/seed/lora_scale fall back to the sample section's values.
struct JobSamplePrompt {
  std::string prompt;
  int width = 0, height = 0;
  int64_t seed = -1;  // -1: the section's seed (plus the prompt index with walk_seed)
  float lora_scale = 1.0f;
  std::vector<int> tokens;  // the prompt tokenized by preparation; empty: tokenize_bytes(prompt)
};

// Sampling during training (SPEC section 6). Needs the model's text encoder and autoencoder.
struct JobSample {
  bool enabled = false;
  int every = 250;
  bool first = true;  // sample before the first step (skip_first_sample = false)
  int width = 32, height = 32;
  int steps = 20;
  float cfg_scale = 4.0f;
  float guidance = 3.5f;       // the guidance embedding's input (FLUX.1-dev), not CFG
  float shift = 1.0f;
  bool resolution_shift = false;  // sample.shift "resolution": FLUX's shift for each sample's size
  uint64_t seed = 42;
  bool walk_seed = false;
  std::vector<JobSamplePrompt> prompts;
};

// One of the model's text encoders as job.json names it ("text_encoder" for the demo model; "clip_l"
// and "t5" for FLUX.1): its checkpoint and how many token ids of a prompt it reads. A prompt's ids
// are the parts' lists concatenated in the order of their names.
struct TextPart {
  std::string name;
  std::string path;  // empty with pre-encoded items
  int max_len = 0;
  // A prompt padded with this id after its tokens reads only its tokens (Z-Image's Qwen3: the
  // pipeline keeps the hidden states its attention mask marks); -1: every id is read.
  int pad_id = -1;
  // How many of a prompt's max_len ids the encoder reads: up to the last that is not pad_id (at least
  // one), or all of them.
  int length(const int* ids) const;
};

struct Job {
  std::string dir;         // the job folder (absolute)
  std::string file;        // its job.json
  std::string name;        // output file names
  std::string output_dir;  // where checkpoints, metrics.jsonl and state/ go (default: the job folder)
  std::string device = "cpu";
  std::string trigger_word;

  std::string arch = "flux";     // flux | zimage
  std::string variant;          // zimage: turbo | base
  std::string transformer;      // checkpoint path
  std::string text_encoder_config;  // a decoder LLM's config.json when its checkpoint is one file
  // A LoRA merged into the transformer while training and taken out for samples (the reference
  // toolkit's assistant_lora_path: Z-Image Turbo's de-distillation adapter); "" for none.
  std::string assistant_lora;
  std::string base_model;       // name_or_path, for metadata
  // none | fp8 | int8 | nf4: the format of the transformer's linear weights (ops/quant.h)
  WeightFormat quantize = WeightFormat::dense;
  WeightFormat quantize_te = WeightFormat::dense;  // the same for the text encoders' (model.quantize_te)
  double offload = 0;  // share of the transformer's blocks streamed from pinned host memory (CUDA)
  std::vector<TextPart> text_parts;  // needed with `datasets` and for sampling, sorted by name
  std::string ae;               // needed with `datasets` and for sampling

  std::string network_type = "lora";  // lora | lokr
  int lokr_factor = -1;                // LoKr's Kronecker split (-1: the most balanced)
  bool lokr_full_rank = false;         // LoKr's second factor a full matrix (no low-rank split)
  int rank = 16;
  float alpha = 16.0f;
  bool train_modulation = false;

  int steps = 1000;
  int batch_size = 1;
  int grad_accum = 1;
  float lr = 1e-4f;
  LrSchedule schedule;      // train.lr_scheduler, lr_warmup_steps and lr_scheduler_params (base = lr)
  OptimizerConfig optimizer;  // train.optimizer and optimizer_params
  float max_grad_norm = 1.0f;
  TimestepRule timesteps;  // train.timestep_type and train.content_or_style
  uint64_t seed = 42;
  float guidance = 1.0f;
  bool gradient_checkpointing = false;  // CUDA backend: recompute block activations in backward
  bool cache_latents = true;            // keep encoded latents in cache_dir (false: memory only)
  bool cache_text_embeddings = true;    // the same for text embeddings
  bool unload_text_encoder = false;     // free the text encoder once everything is encoded
  // SPEC section 5, ADVANCED: each is described where train.cpp applies it.
  bool use_ema = false;
  float ema_decay = 0.99f;
  bool differential_guidance = false;
  float differential_guidance_scale = 3.0f;
  bool dop = false;                // differential output preservation (needs every item's dop_tokens)
  float dop_multiplier = 1.0f;
  bool blank_prompt_preservation = false;
  float bpp_multiplier = 1.0f;

  DType save_dtype = DType::BF16;
  int save_every = 250;
  int max_step_saves_to_keep = 4;

  JobSample sample;
  // Training data: exactly one of `datasets` (prepared pictures, encoded into cache_dir) and
  // `items` (pre-encoded) is non-empty.
  std::vector<JobDataset> datasets;
  std::vector<JobItem> items;
  std::string cache_dir;           // latents/ and text/ go under it (default <job>/cache)
  int text_ids = 0;                // ids per prompt: the parts' max_len summed (0 when the job has no `text`)
  std::vector<int> empty_tokens;   // the empty prompt: CFG's unconditional
  std::string config_json;  // the user's config (job.json "config"), kept for the LoRA metadata
};

// Reads <dir>/job.json. Throws Error naming the file and the field, the value found and what is
// allowed, e.g. "out/job.json: train.lr must be a number > 0, got \"fast\"". Prepared pictures must
// exist at exactly their width x height (checked from the PNG header).
Job job_load(const std::string& dir);

// The checks that need the models: each text part's max_len equals its encoder's, every token id is
// inside its vocabulary, every picture's sides give even latent sides (multiples of the
// autoencoder's factor x 2). Errors name job.json and the field path, e.g. datasets[0].items[3].width.
struct PromptEncoder;
struct VaeConfig;
void job_check_models(const Job& job, const PromptEncoder& te, const VaeConfig& ae);

// Number of training items (pictures or pre-encoded items) over the whole job.
size_t job_item_count(const Job& job);

}  // namespace graft
