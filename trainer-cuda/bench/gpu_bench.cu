// graft-gpu-bench: what the CUDA backend achieves at FLUX.1-dev shapes, against the same work in
// plain PyTorch (bench/torch_bench.py) when python3 with a CUDA torch is present.
//   1. cuBLASLt GEMMs of the FLUX blocks (bf16, fp32 accumulate), TFLOP/s.
//   2. Flash attention forward and forward+backward, 24 heads x 128, TFLOP/s.
//   3. One FLUX double block and one single block, forward + backward, LoRA rank 16 on every
//      linear layer except the modulation, frozen bf16 weights (random: values do not change the
//      time): ms, model TFLOP/s, MFU against 989 TFLOP/s dense bf16 (H100/H200 SXM), peak VRAM;
//      and the full-depth model (19 double + 38 single blocks) extrapolated from those.
//   4. The whole FLUX.1-dev training step through the trainer's engine (models/flux.h on cuda:0, the
//      code graft-trainer runs), full depth, random weights made on the device: ms/step, model
//      TFLOP/s, MFU, peak VRAM, with and without gradient checkpointing; PyTorch's same step
//      (bench/torch_bench.py) for the ratio.
// Token counts: 512 px = 1024 image + 512 text tokens, 1024 px = 4096 + 512. Batch 1.
// Times: CUDA events around each repetition, 3 warm-ups, median of 10.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cuda_runtime.h"
#include "core/rng.h"
#include "cublaslt.h"
#include "cuda_common.h"
#include "models/flux.h"
#include "models/llm.h"
#include "models/zimage.h"
#include "ops/ops.h"
#include "ops_gpu.h"
#include "train/lora.h"
#include "train/optim.h"

using namespace graft;
using namespace graft::gpu;

