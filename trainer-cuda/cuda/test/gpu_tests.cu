// GPU parity tests: every CUDA op, forward and backward, against the CPU reference (ops/cpu_ops.cpp) on
// the same random inputs (rounded to bf16 first, so both sides see identical values), and a small
// LoRA training step's adapter gradients against the CPU's.
//
// Tolerances (relative L2 error ||gpu - cpu|| / ||cpu||), from bf16 storage of the GPU's results:
// one bf16 rounding of a value is up to 2^-9 relative, about 2.3e-3 RMS; an op whose inputs and
// output are bf16 lands near 3e-3. We allow:
//   TOL_ELEM 1e-2   elementwise ops, norms, RoPE, modulation, (un)patchify, MSE
//   TOL_GEMM 1e-2   linear and LoRA products (fp32 accumulation; bf16 inputs and outputs)
//   TOL_ATTN 2e-2   flash attention forward (P rounded to bf16 for P.V)
//   TOL_ATTN_BWD 3e-2 flash attention backward (P and dS rounded to bf16)
//   TOL_STEP 5e-2   the LoRA step's gradients after a chain of ops
// Any NaN or Inf fails (outputs are poisoned with NaN before each GPU call, so an element the kernel
// never wrote fails too). Gradient buffers start from random values, which checks that backward
// ACCUMULATES; the starting values are scaled to the gradient's own size so errors stay visible.
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cublaslt.h"
#include "gpu_test_util.h"
#include "core/cuda_runtime.h"
#include "core/tensor.h"
#include "ops/cpu_ops.h"
#include "ops/quant.h"
#include "ops_gpu.h"

using namespace graft;
using namespace graft::cpu;
using namespace graft::gpu;

static const double TOL_ELEM = 1e-2, TOL_GEMM = 1e-2, TOL_ATTN = 2e-2, TOL_ATTN_BWD = 3e-2, TOL_STEP = 5e-2;

namespace graft {
namespace gpu {
bool engine_parity_test();  // engine_parity.cu
}
}  // namespace graft

