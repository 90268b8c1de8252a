// core/cuda_runtime.h on a CUDA device: the caching allocator behind every device tensor, copies and
// dtype conversions. Everything runs on the default stream, in order, so a block freed here can be
// handed to the next allocation at once: work already queued that reads it runs before any work
// queued later that writes it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/cuda_runtime.h"
#include "cublaslt.h"
#include "cuda_common.h"
#include "kernels_common.cuh"

namespace graft {
namespace cuda {

bool built() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver, no device, driver too old: all mean "none usable"
    return 0;
  }
  return n;
}

std::string init(int index) {
  static std::string described[64];
  if (index >= 0 && index < 64 && !described[index].empty()) {
    cudaCheck(cudaSetDevice(index));
    return described[index];
  }
  std::string d = gpu::device_init(index);
  gpu::cublaslt_init();
  if (index >= 0 && index < 64) described[index] = d;
  return d;
}

// ------------------------------------------------------------------------------------------------
// The caching allocator

namespace {

// Size classes: 512-byte steps up to 1 MiB, then quarter powers of two (at most 25% slack).
size_t size_class(size_t bytes) {
  if (bytes <= ((size_t)1 << 20)) return (bytes + 511) & ~(size_t)511;
  size_t p = (size_t)1 << (63 - __builtin_clzll(bytes));
  size_t step = p / 4;
  return (bytes + step - 1) / step * step;
}

struct Cache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  std::unordered_map<void*, size_t> live;  // block -> its class
  size_t held = 0;    // from cudaMalloc: live blocks and cached ones
  size_t in_use = 0;  // live blocks
  size_t peak = 0;    // most ever held
};
Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: tensors may be freed during static destruction
  return *c;
}

std::string mib(size_t bytes) { return std::to_string((bytes + (1u << 20) - 1) >> 20) + " MiB"; }

// Returns every cached block to the driver (before retrying an allocation that did not fit).
void release_cached(Cache& c) {
  for (auto& [cls, blocks] : c.free_blocks)
    for (void* p : blocks) {
      cudaFree(p);
      c.held -= cls;
    }
  c.free_blocks.clear();
}

}  // namespace

void* alloc(size_t bytes, const char* what) {
  if (bytes == 0) bytes = 1;
  const size_t cls = size_class(bytes);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  void* p = nullptr;
  auto it = c.free_blocks.find(cls);
  if (it != c.free_blocks.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
  } else {
    cudaError_t err = cudaMalloc(&p, cls);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached(c);
      err = cudaMalloc(&p, cls);
    }
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("out of GPU memory: asked for " + mib(cls) + " for " + what + " with " + mib(c.in_use) +
           " in use by graft, " + mib(free_b) + " free of " + mib(total_b) +
           ". Lower the resolution or batch size, or turn on gradient checkpointing.");
    }
    if (err != cudaSuccess) gpu::cuda_fail(err, "cudaMalloc", __FILE__, __LINE__);
    c.held += cls;
    if (c.held > c.peak) c.peak = c.held;
  }
  c.live[p] = cls;
  c.in_use += cls;
  return p;
}

void free(void* p) {
  if (!p) return;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.live.find(p);
  if (it == c.live.end()) return;  // not ours (cannot happen through Storage)
  c.in_use -= it->second;
  c.free_blocks[it->second].push_back(p);
  c.live.erase(it);
}

size_t peak_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.peak;
}

size_t allocated_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.in_use;
}

void reset_peak() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.peak = c.held;
}

}  // namespace cuda

namespace gpu {
DeviceTemp::DeviceTemp(size_t bytes, const char* what) : p(cuda::alloc(bytes, what)) {}
DeviceTemp::~DeviceTemp() { cuda::free(p); }
}  // namespace gpu