namespace {

const int C = 3072, HEADS = 24, HD = 128, MLP = 12288, RANK = 16;
const double PEAK_TFLOPS = 989.0;  // dense bf16, H100/H200 SXM datasheet
const int TOKENS[2][2] = {{1024, 512}, {4096, 512}};

std::map<std::string, double> g_ours;  // key -> ms (same keys as torch_bench.py)

float median_ms(const std::function<void()>& fn, int warmup = 3, int iters = 10) {
  for (int i = 0; i < warmup; i++) fn();
  cudaCheck(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  cudaCheck(cudaEventCreate(&a));
  cudaCheck(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < iters; i++) {
    cudaCheck(cudaEventRecord(a));
    fn();
    cudaCheck(cudaEventRecord(b));
    cudaCheck(cudaEventSynchronize(b));
    float ms = 0;
    cudaCheck(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaCheck(cudaEventDestroy(a));
  cudaCheck(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Every device buffer of a benchmark section, freed together.
struct Arena {
  std::vector<void*> ptrs;
  template <typename T>
  T* alloc(size_t n) {
    T* p = device_alloc_n<T>(n ? n : 1, "benchmark buffer");
    ptrs.push_back(p);
    return p;
  }
  ~Arena() {
    cudaDeviceSynchronize();
    for (void* p : ptrs) cudaFree(p);
  }
};

__global__ void fill_kernel(bf16* p, long n, uint32_t seed, float scale, float offset) {
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
    p[i] = __float2bfloat16(offset + scale * ((h & 0xffffff) / 16777216.0f * 2.0f - 1.0f));
  }
}
__global__ void fill_f32_kernel(float* p, long n, uint32_t seed, float scale) {
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
    p[i] = scale * ((h & 0xffffff) / 16777216.0f * 2.0f - 1.0f);
  }
}
uint32_t g_seed = 1;
bf16* rand_bf16(Arena& a, size_t n, float scale = 1.0f, float offset = 0.0f) {
  bf16* p = a.alloc<bf16>(n);
  fill_kernel<<<1024, 256>>>(p, (long)n, g_seed++ * 0x9E3779B9u, scale, offset);
  cudaCheckLaunch();
  return p;
}
float* rand_f32(Arena& a, size_t n, float scale) {
  float* p = a.alloc<float>(n);
  fill_f32_kernel<<<1024, 256>>>(p, (long)n, g_seed++ * 0x9E3779B9u, scale);
  cudaCheckLaunch();
  return p;
}

// ---- 1. GEMMs ------------------------------------------------------------------------------------------
void bench_gemms() {
  struct Shape { const char* name; int in, out; };
  const Shape shapes[] = {{"qkv", C, 3 * C}, {"proj", C, C}, {"mlp0", C, MLP}, {"mlp2", MLP, C},
                          {"single_l1", C, 3 * C + MLP}, {"single_l2", C + MLP, C}};
  std::printf("\n== cuBLASLt GEMM, bf16 in/out, fp32 accumulate: out[T,out] = x[T,in] @ W[out,in]^T ==\n");
  std::printf("%-10s %6s %6s %6s %9s %9s\n", "layer", "T", "in", "out", "ms", "TFLOP/s");
  for (auto& tk : TOKENS) {
    int T = tk[0] + tk[1];
    for (auto& s : shapes) {
      Arena a;
      bf16 *x = rand_bf16(a, (size_t)T * s.in), *W = rand_bf16(a, (size_t)s.out * s.in, 0.02f);
      bf16* y = a.alloc<bf16>((size_t)T * s.out);
      float ms = median_ms([&] { gpu::linear_forward(y, x, W, nullptr, T, s.in, s.out); });
      double tf = 2.0 * T * s.in * s.out / (ms * 1e9);
      std::printf("%-10s %6d %6d %6d %9.3f %9.1f\n", s.name, T, s.in, s.out, ms, tf);
      g_ours[std::string("gemm:") + s.name + ":" + std::to_string(T)] = ms;
    }
  }
}

// ---- 2. attention --------------------------------------------------------------------------------------
void bench_attention() {
  std::printf("\n== flash attention, B=1, %d heads x %d, bf16: forward v2 (mma.sync, registers) and v1 (WMMA, "
              "shared memory); backward v2 (mma.sync, registers) and v1 (WMMA) ==\n", HEADS, HD);
  std::printf("%6s %9s %8s %10s %8s %12s %8s %9s %13s %9s\n", "L", "fwd ms", "TFLOP/s", "fwd v1 ms", "TFLOP/s",
              "fwd+bwd ms", "TFLOP/s", "bwd ms", "fwd+bwd v1bwd", "bwd v1 ms");
  for (auto& tk : TOKENS) {
    int L = tk[0] + tk[1];
    Arena a;
    size_t n = (size_t)L * HEADS * HD;
    bf16 *q = rand_bf16(a, n), *k = rand_bf16(a, n), *v = rand_bf16(a, n), *g = rand_bf16(a, n);
    bf16 *o = a.alloc<bf16>(n), *dq = a.alloc<bf16>(n), *dk = a.alloc<bf16>(n), *dv = a.alloc<bf16>(n);
    float* lse = a.alloc<float>((size_t)HEADS * L);
    gpu::attention_set_forward_version(1);
    float fwd1 = median_ms([&] { gpu::attention_forward(o, lse, q, k, v, 1, L, HEADS, HD); });
    gpu::attention_set_forward_version(2);
    float fwd = median_ms([&] { gpu::attention_forward(o, lse, q, k, v, 1, L, HEADS, HD); });
    auto fwd_bwd = [&] {
      gpu::attention_forward(o, lse, q, k, v, 1, L, HEADS, HD);
      gpu::attention_backward(dq, dk, dv, g, o, lse, q, k, v, 1, L, HEADS, HD);
    };
    gpu::attention_set_backward_version(1);
    float fb1 = median_ms(fwd_bwd);
    gpu::attention_set_backward_version(2);
    float fb = median_ms(fwd_bwd);
    double f_fwd = 4.0 * L * (double)L * HD * HEADS;  // QK^T and PV
    // fwd+bwd counted as FlashAttention reports it: 2.5x the forward (the backward's 5 products)
    std::printf("%6d %9.3f %8.1f %10.3f %8.1f %12.3f %8.1f %9.3f %13.3f %9.3f\n", L, fwd, f_fwd / (fwd * 1e9), fwd1,
                f_fwd / (fwd1 * 1e9), fb, 3.5 * f_fwd / (fb * 1e9), fb - fwd, fb1, fb1 - fwd);
    g_ours["attn_fwd:" + std::to_string(L)] = fwd;
    g_ours["attn_fwdbwd:" + std::to_string(L)] = fb;
  }
}

// ---- 3. FLUX blocks ------------------------------------------------------------------------------------
struct Lin { bf16 *W, *b; int in, out; };
struct Adapter { float *A, *B, *dA, *dB; bf16* h; int in, out; };
const float LORA_SCALE = 1.0f;  // alpha 16 / rank 16

Lin make_lin(Arena& a, int in, int out) { return {rand_bf16(a, (size_t)in * out, 0.02f), rand_bf16(a, out, 0.02f), in, out}; }
// A linear layer that is a row block of a fused weight (single block's linear1).
Lin sub_lin(const Lin& l, int row0, int rows) { return {l.W + (size_t)row0 * l.in, l.b + row0, l.in, rows}; }
Adapter make_adapter(Arena& a, int in, int out, int L) {
  Adapter ad;
  ad.A = rand_f32(a, (size_t)RANK * in, 0.02f);
  ad.B = rand_f32(a, (size_t)out * RANK, 0.01f);
  ad.dA = a.alloc<float>((size_t)RANK * in);
  ad.dB = a.alloc<float>((size_t)out * RANK);
  ad.h = a.alloc<bf16>((size_t)L * RANK);
  ad.in = in;
  ad.out = out;
  return ad;
}

// y[L, out] (row stride ldy) = x @ W^T + b + LoRA(x)
void lin_fwd(bf16* y, int ldy, const bf16* x, const Lin& l, Adapter* ad, int L) {
  gemm(y, GemmOut::BF16, ldy, x, l.in, false, l.W, l.in, true, L, l.out, l.in, 1.0f, 0.0f, l.b);
  if (ad) gpu::lora_forward(y, ldy, ad->h, x, ad->A, ad->B, L, l.in, l.out, RANK, LORA_SCALE);
}
// dx += dy @ W + LoRA's share; LoRA dA, dB += ...
void lin_bwd(bf16* dx, const bf16* dy, int lddy, const bf16* x, const Lin& l, Adapter* ad, int L) {
  gemm(dx, GemmOut::BF16, l.in, dy, lddy, false, l.W, l.in, false, L, l.in, l.out, 1.0f, 1.0f, nullptr);
  if (ad) gpu::lora_backward(dx, ad->dA, ad->dB, dy, lddy, ad->h, x, ad->A, ad->B, L, l.in, l.out, RANK, LORA_SCALE);
}

double lin_flops(int L, int in, int out, bool lora) {  // forward + backward (frozen W: no dW)
  double f = 2.0 * 2.0 * L * (double)in * out;
  if (lora) f += 6.0 * L * (double)RANK * (in + out);
  return f;
}
double attn_flops(int L) { return 12.0 * L * (double)L * HD * HEADS; }  // model FLOPs: fwd 4, bwd 8

// The shared attention core of both blocks: QK-norm, RoPE, flash attention, forward and backward.
struct AttnCore {
  int L;
  bf16 *q, *k, *v, *qn, *kn, *qr, *kr, *att;
  float *rq, *rk, *lse, *pe;
  bf16 *dq, *dk, *dv, *dqn, *dkn, *dqr, *dkr, *datt;
  AttnCore(Arena& a, int L_) : L(L_) {
    size_t n = (size_t)L * C;
    for (bf16** p : {&q, &k, &v, &qn, &kn, &qr, &kr, &att, &dq, &dk, &dv, &dqn, &dkn, &dqr, &dkr, &datt})
      *p = a.alloc<bf16>(n);
    rq = a.alloc<float>((size_t)L * HEADS);
    rk = a.alloc<float>((size_t)L * HEADS);
    lse = a.alloc<float>((size_t)L * HEADS);
    // RoPE table from FLUX-style ids (text at 0, image on a grid)
    std::vector<float> ids((size_t)L * 3, 0.0f);
    for (int i = 0; i < L; i++) { ids[i * 3 + 1] = (float)(i / 64); ids[i * 3 + 2] = (float)(i % 64); }
    float* dids = a.alloc<float>(ids.size());
    cudaCheck(cudaMemcpy(dids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    pe = a.alloc<float>((size_t)L * HD);
    const int axes[3] = {16, 56, 56};
    gpu::rope_table(pe, dids, L, axes, 3, 10000.0f);
  }
  // q, k, v filled (rows of every stream); `norm` runs each stream's QK-norm
  void forward(const std::function<void()>& norm) {
    norm();
    gpu::rope_forward(qr, qn, pe, 1, L, HEADS, HD);
    gpu::rope_forward(kr, kn, pe, 1, L, HEADS, HD);
    gpu::attention_forward(att, lse, qr, kr, v, 1, L, HEADS, HD);
  }
  // datt filled; leaves dq, dk, dv (zeroed first by the caller) for the qkv projections
  void backward(const std::function<void()>& norm_bwd) {
    gpu::attention_backward(dqr, dkr, dv, datt, att, lse, qr, kr, v, 1, L, HEADS, HD);
    gpu::rope_backward(dqn, dqr, pe, 1, L, HEADS, HD);
    gpu::rope_backward(dkn, dkr, pe, 1, L, HEADS, HD);
    norm_bwd();
  }
  std::vector<bf16*> grads() { return {dq, dk, dv, dqn, dkn, dqr, dkr, datt}; }
};

void zero(const std::vector<std::pair<void*, size_t>>& bufs) {
  for (auto& b : bufs) cudaCheck(cudaMemsetAsync(b.first, 0, b.second));
}

struct BlockResult { double ms, tflops, peak_mib; };

BlockResult print_block(const char* name, int T, float ms, double flops, size_t peak) {
  double tf = flops / (ms * 1e9);
  std::printf("%-7s %6d %9.2f %9.1f %7.1f%% %10.0f\n", name, T, ms, tf, 100.0 * tf / PEAK_TFLOPS, peak / 1048576.0);
  return {ms, tf, peak / 1048576.0};
}

// One double-stream block: img and txt each with their own weights, joint attention over [txt; img].
BlockResult bench_double(int Li, int Lt, size_t base_mem) {
  const int L = Li + Lt;
  Arena a;
  struct Stream {
    int L, off;
    Lin mod, q, k, v, proj, mlp0, mlp2;
    bf16 *qs, *ks;
    Adapter aq, ak, av, aproj, amlp0, amlp2;
    bf16 *x, *modv, *ln1, *xm1, *proj_o, *xmid, *ln2, *xm2, *h, *g, *m, *xout;
    float *mean1, *rstd1, *mean2, *rstd2;
    bf16 *dxout, *dx, *dmod, *dln1, *dxm1, *dproj, *dxmid, *dln2, *dxm2, *dh, *dg, *dm, *dvs;
  } st[2];
  bf16* vec = rand_bf16(a, C);
  bf16* vs = a.alloc<bf16>(C);
  bf16* dvec = a.alloc<bf16>(C);
  AttnCore core(a, L);
  std::vector<std::pair<void*, size_t>> zeros;
  for (int s = 0; s < 2; s++) {
    Stream& S = st[s];
    S.L = s == 0 ? Lt : Li;
    S.off = s == 0 ? 0 : Lt;  // joint sequence: text first, as FLUX
    S.mod = make_lin(a, C, 6 * C);
    S.q = make_lin(a, C, C); S.k = make_lin(a, C, C); S.v = make_lin(a, C, C);
    S.proj = make_lin(a, C, C); S.mlp0 = make_lin(a, C, MLP); S.mlp2 = make_lin(a, MLP, C);
    S.qs = rand_bf16(a, HD, 0.2f, 1.0f); S.ks = rand_bf16(a, HD, 0.2f, 1.0f);
    S.aq = make_adapter(a, C, C, S.L); S.ak = make_adapter(a, C, C, S.L); S.av = make_adapter(a, C, C, S.L);
    S.aproj = make_adapter(a, C, C, S.L); S.amlp0 = make_adapter(a, C, MLP, S.L); S.amlp2 = make_adapter(a, MLP, C, S.L);
    size_t n = (size_t)S.L * C, nm = (size_t)S.L * MLP;
    S.x = rand_bf16(a, n);
    S.dxout = rand_bf16(a, n);
    S.modv = a.alloc<bf16>(6 * C);
    for (bf16** p : {&S.ln1, &S.xm1, &S.proj_o, &S.xmid, &S.ln2, &S.xm2, &S.m, &S.xout}) *p = a.alloc<bf16>(n);
    S.h = a.alloc<bf16>(nm); S.g = a.alloc<bf16>(nm);
    for (float** p : {&S.mean1, &S.rstd1, &S.mean2, &S.rstd2}) *p = a.alloc<float>(S.L);
    for (bf16** p : {&S.dx, &S.dln1, &S.dxm1, &S.dproj, &S.dxmid, &S.dln2, &S.dxm2, &S.dm}) {
      *p = a.alloc<bf16>(n);
      zeros.push_back({*p, n * 2});
    }
    S.dh = a.alloc<bf16>(nm); S.dg = a.alloc<bf16>(nm);
    zeros.push_back({S.dh, nm * 2}); zeros.push_back({S.dg, nm * 2});
    S.dmod = a.alloc<bf16>(6 * C); S.dvs = a.alloc<bf16>(C);
    zeros.push_back({S.dmod, 6 * C * 2}); zeros.push_back({S.dvs, C * 2});
    for (Adapter* ad : {&S.aq, &S.ak, &S.av, &S.aproj, &S.amlp0, &S.amlp2}) {
      zeros.push_back({ad->dA, (size_t)RANK * ad->in * 4});
      zeros.push_back({ad->dB, (size_t)RANK * ad->out * 4});
    }
  }
  for (bf16* p : core.grads()) zeros.push_back({p, (size_t)L * C * 2});
  zeros.push_back({dvec, C * 2});

  auto step = [&] {
    // forward
    gpu::silu_forward(vs, vec, C);
    for (Stream& S : st) {
      lin_fwd(S.modv, 6 * C, vs, S.mod, nullptr, 1);
      gpu::layernorm_forward(S.ln1, S.mean1, S.rstd1, S.x, S.L, C);
      gpu::modulate_forward(S.xm1, S.ln1, S.modv, S.modv + C, 6 * C, 1, S.L, C);
      lin_fwd(core.q + (size_t)S.off * C, C, S.xm1, S.q, &S.aq, S.L);
      lin_fwd(core.k + (size_t)S.off * C, C, S.xm1, S.k, &S.ak, S.L);
      lin_fwd(core.v + (size_t)S.off * C, C, S.xm1, S.v, &S.av, S.L);
    }
    core.forward([&] {
      for (Stream& S : st) {
        size_t o = (size_t)S.off * C;
        gpu::rmsnorm_forward(core.qn + o, core.rq + (size_t)S.off * HEADS, core.q + o, S.qs, S.L * HEADS, HD, 1e-6f);
        gpu::rmsnorm_forward(core.kn + o, core.rk + (size_t)S.off * HEADS, core.k + o, S.ks, S.L * HEADS, HD, 1e-6f);
      }
    });
    for (Stream& S : st) {
      size_t n = (size_t)S.L * C;
      lin_fwd(S.proj_o, C, core.att + (size_t)S.off * C, S.proj, &S.aproj, S.L);
      cudaCheck(cudaMemcpyAsync(S.xmid, S.x, n * 2, cudaMemcpyDeviceToDevice));
      gpu::gate_residual_forward(S.xmid, S.proj_o, S.modv + 2 * C, 6 * C, 1, S.L, C);
      gpu::layernorm_forward(S.ln2, S.mean2, S.rstd2, S.xmid, S.L, C);
      gpu::modulate_forward(S.xm2, S.ln2, S.modv + 3 * C, S.modv + 4 * C, 6 * C, 1, S.L, C);
      lin_fwd(S.h, MLP, S.xm2, S.mlp0, &S.amlp0, S.L);
      gpu::gelu_forward(S.g, S.h, (long)S.L * MLP);
      lin_fwd(S.m, C, S.g, S.mlp2, &S.amlp2, S.L);
      cudaCheck(cudaMemcpyAsync(S.xout, S.xmid, n * 2, cudaMemcpyDeviceToDevice));
      gpu::gate_residual_forward(S.xout, S.m, S.modv + 5 * C, 6 * C, 1, S.L, C);
    }
    // backward
    zero(zeros);
    for (Stream& S : st) {
      size_t n = (size_t)S.L * C;
      cudaCheck(cudaMemcpyAsync(S.dxmid, S.dxout, n * 2, cudaMemcpyDeviceToDevice));  // residual
      gpu::gate_residual_backward(S.dm, S.dmod + 5 * C, S.dxout, S.m, S.modv + 5 * C, 6 * C, 1, S.L, C);
      lin_bwd(S.dg, S.dm, C, S.g, S.mlp2, &S.amlp2, S.L);
      gpu::gelu_backward(S.dh, S.dg, S.h, (long)S.L * MLP);
      lin_bwd(S.dxm2, S.dh, MLP, S.xm2, S.mlp0, &S.amlp0, S.L);
      gpu::modulate_backward(S.dln2, S.dmod + 3 * C, S.dmod + 4 * C, S.dxm2, S.ln2, S.modv + 4 * C, 6 * C, 1, S.L, C);
      gpu::layernorm_backward(S.dxmid, S.dln2, S.xmid, S.mean2, S.rstd2, S.L, C);
      cudaCheck(cudaMemcpyAsync(S.dx, S.dxmid, n * 2, cudaMemcpyDeviceToDevice));  // residual
      gpu::gate_residual_backward(S.dproj, S.dmod + 2 * C, S.dxmid, S.proj_o, S.modv + 2 * C, 6 * C, 1, S.L, C);
      lin_bwd(core.datt + (size_t)S.off * C, S.dproj, C, core.att + (size_t)S.off * C, S.proj, &S.aproj, S.L);
    }
    core.backward([&] {
      for (Stream& S : st) {
        size_t o = (size_t)S.off * C;
        gpu::rmsnorm_backward(core.dq + o, nullptr, core.dqn + o, core.q + o, S.qs, core.rq + (size_t)S.off * HEADS,
                              S.L * HEADS, HD);
        gpu::rmsnorm_backward(core.dk + o, nullptr, core.dkn + o, core.k + o, S.ks, core.rk + (size_t)S.off * HEADS,
                              S.L * HEADS, HD);
      }
    });
    for (Stream& S : st) {
      size_t o = (size_t)S.off * C;
      lin_bwd(S.dxm1, core.dq + o, C, S.xm1, S.q, &S.aq, S.L);
      lin_bwd(S.dxm1, core.dk + o, C, S.xm1, S.k, &S.ak, S.L);
      lin_bwd(S.dxm1, core.dv + o, C, S.xm1, S.v, &S.av, S.L);
      gpu::modulate_backward(S.dln1, S.dmod, S.dmod + C, S.dxm1, S.ln1, S.modv + C, 6 * C, 1, S.L, C);
      gpu::layernorm_backward(S.dx, S.dln1, S.x, S.mean1, S.rstd1, S.L, C);
      lin_bwd(S.dvs, S.dmod, 6 * C, vs, S.mod, nullptr, 1);
    }
    gpu::silu_backward(dvec, st[0].dvs, vec, C);
    gpu::silu_backward(dvec, st[1].dvs, vec, C);
  };
  float ms = median_ms(step);
  size_t peak = mem_used_now() - base_mem;
  double flops = 0;
  for (Stream& S : st)
    flops += 4 * lin_flops(S.L, C, C, true) + lin_flops(S.L, C, MLP, true) + lin_flops(S.L, MLP, C, true) +
             lin_flops(1, C, 6 * C, false);
  flops += attn_flops(L);
  g_ours["double:" + std::to_string(L)] = ms;
  return print_block("double", L, ms, flops, peak);
}

// One single-stream block over the joint sequence: linear1 (qkv + MLP in), attention, linear2 over
// [attention, gelu(MLP)].
BlockResult bench_single(int L, size_t base_mem) {
  Arena a;
  Lin mod = make_lin(a, C, 3 * C), l1 = make_lin(a, C, 3 * C + MLP), l2 = make_lin(a, C + MLP, C);
  Lin lq = sub_lin(l1, 0, C), lk = sub_lin(l1, C, C), lv = sub_lin(l1, 2 * C, C), lm = sub_lin(l1, 3 * C, MLP);
  Adapter aq = make_adapter(a, C, C, L), ak = make_adapter(a, C, C, L), av = make_adapter(a, C, C, L);
  Adapter am = make_adapter(a, C, MLP, L), a2 = make_adapter(a, C + MLP, C, L);
  bf16 *qs = rand_bf16(a, HD, 0.2f, 1.0f), *ks = rand_bf16(a, HD, 0.2f, 1.0f);
  bf16 *vec = rand_bf16(a, C), *vs = a.alloc<bf16>(C), *modv = a.alloc<bf16>(3 * C);
  size_t n = (size_t)L * C, nm = (size_t)L * MLP, nc = (size_t)L * (C + MLP);
  bf16 *x = rand_bf16(a, n), *dxout = rand_bf16(a, n);
  bf16 *ln = a.alloc<bf16>(n), *xm = a.alloc<bf16>(n), *hm = a.alloc<bf16>(nm), *g = a.alloc<bf16>(nm);
  bf16 *cat = a.alloc<bf16>(nc), *o = a.alloc<bf16>(n), *xout = a.alloc<bf16>(n);
  float *mean = a.alloc<float>(L), *rstd = a.alloc<float>(L);
  AttnCore core(a, L);
  bf16 *dx = a.alloc<bf16>(n), *dln = a.alloc<bf16>(n), *dxm = a.alloc<bf16>(n), *dhm = a.alloc<bf16>(nm);
  bf16 *dg = a.alloc<bf16>(nm), *dcat = a.alloc<bf16>(nc), *do_ = a.alloc<bf16>(n), *dmod = a.alloc<bf16>(3 * C);
  bf16 *dvs = a.alloc<bf16>(C), *dvec = a.alloc<bf16>(C);
  std::vector<std::pair<void*, size_t>> zeros = {{dln, n * 2}, {dxm, n * 2}, {dhm, nm * 2}, {dcat, nc * 2},
                                                  {do_, n * 2}, {dmod, 3 * C * 2}, {dvs, C * 2}, {dvec, C * 2}};
  for (bf16* p : core.grads()) zeros.push_back({p, n * 2});
  for (Adapter* ad : {&aq, &ak, &av, &am, &a2}) {
    zeros.push_back({ad->dA, (size_t)RANK * ad->in * 4});
    zeros.push_back({ad->dB, (size_t)RANK * ad->out * 4});
  }
  const size_t pitch_cat = (size_t)(C + MLP) * 2;

  auto step = [&] {
    gpu::silu_forward(vs, vec, C);
    lin_fwd(modv, 3 * C, vs, mod, nullptr, 1);
    gpu::layernorm_forward(ln, mean, rstd, x, L, C);
    gpu::modulate_forward(xm, ln, modv, modv + C, 3 * C, 1, L, C);
    lin_fwd(core.q, C, xm, lq, &aq, L);
    lin_fwd(core.k, C, xm, lk, &ak, L);
    lin_fwd(core.v, C, xm, lv, &av, L);
    lin_fwd(hm, MLP, xm, lm, &am, L);
    core.forward([&] {
      gpu::rmsnorm_forward(core.qn, core.rq, core.q, qs, L * HEADS, HD, 1e-6f);
      gpu::rmsnorm_forward(core.kn, core.rk, core.k, ks, L * HEADS, HD, 1e-6f);
    });
    gpu::gelu_forward(g, hm, (long)nm);
    cudaCheck(cudaMemcpy2DAsync(cat, pitch_cat, core.att, C * 2, C * 2, L, cudaMemcpyDeviceToDevice));
    cudaCheck(cudaMemcpy2DAsync(cat + C, pitch_cat, g, MLP * 2, MLP * 2, L, cudaMemcpyDeviceToDevice));
    lin_fwd(o, C, cat, l2, &a2, L);
    cudaCheck(cudaMemcpyAsync(xout, x, n * 2, cudaMemcpyDeviceToDevice));
    gpu::gate_residual_forward(xout, o, modv + 2 * C, 3 * C, 1, L, C);
    // backward
    zero(zeros);
    cudaCheck(cudaMemcpyAsync(dx, dxout, n * 2, cudaMemcpyDeviceToDevice));  // residual
    gpu::gate_residual_backward(do_, dmod + 2 * C, dxout, o, modv + 2 * C, 3 * C, 1, L, C);
    lin_bwd(dcat, do_, C, cat, l2, &a2, L);
    cudaCheck(cudaMemcpy2DAsync(core.datt, C * 2, dcat, pitch_cat, C * 2, L, cudaMemcpyDeviceToDevice));
    cudaCheck(cudaMemcpy2DAsync(dg, MLP * 2, dcat + C, pitch_cat, MLP * 2, L, cudaMemcpyDeviceToDevice));
    gpu::gelu_backward(dhm, dg, hm, (long)nm);
    core.backward([&] {
      gpu::rmsnorm_backward(core.dq, nullptr, core.dqn, core.q, qs, core.rq, L * HEADS, HD);
      gpu::rmsnorm_backward(core.dk, nullptr, core.dkn, core.k, ks, core.rk, L * HEADS, HD);
    });
    lin_bwd(dxm, core.dq, C, xm, lq, &aq, L);
    lin_bwd(dxm, core.dk, C, xm, lk, &ak, L);
    lin_bwd(dxm, core.dv, C, xm, lv, &av, L);
    lin_bwd(dxm, dhm, MLP, xm, lm, &am, L);
    gpu::modulate_backward(dln, dmod, dmod + C, dxm, ln, modv + C, 3 * C, 1, L, C);
    gpu::layernorm_backward(dx, dln, x, mean, rstd, L, C);
    lin_bwd(dvs, dmod, 3 * C, vs, mod, nullptr, 1);
    gpu::silu_backward(dvec, dvs, vec, C);
  };
  float ms = median_ms(step);
  size_t peak = mem_used_now() - base_mem;
  double flops = 3 * lin_flops(L, C, C, true) + lin_flops(L, C, MLP, true) + lin_flops(L, C + MLP, C, true) +
                 lin_flops(1, C, 3 * C, false) + attn_flops(L);
  g_ours["single:" + std::to_string(L)] = ms;
  return print_block("single", L, ms, flops, peak);
}

// ---- 4. the whole training step through the trainer's CUDA backend ----------------------------------------
// Model FLOPs of one step as the engine does it: every linear forward; the input gradient of every
// linear the backward passes through (frozen weights: no weight gradients; modulation layers and
// embedders need none); LoRA forward 2 N r (in + out) and backward 4 N r (in + out); attention
// forward 4 B L^2 C and backward 8 B L^2 C (recomputation not counted). Elementwise work ignored.
double flux_step_flops(FluxTransformer& m, int B, int Li, int Lt) {
  const FluxConfig& c = m.cfg;
  const double L = Li + Lt, NI = (double)B * Li, NT = (double)B * Lt, NJ = (double)B * L;
  double f = 0;
  auto lin = [&](const Linear& l, double N, bool input_grad) {
    f += (input_grad ? 4.0 : 2.0) * N * l.in * l.out;
    for (const AttachedAdapter& ad : l.adapters) f += 6.0 * N * ad.mats[0].size(0) * (l.in + ad.rows);  // LoRA: A [rank, in]
  };
  for (const Linear* l : {&m.time_in0, &m.time_in1, &m.vector_in0, &m.vector_in1, &m.final_mod}) lin(*l, B, false);
  if (c.guidance_embed) {
    lin(m.guidance_in0, B, false);
    lin(m.guidance_in1, B, false);
  }
  lin(m.img_in, NI, false);
  lin(m.txt_in, NT, false);
  lin(m.final_linear, NI, true);
  for (auto& d : m.doubles) {
    for (const FluxTransformer::Stream* s : {&d.img, &d.txt}) {
      double N = s == &d.img ? NI : NT;
      lin(s->mod, B, false);
      for (const Linear* l : {&s->qkv, &s->proj, &s->mlp0, &s->mlp2}) lin(*l, N, true);
    }
    f += 12.0 * B * L * L * c.hidden;
  }
  for (auto& s : m.singles) {
    lin(s.mod, B, false);
    lin(s.linear1, NJ, true);
    lin(s.linear2, NJ, true);
    f += 12.0 * B * L * L * c.hidden;
  }
  return f;
}

FluxInputs random_flux_inputs(const FluxConfig& c, int gh, int gw, int Lt) {
  FluxInputs in;
  in.B = 1;
  in.L_img = gh * gw;
  in.L_txt = Lt;
  Rng rng(7, 1);
  auto fill = [&](std::vector<float>& v, size_t n) {
    v.resize(n);
    for (float& x : v) x = rng.normal();
  };
  fill(in.img, (size_t)in.L_img * c.in_channels);
  fill(in.txt, (size_t)Lt * c.context_dim);
  fill(in.y, c.vec_dim);
  in.img_ids.resize((size_t)in.L_img * 3);
  flux_img_ids(in.img_ids.data(), 1, gh, gw);
  in.txt_ids.assign((size_t)Lt * 3, 0.0f);
  in.timesteps = {0.5f};
  in.guidance = {3.5f};
  return in;
}

// The median of 5 timed runs of `step` after 2 warm-up runs, the device's peak memory counted from the
// first timed one.
double median_step_ms(const std::function<void()>& step) {
  for (int i = 0; i < 2; i++) step();
  cuda::synchronize();
  cuda::reset_peak();
  std::vector<double> t;
  for (int i = 0; i < 5; i++) {
    auto t0 = std::chrono::steady_clock::now();
    step();
    cuda::synchronize();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// One LoRA training step of `model` on `in` as the trainer takes it: forward, MSE against `target`,
// backward, gradient clipping and the AdamW update on the device.
std::function<void()> training_step(Denoiser& model, const FluxInputs& in, const std::vector<float>& target, LoraSet& lora,
                                    AdamW& opt) {
  return [&model, &in, &target, &lora, &opt] {
    lora.zero_grad();
    Tensor out = model.forward(in);
    const Tensor t = from_vector(target, out.shape, model.device, out.dtype);
    backward(out, mse_grad(out, t, 1.0f));
    clip_grad_norm({lora.grads}, 1.0f);
    opt.step(lora.params, lora.grads, 1e-4f);
  };
}

// `quantize`: the frozen weights in that format (model.quantize); then only the 1024 px step with
// gradient checkpointing is timed, with and without layer offloading.
void bench_flux_step(int n_double, int n_single, WeightFormat quantize = WeightFormat::dense) {
  const bool full = n_double == 19 && n_single == 38;
  std::printf("\n== the FLUX.1-dev training step through graft-trainer's engine on cuda:0: %d double + %d single blocks%s, "
              "LoRA rank %d (alpha %d) on the toolkit's targets, batch 1, weights %s ==\n",
              n_double, n_single, full ? " (full depth)" : " (reduced depth)", RANK, RANK,
              quantize == WeightFormat::dense ? "bf16" : weight_format_name(quantize));
  std::printf("step = inputs to the device, forward, backward, gradient clipping and the AdamW update on the device "
              "(only the loss and the gradient norm come back); MFU vs %.0f TFLOP/s\n", PEAK_TFLOPS);
  const Device dev = Device::cuda(0);
  FluxConfig cfg = flux1_dev_config(n_double, n_single);
  FluxTransformer model = FluxTransformer::random(cfg, dev, 1, quantize);
  const double weights_mib = cuda::allocated_bytes() / 1048576.0;
  LoraSet lora = lora_create(flux_lora_targets(cfg, false), RANK, (float)RANK, 1);
  {
    Rng rng(3, 3);  // non-zero B (the time does not depend on it)
    std::vector<float> p = lora.host_params();
    for (const LoraAdapter& ad : lora.adapters) {
      const AdapterMatrix& b = ad.mats[1];  // lora_B
      for (size_t k = 0; k < (size_t)b.rows * b.cols; k++) p[b.offset + k] = 0.01f * rng.normal();
    }
    lora.set_params(p);
  }
  lora.to(dev);
  lora_attach(model.linears(), &lora);
  AdamW opt;
  std::printf("%-7s %-13s %7s %10s %9s %7s %11s %11s\n", "res", "checkpointing", "tokens", "ms/step", "TFLOP/s", "MFU",
              "VRAM MiB", "weights");
  // The last pass: every block's weights in pinned host memory, streamed in ahead of use (layer
  // offloading), at the largest size with checkpointing, against the same step without.
  for (int pass = 0; pass < 3; ++pass)
    for (auto& tk : TOKENS) {
      const bool ckpt = pass > 0, offloaded = pass == 2;
      const int Li = tk[0], Lt = tk[1], grid = Li == 1024 ? 32 : 64;
      if (offloaded && Li == 1024) continue;
      if (quantize != WeightFormat::dense && (!ckpt || Li == 1024)) continue;
      if (offloaded && model.block_count() > 0 && !model.streamer)
        std::printf("(offloading every block: %.0f MiB of weights to pinned host memory)\n", model.offload_blocks(1.0) / 1048576.0);
      model.checkpointing = ckpt;
      FluxInputs in = random_flux_inputs(cfg, grid, grid, Lt);
      std::vector<float> target((size_t)Li * cfg.out_channels);
      Rng rng(5, 5);
      for (float& x : target) x = rng.normal();
      const double ms = median_step_ms(training_step(model, in, target, lora, opt));
      const double flops = flux_step_flops(model, 1, Li, Lt);
      const double tf = flops / (ms * 1e9);
      const double vram = cuda::peak_bytes() / 1048576.0;
      const int px = Li == 1024 ? 512 : 1024;
      std::printf("%-7s %-13s %7d %10.1f %9.1f %6.1f%% %11.0f %11.0f\n", px == 512 ? "512px" : "1024px",
                  offloaded ? "on+offload" : ckpt ? "on" : "off", Li + Lt, ms, tf, 100.0 * tf / PEAK_TFLOPS, vram, weights_mib);
      std::printf("=> FLUX step %d px%s%s: %.1f ms/step, %.1f TFLOP/s (%.2f PFLOP per step), MFU %.1f%%, peak VRAM %.0f MiB"
                  "%s\n", px, ckpt ? " with gradient checkpointing" : "", offloaded ? " and every block offloaded" : "", ms, tf,
                  flops / 1e15, 100.0 * tf / PEAK_TFLOPS, vram,
                  (std::string(full ? "" : " (reduced depth)") +
                   (quantize == WeightFormat::dense ? "" : std::string(", ") + weight_format_name(quantize) + " weights")).c_str());
      if (!ckpt && quantize == WeightFormat::dense) g_ours["flux:" + std::to_string(Li + Lt)] = ms;
    }
  std::printf("(VRAM: the most device memory the process held during the timed steps, the allocator's cache "
              "included; weights %.0f MiB of it)\n", weights_mib);
}

// ---- 5. Z-Image: the training step at its real shapes, and Qwen3-4B encoding captions ------------------------
// One LoRA step (rank RANK on the reference's targets: every linear of the 30 layers) at 1024 px (4096 image
// tokens) with a caption of `Lt` tokens, random weights in bf16 or `quantize`, with and without gradient
// checkpointing; then Qwen3-4B (to hidden_states[-2], as ZImagePipeline) over 20 captions of 40-130 tokens.
void bench_zimage(WeightFormat quantize, bool encoder) {
  const Device dev = Device::cuda(0);
  const ZImageConfig cfg = zimage_config();
  const int Lt = 128, side = 64, Li = side * side;
  const std::string fmt = quantize == WeightFormat::dense ? "bf16" : weight_format_name(quantize);
  std::printf("\n== the Z-Image training step through graft-trainer's engine on cuda:0: dim %d, %d layers + %d + %d refiners, "
              "LoRA rank %d, batch 1, %d image + %d caption tokens, weights %s ==\n",
              cfg.dim, cfg.n_layers, cfg.n_refiner, cfg.n_refiner, RANK, Li, Lt, fmt.c_str());
  {
    ZImageTransformer model = ZImageTransformer::random(cfg, dev, 1, quantize);
    const double weights_mib = cuda::allocated_bytes() / 1048576.0;
    LoraSet lora = lora_create(zimage_lora_targets(cfg), RANK, (float)RANK, 1);
    lora.to(dev);
    lora_attach(model.linears(), &lora);
    AdamW opt;
    FluxInputs in;
    in.B = 1, in.L_img = Li, in.L_txt = Lt;
    Rng rng(7, 1);
    auto fill = [&](std::vector<float>& v, size_t n) { v.resize(n); for (float& x : v) x = rng.normal(); };
    fill(in.img, (size_t)Li * cfg.patch_features());
    fill(in.txt, (size_t)Lt * cfg.cap_dim);
    in.img_ids.resize((size_t)Li * 3);
    flux_img_ids(in.img_ids.data(), 1, side, side);
    in.timesteps = {0.5f};
    std::vector<float> target((size_t)Li * cfg.patch_features());
    for (float& x : target) x = rng.normal();
    // The last pass: every layer's weights in pinned host memory, streamed in (layer offloading).
    for (int pass = 0; pass < 3; ++pass) {
      const bool ckpt = pass > 0, offloaded = pass == 2;
      if (offloaded && quantize != WeightFormat::dense) break;
      if (offloaded)
        std::printf("(offloading every layer: %.0f MiB of weights to pinned host memory)\n", model.offload_blocks(1.0) / 1048576.0);
      model.checkpointing = ckpt;
      double ms = 0;
      try {
        ms = median_step_ms(training_step(model, in, target, lora, opt));
      } catch (const Error& e) {
        std::printf("=> Z-Image step 1024 px%s%s, %s weights: failed: %s\n", ckpt ? " with gradient checkpointing" : "",
                    offloaded ? " and every layer offloaded" : "", fmt.c_str(), e.what());
        continue;
      }
      std::printf("=> Z-Image step 1024 px%s%s, %s weights: %.1f ms/step, peak VRAM %.0f MiB (weights %.0f MiB)\n",
                  ckpt ? " with gradient checkpointing" : "", offloaded ? " and every layer offloaded" : "", fmt.c_str(), ms,
                  cuda::peak_bytes() / 1048576.0, weights_mib);
      if (quantize == WeightFormat::dense && !offloaded)
        g_ours[std::string("zimage") + (ckpt ? "_ckpt" : "") + ":" + std::to_string(Li + Lt)] = ms;
    }
  }
  scratch_release_all();
  if (!encoder) return;
  DecoderLlm te = DecoderLlm::random(qwen3_4b_config(), dev, 2, -2);
  Rng rng(9, 9);
  std::vector<std::vector<int>> captions;
  for (int i = 0; i < 20; i++) {
    std::vector<int> ids(40 + (i * 37) % 91);
    for (int& id : ids) id = (int)(rng.uniform() * 150000);
    captions.push_back(ids);
  }
  NoGrad no_grad;
  te.forward(captions[0], 1, (int)captions[0].size());  // warm up
  cuda::synchronize();
  cuda::reset_peak();
  auto t0 = std::chrono::steady_clock::now();
  for (const auto& ids : captions) to_floats(te.forward(ids, 1, (int)ids.size()));
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("=> Qwen3-4B (35 of 36 layers, bf16) encoding 20 captions of 40-130 tokens one at a time: %.0f ms "
              "(%.1f ms each), peak VRAM %.0f MiB\n", ms, ms / 20, cuda::peak_bytes() / 1048576.0);
}

// ---- PyTorch, same run -------------------------------------------------------------------------------------
std::string script_path() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  std::string exe = n > 0 ? std::string(buf, n) : "";
  std::string dir = exe.substr(0, exe.rfind('/'));      // .../trainer-cuda/build
  return dir.substr(0, dir.rfind('/')) + "/bench/torch_bench.py";
}

void compare_with_torch(const std::string& args) {
  std::printf("\n== PyTorch (same shapes, bf16, SDPA, autograd), same run ==\n");
  if (std::system("python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1") != 0) {
    std::printf("python3 with a CUDA-enabled torch not found: no comparison\n");
    return;
  }
  std::string cmd = "PYTHONUNBUFFERED=1 python3 " + script_path() + " " + args + " 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) {
    std::printf("could not run %s\n", cmd.c_str());
    return;
  }
  std::map<std::string, double> torch_ms;
  char line[1024];
  while (fgets(line, sizeof line, f)) {
    char key[256];
    double ms;
    if (std::sscanf(line, "TORCH %255s %lf", key, &ms) == 2) torch_ms[key] = ms;
    else std::printf("  %s", line);
  }
  int rc = pclose(f);
  std::printf("%-22s %12s %12s %14s\n", "operation", "graft ms", "torch ms", "torch / graft");
  for (auto& kv : g_ours) {
    auto it = torch_ms.find(kv.first);
    if (it == torch_ms.end()) std::printf("%-22s %12.3f %12s %14s\n", kv.first.c_str(), kv.second, "-", "-");
    else
      std::printf("%-22s %12.3f %12.3f %13.2fx\n", kv.first.c_str(), kv.second, it->second, it->second / kv.second);
  }
  for (auto& kv : g_ours) {
    if (kv.first.rfind("flux:", 0) != 0) continue;
    auto it = torch_ms.find(kv.first);
    auto peak = torch_ms.find("flux_peak_mib:" + kv.first.substr(5));
    if (it != torch_ms.end())
      std::printf("=> PyTorch FLUX step, %s tokens: %.1f ms (peak %.0f MiB allocated); graft %.1f ms: torch / graft "
                  "= %.2fx\n", kv.first.substr(5).c_str(), it->second, peak != torch_ms.end() ? peak->second : 0.0,
                  kv.second, it->second / kv.second);
    else
      std::printf("=> PyTorch FLUX step, %s tokens: no result (see the PyTorch lines above)\n", kv.first.substr(5).c_str());
  }
  for (auto& kv : g_ours) {
    if (kv.first.rfind("zimage:", 0) != 0) continue;
    auto it = torch_ms.find(kv.first);
    auto peak = torch_ms.find("zimage_peak_mib:" + kv.first.substr(7));
    if (it != torch_ms.end())
      std::printf("=> PyTorch Z-Image step, %s tokens: %.1f ms (peak %.0f MiB allocated); graft %.1f ms: torch / graft = %.2fx\n",
                  kv.first.substr(7).c_str(), it->second, peak != torch_ms.end() ? peak->second : 0.0, kv.second, it->second / kv.second);
    else
      std::printf("=> PyTorch Z-Image step, %s tokens: no result (see the PyTorch lines above)\n", kv.first.substr(7).c_str());
  }
  for (auto& kv : torch_ms)
    if (kv.first.find("peak_mib") != std::string::npos)
      std::printf("torch %-28s %10.0f MiB\n", kv.first.c_str(), kv.second);
  if (rc != 0) std::printf("(the PyTorch script exited with status %d)\n", rc);
}

}  // namespace

int main(int argc, char** argv) {
  bool with_torch = true, blocks = true, attention = false, zimage = true;
  std::vector<WeightFormat> formats;
  int n_double = 19, n_single = 38;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--no-torch")) with_torch = false;
    else if (!std::strcmp(argv[i], "--step-only")) blocks = false;
    else if (!std::strcmp(argv[i], "--attention")) attention = true;  // section 2 also with --step-only
    else if (!std::strcmp(argv[i], "--no-zimage")) zimage = false;
    else if (!std::strcmp(argv[i], "--depth") && i + 1 < argc) std::sscanf(argv[++i], "%d,%d", &n_double, &n_single);
    else if (!std::strcmp(argv[i], "--quantize") && i + 1 < argc) {
      std::string list = argv[++i];
      for (size_t at = 0; at <= list.size();) {
        const size_t end = std::min(list.find(',', at), list.size());
        WeightFormat f;
        if (!weight_format_from_name(list.substr(at, end - at), &f)) { std::printf("--quantize: fp8, int8, nf4\n"); return 2; }
        formats.push_back(f);
        at = end + 1;
      }
    } else {
      std::printf("usage: graft-gpu-bench [--no-torch] [--step-only] [--attention] [--depth DOUBLE,SINGLE] "
                  "[--quantize fp8,int8,nf4] [--no-zimage]\n");
      return 2;
    }
  }
  try {
    std::printf("graft-gpu-bench: FLUX.1-dev shapes (hidden %d, %d heads x %d, MLP %d), LoRA rank %d, batch 1\n", C,
                HEADS, HD, MLP, RANK);
    std::printf("device: %s\n", cuda::init(0).c_str());
    std::printf("cuBLASLt: %s\n", cublaslt_init().c_str());
    size_t base_mem = mem_used_now();
    if (blocks) {
      bench_gemms();
      bench_attention();
      std::printf("\n== FLUX blocks, forward + backward, LoRA rank %d (q, k, v, proj/out, MLP), frozen bf16 weights ==\n",
                  RANK);
      std::printf("MFU = model FLOPs (linears fwd + input-grad bwd, LoRA, attention fwd 4 + bwd 8 L^2 D H) / time / %.0f\n",
                  PEAK_TFLOPS);
      std::printf("%-7s %6s %9s %9s %8s %10s\n", "block", "tokens", "ms", "TFLOP/s", "MFU", "VRAM MiB");
      for (auto& tk : TOKENS) {
        int L = tk[0] + tk[1];
        BlockResult d = bench_double(tk[0], tk[1], base_mem);
        BlockResult s = bench_single(L, base_mem);
        double step = 19 * d.ms + 38 * s.ms;
        double model_flops = 19 * d.ms * d.tflops * 1e9 + 38 * s.ms * s.tflops * 1e9;
        std::printf("=> full FLUX.1-dev depth (19 double + 38 single), %d px: %.0f ms/step, %.1f TFLOP/s, MFU %.1f%% "
                    "(extrapolated from one block of each; embedders and final layer not counted)\n",
                    L == 1536 ? 512 : 1024, step, model_flops / (step * 1e9), 100.0 * model_flops / (step * 1e9) / PEAK_TFLOPS);
      }
      std::printf("(VRAM: device memory in use during the block, minus what was in use at start; every activation "
                  "of one block kept, no checkpointing)\n");
    }
    if (!blocks && attention) bench_attention();
    scratch_release_all();
    bench_flux_step(n_double, n_single);
    scratch_release_all();
    for (WeightFormat f : formats) {  // each after the bf16 model is gone
      bench_flux_step(n_double, n_single, f);
      scratch_release_all();
    }
    if (zimage) {
      bench_zimage(WeightFormat::dense, true);
      bench_zimage(WeightFormat::fp8, false);
    }
    if (with_torch)
      compare_with_torch("--depth " + std::to_string(n_double) + "," + std::to_string(n_single) +
                         (blocks ? "" : " --step-only") + (zimage ? " --zimage" : ""));
  } catch (const std::exception& e) {
    std::printf("graft-gpu-bench failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
