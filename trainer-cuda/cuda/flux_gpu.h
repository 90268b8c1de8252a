// The FLUX training step on the GPU: the FluxBackend the training loop uses with device cuda:N.
// It runs the same graph as the CPU FluxRunner (src/flux.cpp), op for op and in the same order, on
// the CUDA ops of ops_gpu.h: frozen weights in bf16 (uploaded once), LoRA master weights and their
// gradients in fp32 on the device, activations in bf16 carved from one arena planned from (B, L_img,
// L_txt) at the first forward.
//
// Gradient checkpointing: with it, only each block's input is kept through the forward; the backward
// recomputes one block's activations just before its backward (one extra forward, about a third more
// arithmetic). GRAFT_GRAD_CHECKPOINT=1 forces it on, =0 off; unset, it is switched on by itself only
// when the full activations would not fit in free device memory.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "flux_backend.h"

namespace graft {
namespace gpu {

struct FluxGpuOptions {
  int checkpoint = -1;          // 1 on, 0 off, -1 auto (GRAFT_GRAD_CHECKPOINT, else only when needed)
  bool random_weights = false;  // fill the frozen weights on the device (uniform, std 1/sqrt(in); the
                                // host model may hold shapes only: flux_model_shapes); for benchmarks
  uint64_t seed = 1;
};

// Device memory of a backend, in bytes.
struct FluxGpuMemory {
  size_t weights = 0;      // frozen bf16 weights, biases, QK scales
  size_t lora = 0;         // fp32 LoRA params + grads
  size_t activations = 0;  // the arena: kept activations, gradients scratch, inputs and outputs
  bool checkpointing = false;
};

std::unique_ptr<FluxBackend> make_flux_gpu(FluxModel* model, LoraSet* lora, int device, const FluxGpuOptions& opt);
// The memory of a backend made by make_flux_gpu (zeros for any other backend).
FluxGpuMemory flux_gpu_memory(const FluxBackend& backend);

}  // namespace gpu
}  // namespace graft
