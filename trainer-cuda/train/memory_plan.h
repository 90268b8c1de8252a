// The memory a LoRA job needs, counted before anything loads: the transformer's weights in their
// format, the text encoders and autoencoder while the datasets are encoded, the adapters, the
// optimizer, the activations a step keeps (with and without gradient checkpointing) and the scratch
// of one product, against what the device has free. A job that cannot fit stops before step 1 with
// these numbers and the settings that would make it fit; `graft-trainer memory-plan` prints the same
// for the TUI's estimate.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/flux.h"
#include "models/zimage.h"
#include "ops/quant.h"
#include "train/optimizers.h"

namespace graft {

struct Job;

// One tensor of the transformer as its checkpoint stores it; a linear layer's weight [rows, cols] is
// kept in the job's format.
struct PlanWeight {
  std::string name;
  int64_t numel = 0;
  DType dtype = DType::BF16;
  int rows = 0, cols = 0;
  bool linear = false;
};

// What the plan is counted from.
struct PlanInputs {
  std::string arch = "flux";  // flux | zimage: which config below
  FluxConfig cfg;
  ZImageConfig zimage;
  bool cuda = false;  // CUDA keeps 16- and 32-bit weights as bf16 and computes in bf16; the CPU keeps
                      // weights as stored and computes in fp32
  std::vector<PlanWeight> transformer;
  WeightFormat quantize = WeightFormat::dense;
  bool lokr = false, lokr_full_rank = false, train_modulation = false, ema = false;
  int rank = 16, lokr_factor = -1;
  OptimizerConfig optimizer;
  int batch = 1;
  int64_t image_tokens = 0, text_tokens = 0;  // of the largest bucket
  bool checkpointing = false;
  double offload = 0;  // share of the blocks streamed from pinned host memory (CUDA)
  std::vector<PlanWeight> text_encoders, autoencoder;  // their tensors (none: not loaded)
  WeightFormat quantize_te = WeightFormat::dense;
  int64_t encode_pixels = 0;                              // the largest picture the autoencoder encodes
  bool sampling = false;                                  // the autoencoder stays for samples
  double available = 0;                                   // free device memory; 0: unknown
};

struct MemoryPlan {
  struct Line { std::string what; double bytes = 0; };
  std::vector<Line> training;  // what the device holds while training
  std::vector<Line> encoding;  // what it holds while the datasets are encoded (before the transformer loads)
  // While the transformer loads: its weights so far, and a layer being quantized (its fp32 copy and its
  // stored pages on the CPU, its bf16 copy on CUDA), with the autoencoder kept for samples.
  double loading_total = 0;
  double offloaded = 0;  // bytes of weights kept in pinned host memory instead (layer offloading)
  double training_total = 0, encoding_total = 0, total = 0, available = 0;
  double activations_other = 0;  // the activations (kept and transient) with the other checkpointing setting
  std::vector<std::string> fixes;  // single changes of the job's settings that would make it fit
  bool fits() const { return available <= 0 || total <= available; }
  std::string report() const;  // the lines the trainer prints before step 1
  // One paragraph for a job that does not fit: the numbers and what to change.
  std::string refusal(const std::string& job_file) const;
  nlohmann::json to_json() const;
};

MemoryPlan plan_memory(const PlanInputs& in);

// The inputs for a prepared job on `device`: the checkpoints' headers (the transformer's checked name
// by name, nothing read), the job's settings and the device's free memory (GRAFT_DEVICE_MEMORY, in
// bytes, stands in for it: tests, and a share of a device someone else uses).
PlanInputs plan_inputs(const Job& job, Device device);

// Picture pixels per transformer token along a side: the autoencoder's downscale (2 per level after
// the first, read from its checkpoint's names) times FLUX's 2x2 patch; 16 (FLUX.1's) without one.
int pixels_per_token(const std::string& ae_path);

// Free memory of a device: cudaMemGetInfo's on CUDA, MemAvailable on the host.
double device_free_bytes(Device device);

// A model's tensors from one built with a shapes-only WeightLoader: a transformer's with its linear
// layers marked; any other's (text encoders, autoencoder) with every 2-D ".weight" that is not an
// embedding table taken for a linear layer's.
std::vector<PlanWeight> plan_tensors(const std::vector<Linear*>& linears, const std::vector<NamedParam>& params);
std::vector<PlanWeight> plan_tensors(const std::vector<NamedParam>& params);
// The same from a checkpoint's headers (a file, or a folder of shards).
std::vector<PlanWeight> checkpoint_weights(const std::string& path);
// Bytes of those tensors as the device keeps them, linear layers' weights in `f`.
double weights_bytes(const std::vector<PlanWeight>& ws, bool cuda, WeightFormat f);

}  // namespace graft
