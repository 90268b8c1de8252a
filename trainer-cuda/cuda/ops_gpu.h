// The engine's operations on the GPU: the same list, shapes and conventions as ops/cpu_ops.h (row-major,
// shapes explicit, backward ACCUMULATES into every gradient it is given, nullptr gradients are
// skipped, forward overwrites its outputs except the residual ops), with mixed-precision storage:
//   bf16: activations, frozen base weights and biases, activation gradients, modulation vectors;
//   fp32: LoRA master weights A, B and their gradients, dW/dbias/dscale (weight gradients), the
//         per-row statistics a backward needs (mean, rstd, rrms, logsumexp), RoPE tables, t.
// All arithmetic accumulates in fp32. Every function enqueues work on `stream` and returns.
#pragma once
#include <cuda_runtime.h>

#include "core/dtype.h"
#include "cuda_common.h"
#include "ops/attention_mask.h"
#include "ops/betas.h"
#include "ops/cpu_image_ops.h"  // Conv2dShape

namespace graft {
namespace gpu {

// ---- linear.cu: cuBLASLt products -----------------------------------------------------------
// out[N,OC] = inp[N,IC] @ W[OC,IC]^T + bias[OC] (bias through the GEMM epilogue).
void linear_forward(bf16* out, const bf16* inp, const bf16* W, const bf16* bias, int N, int IC, int OC,
                    cudaStream_t stream = 0);
void linear_backward(bf16* dinp, float* dW, float* dbias, const bf16* dout, const bf16* inp, const bf16* W,
                     int N, int IC, int OC, cudaStream_t stream = 0);

// LoRA on a slice of an existing output, as ops.h: h[N,rank] = inp @ A^T (kept for backward, bf16);
// out[n*out_stride + o] += scale * (h @ B^T)[n,o]. A [rank,IC] and B [OC,rank] are the fp32 master
// weights; they are rounded to bf16 for the products (as PyTorch autocast does).
void lora_forward(bf16* out, int out_stride, bf16* h, const bf16* inp, const float* A, const float* B, int N,
                  int IC, int OC, int rank, float scale, cudaStream_t stream = 0);
void lora_backward(bf16* dinp, float* dA, float* dB, const bf16* dout, int dout_stride, const bf16* h,
                   const bf16* inp, const float* A, const float* B, int N, int IC, int OC, int rank, float scale,
                   cudaStream_t stream = 0);

// ---- lokr.cu: LoKr on a slice of an existing output, as ops.h's LokrRef (cpu_ops.h's lokr_*) --------
void lokr_forward(bf16* out, int out_stride, const bf16* inp, const float* w1, const float* w2, int N, int a, int b,
                  int c, int d, float scale);
void lokr_backward(bf16* dinp, float* dw1, float* dw2, const bf16* dout, int dout_stride, const bf16* inp,
                   const float* w1, const float* w2, int N, int a, int b, int c, int d, float scale);
void matmul_f32(float* C, const float* A, bool transA, const float* B, bool transB, int M, int N, int K, float beta);

// ---- quant.cu: frozen weights in fewer bits (ops/quant.h) -----------------------------------------
// out [n] bf16 = NF4 codes (two per byte, first in the high nibble) times each block of 64's absmax.
void nf4_dequantize(bf16* out, const uint8_t* codes, const float* absmax, long n, cudaStream_t stream = 0);
// out [rows, cols] bf16 = codes (F8_E4M3 or I8) times their row's scale.
void dequantize_rows(bf16* out, const void* codes, DType codes_dtype, const float* scale, long rows, long cols,
                     cudaStream_t stream = 0);

// ---- norm.cu ------------------------------------------------------------------------------------
void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, int N, int C, float eps = 1e-6f,
                       cudaStream_t stream = 0);
void layernorm_backward(bf16* dinp, const bf16* dout, const bf16* inp, const float* mean, const float* rstd,
                        int N, int C, cudaStream_t stream = 0);
// scale: bf16 [C] (frozen QK-norm weight); dscale fp32 [C].
void rmsnorm_forward(bf16* out, float* rrms, const bf16* inp, const bf16* scale, int N, int C, float eps,
                     cudaStream_t stream = 0);
void rmsnorm_backward(bf16* dinp, float* dscale, const bf16* dout, const bf16* inp, const bf16* scale,
                      const float* rrms, int N, int C, cudaStream_t stream = 0);

// ---- rope.cu ------------------------------------------------------------------------------------
// ids fp32 [P, n_axes] (device), axes_dim host array; cos_sin fp32 [P, D/2, 2] (device).
void rope_table(float* cos_sin, const float* ids, int P, const int* axes_dim, int n_axes, float theta,
                cudaStream_t stream = 0);
void rope_forward(bf16* out, const bf16* inp, const float* cos_sin, int B, int L, int H, int D,
                  cudaStream_t stream = 0);
void rope_backward(bf16* dinp, const bf16* dout, const float* cos_sin, int B, int L, int H, int D,
                   cudaStream_t stream = 0);

// ---- attention.cu: flash attention (online softmax, no L x L matrix) ----------------------------
// q, k, v [B, L, H, D] bf16; out [B, L, H*D] bf16; lse [B, H, L] fp32 (log2-sum-exp of the scaled
// scores, all the backward needs besides out). D in {32, 64, 128}.
void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int L, int H,
                       int D, cudaStream_t stream = 0);
