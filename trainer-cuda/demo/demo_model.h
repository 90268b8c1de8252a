// Trains the built-in demo model from scratch on pictures graft draws itself (shapes.h): first the
// autoencoder, then the text encoder and the FLUX-layout transformer together with flow matching.
// Writes a model folder Pipeline::load reads. `make demo-model` runs it with the shipped settings.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/flux.h"
#include "core/rng.h"
#include "demo/shapes.h"
#include "demo/text_encoder.h"

namespace graft {

struct DemoModelOptions {
  std::string out_dir;
  uint64_t seed = 1;
  int pictures = 4000;       // distinct training pictures (drawn deterministically from the seed)
  int image_size = 32;
  // Pixels per latent pixel: 2 (32 px -> 16x16 latents, 64 image tokens) draws small shapes that 4
  // (8x8 latents, 16 tokens, one token per 8x8 pixels) left as round blobs.
  int latent_factor = 2;
  int ae_steps = 1500;
  int ae_batch = 16;
  float ae_lr = 1e-3f;
  float ae_kl_weight = 1e-3f;
  // Steps that train the autoencoder's decoder alone, on the frozen encoder's latents: sharper
  // pictures while the latent space, and so a transformer trained on it, stays as it is.
  int decoder_steps = 0;
  float decoder_lr = 5e-4f;
  int dit_steps = 4000;
  int dit_batch = 16;
  float dit_lr = 5e-4f;
  float caption_dropout = 0.1f;  // empty captions, so classifier-free guidance has an unconditional
  float shape_contrast = 0.0f;    // weight of the word contrast term (WordContrast below; 0: off)
  float contrast_margin = 0.02f;  // the loss gap it asks for between a wrong and the true word
  float count_contrast = 0.0f;    // share of its pictures whose wrong caption changes the count, not the shape
  // Share of captions whose shape word is a made-up one (made_up_word): the model learns to draw the
  // colours, size and count of a caption whose shape it does not know, as a new trigger word asks.
  float novel_words = 0.0f;
  float ema_decay = 0.999f;      // the saved transformer and text encoder are this average of weights (0: off)
  // End the transformer run after this many of its dit_steps (0: all of them), as a run stopped there
  // would: the learning-rate schedule stays that of dit_steps. A recipe can so name a stopped run.
  int stop_at = 0;
  int save_every = 500;          // transformer steps between saves of the model folder
  int log_every = 50;
  bool resume = false;  // keep out_dir's autoencoder, text encoder and transformer; train the latter two on
  // With resume: the text encoder and transformer come from this model folder instead, one trained on
  // another autoencoder; what it learnt of captions carries over, its image input and output relearn.
  std::string transformer_from;
};

// The flow loss alone left the shape word all but unused: under a caption naming another shape the
// model's loss rose by 0.005, under another colour by 0.5, and it drew every lone shape as the same
// blob. This term of the transformer's training asks that the same noisy latents, captioned with
// another base shape's word (or, for a share of the pictures, another count: "two large red circles"
// for one), be predicted worse than under the true caption by at least `margin`, per picture:
// weight / B * max(0, margin - (loss_wrong - loss_true)). Only pictures at high noise (t >= min_t),
// where the latents barely show an outline or how many there are, so the word must make the gap
// rather than a mismatch between word and latents.
struct WordContrast {
  FluxTransformer* dit;
  const TextEncoder* te;
  float weight, margin, count_share, min_t = 0.6f;
  int B, L, gh, P;  // batch, text tokens, patch grid side, values per patch
  std::vector<int> ids, rows;  // rows: the batch row of each contrast row
  std::vector<bool> count_rows;  // whether contrast row a changed the count word (else the shape word)
  int n_count = 0;               // how many did
  std::vector<std::string> wrong_captions;
  double gap_shape = 0, gap_count = 0;  // the last step's mean gap per kind (0 when it had no such row)
  Tensor out;                    // the wrong captions' predictions, recorded for backward()
  std::vector<float> dout;

