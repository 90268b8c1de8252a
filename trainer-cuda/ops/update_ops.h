// In-place updates of fp32 parameter buffers on their own device, outside autodiff: the optimizer's
// step, gradient clipping and weight averages. On CUDA each is one fused kernel, so a training step
// moves no parameter or gradient across the bus.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "ops/betas.h"

namespace graft {

// One AdamW update as torch.optim.AdamW (t = updates done, this one included):
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p *= 1 - lr wd;
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
// Betas are doubles and 1 - beta is formed in double, as torch forms it from Python floats (in float32,
// 1 - 0.999f is 1.3e-5 away from 0.001).
void adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, float lr, double beta1,
                  double beta2, float eps, float weight_decay, long t);

// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), as lion-pytorch:
//   p *= 1 - lr wd;  p -= lr sign(b1 m + (1 - b1) g);  m = b2 m + (1 - b2) g.
void lion_update(const Tensor& p, const Tensor& g, const Tensor& m, float lr, double beta1, double beta2,
                 float weight_decay);

// AdamW with block-wise 8-bit moments as bitsandbytes' AdamW8bit stores them: per block of elements
// (block_start[b] .. block_start[b + 1]), each moment is a U8 code into a 256-value dynamic map
// (signed for m, unsigned for v) times the block's absmax. An update dequantizes, updates m and v in
// fp32, steps the parameters with those fp32 values (then decays them, as bitsandbytes' kernel
// does), then stores the new block absmax and the nearest codes.
// Elements per block (bitsandbytes' blockwise optimizers use 256).
constexpr int kBlock8bit = 256;
struct Blockwise8bit {
  Tensor m_q, v_q;             // U8 [n]
  Tensor m_absmax, v_absmax;   // F32 [blocks]
  Tensor block_start;          // I64 [blocks + 1] on the parameters' device
  Tensor m_map, v_map;         // F32 [256], sorted
};
// The 256 sorted values of bitsandbytes' create_dynamic_map(signed, max_exponent_bits 7, total_bits 8),
// computed in float32 as it computes them.
std::vector<float> dynamic_map(bool is_signed);
// Index of the value of `map` (256 sorted) nearest to x; ties to the lower index.
int nearest_code(const float* map, float x);
void adamw8bit_update(const Tensor& p, const Tensor& g, const Blockwise8bit& s, float lr, double beta1, double beta2,
                      float eps, float weight_decay, long t);

// Prodigy's first pass (prodigyopt 1.x): with p and g, accumulates in double dot = sum g (p0 - p),
// then m = b1 m + d (1 - b1) g; v = b2 v + d^2 (1 - b2) g^2; s = b3 s + s_scale g; returns the
// dot and sum |s| (after the update), each summed in a fixed order.
struct ProdigySums {
  double dot = 0.0, s_abs = 0.0;
};
ProdigySums prodigy_accumulate(const Tensor& p, const Tensor& g, const Tensor& p0, const Tensor& m, const Tensor& v,
                               const Tensor& s, double d, double beta1, double beta2, double beta3, float s_scale);
// Prodigy's step: p -= decay p (decoupled weight decay, decay = wd dlr); p -= dlr m / (sqrt(v) + d_eps).
void prodigy_apply(const Tensor& p, const Tensor& m, const Tensor& v, float dlr, float d_eps, float decay);

// Adafactor (Shazeer & Stern 2018) on one parameter tensor, as transformers' Adafactor. The second
// moment, with r = g^2 + eps1 and b = beta2t:
//   factored ([rows, cols]): row = b row + (1 - b) mean_cols(r), col = b col + (1 - b) mean_rows(r),
//     u = g rsqrt(row_i / mean(row)) rsqrt(col_j);
//   unfactored: v = b v + (1 - b) r, u = g rsqrt(v).
// Each writes u and returns sum u^2 (double, fixed order) for the update's RMS clipping.
double adafactor_factored(const Tensor& g, const Tensor& row, const Tensor& col, const Tensor& u, int rows, int cols,
                          double beta2t, float eps1);
double adafactor_unfactored(const Tensor& g, const Tensor& v, const Tensor& u, double beta2t, float eps1);
// u *= u_scale; with m (defined): m = b1 m + (1 - b1) u and u = m; p -= decay p; p -= u.
void adafactor_apply(const Tensor& p, const Tensor& u, const Tensor& m, float u_scale, double beta1, float decay);

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