namespace {

int g_passed = 0, g_failed = 0;
std::vector<std::string> g_failures;
bool g_case_ok = true;

// One comparison inside a case: prints a line; a miss fails the case.
void check(const char* what, const std::vector<float>& got, const std::vector<float>& ref, double tol) {
  Compare c = compare(got, ref);
  bool ok = c.nan == 0 && c.rel <= tol;
  std::printf("  %-4s %-34s rel %.2e  max_abs %.2e  (tol %.0e)%s\n", ok ? "ok" : "FAIL", what, c.rel, c.max_abs, tol,
              c.nan ? (" NaN/Inf: " + std::to_string(c.nan)).c_str() : "");
  if (!ok) g_case_ok = false;
}

void run_case(const char* name, const std::function<void()>& fn) {
  std::printf("%s\n", name);
  g_case_ok = true;
  try {
    fn();
    cudaCheck(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    std::printf("  FAIL exception: %s\n", e.what());
    g_case_ok = false;
  }
  if (g_case_ok) g_passed++;
  else {
    g_failed++;
    g_failures.push_back(name);
  }
  std::fflush(stdout);
}

double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += (double)x * x;
  return v.empty() ? 0 : std::sqrt(s / v.size());
}

// A gradient buffer's starting value: random, about the size of the gradient `g` the op adds.
std::vector<float> grad_init(const std::vector<float>& g, uint64_t seed) {
  auto v = random_vec(g.size(), seed, (float)(rms(g) + 1e-12));
  return round_bf16(v);
}
std::vector<float> plus(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<float> r(a.size());
  for (size_t i = 0; i < a.size(); i++) r[i] = a[i] + b[i];
  return r;
}
std::vector<float> zeros(size_t n) { return std::vector<float>(n, 0.0f); }
std::vector<float> rnd(size_t n, uint64_t seed, float scale = 1.0f, float offset = 0.0f) {
  auto v = random_vec(n, seed, scale, offset);
  return round_bf16(v);
}

// ---- the cases ----------------------------------------------------------------------------------

void test_linear(int N, int IC, int OC, bool with_bias) {
  auto x = rnd((size_t)N * IC, 1), W = rnd((size_t)OC * IC, 2, 0.05f), b = rnd(OC, 3), dy = rnd((size_t)N * OC, 4);
  std::vector<float> y(N * OC);
  linear_forward(y.data(), x.data(), W.data(), with_bias ? b.data() : nullptr, N, IC, OC);
  auto gx = zeros(x.size()), gW = zeros(W.size()), gb = zeros(OC);
  linear_backward(gx.data(), gW.data(), gb.data(), dy.data(), x.data(), W.data(), N, IC, OC);
  auto gx0 = grad_init(gx, 5), gW0 = grad_init(gW, 6), gb0 = grad_init(gb, 7);

  auto dx_ = upload_bf16(x), dW_ = upload_bf16(W), db_ = upload_bf16(b), ddy = upload_bf16(dy);
  DevBuf<bf16> dy_out(y.size());
  dy_out.poison();
  gpu::linear_forward(dy_out, dx_, dW_, with_bias ? db_.ptr : nullptr, N, IC, OC);
  check("forward out", download(dy_out), y, TOL_GEMM);
  auto ggx = upload_bf16(gx0);
  auto ggW = upload_f32(gW0), ggb = upload_f32(gb0);
  gpu::linear_backward(ggx, ggW, ggb, ddy, dx_, dW_, N, IC, OC);
  check("backward dinp (+=)", download(ggx), plus(gx0, gx), TOL_GEMM);
  check("backward dW (+=, fp32)", download(ggW), plus(gW0, gW), TOL_GEMM);
  check("backward dbias (+=, fp32)", download(ggb), plus(gb0, gb), TOL_GEMM);
}

// The quantized weights' decoding: NF4 blocks by nf4_dequantize, int8 and fp8 codes by the dtype
// conversion and with a scale per row by dequantize_rows, against the host's (ops/quant.cpp,
// core/dtype.cpp). An odd count leaves half a byte and part of a block.
void test_quantized_decode(long n) {
  auto w = random_vec((size_t)n, 31, 0.05f);
  std::vector<uint8_t> codes(nf4_code_bytes((size_t)n));
  std::vector<float> absmax(nf4_block_count((size_t)n)), ref((size_t)n);
  quantize_nf4(w.data(), (size_t)n, codes.data(), absmax.data());
  dequantize_nf4(codes.data(), absmax.data(), 0, (size_t)n, ref.data());
  DevBuf<uint8_t> dc(codes.size());
  auto da = upload_f32(absmax);
  cudaCheck(cudaMemcpy(dc.ptr, codes.data(), codes.size(), cudaMemcpyHostToDevice));
  DevBuf<bf16> out((size_t)n);
  out.poison();
  nf4_dequantize(out, dc, da, n);
  check("nf4 blocks -> bf16 (exact)", download(out), round_bf16(ref), 1e-7);
  for (DType t : {DType::I8, DType::F8_E4M3}) {
    std::vector<uint8_t> q((size_t)n);
    std::vector<float> scale(1), host((size_t)n);
    if (t == DType::I8) quantize_rows_int8(w.data(), 1, (int)n, (int8_t*)q.data(), scale.data());
    else quantize_rows_fp8(w.data(), 1, (int)n, q.data(), scale.data());
    convert_host(host.data(), DType::F32, q.data(), t, (size_t)n);
    DevBuf<uint8_t> dq((size_t)n);
    cudaCheck(cudaMemcpy(dq.ptr, q.data(), q.size(), cudaMemcpyHostToDevice));
    DevBuf<bf16> o((size_t)n);
    o.poison();
    cuda::convert(o.ptr, DType::BF16, dq.ptr, t, (size_t)n);
    check(t == DType::I8 ? "int8 codes -> bf16 (exact)" : "fp8 codes -> bf16 (exact)", download(o), round_bf16(host), 1e-7);
    // The same codes as 7 rows with a scale each (the last row short: n is not a multiple of 7).
    const long cols = n / 7, rows = 7;
    std::vector<float> scales = random_vec(rows, 33, 0.01f), scaled((size_t)(rows * cols));
    for (long i = 0; i < rows * cols; ++i) scaled[i] = host[i] * scales[i / cols];
    auto ds = upload_f32(scales);
    DevBuf<bf16> r((size_t)(rows * cols));
    r.poison();
    dequantize_rows(r, dq.ptr, t, ds, rows, cols);
    check(t == DType::I8 ? "int8 codes x row scales (exact)" : "fp8 codes x row scales (exact)", download(r), round_bf16(scaled), 1e-7);
  }
}

void test_lora(int N, int IC, int OC, int rank) {
  // The adapter writes the middle third of a fused [N, 3*OC] output, as to_k inside a qkv layer.
  const int stride = 3 * OC, off = OC;
  const float scale = 16.0f / rank;
  auto x = rnd((size_t)N * IC, 11), A = random_vec((size_t)rank * IC, 12, 0.1f), B = random_vec((size_t)OC * rank, 13, 0.1f);
  auto out0 = rnd((size_t)N * stride, 14), dy = rnd((size_t)N * stride, 15);
  auto out = out0;
  std::vector<float> h((size_t)N * rank);
  lora_forward(out.data() + off, stride, h.data(), x.data(), A.data(), B.data(), N, IC, OC, rank, scale);
  auto gx = zeros(x.size()), gA = zeros(A.size()), gB = zeros(B.size());
  lora_backward(gx.data(), gA.data(), gB.data(), dy.data() + off, stride, h.data(), x.data(), A.data(), B.data(), N, IC,
                OC, rank, scale);
  auto gx0 = grad_init(gx, 16), gA0 = random_vec(gA.size(), 17, (float)rms(gA)), gB0 = random_vec(gB.size(), 18, (float)rms(gB));

  auto dx = upload_bf16(x), dout = upload_bf16(out0), ddy = upload_bf16(dy);
  auto dA = upload_f32(A), dB = upload_f32(B);
  DevBuf<bf16> dh(h.size());
  dh.poison();
  gpu::lora_forward(dout.ptr + off, stride, dh, dx, dA, dB, N, IC, OC, rank, scale);
  check("forward out (+= slice)", download(dout), out, TOL_GEMM);
  check("forward h = x A^T", download(dh), h, TOL_GEMM);
  auto ggx = upload_bf16(gx0);
  auto ggA = upload_f32(gA0), ggB = upload_f32(gB0);
  gpu::lora_backward(ggx, ggA, ggB, ddy.ptr + off, stride, dh, dx, dA, dB, N, IC, OC, rank, scale);
  check("backward dinp (+=)", download(ggx), plus(gx0, gx), TOL_GEMM);
  check("backward dA (+=, fp32)", download(ggA), plus(gA0, gA), TOL_GEMM);
  check("backward dB (+=, fp32)", download(ggB), plus(gB0, gB), TOL_GEMM);
}

void test_layernorm(int N, int C) {
  auto x = rnd((size_t)N * C, 21, 2.0f, 0.5f), dy = rnd((size_t)N * C, 22);
  std::vector<float> y(x.size()), mean(N), rstd(N);
  layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), N, C);
  auto gx = zeros(x.size());
  layernorm_backward(gx.data(), dy.data(), x.data(), mean.data(), rstd.data(), N, C);
  auto gx0 = grad_init(gx, 23);
  auto dx = upload_bf16(x), ddy = upload_bf16(dy);
  DevBuf<bf16> dyo(y.size());
  DevBuf<float> dmean(N), drstd(N);
  dyo.poison(); dmean.poison(); drstd.poison();
  gpu::layernorm_forward(dyo, dmean, drstd, dx, N, C);
  check("forward out", download(dyo), y, TOL_ELEM);
  check("forward mean", download(dmean), mean, 1e-4);
  check("forward rstd", download(drstd), rstd, 1e-4);
  auto ggx = upload_bf16(gx0);
  gpu::layernorm_backward(ggx, ddy, dx, dmean, drstd, N, C);
  check("backward dinp (+=)", download(ggx), plus(gx0, gx), TOL_ELEM);
}

