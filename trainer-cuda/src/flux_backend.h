// What the training loop needs from a device: a FLUX forward and the LoRA backward. The CPU
// reference (FluxRunner, flux.h) and the CUDA backend (cuda/flux_gpu.cu) implement it, so the loop,
// the optimizer, saving and resume are written once.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "flux.h"
#include "lora.h"

namespace graft {

struct FluxBackend {
  virtual ~FluxBackend() = default;
  virtual std::string name() const = 0;  // "cpu (2 threads)", "cuda:0 NVIDIA H200"
  // out: [B, L_img, out_channels] on the host. Keeps what backward needs.
  virtual void forward(const FluxInputs& in, std::vector<float>& out) = 0;
  // Accumulates the LoRA gradients into lora->grads (host) for dL/dout (host).
  virtual void backward(const std::vector<float>& dout) = 0;
  // lora->params changed on the host (optimizer step, resume): make the device's copy current.
  // Adapter scales (lora->adapters[i].scale) need no call: every forward reads them from the host.
  virtual void params_updated() = 0;
  // Peak device memory in MiB so far (0 on the CPU), for the step events.
  virtual double peak_memory_mb() const { return 0.0; }
};

std::unique_ptr<FluxBackend> make_cpu_backend(FluxModel* model, LoraSet* lora);

// True when this build links the CUDA backend (nvcc was present at build time).
bool cuda_built();
// Throws Error with a clear message when CUDA cannot be used: no driver, no such device, out of
// memory with the amount asked. Only callable when cuda_built().
std::unique_ptr<FluxBackend> make_cuda_backend(FluxModel* model, LoraSet* lora, int device);
// Number of usable CUDA devices (0 when none, or no driver, or not built with CUDA).
int cuda_device_count();

// "cpu", "cuda", "cuda:N" or "auto" (CUDA device 0 when one is usable, else the CPU).
std::unique_ptr<FluxBackend> make_backend(const std::string& device, FluxModel* model, LoraSet* lora,
                                          const std::string& where);

}  // namespace graft
