// The optimizers a job picks (train.optimizer): AdamW, AdamW8bit, Lion, Adafactor and Prodigy over the
// adapter's flat fp32 parameter buffer. Each keeps its state on the parameters' device, steps with one
// fused pass there (ops/update_ops.h), and names every state tensor and scalar so that state/ saves and
// restores it bit for bit.
#pragma once
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/safetensors.h"
#include "core/tensor.h"
#include "train/json_fields.h"

namespace graft {

// One parameter tensor inside the flat buffer: a matrix [rows, cols] (rows > 0) or a vector of `size`.
// Adafactor factors matrices; the 8-bit state cuts each tensor into its own blocks.
struct ParamSegment {
  int64_t offset = 0, size = 0;
  int rows = 0, cols = 0;
};

// train.optimizer and train.optimizer_params, with each library's defaults (the reference toolkit's
// eps of 1e-6 for the Adam family and Prodigy).
struct OptimizerConfig {
  std::string type = "adamw";  // adamw | adamw8bit | lion | adafactor | prodigy
  double beta1 = 0.9, beta2 = 0.999;  // doubles, as the libraries' Python floats (1 - beta formed exactly)
  float eps = 1e-6f, weight_decay = 1e-4f;
  // Adafactor (transformers' semantics; the reference turns relative_step and scale_parameter off).
  bool relative_step = false, scale_parameter = false, warmup_init = false, first_moment = false;
  float eps1 = 1e-30f, eps2 = 1e-3f, clip_threshold = 1.0f, decay_rate = -0.8f;
  // Prodigy (prodigyopt 1.x); beta3 < 0: sqrt(beta2).
  double beta3 = -1.0;
  double d0 = 1e-6, d_coef = 1.0, growth_rate = std::numeric_limits<double>::infinity();
  bool decouple = true, use_bias_correction = false, safeguard_warmup = false;
};

// Reads train.optimizer and train.optimizer_params; a key the chosen optimizer does not take, or a
// value out of range, is an error naming the field.
OptimizerConfig optimizer_config(const JsonFields& f);
// The optimizer names train.optimizer accepts.
const std::vector<std::string>& optimizer_names();

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update of params (fp32 [n]) from grads; lr is the scheduled learning rate (Prodigy's
  // multiplier of its own estimate).
  virtual void step(const Tensor& params, const Tensor& grads, float lr) = 0;
  // The state by name: tensors on the parameters' device, and scalars (counters are exact in a double).
  virtual std::vector<std::pair<std::string, Tensor*>> state_tensors() = 0;
  virtual std::vector<std::pair<std::string, double*>> state_scalars() = 0;
  // What the trainer prints once: the learning rate Prodigy estimates, for instance.
  virtual std::string describe() const { return config.type; }
  size_t state_bytes();

  OptimizerConfig config;
};

// The memory an optimizer over n parameters in `segments` holds on their device (its state, and the
// scratch it keeps) as make_optimizer would allocate it, without making it: the memory plan.
size_t optimizer_memory_bytes(const OptimizerConfig& c, int64_t n, const std::vector<ParamSegment>& segments);

// An optimizer over params (fp32 [n] on its device) whose tensors are `segments` (in order, tiling
// [0, n)). Its state starts as each library starts it (zeros; Prodigy's p0 = the current params).
std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& config, const Tensor& params,
                                          const std::vector<ParamSegment>& segments);

// The optimizer's state into w (tensors "<prefix><name>" as stored, scalars as metadata
// "<prefix><name>" in 17 significant digits: exact), and back from a file saved so. load throws
// naming the file when a tensor is missing or has another dtype or shape.
void optimizer_save(Optimizer& opt, SafeTensorsWriter& w, const std::string& prefix);
void optimizer_load(Optimizer& opt, const SafeTensorsFile& f, const std::string& prefix);

}  // namespace graft
