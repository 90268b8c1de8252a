// job.json: the resolved job the TypeScript side writes into the job folder (every default
// filled in), read and checked here before anything runs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "safetensors.h"

namespace graft {

struct JobItem {
  std::string latent;  // safetensors with "latent" [C, H, W]
  std::string text;    // safetensors with "txt" [L_txt, context_dim] and "y" [vec_dim]
};

// One sample prompt; width/height/seed/lora_scale fall back to the sample section's values.
struct JobSamplePrompt {
  std::string prompt;
  int width = 0, height = 0;
  int64_t seed = -1;  // -1: the section's seed (plus the prompt index with walk_seed)
  float lora_scale = 1.0f;
};

// Sampling during training (SPEC section 6). Needs the model's text encoder and autoencoder.
struct JobSample {
  bool enabled = false;
  int every = 250;
  bool first = true;  // sample before the first step (skip_first_sample = false)
  int width = 32, height = 32;
  int steps = 20;
  float cfg_scale = 4.0f;
  float guidance = 3.5f;
  float shift = 1.0f;
  uint64_t seed = 42;
  bool walk_seed = false;
  std::vector<JobSamplePrompt> prompts;
};

struct Job {
  std::string dir;         // the job folder (absolute)
  std::string file;        // its job.json
  std::string name;        // output file names
  std::string output_dir;  // where checkpoints, metrics.jsonl and state/ go (default: the job folder)
  std::string device = "cpu";
  std::string trigger_word;

  std::string arch = "flux";
  std::string transformer;      // checkpoint path
  std::string base_model;       // name_or_path, for metadata
  std::string text_encoder;     // optional: needed for sampling
  std::string ae;               // optional: needed for sampling

  std::string network_type = "lora";
  int rank = 16;
  float alpha = 16.0f;
  bool train_modulation = false;

  int steps = 1000;
  int batch_size = 1;
  int grad_accum = 1;
  float lr = 1e-4f;
  std::string lr_scheduler = "constant";
  int warmup_steps = 0;
  std::string optimizer = "adamw";
  float weight_decay = 1e-4f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float max_grad_norm = 1.0f;
  std::string timestep_type = "sigmoid";
  uint64_t seed = 42;
  float guidance = 1.0f;

  DType save_dtype = DType::BF16;
  int save_every = 250;
  int max_step_saves_to_keep = 4;

  JobSample sample;
  std::vector<JobItem> items;
  std::string config_json;  // the user's config (job.json "config"), kept for the LoRA metadata
};

// Reads <dir>/job.json. Throws Error naming the file and the field, the value found and what is
// allowed, e.g. "out/job.json: train.lr must be a number > 0, got \"fast\"".
Job job_load(const std::string& dir);

}  // namespace graft
