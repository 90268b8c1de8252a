// What the core needs from CUDA, without CUDA headers: device memory (a caching allocator), copies
// and dtype conversions on the device. cuda/runtime.cu implements it; a build without nvcc links
// core/no_cuda.cpp instead, where built() is false and everything else fails with a clear message.
#pragma once
#include <cstddef>
#include <string>

#include "core/dtype.h"

namespace graft {
namespace cuda {

bool built();       // this binary has the CUDA backend
int device_count(); // usable devices (0 without a driver or a device)
// Selects and checks device `index` (driver present, compute capability 8.0+); returns a one-line
// description. Throws Error saying what is missing.
std::string init(int index);

// Device memory from a caching allocator: a freed block is kept for the next request of its size
// class, so a training step allocates nothing from the driver after the first. Out of memory:
// the cache is released and the request retried once; then Error naming the size, `what` and
// the free memory.
void* alloc(size_t bytes, const char* what);
void free(void* p);
size_t peak_bytes();      // most device memory this process held at once (allocator + cache)
size_t allocated_bytes(); // held by live tensors now
void reset_peak();
size_t free_memory();     // the device's free memory now (cudaMemGetInfo), 0 without CUDA

// Copies bytes: host to device, device to host or device to device (synchronous for host memory).
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_on_device(void* dst, const void* src, size_t bytes);
void memset_zero(void* p, size_t bytes);
// n elements between float dtypes, both on the device.
void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n);
void synchronize();

// Layer offloading (ops/weight_stream.h): weights in pinned host memory, copied to the device on a
// second stream while the compute stream works.
void* alloc_pinned(size_t bytes, const char* what);
void free_pinned(void* p);
// One batch of host -> device copies {dst, src, bytes} on the copy stream, started once the work
// queued on the compute stream so far is done (a device block freed before this call is not
// overwritten while a queued kernel still reads it). Returns a ticket for wait_copies.
struct Copy { void* dst; const void* src; size_t bytes; };
void* copy_ahead(const Copy* copies, size_t n);
// The compute stream waits for a batch's copies (work queued after this call sees them);
// release_copies frees the ticket (safe while the copies are in flight).
void wait_copies(void* ticket);
void release_copies(void* ticket);

}  // namespace cuda
}  // namespace graft
