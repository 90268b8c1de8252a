// Trains the built-in demo model from scratch on pictures graft draws itself (shapes.h): first the
// autoencoder, then the text encoder and the FLUX-layout transformer together with flow matching.
// Writes a model folder Pipeline::load reads. `make demo-model` runs it with the shipped settings.
#pragma once
#include <cstdint>
#include <string>

namespace graft {

struct DemoModelOptions {
  std::string out_dir;
  uint64_t seed = 1;
  int pictures = 4000;       // distinct training pictures (drawn deterministically from the seed)
  int image_size = 32;
  int ae_steps = 1500;
  int ae_batch = 16;
  float ae_lr = 1e-3f;
  float ae_kl_weight = 1e-3f;
  int dit_steps = 4000;
  int dit_batch = 16;
  float dit_lr = 5e-4f;
  float caption_dropout = 0.1f;  // empty captions, so classifier-free guidance has an unconditional
  int log_every = 50;
};

void train_demo_model(const DemoModelOptions& opt);

}  // namespace graft