void test_rmsnorm(int N, int C) {
  auto x = rnd((size_t)N * C, 31), s = rnd(C, 32, 0.3f, 1.0f), dy = rnd((size_t)N * C, 33);
  std::vector<float> y(x.size()), rr(N);
  rmsnorm_forward(y.data(), rr.data(), x.data(), s.data(), N, C, 1e-5f);
  auto gx = zeros(x.size()), gs = zeros(C);
  rmsnorm_backward(gx.data(), gs.data(), dy.data(), x.data(), s.data(), rr.data(), N, C);
  auto gx0 = grad_init(gx, 34), gs0 = random_vec(C, 35, (float)rms(gs));
  auto dx = upload_bf16(x), ds = upload_bf16(s), ddy = upload_bf16(dy);
  DevBuf<bf16> dyo(y.size());
  DevBuf<float> drr(N);
  dyo.poison(); drr.poison();
  gpu::rmsnorm_forward(dyo, drr, dx, ds, N, C, 1e-5f);
  check("forward out", download(dyo), y, TOL_ELEM);
  check("forward rrms", download(drr), rr, 1e-4);
  auto ggx = upload_bf16(gx0);
  auto ggs = upload_f32(gs0);
  gpu::rmsnorm_backward(ggx, ggs, ddy, dx, ds, drr, N, C);
  check("backward dinp (+=)", download(ggx), plus(gx0, gx), TOL_ELEM);
  check("backward dscale (+=, fp32)", download(ggs), plus(gs0, gs), TOL_ELEM);
}