// Forward kernel: 2 = register-resident mma.sync (default), 1 = WMMA through shared memory (kept
// as the simple reference version; both are checked by the parity tests). Backward likewise.
void attention_set_forward_version(int version);
void attention_set_backward_version(int version);
void attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out, const float* lse,
                        const bf16* q, const bf16* k, const bf16* v, int B, int L, int H, int D,
                        cudaStream_t stream = 0);

// ---- elementwise.cu -------------------------------------------------------------------------------
void gelu_forward(bf16* out, const bf16* inp, long n, cudaStream_t stream = 0);
void gelu_backward(bf16* dinp, const bf16* dout, const bf16* inp, long n, cudaStream_t stream = 0);
void silu_forward(bf16* out, const bf16* inp, long n, cudaStream_t stream = 0);
void silu_backward(bf16* dinp, const bf16* dout, const bf16* inp, long n, cudaStream_t stream = 0);
void tanh_forward(bf16* out, const bf16* inp, long n, cudaStream_t stream = 0);
void tanh_backward(bf16* dinp, const bf16* dout, const bf16* out, long n, cudaStream_t stream = 0);
void quick_gelu_forward(bf16* out, const bf16* inp, long n, cudaStream_t stream = 0);
void quick_gelu_backward(bf16* dinp, const bf16* dout, const bf16* inp, long n, cudaStream_t stream = 0);
void mul_forward(bf16* out, const bf16* a, const bf16* b, long n, cudaStream_t stream = 0);
void mul_backward(bf16* da, bf16* db, const bf16* dout, const bf16* a, const bf16* b, long n, cudaStream_t stream = 0);
// x [N, C] bf16, w and b bf16 [C] (b may be nullptr); dw, db fp32 [C].
void affine_forward(bf16* out, const bf16* x, const bf16* w, const bf16* b, int N, int C, cudaStream_t stream = 0);
void affine_backward(bf16* dx, float* dw, float* db, const bf16* dout, const bf16* x, const bf16* w, int N, int C,
                     cudaStream_t stream = 0);

void modulate_forward(bf16* out, const bf16* x, const bf16* shift, const bf16* scale, int mod_stride, int B, int L,
                      int C, cudaStream_t stream = 0);
void modulate_backward(bf16* dx, bf16* dshift, bf16* dscale, const bf16* dout, const bf16* x, const bf16* scale,
                       int mod_stride, int B, int L, int C, cudaStream_t stream = 0);