  WordContrast(FluxTransformer* dit, const TextEncoder* te, float weight, float margin, float count_share, int B, int L,
               int gh, int P);
  // After the batch's forward: pick[b] is row b's scene (-1: empty caption). Runs the wrong captions,
  // adds the term's gradient for the true predictions to dtrue, and returns the mean gap
  // loss_wrong - loss_true over the contrast rows (0 when there are none).
  float step(const std::vector<Scene>& scenes, const std::vector<int>& pick, const FluxInputs& batch,
             const std::vector<float>& true_out, const std::vector<float>& target, std::vector<float>& dtrue, Rng& rng);
  // Accumulates the wrong captions' gradients into the transformer and the text encoder.
  void backward();
};

// The scene a wrong caption describes: another base shape, or (count = true) another count that
// pictures of its size have (one or two large shapes, one to three small ones).
Scene with_wrong_word(const Scene& s, bool count, Rng& rng);

// The demo model's transformer: the FLUX layout at hidden 128, 2 double + 4 single blocks.
FluxConfig demo_flux_config(int context_dim, int vec_dim);
void train_demo_model(const DemoModelOptions& opt);

// The demo LoRA job, as a user would set it up: ~20 captioned pictures of a shape the base model has
// never seen (a horizontal bar, called by the trigger word "zxq") under <job>/dataset, a
// regularization set under <job>/dataset_reg (the base model's own pictures of captions it knows),
// each an image + caption .txt file, and
// <job>/config.yaml in the reference layout (rank-8 LoRA; samples of activation prompts with the
// trigger and a leak prompt without it). `graft queue add <job>/config.yaml` prepares and trains it.
//
// The concept is a bar rather than a finer shape such as the star because the tiny model draws
// coarse forms: a LoRA teaches it a long flat shape in minutes, while star points stay below what it
// renders (measured with demo_eval; see presets/graft-tiny/README.md).
struct DemoJobOptions {
  std::string model_dir, job_dir;
  int pictures = 20;
  int reg_pictures = 40;
  int steps = 600;
  uint64_t seed = 7;
};
void make_demo_job(const DemoJobOptions& opt);

// What the demo LoRA did, measured on sampled pictures (same seeds with and without the LoRA):
// - concept: for prompts with the trigger ("a large red zxq on a white background"), the mean
//   shape_iou_any_colour with the bar, and with the closest base shape, without and with the LoRA
//   (colour-blind on purpose: the tiny model sometimes swaps shape and background colours, and the
//   question here is the form it draws);
// - change: mean absolute pixel change (in [0, 1] units) that the LoRA causes on those prompts,
//   and on the same prompts naming a known shape instead of the trigger (the leak: should stay small);
//   for scale, the change another seed makes to the base model's picture of those prompts (what "not
//   the same picture" looks like);
// - colours: the share of those trigger pictures whose shape colour and background (read_picture)
//   are the ones the prompt names, without and with the LoRA: a LoRA that teaches a form should
//   leave the prompt's colours to the base model.
struct DemoEval {
  double concept_base = 0, concept_lora = 0, other_base = 0, other_lora = 0;
  double activation_change = 0, leak_change = 0, seed_change = 0;
  double colours_base = 0, colours_lora = 0;
  int samples = 0;
};
DemoEval demo_eval(const std::string& model_dir, const std::string& lora_path, int seeds, int steps);

// How well the base model draws its own world: pictures of "a large <colour> <shape> on a <colour>
// background" for every base shape, four colour pairs and `seeds` seeds, read back by read_picture.
// The share of pictures whose shape, colour and background are the ones asked (chance for the
// shape: 1 in 5), and per shape the share read as that shape. The same captions with "a small"
// give the share of small shapes drawn as asked (`small_shape`).
// The ceiling: drawn pictures of one shape, small and large, passed once through the autoencoder and
// read back the same way. What the autoencoder cannot give back, the transformer cannot draw.
// Counts: pictures of "a / two large ..." and "a / two / three small ..." (every base shape, rotating
// colour pairs, `seeds` seeds), whose shapes read_picture counts; per asked (size, count) in
// kCountCases order, and the same read from the true drawings of those captions (the measure's own
// ceiling: shapes that touch read as one).
constexpr int kCountCases = 5;
constexpr struct { bool large; int count; } kCountCaseList[kCountCases] = {{true, 1}, {true, 2}, {false, 1}, {false, 2}, {false, 3}};
struct BaseEval {
  double shape = 0, colour = 0, background = 0;
  double per_shape[kBaseShapes] = {};  // in kBaseShapeList order: circle, square, triangle, diamond, cross
  int samples = 0;
  double small_shape = 0;
  double per_small_shape[kBaseShapes] = {};
  double autoencoder_small = 0, autoencoder_large = 0;  // shape read back right after the round trip
  double count = 0, count_drawn = 0;
  double per_count[kCountCases] = {};
  int count_samples = 0;
};
BaseEval base_eval(const std::string& model_dir, int seeds, int steps);

}  // namespace graft
