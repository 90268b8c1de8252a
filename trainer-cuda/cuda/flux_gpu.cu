// The FLUX.1 training step on the GPU (see flux_gpu.h): the same graph as FluxRunner in
// src/flux.cpp, function for function (stream_pre/post, single block, final layer, and their
// backwards in the reverse order), on the CUDA ops of ops_gpu.h. Storage follows ops_gpu.h: bf16
// activations, weights and activation gradients; fp32 LoRA master weights, LoRA gradients and
// per-row statistics; fp32 accumulation everywhere.
//
// Memory: the frozen weights live in one allocation made at construction; everything that depends
// on the batch shape (inputs, kept activations, gradient scratch, LoRA's per-adapter A x) is carved
// from one arena sized by a dry run of the same carving code at the first forward (and again when
// a larger shape arrives), so a step that cannot fit fails before any work, with the number.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cublaslt.h"
#include "cuda_common.h"
#include "flux_gpu.h"
#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {

// ------------------------------------------------------------------ the FluxBackend entry points

bool cuda_built() { return true; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver, no device, driver too old: all mean "none usable"
    return 0;
  }
  return n;
}

std::unique_ptr<FluxBackend> make_cuda_backend(FluxModel* model, LoraSet* lora, int device) {
  return gpu::make_flux_gpu(model, lora, device, gpu::FluxGpuOptions());
}

namespace gpu {
namespace {

// ------------------------------------------------------------------ small kernels of the graph

#define GRID_STRIDE(i, n) \
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long)gridDim.x * blockDim.x)

unsigned blocks_for(long n) {
  long b = (n + 255) / 256;
  return (unsigned)std::min(b, 65535L * 16);
}

// dst[r*dst_pitch + c] = src[r*src_pitch + c], c < cols (elements); VEC moves 8 bf16 at a time.
template <bool VEC>
__global__ void copy_rows_kernel(bf16* dst, long dst_pitch, const bf16* src, long src_pitch, long rows, int cols) {
  const int per = VEC ? cols / 8 : cols;
  GRID_STRIDE(i, rows * per) {
    long r = i / per;
    int c = (int)(i % per);
    if (VEC)
      reinterpret_cast<uint4*>(dst + r * dst_pitch)[c] = reinterpret_cast<const uint4*>(src + r * src_pitch)[c];
    else
      dst[r * dst_pitch + c] = src[r * src_pitch + c];
  }
}

void copy_rows(bf16* dst, long dst_pitch, const bf16* src, long src_pitch, long rows, int cols) {
  if (rows <= 0 || cols <= 0) return;
  bool vec = cols % 8 == 0 && dst_pitch % 8 == 0 && src_pitch % 8 == 0 && aligned16(dst) && aligned16(src);
  long n = rows * (vec ? cols / 8 : cols);
  if (vec) copy_rows_kernel<true><<<blocks_for(n), 256>>>(dst, dst_pitch, src, src_pitch, rows, cols);
  else copy_rows_kernel<false><<<blocks_for(n), 256>>>(dst, dst_pitch, src, src_pitch, rows, cols);
  cudaCheckLaunch();
}

const float GELU_SCALE = 0.7978845608028654f, GELU_CUBIC = 0.044715f;  // as elementwise.cu

// GELU (tanh) over a column band of rows: out[r*op + c] = gelu(inp[r*ip + c]).
__global__ void gelu_rows_forward_kernel(bf16* out, long op, const bf16* inp, long ip, long rows, int cols) {
  GRID_STRIDE(i, rows * cols) {
    long r = i / cols;
    int c = (int)(i % cols);
    float x = __bfloat162float(inp[r * ip + c]);
    out[r * op + c] = __float2bfloat16(0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + GELU_CUBIC * x * x * x))));
  }
}
// dinp[r*dp + c] += gelu'(inp[r*ip + c]) * dout[r*gp + c]
__global__ void gelu_rows_backward_kernel(bf16* dinp, long dp, const bf16* dout, long gp, const bf16* inp, long ip,
                                          long rows, int cols) {
  GRID_STRIDE(i, rows * cols) {
    long r = i / cols;
    int c = (int)(i % cols);
    float x = __bfloat162float(inp[r * ip + c]);
    float t = tanhf(GELU_SCALE * (x + GELU_CUBIC * x * x * x));
    float du_dx = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x * x);
    float grad = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du_dx;
    bf16* d = dinp + r * dp + c;
    *d = __float2bfloat16(__bfloat162float(*d) + grad * __bfloat162float(dout[r * gp + c]));
  }
}

__global__ void add_kernel(bf16* acc, const bf16* x, long n) {
  GRID_STRIDE(i, n) acc[i] = __float2bfloat16(__bfloat162float(acc[i]) + __bfloat162float(x[i]));
}

// Frozen weights for benchmarks: uniform in [offset - a, offset + a] from a hash of the index.
__global__ void fill_uniform_kernel(bf16* p, long n, uint32_t seed, float a, float offset) {
  GRID_STRIDE(i, n) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
    p[i] = __float2bfloat16(offset + a * ((h & 0xffffff) / 16777216.0f * 2.0f - 1.0f));
  }
}

void zero(void* p, size_t bytes) {
  if (p && bytes) cudaCheck(cudaMemsetAsync(p, 0, bytes));
}
template <typename T>
void zero_n(T* p, size_t n) { zero(p, n * sizeof(T)); }

std::string mib(size_t bytes) { return std::to_string((bytes + (1u << 20) - 1) >> 20) + " MiB"; }

// Carves typed buffers out of one allocation; with base == nullptr it only measures.
struct Carver {
  char* base = nullptr;
  size_t used = 0;
  template <typename T>
  T* take(size_t n) {
    size_t bytes = (n * sizeof(T) + 255) & ~(size_t)255;
    T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += bytes;
    return p;
  }
};

// ------------------------------------------------------------------ device-side model

struct DLinear {
  const FluxLinear* host = nullptr;
  bf16 *W = nullptr, *b = nullptr;
  int in = 0, out = 0;
};
struct DStream { DLinear mod, qkv, proj, mlp0, mlp2; bf16 *q_scale = nullptr, *k_scale = nullptr; };
struct DDouble { DStream img, txt; };
struct DSingle { DLinear mod, linear1, linear2; bf16 *q_scale = nullptr, *k_scale = nullptr; };

