// AdamW over fp32 parameter tensors (one flat LoRA buffer, or every tensor of a model for full
// training), global gradient-norm clipping, weight averages and learning-rate schedules. States live
// on the parameters' device and every update is one fused pass there (ops/update_ops.h).
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"

namespace graft {

struct AdamW {
  double beta1 = 0.9, beta2 = 0.999;
  float eps = 1e-8f, weight_decay = 0.0f;
  long t = 0;    // updates done (for bias correction)
  Tensor m, v;   // first and second moments, like the parameters (zeros on the first step)

  // One update as torch.optim.AdamW: p *= 1 - lr*wd; p -= lr * m_hat / (sqrt(v_hat) + eps).
  void step(const Tensor& params, const Tensor& grads, float lr);
};

// AdamW over several tensors: one state per tensor, one step count.
struct MultiAdam {
  std::vector<Tensor> params, grads;
  std::vector<AdamW> opts;
  void add(const Tensor& param, const Tensor& grad, float weight_decay);
  float clip(float max_norm);  // the global gradient norm before clipping
  void step(float lr);
};

// An exponential moving average of weight tensors, decay min(decay, (1 + n) / (10 + n)) at update n
// (counted from 0): early updates move it quickly, so it does not hold the starting weights for
// ~1/(1-decay) steps. Sampling or saving the average of the last ~1/(1-decay) steps gives cleaner
// pictures than the last step's noisy weights.
struct WeightEma {
  std::vector<Tensor> live, avg;
  float decay = 0.999f;
  long n = 0;  // updates done
  void add(const Tensor& weights) { live.push_back(weights); avg.push_back(clone(weights)); }
  void update();
  void swap();  // live <-> average in place: save or sample the average, then swap back and train on
};

// L2 norm of all gradients together (summed in double, in order); when max_norm > 0 and the norm
// exceeds it, scales them down to max_norm (as torch's clip_grad_norm_). Returns the norm before.
float clip_grad_norm(const std::vector<Tensor>& grads, float max_norm);

// The learning rate over a run (train.lr_scheduler and its parameters). Every schedule but
// constant starts with `warmup` steps rising linearly from base/warmup to base; after them:
//   constant_with_warmup: base;
//   linear: down to 0 at the last step;
//   cosine: half a cosine from base down to eta_min at the last step;
//   cosine_with_restarts: torch's CosineAnnealingWarmRestarts: cycles of cycle_steps (T_0, default
//     all steps after the warmup: one cycle), each cycle_mult (T_mult) times longer than the one
//     before, each a cosine from base toward eta_min that starts over at base.
struct LrSchedule {
  std::string type = "constant";
  float base = 1e-4f;
  int total = 1, warmup = 0;
  float eta_min = 0.0f;
  int cycle_steps = 0, cycle_mult = 1;
  float at(int step) const;  // update number `step`, 1-based
};

// Learning rate for update number `step` (1-based) of `total` (a schedule without parameters).
float lr_at(const std::string& schedule, float base_lr, int step, int total, int warmup);
// The schedule names train.lr_scheduler accepts.
const std::vector<std::string>& lr_schedule_names();

}  // namespace graft