void test_rope(int B, int L, int H) {
  const int axes[3] = {16, 56, 56}, D = 128;  // FLUX.1's split
  std::vector<float> ids((size_t)B * L * 3);
  for (int i = 0; i < B * L; i++) {
    ids[i * 3 + 0] = 0;
    ids[i * 3 + 1] = (float)((i % L) / 8);
    ids[i * 3 + 2] = (float)((i % L) % 8 + i / L);
  }
  std::vector<float> table((size_t)B * L * D);
  cpu::rope_table(table.data(), ids.data(), B * L, axes, 3, 10000.0f);
  auto x = rnd((size_t)B * L * H * D, 41), dy = rnd(x.size(), 42);
  std::vector<float> y(x.size());
  rope_forward(y.data(), x.data(), table.data(), B, L, H, D);
  auto gx = zeros(x.size());
  rope_backward(gx.data(), dy.data(), table.data(), B, L, H, D);
  auto gx0 = grad_init(gx, 43);
  auto dids = upload_f32(ids);
  DevBuf<float> dtable(table.size());
  dtable.poison();
  gpu::rope_table(dtable, dids, B * L, axes, 3, 10000.0f);
  check("table cos/sin (fp32)", download(dtable), table, 1e-6);
  auto dx = upload_bf16(x), ddy = upload_bf16(dy);
  DevBuf<bf16> dyo(y.size());
  dyo.poison();
  gpu::rope_forward(dyo, dx, dtable, B, L, H, D);
  check("forward out", download(dyo), y, TOL_ELEM);
  auto ggx = upload_bf16(gx0);
  gpu::rope_backward(ggx, ddy, dtable, B, L, H, D);
  check("backward dinp (+=)", download(ggx), plus(gx0, gx), TOL_ELEM);
}

// forward/backward_version: 2 = register-resident mma.sync kernels (the defaults), 1 = WMMA.
void test_attention(int B, int L, int H, int D, int forward_version = 2, int backward_version = 2) {
  gpu::attention_set_forward_version(forward_version);
  gpu::attention_set_backward_version(backward_version);
  struct Restore {
    ~Restore() {
      gpu::attention_set_forward_version(2);
      gpu::attention_set_backward_version(2);
    }
  } restore;
  auto q = rnd((size_t)B * L * H * D, 51), k = rnd(q.size(), 52), v = rnd(q.size(), 53), dy = rnd(q.size(), 54);
  std::vector<float> out(q.size()), probs((size_t)B * H * L * L);
  attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, L, H, D);
  auto gq = zeros(q.size()), gk = zeros(q.size()), gv = zeros(q.size());
  attention_backward(gq.data(), gk.data(), gv.data(), dy.data(), probs.data(), q.data(), k.data(), v.data(), B, L, H, D);
  auto gq0 = grad_init(gq, 55), gk0 = grad_init(gk, 56), gv0 = grad_init(gv, 57);
  auto dq = upload_bf16(q), dk = upload_bf16(k), dv = upload_bf16(v), ddy = upload_bf16(dy);
  DevBuf<bf16> dout(out.size());
  DevBuf<float> lse((size_t)B * H * L);
  dout.poison(); lse.poison();
  gpu::attention_forward(dout, lse, dq, dk, dv, B, L, H, D);
  check("forward out", download(dout), out, TOL_ATTN);
  auto ggq = upload_bf16(gq0), ggk = upload_bf16(gk0), ggv = upload_bf16(gv0);
  gpu::attention_backward(ggq, ggk, ggv, ddy, dout, lse, dq, dk, dv, B, L, H, D);
  check("backward dq (+=)", download(ggq), plus(gq0, gq), TOL_ATTN_BWD);
  check("backward dk (+=)", download(ggk), plus(gk0, gk), TOL_ATTN_BWD);
  check("backward dv (+=)", download(ggv), plus(gv0, gv), TOL_ATTN_BWD);
}

void test_activation(bool gelu, long n) {
  auto x = rnd(n, gelu ? 61 : 62, 2.0f), dy = rnd(n, 63);
  std::vector<float> y(n);
  auto gx = zeros(n);
  if (gelu) {
    cpu::gelu_forward(y.data(), x.data(), (int)n);
    cpu::gelu_backward(gx.data(), dy.data(), x.data(), (int)n);
  } else {
    cpu::silu_forward(y.data(), x.data(), (int)n);
    cpu::silu_backward(gx.data(), dy.data(), x.data(), (int)n);
  }
  auto gx0 = grad_init(gx, 64);
  auto dx = upload_bf16(x), ddy = upload_bf16(dy), ggx = upload_bf16(gx0);
  DevBuf<bf16> dyo(n);
  dyo.poison();
  if (gelu) {
    gpu::gelu_forward(dyo, dx, n);
    gpu::gelu_backward(ggx, ddy, dx, n);
  } else {
    gpu::silu_forward(dyo, dx, n);
    gpu::silu_backward(ggx, ddy, dx, n);
  }
  check("forward out", download(dyo), y, TOL_ELEM);
  check("backward dinp (+=)", download(ggx), plus(gx0, gx), TOL_ELEM);
}