// What one stream of a double block keeps for its backward (FluxRunner's StreamActs, minus x,
// which is the block input kept apart, and qkv, which is scratch: q_pre/k_pre are what is needed).
struct StreamActs {
  bf16 *mod, *n1, *m1, *q_pre, *k_pre, *attn, *proj, *x1, *n2, *m2, *h1, *g, *h2;
  float *mean1, *rstd1, *mean2, *rstd2, *rrms_q, *rrms_k;
};
struct DoubleActs { StreamActs img, txt; bf16 *Qr, *Kr, *V, *attn; float* lse; };
struct SingleActs {
  bf16 *mod, *n, *m, *lin1, *q_pre, *k_pre, *Qr, *Kr, *V, *attn, *cat, *out;
  float *mean, *rstd, *rrms_q, *rrms_k, *lse;
};

struct FluxGpu : FluxBackend {
  FluxModel* model;
  LoraSet* lora;
  FluxGpuOptions opt;
  std::string name_;
  int device = 0;

  // weights
  void* weight_mem = nullptr;
  size_t weight_bytes = 0;
  DLinear img_in, txt_in, time_in0, time_in1, vector_in0, vector_in1, guidance_in0, guidance_in1, final_mod,
      final_linear;
  std::vector<DDouble> doubles;
  std::vector<DSingle> singles;

  // LoRA
  float *d_params = nullptr, *d_grads = nullptr;
  std::vector<bf16*> lora_h;  // per adapter: A x of its last forward, [N, rank]
  std::vector<float> host_grads;

  // the arena
  void* arena = nullptr;
  size_t arena_bytes = 0;
  int B = 0, Li = 0, Lt = 0;
  bool checkpointing = false;
  double peak_mb = 0.0;

  // inputs and conditioning
  bf16 *in_img, *in_txt, *in_y, *temb, *ch, *chs, *cv, *ctmp, *silu_vec;
  float *in_t, *in_g, *ids, *cos_sin;
  // block inputs: img_x[i], txt_x[i] for i = 0..n_double (the last is the doubles' output);
  // sx[j] for j = 0..n_single (the last is the singles' output)
  std::vector<bf16*> img_x, txt_x, sx;
  std::vector<DoubleActs> dacts;  // one per block, or one shared when checkpointing
  std::vector<SingleActs> sacts;
  // forward scratch
  bf16 *qkv, *qn_s, *kn_s, *Qn, *Kn;
  // final layer
  bf16 *final_in, *fmod, *final_n, *final_m, *out_d, *dout_d;
  float *fmean, *frstd;
  // backward scratch
  bf16 *dx, *dimg, *dtxt, *dattn_j, *dQr, *dKr, *dV, *dQn, *dKn, *dq_in, *dk_in, *dq_s, *dk_s, *dm, *dn, *dh2,
      *dproj, *dattn_s, *dg, *dh1, *dcat, *dlin1, *dmod_img, *dmod_txt, *dfm, *dfn, *dfin, *dfmod;
  std::vector<uint16_t> staging;

