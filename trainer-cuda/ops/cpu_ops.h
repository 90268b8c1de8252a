// The engine's operations on the CPU (fp32, row-major), each a forward/backward pair: the kernels
// behind ops/ops.h on the host, and the reference the CUDA kernels are checked against.
//
// Conventions (as in llm.c):
// - Shapes are explicit arguments; every buffer is contiguous row-major unless a stride is given.
// - Backward functions ACCUMULATE (+=) into every gradient buffer they are given, so the caller
//   zeroes gradients once and residual branches add up naturally. Any gradient pointer may be
//   nullptr: that gradient is not computed (frozen weights, inputs that need none).
// - Forward functions OVERWRITE their outputs, except the *_add / residual ops that say so.
// - Anything a backward needs from its forward (means, rstd, probabilities, LoRA's A x) is
//   stored by the forward into a buffer the caller owns.
#pragma once
#include <functional>

#include "core/dtype.h"
#include "ops/attention_mask.h"

namespace graft::cpu {

// out[N,OC] = inp[N,IC] @ W[OC,IC]^T + bias[OC] (bias may be nullptr).
void linear_forward(float* out, const float* inp, const float* W, const float* bias, int N, int IC, int OC);
void linear_backward(float* dinp, float* dW, float* dbias, const float* dout, const float* inp, const float* W,
                     int N, int IC, int OC);

// The same for a frozen weight W kept in another form (bf16, f16, fp8, int8 codes, NF4 blocks, or
// unaligned fp32 inside a mapped file): `rows(dst, o0, r)` writes rows [o0, o0 + r) of W as fp32
// into dst. They are decoded a block of rows at a time into a small reusable buffer, so no fp32 copy
// of the whole weight is ever made. The backward gives dinp only (such a weight is frozen).
using WeightRows = std::function<void(float* dst, int row0, int rows)>;
void linear_forward_decoded(float* out, const float* inp, const WeightRows& rows, const float* bias, int N, int IC,
                            int OC);
void linear_backward_decoded(float* dinp, const float* dout, const WeightRows& rows, int N, int IC, int OC);

// LoRA update ADDED to a slice of an existing output (used after linear_forward of the frozen W):
//   h[N,rank] = inp[N,IC] @ A[rank,IC]^T
//   out[n*out_stride + o] += scale * sum_r B[o,r] * h[n,r]     for o in [0, OC)
// `out` points at the first column of the slice; out_stride is the full row length, so one fused
// BFL layer (qkv) can carry one adapter per diffusers sub-layer (to_q, to_k, to_v).
// scale = alpha / rank. B starts at zero, so a new adapter leaves the model unchanged.
void lora_forward(float* out, int out_stride, float* h, const float* inp, const float* A, const float* B,
                  int N, int IC, int OC, int rank, float scale);
// dout is read with the same stride/offset as out. dinp accumulates the adapter's share only
// (the frozen W's share comes from linear_backward).
void lora_backward(float* dinp, float* dA, float* dB, const float* dout, int dout_stride, const float* h,
                   const float* inp, const float* A, const float* B, int N, int IC, int OC, int rank, float scale);

// LoKr on a slice of an existing output: out[n*out_stride + o] += (inp @ D^T)[n, o] with
// D = scale kron(w1, w2) [a*b, c*d], w1 [a, c], w2 [b, d] (fp32).
void lokr_forward(float* out, int out_stride, const float* inp, const float* w1, const float* w2, int N, int a, int b,
                  int c, int d, float scale);
// With dD = dout^T @ inp [a*b, c*d]: dinp += dout @ D; dw1[i,k] += scale sum_jl dD[i*b+j, k*d+l] w2[j,l];
// dw2[j,l] += scale sum_ik dD[i*b+j, k*d+l] w1[i,k] (null gradients skipped).
void lokr_backward(float* dinp, float* dw1, float* dw2, const float* dout, int dout_stride, const float* inp,
                   const float* w1, const float* w2, int N, int a, int b, int c, int d, float scale);
// C[M,N] = op(A)[M,K] @ op(B)[K,N] + beta C, all fp32 row-major (LoKr's small factor products).
void matmul_f32(float* C, const float* A, bool transA, const float* B, bool transB, int M, int N, int K, float beta);

// LayerNorm over the last dim C without affine parameters; eps 1e-6 is FLUX's, CLIP's is 1e-5.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, int N, int C, float eps = 1e-6f);
void layernorm_backward(float* dinp, const float* dout, const float* inp, const float* mean, const float* rstd,
                        int N, int C);

// RMSNorm with a learnable scale[C] (FLUX's QK-norm): out = inp * rsqrt(mean(inp^2) + 1e-6) * scale.
void rmsnorm_forward(float* out, float* rrms, const float* inp, const float* scale, int N, int C, float eps);
void rmsnorm_backward(float* dinp, float* dscale, const float* dout, const float* inp, const float* scale,
                      const float* rrms, int N, int C);

// RoPE over several position axes (FLUX: 3 axes, theta 10000).
// ids[P, n_axes] positions -> cos_sin[P, D/2, 2] with D = sum(axes_dim); axis a owns axes_dim[a]/2 pairs,
// frequency of pair i of an axis of dim d: theta^(-2i/d).
void rope_table(float* cos_sin, const float* ids, int P, const int* axes_dim, int n_axes, float theta);
// x[B, L, H, D]; position of (b, l) is row b*L + l of cos_sin. Rotates adjacent pairs:
//   out[2i] = cos*x[2i] - sin*x[2i+1],  out[2i+1] = sin*x[2i] + cos*x[2i+1].
void rope_forward(float* out, const float* inp, const float* cos_sin, int B, int L, int H, int D);
void rope_backward(float* dinp, const float* dout, const float* cos_sin, int B, int L, int H, int D);

// Scaled-dot-product attention: softmax(scale q k^T + bias, causal) v; by default scale 1/sqrt(D),
// no bias, not causal (attention_mask.h).
// q, k, v: [B, L, H, D]; out: [B, L, H*D] (heads merged, as FLUX's "B H L D -> B L (H D)").
// probs: [B, H, L, L] softmax probabilities kept for backward (the CPU reference materialises them).
void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       int B, int L, int H, int D, const AttentionMask& mask = {});
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs,
                        const float* q, const float* k, const float* v, int B, int L, int H, int D,
                        const AttentionMask& mask = {});

