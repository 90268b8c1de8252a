// Training data in memory (encoded latents and text embeddings) and the order batches are drawn in.
//
// Batches are a pure function of (seed, g), g the global micro-batch number counted over the whole
// run, so a resumed run draws exactly the batches of an uninterrupted one (JOB_JSON.md, "Trainer
// semantics"):
//   1. dataset: drawn with probability weight / sum(weights) by a generator seeded by (seed, g);
//   2. position: the dataset's epoch position is the number of earlier batches g' < g that drew it
//      (the cheap draw of step 1 replayed); epoch = position / batches per epoch of the dataset;
//   3. plan: within one epoch of a dataset, each item x its repeats once, shuffled within its bucket
//      (same latent and text shape), cut into batches, the batches shuffled; seeded by (seed, dataset,
//      epoch);
//   4. caption dropout: each slot of the batch, with the dataset's rate, trains on its item's dropout
//      text instead of its caption; seeded by (seed, g, slot).
#pragma once
#include <cstdint>
#include <vector>

#include "models/flux.h"
#include "train/job.h"

namespace graft {

struct Latent {
  int C = 0, H = 0, W = 0;  // [C, H, W], the transformer's latent space
  std::vector<float> z;
};

struct TextEmbedding {
  int L = 0;
  std::vector<float> txt;  // [L, context_dim]
  std::vector<float> y;    // [vec_dim]
};

struct TrainSample {
  int latent = -1;        // index into TrainData::latents
  int text = -1;          // index into TrainData::texts: the caption
  int dropout_text = -1;  // what caption dropout trains on instead
  int preserve_text = -1;  // DOP's class caption or BPP's empty prompt (-1: no preservation)
  int repeats = 1;        // times per epoch of its dataset
};

struct TrainDataset {
  double weight = 1.0;
  float dropout_rate = 0.0f;
  bool is_reg = false;
  std::vector<std::vector<int>> buckets;  // sample indices sharing one latent and text shape
};

// One micro-batch: its dataset and, per slot, the sample and the text it trains on.
struct BatchPick {
  int dataset = 0;
  uint64_t epoch = 0;         // of that dataset
  std::vector<int> samples;   // indices into TrainData::samples
  std::vector<int> texts;     // indices into TrainData::texts
  std::vector<bool> dropped;  // slot trained on its dropout text
};

struct TrainData {
  std::vector<Latent> latents;
  std::vector<TextEmbedding> texts;
  // Captions of different lengths share a bucket (a model that pads them in the batch: Z-Image);
  // otherwise a bucket is one latent shape and one text length.
  bool ragged_text = false;
  std::vector<TrainSample> samples;
  std::vector<TrainDataset> datasets;

  // Puts sample s (already in `samples`) into dataset d's bucket of its shape.
  void add_to_dataset(int d, int s);
  size_t bucket_count() const;
  // Batches per epoch of dataset d (each bucket's items x repeats, cut into batch_size pieces).
  int batches_per_epoch(int d, int batch_size) const;
  // Sum over the datasets: what one "epoch" of the run means in the step events.
  int batches_per_epoch(int batch_size) const;
  // Step 1 alone: the dataset global batch g draws.
  int dataset_of(uint64_t seed, uint64_t g) const;
  // Steps 1-4: the batch g.
  BatchPick batch(uint64_t seed, uint64_t g, int batch_size) const;

 private:
  // Step 2 replays step 1 for every earlier batch; this remembers how far it got, so a run asking for
  // g = 0, 1, 2, ... costs one draw per batch. A pure cache: results never depend on it.
  mutable uint64_t memo_seed_ = 0, memo_g_ = 0;
  mutable std::vector<uint64_t> memo_count_;
  uint64_t position(uint64_t seed, uint64_t g, int d) const;
};

// Loads every pre-encoded item of the job (`items`), checking shapes against the model (latent
// channels x 4 = img_in width, even sides, text width); errors name the item's file. One dataset of
// weight 1, no caption dropout.
TrainData data_load(const Job& job, const FluxConfig& cfg);

}  // namespace graft
