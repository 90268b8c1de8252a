// The differentiable operations every model is written with. Each takes and returns Tensors, runs
// its CPU kernel (cpu_ops.h, fp32: the reference) or its CUDA kernel (cuda/ops_gpu.h, bf16 storage
// with fp32 arithmetic) by the device of its inputs, and records its backward on the tape
// (core/autograd.h) when an input needs a gradient.
//
// Conventions:
// - Activations are in the device's compute dtype (fp32 on the CPU, bf16 on CUDA); inputs of
//   another dtype are an error, except in weight slots (W, bias, scales, tables), which accept
//   any float dtype: a weight is converted into scratch for the one call (a bf16 checkpoint on
//   the CPU, an fp32 trainable weight on CUDA) and the converted copy is never kept.
// - A weight slot that needs a gradient must be a leaf (an fp32 parameter); activations carry
//   gradients in their own dtype.
// - Shapes are checked; a mismatch is an internal error naming the op and the shapes.
#pragma once
#include <functional>
#include <vector>

#include "core/autograd.h"
#include "core/tensor.h"
#include "ops/cpu_image_ops.h"

namespace graft {

// ---- linear layers ------------------------------------------------------------------------------

// A LoRA adapter on the output columns [row_offset, row_offset + rows) of a linear layer:
// out[:, slice] += scale * (x @ A^T) @ B^T with A [rank, in] and B [rows, rank] (fp32 parameters).
struct LoraRef {
  Tensor A, B;
  int row_offset = 0, rows = 0;
  float scale = 1.0f;
};

// A LoKr adapter on the output columns [row_offset, row_offset + rows): out[:, slice] +=
// scale * x @ kron(w1, w2)^T with w1 [a, c] and w2 [b, d] (rows = a b, in = c d), or, when w2b is
// defined, w2 = w2 @ w2b ([b, rank] @ [rank, d]): LyCORIS' low-rank second factor. fp32 parameters.
struct LokrRef {
  Tensor w1, w2, w2b;
  int row_offset = 0, rows = 0;
  float scale = 1.0f;
};

// x [..., in] @ W[out, in]^T + b[out] (b may be undefined), plus each adapter's update. Adapters
// with scale 0 are skipped (the base layer alone).
Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b, const std::vector<LoraRef>& adapters = {},
              const std::vector<LokrRef>& lokrs = {});
// A frozen weight [out, in] kept quantized (ops/quant.h): fp8 (F8_E4M3) or int8 (I8) codes [out, in]
// with a scale F32 [out] per output row (also ComfyUI's scaled fp8), or NF4 codes U8
// [ceil(out*in / 2)] with an absmax F32 [ceil(out*in / 64)]. Each product decodes it into scratch,
// forward and backward (on the CPU a block of rows at a time); the decoded weight is never kept.
struct QuantWeight {
  Tensor codes, scale, absmax;
  int out = 0, in = 0;
};
Tensor linear(const Tensor& x, const QuantWeight& W, const Tensor& b, const std::vector<LoraRef>& adapters = {},
              const std::vector<LokrRef>& lokrs = {});

// ---- normalisation --------------------------------------------------------------------------------

// LayerNorm over the last dim without affine parameters (eps 1e-6 is FLUX's; CLIP's is 1e-5).
Tensor layernorm(const Tensor& x, float eps = 1e-6f);
// x * w + b per channel of the last dim (w, b [C]; b may be undefined): a LayerNorm's affine part.
Tensor affine(const Tensor& x, const Tensor& w, const Tensor& b);
// RMSNorm over the last scale.numel() values (rows of that length): x * rrms * scale, rrms =
// (mean(x^2) + eps)^(-1/2) (1e-6: FLUX's, T5's, Qwen3's; Z-Image's is 1e-5).
Tensor rmsnorm(const Tensor& x, const Tensor& scale, float eps = 1e-6f);
// GroupNorm of x [B, C, H, W] (or [B, C, HW]) with `groups` groups, eps 1e-6, then gamma, beta [C].
Tensor groupnorm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups);

// ---- attention and positions ---------------------------------------------------------------------