void gate_residual_forward(bf16* res, const bf16* y, const bf16* gate, int mod_stride, int B, int L, int C,
                           cudaStream_t stream = 0);
void gate_residual_backward(bf16* dy, bf16* dgate, const bf16* dres, const bf16* y, const bf16* gate,
                            int mod_stride, int B, int L, int C, cudaStream_t stream = 0);

// t fp32 [B] and dt fp32 [B]; emb bf16 [B, dim].
void timestep_embedding_forward(bf16* emb, const float* t, int B, int dim, float time_factor, float max_period,
                                cudaStream_t stream = 0);
void timestep_embedding_backward(float* dt, const bf16* demb, const float* t, int B, int dim, float time_factor,
                                 float max_period, cudaStream_t stream = 0);

void patchify_forward(bf16* out, const bf16* inp, int B, int C, int H, int W, int p, cudaStream_t stream = 0);
void patchify_backward(bf16* dinp, const bf16* dout, int B, int C, int H, int W, int p, cudaStream_t stream = 0);
void unpatchify_forward(bf16* out, const bf16* inp, int B, int C, int H, int W, int p, cudaStream_t stream = 0);
void unpatchify_backward(bf16* dinp, const bf16* dout, int B, int C, int H, int W, int p, cudaStream_t stream = 0);

// Mean squared error: the loss is reduced in fp32 on the device into *loss (device pointer);
// mse_forward_host synchronises and returns it.
void mse_forward(float* loss, const bf16* pred, const bf16* target, long n, cudaStream_t stream = 0);
float mse_forward_host(const bf16* pred, const bf16* target, long n, cudaStream_t stream = 0);
void mse_backward(bf16* dpred, const bf16* pred, const bf16* target, long n, float dloss, cudaStream_t stream = 0);

// mse_backward over `count` values of a larger mean: dpred += scale * 2 (pred - target) / n_total.
void mse_backward_scaled(bf16* dpred, const bf16* pred, const bf16* target, long count, long n_total, float scale);

// ---- attention_math.cu: attention of any head size and any mask (the score matrix materialised) ---
// probs fp32 [B, H, L, L] kept for the backward, as the CPU reference keeps them; mask.bias is a
// device pointer.
void attention_math_forward(bf16* out, float* probs, const bf16* q, const bf16* k, const bf16* v, int B, int L, int H,
                            int D, const AttentionMask& mask = {});
void attention_math_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const float* probs, const bf16* q,
                             const bf16* k, const bf16* v, int B, int L, int H, int D, const AttentionMask& mask = {});

// ---- tensor_kernels.cu: what the tape's generic ops need -----------------------------------------
void accumulate(bf16* acc, const bf16* x, long n);      // acc += x
void accumulate_f32(float* acc, const float* x, long n);
void add(bf16* out, const bf16* a, const bf16* b, long n);
// `rows` rows of width_bytes, from src (pitch src_pitch bytes) to dst (pitch dst_pitch): narrow / cat.
void copy_block(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width_bytes, size_t rows);
// dst[r*dst_ld + c] += src[r*src_ld + c], c < cols: the gradients of narrow / cat.
void add_block(bf16* dst, long dst_ld, const bf16* src, long src_ld, long rows, long cols);
void add_block_f32(float* dst, long dst_ld, const float* src, long src_ld, long rows, long cols);
// ids int32 [N] into table [V, C]; the backward scatter-adds into an fp32 table gradient.
void embedding_forward(bf16* out, const int* ids, const bf16* table, int N, int V, int C);
void embedding_backward(float* dtable, const bf16* dout, const int* ids, int N, int V, int C);
void mean_tokens_forward(bf16* out, const bf16* x, int B, int L, int C);
void mean_tokens_backward(bf16* dx, const bf16* dout, int B, int L, int C);
// out[b, s, r] = in[b, r, s] (accumulate: +=), in [B, R, S]: channels <-> tokens.
void transpose_inner(bf16* out, const bf16* in, int B, int R, int S, bool accumulate);
void gaussian_sample_forward(bf16* z, const bf16* mean, const bf16* logvar, const bf16* noise, long n);
void gaussian_sample_backward(bf16* dmean, bf16* dlogvar, const bf16* dz, const bf16* logvar, const bf16* noise, long n);
void gaussian_kl_forward(float* out, const bf16* mean, const bf16* logvar, long n);  // out: one fp32 on the device
void gaussian_kl_backward(bf16* dmean, bf16* dlogvar, const bf16* mean, const bf16* logvar, long n, float dkl);