void test_modulate_and_gate(int B, int L, int C) {
  const int ms = 6 * C;  // a modulation output row: shift, scale, gate, shift2, scale2, gate2
  auto mod = rnd((size_t)B * ms, 71, 0.5f), x = rnd((size_t)B * L * C, 72), dy = rnd(x.size(), 73);
  const int SHIFT = 0, SCALE = C, GATE = 2 * C;
  std::vector<float> y(x.size());
  modulate_forward(y.data(), x.data(), mod.data() + SHIFT, mod.data() + SCALE, ms, B, L, C);
  auto gx = zeros(x.size()), gmod = zeros(mod.size());
  modulate_backward(gx.data(), gmod.data() + SHIFT, gmod.data() + SCALE, dy.data(), x.data(), mod.data() + SCALE, ms, B,
                    L, C);
  auto res = rnd(x.size(), 74), res_ref = res;
  gate_residual_forward(res_ref.data(), x.data(), mod.data() + GATE, ms, B, L, C);
  auto gy = zeros(x.size());
  gate_residual_backward(gy.data(), gmod.data() + GATE, dy.data(), x.data(), mod.data() + GATE, ms, B, L, C);
  auto gx0 = grad_init(gx, 75), gmod0 = grad_init(gmod, 76), gy0 = grad_init(gy, 77);

  auto dmod = upload_bf16(mod), dx = upload_bf16(x), ddy = upload_bf16(dy), dres = upload_bf16(res);
  DevBuf<bf16> dyo(y.size());
  dyo.poison();
  gpu::modulate_forward(dyo, dx, dmod.ptr + SHIFT, dmod.ptr + SCALE, ms, B, L, C);
  check("modulate forward", download(dyo), y, TOL_ELEM);
  gpu::gate_residual_forward(dres, dx, dmod.ptr + GATE, ms, B, L, C);
  check("gate_residual forward (res +=)", download(dres), res_ref, TOL_ELEM);
  auto ggx = upload_bf16(gx0), ggmod = upload_bf16(gmod0), ggy = upload_bf16(gy0);
  gpu::modulate_backward(ggx, ggmod.ptr + SHIFT, ggmod.ptr + SCALE, ddy, dx, dmod.ptr + SCALE, ms, B, L, C);
  gpu::gate_residual_backward(ggy, ggmod.ptr + GATE, ddy, dx, dmod.ptr + GATE, ms, B, L, C);
  check("modulate backward dx (+=)", download(ggx), plus(gx0, gx), TOL_ELEM);
  check("gate_residual backward dy (+=)", download(ggy), plus(gy0, gy), TOL_ELEM);
  check("dshift, dscale, dgate (+=)", download(ggmod), plus(gmod0, gmod), TOL_ELEM);
}

void test_timestep(int B, int dim) {
  std::vector<float> t(B);
  for (int b = 0; b < B; b++) t[b] = (b + 0.37f) / B;
  auto de = rnd((size_t)B * dim, 81);
  std::vector<float> emb((size_t)B * dim);
  timestep_embedding_forward(emb.data(), t.data(), B, dim, 1000.0f, 10000.0f);
  auto gt = zeros(B);
  timestep_embedding_backward(gt.data(), de.data(), t.data(), B, dim, 1000.0f, 10000.0f);
  auto gt0 = random_vec(B, 82, (float)rms(gt));
  auto dt = upload_f32(t), ggt = upload_f32(gt0);
  auto dde = upload_bf16(de);
  DevBuf<bf16> demb(emb.size());
  demb.poison();
  gpu::timestep_embedding_forward(demb, dt, B, dim, 1000.0f, 10000.0f);
  check("forward emb", download(demb), emb, TOL_ELEM);
  gpu::timestep_embedding_backward(ggt, dde, dt, B, dim, 1000.0f, 10000.0f);
  check("backward dt (+=, fp32)", download(ggt), plus(gt0, gt), TOL_ELEM);
}

