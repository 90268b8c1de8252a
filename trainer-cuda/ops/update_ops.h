// In-place updates of fp32 parameter buffers on their own device, outside autodiff: the optimizer's
// step, gradient clipping and weight averages. On CUDA each is one fused kernel, so a training step
// moves no parameter or gradient across the bus.
#pragma once
#include "core/tensor.h"

namespace graft {

// One AdamW update as torch.optim.AdamW (t = updates done, this one included):
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p *= 1 - lr wd;
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
void adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, long t);

// Sum of squares of every element, accumulated in double in a fixed order (deterministic).
double sum_squares(const Tensor& t);
// t *= s.
void scale_(const Tensor& t, float s);
// avg = d avg + (1 - d) x.
void lerp_(const Tensor& avg, const Tensor& x, float d);
// Exchanges the values of a and b (same shape, same device).
void swap_values(const Tensor& a, const Tensor& b);

// Fills t (fp32 or bf16) with offset + bound * u, u uniform in [-1, 1) from a hash of (seed, index):
// the same values on every device, without a generator to carry (random weights for benchmarks).
void fill_uniform_(const Tensor& t, uint32_t seed, float bound, float offset);

}  // namespace graft