  FluxGpu(FluxModel* m, LoraSet* l, int dev, const FluxGpuOptions& o) : model(m), lora(l), opt(o), device(dev) {
    device_init(dev);
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, dev < 0 ? 0 : dev));
    name_ = "cuda:" + std::to_string(dev < 0 ? 0 : dev) + " " + prop.name;
    cublaslt_init();
    const FluxConfig& c = model->cfg;
    if (c.head_dim != 32 && c.head_dim != 64 && c.head_dim != 128)
      fail("the CUDA backend supports head dims 32, 64 and 128; this model's is " + std::to_string(c.head_dim));
    attach_adapters();
    upload_weights();
    if (lora && !lora->params.empty()) {
      size_t P = lora->params.size();
      d_params = device_alloc_n<float>(P, "LoRA parameters");
      d_grads = device_alloc_n<float>(P, "LoRA gradients");
      host_grads.resize(P);
    }
    if (lora) lora_h.assign(lora->adapters.size(), nullptr);
  }

  ~FluxGpu() override {
    cudaDeviceSynchronize();
    cudaFree(weight_mem);
    cudaFree(arena);
    cudaFree(d_params);
    cudaFree(d_grads);
  }

  std::string name() const override { return name_; }
  double peak_memory_mb() const override { return peak_mb; }

  void note_memory() {
    double mb = (double)mem_used_now() / 1048576.0;
    if (mb > peak_mb) peak_mb = mb;
  }

  // Each adapter on the base layer it names, as FluxRunner does.
  void attach_adapters() { flux_attach_lora(*model, lora); }

  // ---------------------------------------------------------------- weights

  // Carves (and, with a base, fills) every frozen tensor; the same walk measures and places.
  void carve_weights(Carver& cv, bool fill) {
    uint32_t seed = (uint32_t)opt.seed * 0x9E3779B9u;
    auto put = [&](bf16* dst, const std::vector<float>& src, size_t n, float a, float offset) {
      if (!fill) return;
      if (opt.random_weights) {
        fill_uniform_kernel<<<blocks_for((long)n), 256>>>(dst, (long)n, seed += 0x6D2B79F5u, a, offset);
        cudaCheckLaunch();
        return;
      }
      if (src.size() != n) fail("CUDA backend: a host tensor of " + std::to_string(src.size()) + " values where " +
                                std::to_string(n) + " were expected (a model without weights needs random_weights)");
      staging.resize(n);
#pragma omp parallel for schedule(static)
      for (long i = 0; i < (long)n; i++) staging[i] = f32_to_bf16_bits(src[i]);
      cudaCheck(cudaMemcpy(dst, staging.data(), n * 2, cudaMemcpyHostToDevice));
    };
    auto lin = [&](const FluxLinear& h, float gain = 1.0f) {
      DLinear d;
      d.host = &h;
      d.in = h.in;
      d.out = h.out;
      d.W = cv.take<bf16>((size_t)h.in * h.out);
      // random mode gives every layer a bias, as FLUX.1 has
      bool bias = opt.random_weights || !h.b.empty();
      if (bias) d.b = cv.take<bf16>(h.out);
      float a = gain * 1.7320508f / std::sqrt((float)h.in);  // uniform with std gain/sqrt(in)
      put(d.W, h.W, (size_t)h.in * h.out, a, 0.0f);
      if (bias) put(d.b, h.b, h.out, 0.02f, 0.0f);
      return d;
    };
    auto scale = [&](const std::vector<float>& h) {
      int D = model->cfg.head_dim;
      bf16* p = cv.take<bf16>(D);
      put(p, h, D, 0.1f, 1.0f);
      return p;
    };
    FluxModel& m = *model;
    const float mod_gain = 0.2f;  // random mode: small modulations, as tiny.cpp's random checkpoints
    img_in = lin(m.img_in);
    txt_in = lin(m.txt_in);
    time_in0 = lin(m.time_in0);
    time_in1 = lin(m.time_in1);
    vector_in0 = lin(m.vector_in0);
    vector_in1 = lin(m.vector_in1);
    if (m.cfg.guidance_embed) {
      guidance_in0 = lin(m.guidance_in0);
      guidance_in1 = lin(m.guidance_in1);
    }
    doubles.assign(m.doubles.size(), DDouble());
    for (size_t i = 0; i < m.doubles.size(); ++i)
      for (int s = 0; s < 2; ++s) {
        const FluxStreamWeights& h = s == 0 ? m.doubles[i].img : m.doubles[i].txt;
        DStream& d = s == 0 ? doubles[i].img : doubles[i].txt;
        d.mod = lin(h.mod, mod_gain);
        d.qkv = lin(h.qkv);
        d.proj = lin(h.proj);
        d.mlp0 = lin(h.mlp0);
        d.mlp2 = lin(h.mlp2);
        d.q_scale = scale(h.q_scale);
        d.k_scale = scale(h.k_scale);
      }
    singles.assign(m.singles.size(), DSingle());
    for (size_t i = 0; i < m.singles.size(); ++i) {
      const FluxSingleWeights& h = m.singles[i];
      DSingle& d = singles[i];
      d.mod = lin(h.mod, mod_gain);
      d.linear1 = lin(h.linear1);
      d.linear2 = lin(h.linear2);
      d.q_scale = scale(h.q_scale);
      d.k_scale = scale(h.k_scale);
    }
    final_mod = lin(m.final_mod, mod_gain);
    final_linear = lin(m.final_linear);
  }

  void upload_weights() {
    Carver measure;
    carve_weights(measure, false);
    weight_bytes = measure.used;
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    if (weight_bytes > free_b)
      fail("out of GPU memory: the frozen FLUX weights need " + mib(weight_bytes) + " in bf16, " + mib(free_b) +
           " free of " + mib(total_b) + " (quantized base weights are not supported yet)");
    weight_mem = device_alloc(weight_bytes, "the frozen FLUX weights (bf16)");
    Carver place;
    place.base = (char*)weight_mem;
    carve_weights(place, true);
    cudaCheck(cudaDeviceSynchronize());
    staging.clear();
    staging.shrink_to_fit();
  }

  void params_updated() override {
    if (d_params)
      cudaCheck(cudaMemcpy(d_params, lora->params.data(), lora->params.size() * sizeof(float), cudaMemcpyHostToDevice));
  }

  // ---------------------------------------------------------------- the arena

  void carve_lora_h(Carver& cv, const FluxLinear& l, size_t N) {
    for (int ai : l.adapters) lora_h[ai] = cv.take<bf16>(N * lora->adapters[ai].rank);
  }

  void carve_stream(Carver& cv, StreamActs& s, size_t N) {
    const FluxConfig& c = model->cfg;
    const size_t C = c.hidden, M = c.mlp_hidden, H = c.heads;
    s.mod = cv.take<bf16>((size_t)B * 6 * C);
    for (bf16** p : {&s.n1, &s.m1, &s.q_pre, &s.k_pre, &s.attn, &s.proj, &s.x1, &s.n2, &s.m2, &s.h2})
      *p = cv.take<bf16>(N * C);
    s.h1 = cv.take<bf16>(N * M);
    s.g = cv.take<bf16>(N * M);
    for (float** p : {&s.mean1, &s.rstd1, &s.mean2, &s.rstd2}) *p = cv.take<float>(N);
    s.rrms_q = cv.take<float>(N * H);
    s.rrms_k = cv.take<float>(N * H);
  }

  void carve_arena(Carver& cv, bool ckpt) {
    const FluxConfig& c = model->cfg;
    FluxModel& m = *model;
    const size_t C = c.hidden, M = c.mlp_hidden, H = c.heads, D = c.head_dim, L = Li + Lt;
    const size_t NI = (size_t)B * Li, NT = (size_t)B * Lt, NJ = (size_t)B * L, NS = std::max(NI, NT);
    in_img = cv.take<bf16>(NI * c.in_channels);
    in_txt = cv.take<bf16>(NT * c.context_dim);
    in_y = cv.take<bf16>((size_t)B * c.vec_dim);
    in_t = cv.take<float>(B);
    in_g = cv.take<float>(B);
    ids = cv.take<float>(NJ * 3);
    cos_sin = cv.take<float>(NJ * D);
    temb = cv.take<bf16>((size_t)B * 256);
    for (bf16** p : {&ch, &chs, &cv_, &ctmp, &silu_vec}) *p = cv.take<bf16>((size_t)B * C);

    if (lora) {
      for (FluxLinear* l : {&m.time_in0, &m.time_in1, &m.vector_in0, &m.vector_in1, &m.final_mod})
        carve_lora_h(cv, *l, B);
      if (c.guidance_embed) {
        carve_lora_h(cv, m.guidance_in0, B);
        carve_lora_h(cv, m.guidance_in1, B);
      }
      carve_lora_h(cv, m.img_in, NI);
      carve_lora_h(cv, m.txt_in, NT);
      carve_lora_h(cv, m.final_linear, NI);
      for (auto& d : m.doubles)
        for (int s = 0; s < 2; ++s) {
          FluxStreamWeights& w = s == 0 ? d.img : d.txt;
          size_t N = s == 0 ? NI : NT;
          carve_lora_h(cv, w.mod, B);
          for (FluxLinear* l : {&w.qkv, &w.proj, &w.mlp0, &w.mlp2}) carve_lora_h(cv, *l, N);
        }
      for (auto& s : m.singles) {
        carve_lora_h(cv, s.mod, B);
        carve_lora_h(cv, s.linear1, NJ);
        carve_lora_h(cv, s.linear2, NJ);
      }
    }

    img_x.resize(m.doubles.size() + 1);
    txt_x.resize(m.doubles.size() + 1);
    for (auto& p : img_x) p = cv.take<bf16>(NI * C);
    for (auto& p : txt_x) p = cv.take<bf16>(NT * C);
    sx.resize(m.singles.size() + 1);
    for (auto& p : sx) p = cv.take<bf16>(NJ * C);

    dacts.assign(m.doubles.empty() ? 0 : ckpt ? 1 : m.doubles.size(), DoubleActs());
    for (DoubleActs& a : dacts) {
      carve_stream(cv, a.img, NI);
      carve_stream(cv, a.txt, NT);
      for (bf16** p : {&a.Qr, &a.Kr, &a.V, &a.attn}) *p = cv.take<bf16>(NJ * C);
      a.lse = cv.take<float>(NJ * H);
    }
    sacts.assign(m.singles.empty() ? 0 : ckpt ? 1 : m.singles.size(), SingleActs());
    for (SingleActs& a : sacts) {
      a.mod = cv.take<bf16>((size_t)B * 3 * C);
      for (bf16** p : {&a.n, &a.m, &a.q_pre, &a.k_pre, &a.Qr, &a.Kr, &a.V, &a.attn, &a.out}) *p = cv.take<bf16>(NJ * C);
      a.lin1 = cv.take<bf16>(NJ * (3 * C + M));
      a.cat = cv.take<bf16>(NJ * (C + M));
      a.mean = cv.take<float>(NJ);
      a.rstd = cv.take<float>(NJ);
      a.rrms_q = cv.take<float>(NJ * H);
      a.rrms_k = cv.take<float>(NJ * H);
      a.lse = cv.take<float>(NJ * H);
    }

    qkv = cv.take<bf16>(NS * 3 * C);
    qn_s = cv.take<bf16>(NS * C);
    kn_s = cv.take<bf16>(NS * C);
    Qn = cv.take<bf16>(NJ * C);
    Kn = cv.take<bf16>(NJ * C);

    final_in = cv.take<bf16>(NI * C);
    fmod = cv.take<bf16>((size_t)B * 2 * C);
    final_n = cv.take<bf16>(NI * C);
    final_m = cv.take<bf16>(NI * C);
    fmean = cv.take<float>(NI);
    frstd = cv.take<float>(NI);
    out_d = cv.take<bf16>(NI * c.out_channels);
    dout_d = cv.take<bf16>(NI * c.out_channels);

    dimg = cv.take<bf16>(NI * C);
    dtxt = cv.take<bf16>(NT * C);
    for (bf16** p : {&dx, &dattn_j, &dQr, &dKr, &dV, &dQn, &dKn, &dq_in, &dk_in, &dq_s, &dk_s, &dm, &dn, &dh2, &dproj,
                     &dattn_s})
      *p = cv.take<bf16>(NJ * C);
    dg = cv.take<bf16>(NS * M);
    dh1 = cv.take<bf16>(NS * M);
    dcat = cv.take<bf16>(NJ * (C + M));
    dlin1 = cv.take<bf16>(std::max(NJ * (3 * C + M), NS * 3 * C));  // also the double streams' dqkv
    dmod_img = cv.take<bf16>((size_t)B * 6 * C);
    dmod_txt = cv.take<bf16>((size_t)B * 6 * C);
    dfmod = cv.take<bf16>((size_t)B * 2 * C);
    for (bf16** p : {&dfm, &dfn, &dfin}) *p = cv.take<bf16>(NI * C);
  }
  bf16* cv_ = nullptr;  // the conditioning vector (FluxRunner's v), named apart from the Carver

  // Sizes the arena for (B, Li, Lt) and carves it; on a shape change only.
  void plan(int b, int li, int lt) {
    if (arena && b == B && li == Li && lt == Lt) return;
    B = b;
    Li = li;
    Lt = lt;
    Carver full, ckpt;
    carve_arena(full, false);
    carve_arena(ckpt, true);
    cudaCheck(cudaDeviceSynchronize());
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    size_t avail = free_b + arena_bytes;  // the current arena is released before a new one
    const size_t reserve = (size_t)512 << 20;  // cuBLASLt workspace, attention and LoRA scratch
    bool want = opt.checkpoint == 1;
    if (opt.checkpoint == -1) {
      const char* env = std::getenv("GRAFT_GRAD_CHECKPOINT");
      if (env && *env) want = std::strcmp(env, "0") != 0;
      else want = full.used + reserve > avail;
    }
    size_t need = want ? ckpt.used : full.used;
    std::string shape = "batch " + std::to_string(B) + ", " + std::to_string(Li) + " image + " + std::to_string(Lt) +
                        " text tokens";
    if (need + reserve > avail) {
      std::string hint = want ? "Lower the resolution or the batch size."
                              : "Lower the resolution or the batch size, or turn on gradient checkpointing "
                                "(GRAFT_GRAD_CHECKPOINT=1: " + mib(ckpt.used) + ").";
      fail("out of GPU memory: the FLUX step at " + shape + " needs " + mib(need) + " of activations" +
           (want ? " with gradient checkpointing" : "") + " besides " + mib(weight_bytes) + " of weights, and " +
           mib(free_b) + " are free of " + mib(total_b) + ". " + hint);
    }
    if (want && !checkpointing && opt.checkpoint == -1 && !std::getenv("GRAFT_GRAD_CHECKPOINT"))
      std::fprintf(stderr, "note: gradient checkpointing on: %s of activations needed without it, %s free\n",
                   mib(full.used).c_str(), mib(avail).c_str());
    checkpointing = want;
    if (need > arena_bytes) {
      cudaCheck(cudaFree(arena));
      arena = nullptr;
      arena_bytes = 0;
      arena = device_alloc(need, ("activations for the FLUX step at " + shape).c_str());
      arena_bytes = need;
    }
    Carver place;
    place.base = (char*)arena;
    carve_arena(place, checkpointing);
  }

  // ---------------------------------------------------------------- building blocks

  const float* A_of(int ai) const { return d_params + lora->adapters[ai].a_off; }
  const float* B_of(int ai) const { return d_params + lora->adapters[ai].b_off; }

  // Frozen linear layer plus its adapters (FluxRunner's lin_forward).
  void lin_fwd(const DLinear& l, bf16* out, const bf16* inp, int N) {
    gpu::linear_forward(out, inp, l.W, l.b, N, l.in, l.out);
    for (int ai : l.host->adapters) {
      const LoraAdapter& ad = lora->adapters[ai];
      gpu::lora_forward(out + ad.target.row_offset, l.out, lora_h[ai], inp, A_of(ai), B_of(ai), N, l.in,
                        ad.target.rows, ad.rank, ad.scale);
    }
  }
  void lin_bwd(const DLinear& l, bf16* dinp, const bf16* dout, const bf16* inp, int N) {
    if (dinp) gpu::linear_backward(dinp, nullptr, nullptr, dout, inp, l.W, N, l.in, l.out);
    for (int ai : l.host->adapters) {
      const LoraAdapter& ad = lora->adapters[ai];
      gpu::lora_backward(dinp, d_grads + ad.a_off, d_grads + ad.b_off, dout + ad.target.row_offset, l.out,
                         lora_h[ai], inp, A_of(ai), B_of(ai), N, l.in, ad.target.rows, ad.rank, ad.scale);
    }
  }
  // A modulation layer's gradient goes only to its adapters: the conditioning vector is frozen.
  void mod_bwd(const DLinear& l, const bf16* dmod) {
    if (!l.host->adapters.empty()) lin_bwd(l, nullptr, dmod, silu_vec, B);
  }

  // Rows [off, off + Ls) of each batch item of a joint [B, L, C] buffer <-> a stream [B, Ls, C] one.
  void joint_to_stream(bf16* stream, const bf16* joint, int Ls, int off) {
    const long C = model->cfg.hidden, L = Li + Lt;
    copy_rows(stream, Ls * C, joint + off * C, L * C, B, (int)(Ls * C));
  }
  void stream_to_joint(bf16* joint, const bf16* stream, int Ls, int off) {
    const long C = model->cfg.hidden, L = Li + Lt;
    copy_rows(joint + off * C, L * C, stream, Ls * C, B, (int)(Ls * C));
  }

  // ---------------------------------------------------------------- forward

  // FluxRunner's stream_pre_forward: modulation, norm, qkv, QK-norm into the joint buffers.
  void stream_pre_forward(const DStream& w, StreamActs& s, DoubleActs& d, const bf16* x, int Ls, int off) {
    const FluxConfig& c = model->cfg;
    const int C = c.hidden, H = c.heads, D = c.head_dim;
    const int N = B * Ls;
    lin_fwd(w.mod, s.mod, silu_vec, B);
    gpu::layernorm_forward(s.n1, s.mean1, s.rstd1, x, N, C);
    gpu::modulate_forward(s.m1, s.n1, s.mod, s.mod + C, 6 * C, B, Ls, C);
    lin_fwd(w.qkv, qkv, s.m1, N);
    copy_rows(s.q_pre, C, qkv, 3 * C, N, C);
    copy_rows(s.k_pre, C, qkv + C, 3 * C, N, C);
    gpu::rmsnorm_forward(qn_s, s.rrms_q, s.q_pre, w.q_scale, N * H, D);
    gpu::rmsnorm_forward(kn_s, s.rrms_k, s.k_pre, w.k_scale, N * H, D);
    stream_to_joint(Qn, qn_s, Ls, off);
    stream_to_joint(Kn, kn_s, Ls, off);
    const long L = Li + Lt;
    for (int b = 0; b < B; ++b)
      copy_rows(d.V + ((long)b * L + off) * C, C, qkv + (long)b * Ls * 3 * C + 2 * C, 3 * C, Ls, C);
  }

  // Joint attention with RoPE over Qn, Kn and d.V.
  void rope_attention_forward(bf16* out, float* lse, bf16* Qr, bf16* Kr, const bf16* V) {
    const FluxConfig& c = model->cfg;
    const int L = Li + Lt;
    gpu::rope_forward(Qr, Qn, cos_sin, B, L, c.heads, c.head_dim);
    gpu::rope_forward(Kr, Kn, cos_sin, B, L, c.heads, c.head_dim);
    gpu::attention_forward(out, lse, Qr, Kr, V, B, L, c.heads, c.head_dim);
  }

  // FluxRunner's stream_post_forward: projection, gated residuals and MLP; the stream's new value
  // goes to x_out.
  void stream_post_forward(const DStream& w, StreamActs& s, const DoubleActs& d, const bf16* x, bf16* x_out, int Ls,
                           int off) {
    const FluxConfig& c = model->cfg;
    const int C = c.hidden, M = c.mlp_hidden;
    const int N = B * Ls;
    joint_to_stream(s.attn, d.attn, Ls, off);
    lin_fwd(w.proj, s.proj, s.attn, N);
    cudaCheck(cudaMemcpyAsync(s.x1, x, (size_t)N * C * 2, cudaMemcpyDeviceToDevice));
    gpu::gate_residual_forward(s.x1, s.proj, s.mod + 2 * C, 6 * C, B, Ls, C);
    gpu::layernorm_forward(s.n2, s.mean2, s.rstd2, s.x1, N, C);
    gpu::modulate_forward(s.m2, s.n2, s.mod + 3 * C, s.mod + 4 * C, 6 * C, B, Ls, C);
    lin_fwd(w.mlp0, s.h1, s.m2, N);
    gpu::gelu_forward(s.g, s.h1, (long)N * M);
    lin_fwd(w.mlp2, s.h2, s.g, N);
    cudaCheck(cudaMemcpyAsync(x_out, s.x1, (size_t)N * C * 2, cudaMemcpyDeviceToDevice));
    gpu::gate_residual_forward(x_out, s.h2, s.mod + 5 * C, 6 * C, B, Ls, C);
  }

  DoubleActs& dact(int i) { return dacts[checkpointing ? 0 : i]; }
  SingleActs& sact(int i) { return sacts[checkpointing ? 0 : i]; }

  void double_forward(int i) {
    const DDouble& w = doubles[i];
    DoubleActs& d = dact(i);
    stream_pre_forward(w.txt, d.txt, d, txt_x[i], Lt, 0);
    stream_pre_forward(w.img, d.img, d, img_x[i], Li, Lt);
    rope_attention_forward(d.attn, d.lse, d.Qr, d.Kr, d.V);
    stream_post_forward(w.txt, d.txt, d, txt_x[i], txt_x[i + 1], Lt, 0);
    stream_post_forward(w.img, d.img, d, img_x[i], img_x[i + 1], Li, Lt);
  }

  void single_forward(int j) {
    const FluxConfig& c = model->cfg;
    const int C = c.hidden, H = c.heads, D = c.head_dim, M = c.mlp_hidden, L = Li + Lt;
    const int N = B * L, W1 = 3 * C + M;
    const DSingle& w = singles[j];
    SingleActs& s = sact(j);
    const bf16* x = sx[j];
    lin_fwd(w.mod, s.mod, silu_vec, B);
    gpu::layernorm_forward(s.n, s.mean, s.rstd, x, N, C);
    gpu::modulate_forward(s.m, s.n, s.mod, s.mod + C, 3 * C, B, L, C);
    lin_fwd(w.linear1, s.lin1, s.m, N);
    copy_rows(s.q_pre, C, s.lin1, W1, N, C);
    copy_rows(s.k_pre, C, s.lin1 + C, W1, N, C);
    gpu::rmsnorm_forward(Qn, s.rrms_q, s.q_pre, w.q_scale, N * H, D);
    gpu::rmsnorm_forward(Kn, s.rrms_k, s.k_pre, w.k_scale, N * H, D);
    copy_rows(s.V, C, s.lin1 + 2 * C, W1, N, C);
    rope_attention_forward(s.attn, s.lse, s.Qr, s.Kr, s.V);
    copy_rows(s.cat, C + M, s.attn, C, N, C);
    gelu_rows_forward_kernel<<<blocks_for((long)N * M), 256>>>(s.cat + C, C + M, s.lin1 + 3 * C, W1, N, M);
    cudaCheckLaunch();
    lin_fwd(w.linear2, s.out, s.cat, N);
    cudaCheck(cudaMemcpyAsync(sx[j + 1], x, (size_t)N * C * 2, cudaMemcpyDeviceToDevice));
    gpu::gate_residual_forward(sx[j + 1], s.out, s.mod + 2 * C, 3 * C, B, L, C);
  }

  void upload_bf16(bf16* dst, const std::vector<float>& src, size_t n, const char* what) {
    if (src.size() != n)
      fail(std::string("CUDA backend: input '") + what + "' has " + std::to_string(src.size()) + " values, expected " +
           std::to_string(n));
    staging.resize(n);
    for (size_t i = 0; i < n; i++) staging[i] = f32_to_bf16_bits(src[i]);
    cudaCheck(cudaMemcpy(dst, staging.data(), n * 2, cudaMemcpyHostToDevice));
  }
  void upload_f32(float* dst, const std::vector<float>& src, size_t n, const char* what) {
    if (src.size() != n)
      fail(std::string("CUDA backend: input '") + what + "' has " + std::to_string(src.size()) + " values, expected " +
           std::to_string(n));
    cudaCheck(cudaMemcpy(dst, src.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  }

  void forward(const FluxInputs& in, std::vector<float>& out) override {
    const FluxConfig& c = model->cfg;
    plan(in.B, in.L_img, in.L_txt);
    const int C = c.hidden, L = Li + Lt;
    const size_t NI = (size_t)B * Li, NT = (size_t)B * Lt;

    upload_bf16(in_img, in.img, NI * c.in_channels, "img");
    upload_bf16(in_txt, in.txt, NT * c.context_dim, "txt");
    upload_bf16(in_y, in.y, (size_t)B * c.vec_dim, "y");
    upload_f32(in_t, in.timesteps, B, "timesteps");
    {  // RoPE ids over the joint sequence [txt; img], as FluxRunner builds them
      if (in.txt_ids.size() != NT * 3 || in.img_ids.size() != NI * 3) fail("CUDA backend: txt_ids/img_ids shape");
      std::vector<float> h((size_t)B * L * 3);
      for (int b = 0; b < B; ++b) {
        std::memcpy(&h[(size_t)b * L * 3], &in.txt_ids[(size_t)b * Lt * 3], (size_t)Lt * 3 * sizeof(float));
        std::memcpy(&h[((size_t)b * L + Lt) * 3], &in.img_ids[(size_t)b * Li * 3], (size_t)Li * 3 * sizeof(float));
      }
      cudaCheck(cudaMemcpy(ids, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
    }

    // Conditioning vector: time (+ guidance) + pooled text, then SiLU once for every modulation.
    gpu::timestep_embedding_forward(temb, in_t, B, 256, 1000.0f, 10000.0f);
    lin_fwd(time_in0, ch, temb, B);
    gpu::silu_forward(chs, ch, (long)B * C);
    lin_fwd(time_in1, cv_, chs, B);
    if (c.guidance_embed) {
      if ((int)in.guidance.size() != B) fail("this model has guidance_in: a guidance value per batch item is needed");
      upload_f32(in_g, in.guidance, B, "guidance");
      gpu::timestep_embedding_forward(temb, in_g, B, 256, 1000.0f, 10000.0f);
      lin_fwd(guidance_in0, ch, temb, B);
      gpu::silu_forward(chs, ch, (long)B * C);
      lin_fwd(guidance_in1, ctmp, chs, B);
      add_kernel<<<blocks_for((long)B * C), 256>>>(cv_, ctmp, (long)B * C);
      cudaCheckLaunch();
    }
    lin_fwd(vector_in0, ch, in_y, B);
    gpu::silu_forward(chs, ch, (long)B * C);
    lin_fwd(vector_in1, ctmp, chs, B);
    add_kernel<<<blocks_for((long)B * C), 256>>>(cv_, ctmp, (long)B * C);
    cudaCheckLaunch();
    gpu::silu_forward(silu_vec, cv_, (long)B * C);

    gpu::rope_table(cos_sin, ids, B * L, c.axes_dim, 3, c.theta);

    lin_fwd(img_in, img_x[0], in_img, (int)NI);
    lin_fwd(txt_in, txt_x[0], in_txt, (int)NT);
    for (size_t i = 0; i < doubles.size(); ++i) double_forward((int)i);

    stream_to_joint(sx[0], txt_x[doubles.size()], Lt, 0);
    stream_to_joint(sx[0], img_x[doubles.size()], Li, Lt);
    for (size_t j = 0; j < singles.size(); ++j) single_forward((int)j);

    // Final layer on the image tokens: shift comes FIRST in FLUX's LastLayer.
    joint_to_stream(final_in, sx[singles.size()], Li, Lt);
    lin_fwd(final_mod, fmod, silu_vec, B);
    gpu::layernorm_forward(final_n, fmean, frstd, final_in, (int)NI, C);
    gpu::modulate_forward(final_m, final_n, fmod, fmod + C, 2 * C, B, Li, C);
    lin_fwd(final_linear, out_d, final_m, (int)NI);

    const size_t n_out = NI * c.out_channels;
    staging.resize(n_out);
    cudaCheck(cudaMemcpy(staging.data(), out_d, n_out * 2, cudaMemcpyDeviceToHost));  // synchronises
    out.resize(n_out);
    for (size_t i = 0; i < n_out; i++) out[i] = bf16_bits_to_f32(staging[i]);
    note_memory();
  }

  // ---------------------------------------------------------------- backward

  // FluxRunner's stream_post_backward: dxs holds d(stream output) and becomes d(x1) (the residual
  // plus the MLP branch); the attention output's gradient goes to this stream's rows of dattn_j.
  void stream_post_backward(const DStream& w, StreamActs& s, bf16* dmod, bf16* dxs, int Ls, int off) {
    const FluxConfig& c = model->cfg;
    const int C = c.hidden, M = c.mlp_hidden;
    const int N = B * Ls;
    zero_n(dh2, (size_t)N * C);
    zero_n(dg, (size_t)N * M);
    zero_n(dh1, (size_t)N * M);
    zero_n(dm, (size_t)N * C);
    zero_n(dn, (size_t)N * C);
    gpu::gate_residual_backward(dh2, dmod + 5 * C, dxs, s.h2, s.mod + 5 * C, 6 * C, B, Ls, C);
    lin_bwd(w.mlp2, dg, dh2, s.g, N);
    gpu::gelu_backward(dh1, dg, s.h1, (long)N * M);
    lin_bwd(w.mlp0, dm, dh1, s.m2, N);
    gpu::modulate_backward(dn, dmod + 3 * C, dmod + 4 * C, dm, s.n2, s.mod + 4 * C, 6 * C, B, Ls, C);
    gpu::layernorm_backward(dxs, dn, s.x1, s.mean2, s.rstd2, N, C);  // dxs is now d(x1)
    zero_n(dproj, (size_t)N * C);
    zero_n(dattn_s, (size_t)N * C);
    gpu::gate_residual_backward(dproj, dmod + 2 * C, dxs, s.proj, s.mod + 2 * C, 6 * C, B, Ls, C);
    lin_bwd(w.proj, dattn_s, dproj, s.attn, N);
    stream_to_joint(dattn_j, dattn_s, Ls, off);
  }

  void stream_pre_backward(const DStream& w, StreamActs& s, bf16* dmod, bf16* dxs, const bf16* x, int Ls, int off) {
    const FluxConfig& c = model->cfg;
    const int C = c.hidden, H = c.heads, D = c.head_dim;
    const int N = B * Ls;
    const long L = Li + Lt;
    joint_to_stream(dq_in, dQn, Ls, off);
    joint_to_stream(dk_in, dKn, Ls, off);
    zero_n(dq_s, (size_t)N * C);
    zero_n(dk_s, (size_t)N * C);
    gpu::rmsnorm_backward(dq_s, nullptr, dq_in, s.q_pre, w.q_scale, s.rrms_q, N * H, D);
    gpu::rmsnorm_backward(dk_s, nullptr, dk_in, s.k_pre, w.k_scale, s.rrms_k, N * H, D);
    bf16* dqkv = dlin1;
    copy_rows(dqkv, 3 * C, dq_s, C, N, C);
    copy_rows(dqkv + C, 3 * C, dk_s, C, N, C);
    for (int b = 0; b < B; ++b)
      copy_rows(dqkv + (long)b * Ls * 3 * C + 2 * C, 3 * C, dV + ((long)b * L + off) * C, C, Ls, C);
    zero_n(dm, (size_t)N * C);
    zero_n(dn, (size_t)N * C);
    lin_bwd(w.qkv, dm, dqkv, s.m1, N);
    gpu::modulate_backward(dn, dmod, dmod + C, dm, s.n1, s.mod + C, 6 * C, B, Ls, C);
    gpu::layernorm_backward(dxs, dn, x, s.mean1, s.rstd1, N, C);
    mod_bwd(w.mod, dmod);
  }

  // dQn, dKn, dV (joint) from the gradient of the attention output `dout`.
  void rope_attention_backward(const bf16* dout, const bf16* out, const float* lse, const bf16* Qr, const bf16* Kr,
                               const bf16* V) {
    const FluxConfig& c = model->cfg;
    const int L = Li + Lt, H = c.heads, D = c.head_dim;
    const size_t n = (size_t)B * L * c.hidden;
    for (bf16* p : {dQr, dKr, dV, dQn, dKn}) zero_n(p, n);
    gpu::attention_backward(dQr, dKr, dV, dout, out, lse, Qr, Kr, V, B, L, H, D);
    gpu::rope_backward(dQn, dQr, cos_sin, B, L, H, D);
    gpu::rope_backward(dKn, dKr, cos_sin, B, L, H, D);
  }

  void double_backward(int i) {
    const DDouble& w = doubles[i];
    DoubleActs& d = dact(i);
    const FluxConfig& c = model->cfg;
    const size_t C = c.hidden, L = Li + Lt;
    zero_n(dmod_img, (size_t)B * 6 * C);
    zero_n(dmod_txt, (size_t)B * 6 * C);
    zero_n(dattn_j, (size_t)B * L * C);
    stream_post_backward(w.txt, d.txt, dmod_txt, dtxt, Lt, 0);
    stream_post_backward(w.img, d.img, dmod_img, dimg, Li, Lt);
    rope_attention_backward(dattn_j, d.attn, d.lse, d.Qr, d.Kr, d.V);
    stream_pre_backward(w.txt, d.txt, dmod_txt, dtxt, txt_x[i], Lt, 0);
    stream_pre_backward(w.img, d.img, dmod_img, dimg, img_x[i], Li, Lt);
  }

  // dx holds d(block output) and becomes d(block input).
  void single_backward(int j) {
    const FluxConfig& c = model->cfg;
    const int C = c.hidden, H = c.heads, D = c.head_dim, M = c.mlp_hidden, L = Li + Lt;
    const int N = B * L, W1 = 3 * C + M;
    const DSingle& w = singles[j];
    SingleActs& s = sact(j);
    bf16* dmod = dmod_img;
    bf16* dout2 = dh2;
    zero_n(dmod, (size_t)B * 3 * C);
    zero_n(dout2, (size_t)N * C);
    zero_n(dcat, (size_t)N * (C + M));
    zero_n(dlin1, (size_t)N * W1);
    gpu::gate_residual_backward(dout2, dmod + 2 * C, dx, s.out, s.mod + 2 * C, 3 * C, B, L, C);
    lin_bwd(w.linear2, dcat, dout2, s.cat, N);
    gelu_rows_backward_kernel<<<blocks_for((long)N * M), 256>>>(dlin1 + 3 * C, W1, dcat + C, C + M, s.lin1 + 3 * C,
                                                                 W1, N, M);
    cudaCheckLaunch();
    copy_rows(dattn_s, C, dcat, C + M, N, C);
    rope_attention_backward(dattn_s, s.attn, s.lse, s.Qr, s.Kr, s.V);
    zero_n(dq_s, (size_t)N * C);
    zero_n(dk_s, (size_t)N * C);
    gpu::rmsnorm_backward(dq_s, nullptr, dQn, s.q_pre, w.q_scale, s.rrms_q, N * H, D);
    gpu::rmsnorm_backward(dk_s, nullptr, dKn, s.k_pre, w.k_scale, s.rrms_k, N * H, D);
    copy_rows(dlin1, W1, dq_s, C, N, C);
    copy_rows(dlin1 + C, W1, dk_s, C, N, C);
    copy_rows(dlin1 + 2 * C, W1, dV, C, N, C);
    zero_n(dm, (size_t)N * C);
    zero_n(dn, (size_t)N * C);
    lin_bwd(w.linear1, dm, dlin1, s.m, N);
    gpu::modulate_backward(dn, dmod, dmod + C, dm, s.n, s.mod + C, 3 * C, B, L, C);
    gpu::layernorm_backward(dx, dn, sx[j], s.mean, s.rstd, N, C);
    mod_bwd(w.mod, dmod);
  }

  void backward(const std::vector<float>& dout) override {
    if (!arena) fail("CUDA backend: backward before forward");
    const FluxConfig& c = model->cfg;
    const int C = c.hidden, L = Li + Lt;
    const size_t NI = (size_t)B * Li;
    if (!lora || lora->adapters.empty()) return;  // nothing trainable: no gradient to compute
    upload_bf16(dout_d, dout, NI * c.out_channels, "dout");
    zero_n(d_grads, lora->params.size());

    // Final layer.
    for (bf16* p : {dfm, dfn, dfin}) zero_n(p, NI * C);
    zero_n(dfmod, (size_t)B * 2 * C);
    lin_bwd(final_linear, dfm, dout_d, final_m, (int)NI);
    gpu::modulate_backward(dfn, dfmod, dfmod + C, dfm, final_n, fmod + C, 2 * C, B, Li, C);
    mod_bwd(final_mod, dfmod);
    gpu::layernorm_backward(dfin, dfn, final_in, fmean, frstd, (int)NI, C);
    zero_n(dx, (size_t)B * L * C);
    stream_to_joint(dx, dfin, Li, Lt);

    for (int j = (int)singles.size() - 1; j >= 0; --j) {
      if (checkpointing) single_forward(j);
      single_backward(j);
    }

    // Split the joint gradient back into the two streams.
    joint_to_stream(dtxt, dx, Lt, 0);
    joint_to_stream(dimg, dx, Li, Lt);
    for (int i = (int)doubles.size() - 1; i >= 0; --i) {
      if (checkpointing) double_forward(i);
      double_backward(i);
    }
    // img_in / txt_in and the embedders carry no adapters: the backward stops here.

    cudaCheck(cudaMemcpy(host_grads.data(), d_grads, host_grads.size() * sizeof(float), cudaMemcpyDeviceToHost));
    float* g = lora->grads.data();
    const long P = (long)host_grads.size();
#pragma omp parallel for schedule(static)
    for (long i = 0; i < P; i++) g[i] += host_grads[i];
    note_memory();
  }

  FluxGpuMemory memory() const {
    FluxGpuMemory m;
    m.weights = weight_bytes;
    m.lora = lora ? 2 * lora->params.size() * sizeof(float) : 0;
    m.activations = arena_bytes;
    m.checkpointing = checkpointing;
    return m;
  }
};

}  // namespace

std::unique_ptr<FluxBackend> make_flux_gpu(FluxModel* model, LoraSet* lora, int device, const FluxGpuOptions& opt) {
  if (lora && lora->grads.size() != lora->params.size()) lora->grads.assign(lora->params.size(), 0.0f);
  return std::make_unique<FluxGpu>(model, lora, device, opt);
}

FluxGpuMemory flux_gpu_memory(const FluxBackend& backend) {
  const FluxGpu* g = dynamic_cast<const FluxGpu*>(&backend);
  return g ? g->memory() : FluxGpuMemory();
}

}  // namespace gpu
}  // namespace graft