// GELU, tanh approximation; SiLU. Elementwise over n values.
void gelu_forward(float* out, const float* inp, int n);
void gelu_backward(float* dinp, const float* dout, const float* inp, int n);
void silu_forward(float* out, const float* inp, int n);
void silu_backward(float* dinp, const float* dout, const float* inp, int n);
// tanh; its backward reads the output y: dinp += (1 - y^2) dout.
void tanh_forward(float* out, const float* inp, int n);
void tanh_backward(float* dinp, const float* dout, const float* out, int n);
// CLIP's quick GELU: x * sigmoid(1.702 x).
void quick_gelu_forward(float* out, const float* inp, long n);
void quick_gelu_backward(float* dinp, const float* dout, const float* inp, long n);

// out = a * b elementwise; backward da += dout * b, db += dout * a (either may be nullptr).
void mul_forward(float* out, const float* a, const float* b, long n);
void mul_backward(float* da, float* db, const float* dout, const float* a, const float* b, long n);

// Per-channel affine of rows x [N, C]: out = x * w[c] + b[c] (b may be nullptr): the affine part of
// a LayerNorm with parameters. Backward: dx += dout * w, dw += sum_n dout * x, db += sum_n dout.
void affine_forward(float* out, const float* x, const float* w, const float* b, int N, int C);
void affine_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w, int N, int C);

// adaLN modulation: out[b,l,c] = (1 + scale[b,c]) * x[b,l,c] + shift[b,c].
// shift and scale are rows of a modulation output: element (b, c) is at ptr[b*mod_stride + c].
void modulate_forward(float* out, const float* x, const float* shift, const float* scale, int mod_stride,
                      int B, int L, int C);
void modulate_backward(float* dx, float* dshift, float* dscale, const float* dout, const float* x,
                       const float* scale, int mod_stride, int B, int L, int C);

// Gated residual, in place: res[b,l,c] += gate[b*mod_stride + c] * y[b,l,c].
// Backward: the residual's own gradient passes through unchanged (the caller keeps dres);
// this adds the branch's dy and dgate.
void gate_residual_forward(float* res, const float* y, const float* gate, int mod_stride, int B, int L, int C);
void gate_residual_backward(float* dy, float* dgate, const float* dres, const float* y, const float* gate,
                            int mod_stride, int B, int L, int C);

// Sinusoidal timestep embedding as FLUX: t' = time_factor * t; half = dim/2;
// f_i = exp(-ln(max_period) * i / half); emb[b] = [cos(t' f), sin(t' f)] (zero pad if dim is odd).
void timestep_embedding_forward(float* emb, const float* t, int B, int dim, float time_factor, float max_period);
void timestep_embedding_backward(float* dt, const float* demb, const float* t, int B, int dim, float time_factor,
                                 float max_period);

// 2x2 (p x p) patchify: latent [B, C, H, W] -> tokens [B, (H/p)*(W/p), C*p*p], channel order (c ph pw),
// token order row-major over (h/p, w/p) — FLUX's "b c (h ph) (w pw) -> b (h w) (c ph pw)".
// The backward of one is the forward of the other; both directions are provided for clarity.
void patchify_forward(float* out, const float* inp, int B, int C, int H, int W, int p);
void patchify_backward(float* dinp, const float* dout, int B, int C, int H, int W, int p);
void unpatchify_forward(float* out, const float* inp, int B, int C, int H, int W, int p);
void unpatchify_backward(float* dinp, const float* dout, int B, int C, int H, int W, int p);

// Token embedding lookup: out[n, :] = table[ids[n], :] for n < N, table [V, C]. Backward
// scatter-adds each row of dout into dtable (ids repeat, so rows accumulate).
void embedding_forward(float* out, const int* ids, const float* table, int N, int V, int C);
void embedding_backward(float* dtable, const float* dout, const int* ids, int N, int V, int C);

// Elementwise: out = a + b; acc += x (every backward that passes a gradient on unchanged).
void add_forward(float* out, const float* a, const float* b, long n);
void accumulate(float* acc, const float* x, long n);

// Mean over the L tokens of x [B, L, C] -> out [B, C]; backward adds dout[b] / L to every token.
void mean_tokens_forward(float* out, const float* x, int B, int L, int C);
void mean_tokens_backward(float* dx, const float* dout, int B, int L, int C);

// A block of `cols` columns from rows of a row-major matrix: dst[r*dst_ld + c] = src[r*src_ld + c]
// (bytes of `elem` each, any dtype), and its adjoint for fp32, which adds.
void copy_cols(void* dst, long dst_ld, const void* src, long src_ld, long rows, long cols, int elem);
void add_cols(float* dst, long dst_ld, const float* src, long src_ld, long rows, long cols);

// Mean squared error over n values; backward accumulates dloss * 2 (pred - target) / n into dpred.
float mse_forward(const float* pred, const float* target, long n);
void mse_backward(float* dpred, const float* pred, const float* target, long n, float dloss);

}  // namespace graft::cpu