namespace cuda {

// ------------------------------------------------------------------------------------------------
// Copies and conversions

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void copy_on_device(void* dst, const void* src, size_t bytes) {
  if (bytes) cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
void memset_zero(void* p, size_t bytes) {
  if (bytes) cudaCheck(cudaMemsetAsync(p, 0, bytes));
}
void synchronize() { cudaCheck(cudaDeviceSynchronize()); }
void* alloc_pinned(size_t bytes, const char* what) {
  void* p = nullptr;
  const cudaError_t err = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault);
  if (err != cudaSuccess) {
    cudaGetLastError();
    fail("out of pinned host memory: asked for " + std::to_string(bytes >> 20) + " MiB for " + what + " (" +
         cudaGetErrorString(err) + "); offload fewer layers (model.layer_offloading_transformer_percent)");
  }
  return p;
}
void free_pinned(void* p) {
  if (p) cudaFreeHost(p);
}

namespace {
cudaStream_t copy_stream() {
  static cudaStream_t s = [] {
    cudaStream_t st;
    cudaCheck(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));  // never waits on the default stream by itself
    return st;
  }();
  return s;
}
}  // namespace

void* copy_ahead(const Copy* copies, size_t n) {
  cudaEvent_t queued, done;
  cudaCheck(cudaEventCreateWithFlags(&queued, cudaEventDisableTiming));
  cudaCheck(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  cudaCheck(cudaEventRecord(queued, 0));
  cudaCheck(cudaStreamWaitEvent(copy_stream(), queued, 0));
  for (size_t i = 0; i < n; ++i)
    if (copies[i].bytes)
      cudaCheck(cudaMemcpyAsync(copies[i].dst, copies[i].src, copies[i].bytes, cudaMemcpyHostToDevice, copy_stream()));
  cudaCheck(cudaEventRecord(done, copy_stream()));
  cudaCheck(cudaEventDestroy(queued));  // released once the copy stream has passed it
  return (void*)done;
}
void wait_copies(void* ticket) { cudaCheck(cudaStreamWaitEvent(0, (cudaEvent_t)ticket, 0)); }
void release_copies(void* ticket) {
  if (ticket) cudaEventDestroy((cudaEvent_t)ticket);
}

size_t free_memory() {
  size_t free = 0, total = 0;
  cudaCheck(cudaMemGetInfo(&free, &total));
  return free;
}

namespace {

__device__ float load_as_float(const void* p, long i, DType t) {
  switch (t) {
    case DType::F32: return ((const float*)p)[i];
    case DType::F16: return __half2float(((const __half*)p)[i]);
    case DType::BF16: return __bfloat162float(((const __nv_bfloat16*)p)[i]);
    case DType::F8_E4M3: return (float)((const __nv_fp8_e4m3*)p)[i];
    case DType::F8_E5M2: return (float)((const __nv_fp8_e5m2*)p)[i];
    case DType::F64: return (float)((const double*)p)[i];
    case DType::I8: return (float)((const signed char*)p)[i];
    default: return 0.0f;
  }
}

// fp8 saturates to the largest finite value, as the host conversion does (__NV_SATFINITE).
__device__ void store_from_float(void* p, long i, DType t, float v) {
  switch (t) {
    case DType::F32: ((float*)p)[i] = v; break;
    case DType::F16: ((__half*)p)[i] = __float2half_rn(v); break;
    case DType::BF16: ((__nv_bfloat16*)p)[i] = __float2bfloat16(v); break;
    case DType::F8_E4M3: ((__nv_fp8_e4m3*)p)[i] = __nv_fp8_e4m3(v); break;
    case DType::F8_E5M2: ((__nv_fp8_e5m2*)p)[i] = __nv_fp8_e5m2(v); break;
    case DType::F64: ((double*)p)[i] = (double)v; break;
    default: break;
  }
}

__global__ void convert_kernel(void* dst, DType dt, const void* src, DType st, long n) {
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    store_from_float(dst, i, dt, load_as_float(src, i, st));
}

}  // namespace

void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n) {
  if (!dtype_is_float(dst_type) || !(dtype_is_float(src_type) || src_type == DType::I8))
    fail(std::string("cannot convert ") + dtype_name(src_type) + " to " + dtype_name(dst_type) + " on the GPU");
  if (n == 0) return;
  long blocks = ((long)n + 255) / 256;
  convert_kernel<<<(unsigned)(blocks > 65535L * 16 ? 65535L * 16 : blocks), 256>>>(dst, dst_type, src, src_type, (long)n);
  cudaCheckLaunch();
}

}  // namespace cuda
}  // namespace graft
