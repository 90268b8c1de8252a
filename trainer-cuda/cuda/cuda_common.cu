// Device setup, checked allocations and the scratch area of the CUDA backend.
#include <cstdio>
#include <string>

#include "cuda_common.h"

namespace graft {
namespace gpu {

void cuda_fail(cudaError_t err, const char* call, const char* file, int line) {
  std::string msg = std::string(file) + ":" + std::to_string(line) + ": CUDA error " + cudaGetErrorName(err) +
                    ": " + cudaGetErrorString(err) + " (in " + call + ")";
  throw Error(msg);
}

static std::string mib(size_t bytes) { return std::to_string((bytes + (1u << 20) - 1) >> 20) + " MiB"; }

std::string device_init(int index) {
  int runtime_version = 0, driver_version = 0;
  cudaRuntimeGetVersion(&runtime_version);
  cudaError_t derr = cudaDriverGetVersion(&driver_version);
  if (derr != cudaSuccess || driver_version == 0)
    fail("CUDA unavailable: no NVIDIA driver found (libcuda.so is missing or not loaded). Install the NVIDIA "
         "driver, or run on the CPU (device: cpu).");
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaErrorInsufficientDriver || driver_version < runtime_version)
    fail("CUDA unavailable: the NVIDIA driver supports CUDA " + std::to_string(driver_version / 1000) + "." +
         std::to_string(driver_version % 1000 / 10) + " but this build needs " +
         std::to_string(runtime_version / 1000) + "." + std::to_string(runtime_version % 1000 / 10) +
         ": update the driver.");
  if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0))
    fail("CUDA unavailable: the driver sees no CUDA device (check CUDA_VISIBLE_DEVICES and nvidia-smi).");
  if (err != cudaSuccess)
    fail(std::string("CUDA unavailable: ") + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  if (index < 0) index = 0;
  if (index >= count)
    fail("CUDA device cuda:" + std::to_string(index) + " does not exist: " + std::to_string(count) +
         " device(s) visible (cuda:0 .. cuda:" + std::to_string(count - 1) + ").");
  cudaCheck(cudaSetDevice(index));
  cudaDeviceProp prop;
  cudaCheck(cudaGetDeviceProperties(&prop, index));
  if (prop.major < 8)
    fail(std::string("CUDA device cuda:") + std::to_string(index) + " (" + prop.name + ", compute capability " +
         std::to_string(prop.major) + "." + std::to_string(prop.minor) +
         ") is too old: bf16 training needs compute capability 8.0 (Ampere) or newer.");
  size_t free_b = 0, total_b = 0;
  cudaCheck(cudaMemGetInfo(&free_b, &total_b));
  return "cuda:" + std::to_string(index) + " " + prop.name + " (sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) + " SMs, " + mib(total_b) +
         ", " + mib(free_b) + " free; driver " + std::to_string(driver_version / 1000) + "." +
         std::to_string(driver_version % 1000 / 10) + ")";
}

void* device_alloc(size_t bytes, const char* what) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the sticky-free error so later calls work
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    fail("out of GPU memory: asked for " + mib(bytes) + " for " + what + ", " + mib(free_b) + " free of " +
         mib(total_b) + ". Lower the resolution or batch size, or enable gradient checkpointing.");
  }
  if (err != cudaSuccess) cuda_fail(err, "cudaMalloc", __FILE__, __LINE__);
  return p;
}

void device_free(void* p) {
  if (p) cudaCheck(cudaFree(p));
}

static void* g_scratch[SCRATCH_SLOTS] = {};
static size_t g_scratch_size[SCRATCH_SLOTS] = {};

void* scratch(ScratchSlot slot, size_t bytes) {
  if (bytes > g_scratch_size[slot]) {
    // The previous contents may still be in use by queued work on the stream: wait for it.
    cudaCheck(cudaDeviceSynchronize());
    device_free(g_scratch[slot]);
    size_t grown = bytes + bytes / 4;
    g_scratch[slot] = device_alloc(grown, "scratch");
    g_scratch_size[slot] = grown;
  }
  return g_scratch[slot];
}

void scratch_release_all() {
  cudaCheck(cudaDeviceSynchronize());
  for (int i = 0; i < SCRATCH_SLOTS; i++) {
    device_free(g_scratch[i]);
    g_scratch[i] = nullptr;
    g_scratch_size[i] = 0;
  }
}

size_t mem_used_now() {
  size_t free_b = 0, total_b = 0;
  cudaCheck(cudaMemGetInfo(&free_b, &total_b));
  return total_b - free_b;
}

}  // namespace gpu
}  // namespace graft
