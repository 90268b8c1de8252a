// Training data in memory: prepared latents and text embeddings, and the order batches are drawn in.
#pragma once
#include <cstdint>
#include <vector>

#include "flux.h"
#include "job.h"

namespace graft {

struct TrainSample {
  int C = 0, H = 0, W = 0;    // latent shape
  std::vector<float> latent;  // [C, H, W]
  int L_txt = 0;
  std::vector<float> txt;     // [L_txt, context_dim]
  std::vector<float> y;       // [vec_dim]
};

struct TrainData {
  std::vector<TrainSample> samples;
  std::vector<std::vector<int>> buckets;  // sample indices sharing one latent and text shape

  int batches_per_epoch(int batch_size) const;
  // The sample indices of global batch number g (counted over the whole run). The order depends only
  // on (seed, epoch), so a resumed run draws the same batches as an uninterrupted one.
  std::vector<int> batch(uint64_t seed, uint64_t g, int batch_size) const;
};

// Loads every item of the job, checking shapes against the model (latent channels x 4 = img_in
// width, even sides, text width); errors name the item's file.
TrainData data_load(const Job& job, const FluxConfig& cfg);

}  // namespace graft