// ---- image.cu: the autoencoder's ops (NCHW), as ops/cpu_image_ops.h -------------------------------
void conv2d_forward(bf16* out, const bf16* inp, const bf16* W, const bf16* bias, const Conv2dShape& s);
void conv2d_backward(bf16* dinp, float* dW, float* dbias, const bf16* dout, const bf16* inp, const bf16* W,
                     const Conv2dShape& s);
void groupnorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* gamma, const bf16* beta, int B,
                       int C, int HW, int G);
void groupnorm_backward(bf16* dinp, float* dgamma, float* dbeta, const bf16* dout, const bf16* inp, const float* mean,
                        const float* rstd, const bf16* gamma, int B, int C, int HW, int G);
void upsample_nearest2x_forward(bf16* out, const bf16* inp, int B, int C, int H, int W);
void upsample_nearest2x_backward(bf16* dinp, const bf16* dout, int B, int C, int H, int W);

// ---- update.cu: parameter updates (fp32), as ops/update_ops.h ------------------------------------
void adamw_update(float* p, const float* g, float* m, float* v, long n, Betas b, float eps, float decay,
                  float step_size, float bc2_sqrt);
double sum_squares(const float* x, long n);  // synchronises
void lion_update(float* p, const float* g, float* m, long n, float lr, Betas b, float decay);
void adamw8bit_update(float* p, const float* g, uint8_t* m_q, uint8_t* v_q, float* m_absmax, float* v_absmax,
                      const int64_t* block_start, const float* m_map, const float* v_map, long blocks, Betas b,
                      float eps, float decay, float step_size, float bc2_sqrt);
// The Prodigy and Adafactor passes return their sums (synchronise), in a fixed order per n.
void prodigy_accumulate(double* dot, double* s_abs, const float* p, const float* g, const float* p0, float* m, float* v,
                        float* s, long n, float beta1, float am, float beta2, float av, float beta3, float s_scale);
void prodigy_apply(float* p, const float* m, const float* v, long n, float dlr, float d_eps, float decay);
// b, c: beta2t and 1 - beta2t (beta1 and 1 - beta1 for apply).
double adafactor_factored(const float* g, float* row, float* col, float* u, int rows, int cols, float b, float c,
                          float eps1);
double adafactor_unfactored(const float* g, float* v, float* u, long n, float b, float c, float eps1);
void adafactor_apply(float* p, float* u, float* m, long n, float u_scale, float b1, float c1, float decay);
void scale(float* x, long n, float s);
void lerp(float* avg, const float* x, long n, float d);
void fill_uniform(bf16* p, long n, uint32_t seed, float bound, float offset);
void fill_uniform_f32(float* p, long n, uint32_t seed, float bound, float offset);

// Conversions used around the ops (weights in, results out).
void f32_to_bf16(bf16* out, const float* inp, long n, cudaStream_t stream = 0);
void bf16_to_f32(float* out, const bf16* inp, long n, cudaStream_t stream = 0);
// acc[i] (bf16) += add[i] (fp32)
void add_f32_into_bf16(bf16* acc, const float* add, long n, cudaStream_t stream = 0);

}  // namespace gpu
}  // namespace graft
