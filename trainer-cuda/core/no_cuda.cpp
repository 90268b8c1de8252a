// The CUDA runtime of a build without nvcc: no device is ever usable.
#include "core/common.h"
#include "core/cuda_runtime.h"

namespace graft {
namespace cuda {

[[noreturn]] static void unavailable() {
  fail("this graft-trainer was built without CUDA (nvcc was not found at build time); use device \"cpu\"");
}

bool built() { return false; }
int device_count() { return 0; }
std::string init(int) { unavailable(); }
void* alloc(size_t, const char*) { unavailable(); }
void free(void*) { unavailable(); }
size_t peak_bytes() { return 0; }
size_t allocated_bytes() { return 0; }
void reset_peak() {}
size_t free_memory() { return 0; }
void copy_to_device(void*, const void*, size_t) { unavailable(); }
void copy_to_host(void*, const void*, size_t) { unavailable(); }
void copy_on_device(void*, const void*, size_t) { unavailable(); }
void memset_zero(void*, size_t) { unavailable(); }
void convert(void*, DType, const void*, DType, size_t) { unavailable(); }
void synchronize() {}
void* alloc_pinned(size_t, const char*) { unavailable(); }
void free_pinned(void*) {}
void* copy_ahead(const Copy*, size_t) { unavailable(); }
void wait_copies(void*) { unavailable(); }
void release_copies(void*) {}

}  // namespace cuda
}  // namespace graft
