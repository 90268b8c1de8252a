// AdamW over one flat parameter buffer, global gradient-norm clipping, learning-rate schedules.
#pragma once
#include <string>
#include <vector>

namespace graft {

struct AdamW {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  long t = 0;              // updates done (for bias correction)
  std::vector<float> m, v; // first and second moments, same size as the parameters

  // One update as torch.optim.AdamW: p *= 1 - lr*wd; p -= lr * m_hat / (sqrt(v_hat) + eps).
  void step(float* params, const float* grads, size_t n, float lr);
};

// An exponential moving average of weight buffers, decay min(decay, (1 + n) / (10 + n)) at update n
// (counted from 0): early updates move it quickly, so it does not hold the starting weights for
// ~1/(1-decay) steps. Sampling or saving the average of the last ~1/(1-decay) steps gives cleaner
// pictures than the last step's noisy weights.
struct WeightEma {
  std::vector<std::vector<float>*> live;
  std::vector<std::vector<float>> avg;
  float decay = 0.999f;
  long n = 0;  // updates done
  void add(std::vector<float>* v) { live.push_back(v); avg.push_back(*v); }
  void update();
  void swap();  // live <-> average: save or sample the average, then swap back and train on
};

// L2 norm of all gradients; when max_norm > 0 and the norm exceeds it, scales them down to
// max_norm (as torch's clip_grad_norm_). Returns the norm before clipping.
float clip_grad_norm(float* grads, size_t n, float max_norm);

// Learning rate for update number `step` (1-based) of `total`.
// constant | constant_with_warmup | linear | cosine; linear/cosine warm up too when warmup > 0.
float lr_at(const std::string& schedule, float base_lr, int step, int total, int warmup);

}  // namespace graft