void test_patchify(int B, int C, int H, int W, int p) {
  const size_t n = (size_t)B * C * H * W;
  auto lat = rnd(n, 91), tok = rnd(n, 92);
  std::vector<float> tok_ref(n), lat_ref(n);
  patchify_forward(tok_ref.data(), lat.data(), B, C, H, W, p);
  unpatchify_forward(lat_ref.data(), tok.data(), B, C, H, W, p);
  auto g_lat = zeros(n), g_tok = zeros(n);
  patchify_backward(g_lat.data(), tok.data(), B, C, H, W, p);
  unpatchify_backward(g_tok.data(), lat.data(), B, C, H, W, p);
  auto g_lat0 = grad_init(g_lat, 93), g_tok0 = grad_init(g_tok, 94);
  auto dlat = upload_bf16(lat), dtok = upload_bf16(tok);
  DevBuf<bf16> o1(n), o2(n);
  o1.poison(); o2.poison();
  gpu::patchify_forward(o1, dlat, B, C, H, W, p);
  gpu::unpatchify_forward(o2, dtok, B, C, H, W, p);
  check("patchify forward (exact)", download(o1), tok_ref, 0.0);
  check("unpatchify forward (exact)", download(o2), lat_ref, 0.0);
  auto gg_lat = upload_bf16(g_lat0), gg_tok = upload_bf16(g_tok0);
  gpu::patchify_backward(gg_lat, dtok, B, C, H, W, p);
  gpu::unpatchify_backward(gg_tok, dlat, B, C, H, W, p);
  check("patchify backward (+=)", download(gg_lat), plus(g_lat0, g_lat), TOL_ELEM);
  check("unpatchify backward (+=)", download(gg_tok), plus(g_tok0, g_tok), TOL_ELEM);
}

void test_mse(long n) {
  auto pred = rnd(n, 101), target = rnd(n, 102);
  float loss = cpu::mse_forward(pred.data(), target.data(), n);
  auto g = zeros(n);
  cpu::mse_backward(g.data(), pred.data(), target.data(), n, 0.7f);
  auto g0 = grad_init(g, 103);
  auto dp = upload_bf16(pred), dt = upload_bf16(target), dg = upload_bf16(g0);
  float gloss = gpu::mse_forward_host(dp, dt, n);
  check("forward loss", {gloss}, {loss}, 1e-4);
  gpu::mse_backward(dg, dp, dt, n, 0.7f);
  check("backward dpred (+=)", download(dg), plus(g0, g), TOL_ELEM);
}

