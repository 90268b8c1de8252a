// Model-level parity: the CUDA FLUX backend (cuda/flux_gpu.cu) against the CPU FluxRunner on a tiny
// random checkpoint written by the project's own write_random_flux, with a random non-zero LoRA on
// every target the toolkit trains plus the modulation layers. Both sides get the same bf16-rounded
// weights, LoRA parameters and inputs, so what differs is only the GPU's bf16 storage of
// activations and activation gradients (fp32 accumulation on both).
//
// Tolerances (relative L2, ||gpu - cpu|| / ||cpu||): after ~40 bf16 roundings in a chain,
//   output 3e-2; all LoRA gradients together 5e-2; each adapter's [dA, dB] 1.5e-1 (the smallest
//   adapters' gradients are the noisiest).
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "flux.h"
#include "flux_backend.h"
#include "flux_gpu.h"
#include "gpu_test_util.h"
#include "lora.h"
#include "rng.h"
#include "tiny.h"

namespace graft {
namespace gpu {

static const double TOL_FLUX_OUT = 3e-2, TOL_FLUX_GRADS = 5e-2, TOL_FLUX_ADAPTER = 1.5e-1;

namespace {

float bf16_round(float x) { return bf16_bits_to_f32(f32_to_bf16_bits(x)); }
void round_all(std::vector<float>& v) {
  for (float& x : v) x = bf16_round(x);
}

FluxInputs make_inputs(const FluxConfig& c, int B, int gh, int gw, int Lt, uint64_t seed) {
  FluxInputs in;
  in.B = B;
  in.L_img = gh * gw;
  in.L_txt = Lt;
  Rng rng(seed, 5);
  auto fill = [&](std::vector<float>& v, size_t n, float scale) {
    v.resize(n);
    for (float& x : v) x = bf16_round(scale * rng.normal());
  };
  fill(in.img, (size_t)B * in.L_img * c.in_channels, 1.0f);
  fill(in.txt, (size_t)B * Lt * c.context_dim, 1.0f);
  fill(in.y, (size_t)B * c.vec_dim, 1.0f);
  in.img_ids.resize((size_t)B * in.L_img * 3);
  flux_img_ids(in.img_ids.data(), B, gh, gw);
  in.txt_ids.assign((size_t)B * Lt * 3, 0.0f);
  for (int b = 0; b < B; ++b) {
    in.timesteps.push_back(0.1f + 0.8f * rng.uniform());
    in.guidance.push_back(1.0f + 3.0f * rng.uniform());
  }
  return in;
}

struct Outcome {
  double out_rel = 0, grads_rel = 0, worst_adapter = 0, accumulate_rel = 0;
  std::string worst_name;
  long nonfinite = 0;
};

double rel_l2(const std::vector<float>& got, const std::vector<float>& ref, size_t from, size_t n, long* nonfinite) {
  double num = 0, den = 0;
  for (size_t i = from; i < from + n; i++) {
    if (!std::isfinite(got[i])) {
      if (nonfinite) ++*nonfinite;
      continue;
    }
    double d = (double)got[i] - ref[i];
    num += d * d;
    den += (double)ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

Outcome compare_step(FluxModel& model, LoraSet& lora, const FluxInputs& in, int checkpoint, uint64_t seed) {
  Outcome o;
  // CPU reference.
  std::vector<float> out_cpu, out_gpu, g_cpu;
  Rng rng(seed, 9);
  std::vector<float> dout((size_t)in.B * in.L_img * model.cfg.out_channels);
  for (float& x : dout) x = bf16_round(rng.normal() / (float)std::sqrt((double)dout.size()));
  {
    FluxRunner cpu(&model, &lora);
    cpu.forward(in, out_cpu);
    lora.zero_grad();
    cpu.backward(dout);
    g_cpu = lora.grads;
  }
  // GPU.
  FluxGpuOptions opt;
  opt.checkpoint = checkpoint;
  std::unique_ptr<FluxBackend> gpu = make_flux_gpu(&model, &lora, 0, opt);
  gpu->params_updated();
  gpu->forward(in, out_gpu);
  lora.zero_grad();
  gpu->backward(dout);
  std::vector<float> g_gpu = lora.grads;
  gpu->backward(dout);  // accumulates: lora.grads is now about 2 g_gpu
  std::vector<float> g_twice = lora.grads, two(g_gpu.size());
  for (size_t i = 0; i < two.size(); i++) two[i] = 2.0f * g_gpu[i];

  o.out_rel = rel_l2(out_gpu, out_cpu, 0, out_cpu.size(), &o.nonfinite);
  o.grads_rel = rel_l2(g_gpu, g_cpu, 0, g_cpu.size(), &o.nonfinite);
  o.accumulate_rel = rel_l2(g_twice, two, 0, two.size(), &o.nonfinite);
  for (size_t i = 0; i < lora.adapters.size(); i++) {
    const LoraAdapter& ad = lora.adapters[i];
    // A then B are adjacent in params (lora_create lays them out so); compare both together
    size_t from = std::min(ad.a_off, ad.b_off);
    size_t n = (size_t)ad.rank * ad.target.in + (size_t)ad.target.rows * ad.rank;
    double r = rel_l2(g_gpu, g_cpu, from, n, &o.nonfinite);
    if (r > o.worst_adapter) {
      o.worst_adapter = r;
      o.worst_name = ad.target.module;
    }
  }
  return o;
}

}  // namespace

// Returns true when every comparison is inside its tolerance; prints one line per comparison.
bool flux_parity_test() {
  char tmpl[] = "/tmp/graft-flux-parity-XXXXXX";
  if (!mkdtemp(tmpl)) fail("mkdtemp failed");
  std::string path = std::string(tmpl) + "/transformer.safetensors";
  FluxConfig cfg = tiny_flux_config();
  write_random_flux(path, cfg, 11);
  FluxModel model = FluxModel::load(path);
  unlink(path.c_str());
  rmdir(tmpl);
  for (FluxLinear* l : model.linears()) {
    round_all(l->W);
    round_all(l->b);
  }
  for (auto& d : model.doubles)
    for (FluxStreamWeights* s : {&d.img, &d.txt}) {
      round_all(s->q_scale);
      round_all(s->k_scale);
    }
  for (auto& s : model.singles) {
    round_all(s.q_scale);
    round_all(s.k_scale);
  }
  // A random non-zero LoRA (B drawn too, so every A gets a gradient), modulation layers included.
  LoraSet lora = lora_create(flux_lora_targets(model.cfg, true), 8, 8.0f, 21);
  Rng rng(21, 3);
  for (size_t i = 0; i < lora.adapters.size(); i++) {
    const LoraAdapter& ad = lora.adapters[i];
    float* B = lora.B((int)i);
    for (size_t k = 0; k < (size_t)ad.target.rows * ad.rank; k++) B[k] = 0.1f * rng.normal();
  }
  round_all(lora.params);

  struct Case { const char* name; int B, gh, gw, Lt, checkpoint; };
  const Case cases[] = {
      {"B2, 4x4 image + 8 text tokens", 2, 4, 4, 8, 0},
      {"B1, 3x5 image + 5 text tokens (odd sizes)", 1, 3, 5, 5, 0},
      {"B2, 4x4 + 8, gradient checkpointing", 2, 4, 4, 8, 1},
  };
  bool all_ok = true;
  uint64_t seed = 100;
  for (const Case& k : cases) {
    FluxInputs in = make_inputs(model.cfg, k.B, k.gh, k.gw, k.Lt, seed++);
    Outcome o = compare_step(model, lora, in, k.checkpoint, seed++);
    bool ok = o.nonfinite == 0 && o.out_rel <= TOL_FLUX_OUT && o.grads_rel <= TOL_FLUX_GRADS &&
              o.worst_adapter <= TOL_FLUX_ADAPTER && o.accumulate_rel <= 1e-2;
    all_ok = all_ok && ok;
    std::printf("  %-4s %-44s out rel %.2e (tol %.0e), LoRA grads rel %.2e (tol %.0e), worst adapter %.2e "
                "%s (tol %.1e), accumulation %.1e%s\n",
                ok ? "ok" : "FAIL", k.name, o.out_rel, TOL_FLUX_OUT, o.grads_rel, TOL_FLUX_GRADS, o.worst_adapter,
                o.worst_name.c_str(), TOL_FLUX_ADAPTER, o.accumulate_rel,
                o.nonfinite ? (" NaN/Inf: " + std::to_string(o.nonfinite)).c_str() : "");
  }
  return all_ok;
}

}  // namespace gpu
}  // namespace graft
