// The flow-matching LoRA training loop over a job folder.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/data.h"
#include "train/family.h"
#include "models/flux.h"
#include "train/job.h"

namespace graft {

// One micro-batch ready for the model: noised latents as FLUX tokens and the velocity target.
struct TrainBatch {
  FluxInputs in;
  std::vector<float> target;  // patchified (noise - x0), [B, L_img, in_channels]
  std::vector<float> weight;  // per picture: its timestep's loss weight (1 unless timestep_type weighted)
};

// x_t = (1 - t) x0 + t noise, target noise - x0; t and noise drawn from the stream keyed by
// (seed, g) for global micro-batch number g, so any step can be reproduced on its own.
TrainBatch make_batch(const TrainData& data, const BatchPick& pick, const ModelWidths& widths, const Job& job, uint64_t g);

// Trains the job in `dir` (resuming from dir/state when present). Returns the exit code:
// 0 finished, 130 stopped by SIGINT (saved), 1 failed. Errors before training throw Error.
int train_run(const std::string& dir);

}  // namespace graft