// A tiny two-layer LoRA model, one step: y = W2 gelu(W1 x + b1 + lora1(x)) + lora2(...), MSE to a
// target; the four adapter gradients (fp32) against the CPU's.
void test_lora_step() {
  const int N = 96, IN = 128, HID = 256, OUT = 128, R = 8;
  const float sc = 2.0f;  // alpha / rank
  auto x = rnd((size_t)N * IN, 111), target = rnd((size_t)N * OUT, 112);
  auto W1 = rnd((size_t)HID * IN, 113, 0.09f), b1 = rnd(HID, 114, 0.1f), W2 = rnd((size_t)OUT * HID, 115, 0.06f);
  auto A1 = random_vec((size_t)R * IN, 116, 0.09f), B1 = random_vec((size_t)HID * R, 117, 0.05f);
  auto A2 = random_vec((size_t)R * HID, 118, 0.06f), B2 = random_vec((size_t)OUT * R, 119, 0.05f);
  // CPU
  std::vector<float> z((size_t)N * HID), h1((size_t)N * R), a((size_t)N * HID), y((size_t)N * OUT), h2((size_t)N * R);
  cpu::linear_forward(z.data(), x.data(), W1.data(), b1.data(), N, IN, HID);
  cpu::lora_forward(z.data(), HID, h1.data(), x.data(), A1.data(), B1.data(), N, IN, HID, R, sc);
  cpu::gelu_forward(a.data(), z.data(), N * HID);
  cpu::linear_forward(y.data(), a.data(), W2.data(), nullptr, N, HID, OUT);
  cpu::lora_forward(y.data(), OUT, h2.data(), a.data(), A2.data(), B2.data(), N, HID, OUT, R, sc);
  float loss = cpu::mse_forward(y.data(), target.data(), (long)N * OUT);
  auto dy = zeros(y.size()), da = zeros(a.size()), dz = zeros(z.size());
  auto dA1 = zeros(A1.size()), dB1 = zeros(B1.size()), dA2 = zeros(A2.size()), dB2 = zeros(B2.size());
  cpu::mse_backward(dy.data(), y.data(), target.data(), (long)N * OUT, 1.0f);
  cpu::lora_backward(da.data(), dA2.data(), dB2.data(), dy.data(), OUT, h2.data(), a.data(), A2.data(), B2.data(), N,
                       HID, OUT, R, sc);
  cpu::linear_backward(da.data(), nullptr, nullptr, dy.data(), a.data(), W2.data(), N, HID, OUT);
  cpu::gelu_backward(dz.data(), da.data(), z.data(), N * HID);
  cpu::lora_backward(nullptr, dA1.data(), dB1.data(), dz.data(), HID, h1.data(), x.data(), A1.data(), B1.data(), N, IN,
                       HID, R, sc);
  // GPU
  auto gx = upload_bf16(x), gt = upload_bf16(target), gW1 = upload_bf16(W1), gb1 = upload_bf16(b1), gW2 = upload_bf16(W2);
  auto gA1 = upload_f32(A1), gB1 = upload_f32(B1), gA2 = upload_f32(A2), gB2 = upload_f32(B2);
  DevBuf<bf16> gz(z.size()), gh1(h1.size()), ga(a.size()), gy(y.size()), gh2(h2.size());
  DevBuf<bf16> gdy(y.size()), gda(a.size()), gdz(z.size());
  DevBuf<float> gdA1(A1.size()), gdB1(B1.size()), gdA2(A2.size()), gdB2(B2.size());
  for (auto* d : {&gdy, &gda, &gdz}) cudaCheck(cudaMemset(d->ptr, 0, d->n * 2));
  for (auto* d : {&gdA1, &gdB1, &gdA2, &gdB2}) cudaCheck(cudaMemset(d->ptr, 0, d->n * 4));
  gpu::linear_forward(gz, gx, gW1, gb1, N, IN, HID);
  gpu::lora_forward(gz, HID, gh1, gx, gA1, gB1, N, IN, HID, R, sc);
  gpu::gelu_forward(ga, gz, (long)N * HID);
  gpu::linear_forward(gy, ga, gW2, nullptr, N, HID, OUT);
  gpu::lora_forward(gy, OUT, gh2, ga, gA2, gB2, N, HID, OUT, R, sc);
  float gloss = gpu::mse_forward_host(gy, gt, (long)N * OUT);
  gpu::mse_backward(gdy, gy, gt, (long)N * OUT, 1.0f);
  gpu::lora_backward(gda, gdA2, gdB2, gdy, OUT, gh2, ga, gA2, gB2, N, HID, OUT, R, sc);
  gpu::linear_backward(gda, nullptr, nullptr, gdy, ga, gW2, N, HID, OUT);
  gpu::gelu_backward(gdz, gda, gz, (long)N * HID);
  gpu::lora_backward(nullptr, gdA1, gdB1, gdz, HID, gh1, gx, gA1, gB1, N, IN, HID, R, sc);
  check("loss", {gloss}, {loss}, TOL_STEP);
  check("dA of layer 1 (fp32)", download(gdA1), dA1, TOL_STEP);
  check("dB of layer 1 (fp32)", download(gdB1), dB1, TOL_STEP);
  check("dA of layer 2 (fp32)", download(gdA2), dA2, TOL_STEP);
  check("dB of layer 2 (fp32)", download(gdB2), dB2, TOL_STEP);
}