// The RoPE table of FLUX's EmbedND: ids [P, n_axes] (host fp32 values) -> cos/sin [P, D/2, 2] fp32
// on `device`, D = sum(axes_dim).
Tensor rope_table(const std::vector<float>& ids, int P, const std::vector<int>& axes_dim, float theta, Device device);
// x [B, L, heads*D] rotated pairwise by cos_sin (row b*L + l for position (b, l)).
Tensor rope(const Tensor& x, const Tensor& cos_sin, int heads);
// What attention adds to its scores: another scale than 1/sqrt(D) (0 keeps it), a causal mask, and
// a bias [heads, L, L] (fp32 on the device of q, shared by every batch row; a constant: no gradient).
struct AttentionOptions {
  float scale = 0.0f;
  bool causal = false;
  Tensor bias;
};
// Softmax attention: q, k, v [B, L, heads*D] -> [B, L, heads*D].
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, int heads, const AttentionOptions& opt = {});

// ---- elementwise ---------------------------------------------------------------------------------

Tensor gelu(const Tensor& x);  // tanh approximation
Tensor silu(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor quick_gelu(const Tensor& x);  // x * sigmoid(1.702 x), CLIP's
Tensor mul(const Tensor& a, const Tensor& b);  // same shapes, elementwise
Tensor add(const Tensor& a, const Tensor& b);  // same shapes
// adaLN: (1 + scale) * x + shift for x [B, L, C], shift and scale the chunks `shift_chunk` and
// `scale_chunk` of mod [B, k*C] (each chunk C wide); shift_chunk -1: no shift (Z-Image's scale-only
// modulation).
Tensor modulate(const Tensor& x, const Tensor& mod, int shift_chunk, int scale_chunk);
// x + gate * y for x, y [B, L, C], gate the chunk `gate_chunk` of mod [B, k*C].
Tensor gate_residual(const Tensor& x, const Tensor& y, const Tensor& mod, int gate_chunk);
// FLUX's sinusoidal embedding of t [B] (fp32): [B, dim].
Tensor timestep_embedding(const Tensor& t, int dim, float time_factor = 1000.0f, float max_period = 10000.0f);
// The rows of table [V, C] at ids (I32) -> [ids.shape..., C].
Tensor embedding(const Tensor& ids, const Tensor& table);
// Mean over dim 1 of x [B, L, C] -> [B, C].
Tensor mean_tokens(const Tensor& x);

// ---- shapes ---------------------------------------------------------------------------------------

// The same tensors, with `fn` called when backward reaches this point: after the ops recorded later
// have passed their gradients back, before those that made xs. A model's hook for work ahead of a
// block's backward (layer offloading: fetch its weights). Recorded even when no input needs a
// gradient (the outputs then carry the hook); without recording (NoGrad), xs themselves.
std::vector<Tensor> on_backward(const std::vector<Tensor>& xs, std::function<void()> fn);

// The same elements under another shape.
Tensor reshape(const Tensor& x, const Shape& shape);
// Elements [start, start + len) along dim `dim` (a copy).
Tensor narrow(const Tensor& x, int dim, int64_t start, int64_t len);
// Concatenation along `dim`; every other dim equal.
Tensor cat(const std::vector<Tensor>& xs, int dim);
// [B, C, H, W] <-> [B, H*W, C].
Tensor channels_to_tokens(const Tensor& x);
Tensor tokens_to_channels(const Tensor& x, int H, int W);

// ---- images ----------------------------------------------------------------------------------------

// x [B, IC, H, W] convolved with W [OC, IC, KH, KW] (+ b [OC]): stride and explicit padding
// per side (pad {top, left, bottom, right}), as cpu_image_ops.h's Conv2dShape.
Tensor conv2d(const Tensor& x, const Tensor& W, const Tensor& b, int stride, const int pad[4]);
Tensor conv2d(const Tensor& x, const Tensor& W, const Tensor& b, int pad);  // stride 1, same pad each side
Tensor upsample_nearest2x(const Tensor& x);  // [B, C, H, W] -> [B, C, 2H, 2W]

// ---- the autoencoder's Gaussian --------------------------------------------------------------------

// mean + exp(logvar / 2) * noise (noise: no gradient).
Tensor gaussian_sample(const Tensor& mean, const Tensor& logvar, const Tensor& noise);
// mean over elements of 0.5 (mean^2 + exp(logvar) - 1 - logvar): a one-element fp32 tensor.
Tensor gaussian_kl(const Tensor& mean, const Tensor& logvar);

// ---- losses (not recorded: the training loop gives backward() their gradients) --------------------

// mean((a - b)^2) over every element, in double on the host side of the reduction.
double mse(const Tensor& a, const Tensor& b);
// The gradient of mean((pred - target)^2) with respect to pred, times scale and, when `weights`
// is given (one per dim-0 row), times each row's weight.
Tensor mse_grad(const Tensor& pred, const Tensor& target, float scale, const std::vector<float>& weights = {});

}  // namespace graft