void test_oom_message() {
  bool threw = false;
  try {
    device_alloc((size_t)1 << 50, "a 1 PiB test buffer");
  } catch (const Error& e) {
    threw = true;
    std::string m = e.what();
    bool ok = m.find("out of GPU memory: asked for") != std::string::npos && m.find("1 PiB test buffer") != std::string::npos;
    std::printf("  %-4s message: %s\n", ok ? "ok" : "FAIL", m.c_str());
    if (!ok) g_case_ok = false;
  }
  if (!threw) {
    std::printf("  FAIL no error for a 1 PiB allocation\n");
    g_case_ok = false;
  }
  // The engine's caching allocator: the same kind of message, naming the tensor's use.
  threw = false;
  try {
    empty({(int64_t)1 << 48}, DType::F32, Device::cuda(0), "a 1 PiB test tensor");
  } catch (const Error& e) {
    threw = true;
    std::string m = e.what();
    bool ok = m.find("out of GPU memory: asked for") != std::string::npos && m.find("1 PiB test tensor") != std::string::npos;
    std::printf("  %-4s engine allocator: %s\n", ok ? "ok" : "FAIL", m.c_str());
    if (!ok) g_case_ok = false;
  }
  if (!threw) {
    std::printf("  FAIL no error for a 1 PiB tensor\n");
    g_case_ok = false;
  }
  // The runtime must still work after the failed allocations.
  DevBuf<float> small(16);
  cudaCheck(cudaMemset(small.ptr, 0, 64));
  Tensor t = zeros({16}, DType::F32, Device::cuda(0));
  if (to_floats(t) != std::vector<float>(16, 0.0f)) g_case_ok = false;
}

}  // namespace

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : nullptr;
  try {
    std::printf("device: %s\n", cuda::init(0).c_str());
    std::printf("cuBLASLt: %s\n", cublaslt_init().c_str());
  } catch (const std::exception& e) {
    std::printf("gpu: cannot start: %s\ngpu: 0 passed, 1 failed\n", e.what());
    return 1;
  }
  struct Case { const char* name; std::function<void()> fn; };
  std::vector<Case> cases = {
      {"linear 200x256->384 +bias", [] { test_linear(200, 256, 384, true); }},
      {"linear 77x96->136 no bias", [] { test_linear(77, 96, 136, false); }},
      {"quantized weights decoded, n=100001", [] { test_quantized_decode(100001); }},
      {"lora rank 16 on a qkv slice, 150x256->128", [] { test_lora(150, 256, 128, 16); }},
      {"lora rank 4, 33x64->40", [] { test_lora(33, 64, 40, 4); }},
      {"layernorm 100x256 (16-byte path)", [] { test_layernorm(100, 256); }},
      {"layernorm 37x100 (scalar path)", [] { test_layernorm(37, 100); }},
      {"rmsnorm 300x128 (QK-norm)", [] { test_rmsnorm(300, 128); }},
      {"rmsnorm 50x36 (scalar path)", [] { test_rmsnorm(50, 36); }},
      {"rope FLUX axes 16/56/56, B2 L50 H3", [] { test_rope(2, 50, 3); }},
      {"attention B2 L200 H3 D64", [] { test_attention(2, 200, 3, 64); }},
      {"attention B1 L130 H2 D128", [] { test_attention(1, 130, 2, 128); }},
      {"attention B1 L256 H2 D128", [] { test_attention(1, 256, 2, 128); }},
      {"attention B2 L33 H1 D32", [] { test_attention(2, 33, 1, 32); }},
      {"attention v1 (WMMA fwd) B2 L200 H3 D64", [] { test_attention(2, 200, 3, 64, 1); }},
      {"attention v1 (WMMA fwd) B1 L130 H2 D128", [] { test_attention(1, 130, 2, 128, 1); }},
      {"attention B1 L1100 H2 D128 (many tiles)", [] { test_attention(1, 1100, 2, 128); }},
      {"attention B1 L300 H2 D32 (3 key tiles)", [] { test_attention(1, 300, 2, 32); }},
      {"attention v1 (WMMA bwd) B2 L200 H3 D64", [] { test_attention(2, 200, 3, 64, 2, 1); }},
      {"attention v1 (WMMA bwd) B1 L130 H2 D128", [] { test_attention(1, 130, 2, 128, 2, 1); }},
      {"attention v1 (WMMA bwd) B2 L33 H1 D32", [] { test_attention(2, 33, 1, 32, 2, 1); }},
      {"attention v1 (WMMA bwd) B1 L1100 H2 D128 (many tiles)", [] { test_attention(1, 1100, 2, 128, 2, 1); }},
      {"gelu (tanh) n=10007", [] { test_activation(true, 10007); }},
      {"silu n=10007", [] { test_activation(false, 10007); }},
      {"modulate + gate_residual B2 L70 C96", [] { test_modulate_and_gate(2, 70, 96); }},
      {"modulate + gate_residual B1 L300 C40", [] { test_modulate_and_gate(1, 300, 40); }},
      {"timestep embedding B4 dim256", [] { test_timestep(4, 256); }},
      {"timestep embedding B3 dim 33 (odd)", [] { test_timestep(3, 33); }},
      {"patchify/unpatchify B2 C16 8x12 p2", [] { test_patchify(2, 16, 8, 12, 2); }},
      {"mse n=5000", [] { test_mse(5000); }},
      {"LoRA training step (2 layers) gradients", [] { test_lora_step(); }},
      {"out-of-memory message", [] { test_oom_message(); }},
      {"the engine on cuda:0 vs the CPU: ops through the tape, FLUX (output, every LoRA gradient, checkpointing), "
       "autoencoder, text encoder, optimizer",
       [] { if (!gpu::engine_parity_test()) g_case_ok = false; }},
  };
  for (auto& c : cases) {
    if (filter && !std::strstr(c.name, filter)) continue;
    run_case(c.name, c.fn);
  }
  std::printf("\nGPU parity tolerances (relative L2): elementwise/norm %.0e, GEMM %.0e, attention fwd %.0e / bwd %.0e, "
              "LoRA step %.0e\n", TOL_ELEM, TOL_GEMM, TOL_ATTN, TOL_ATTN_BWD, TOL_STEP);
  for (auto& f : g_failures) std::printf("failed: %s\n", f.c_str());
  std::printf("gpu: %d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 && g_passed > 0 ? 0 : 1;
}
