// The bytes behind tensors. A Storage is host memory from a caching allocator, a read-only window
// into a memory-mapped file (a checkpoint's tensor, never copied), or device memory from the CUDA
// caching allocator. Tensors share storages through shared_ptr; the last one out returns the
// memory to its allocator, or lets go of the mapping.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "core/device.h"

namespace graft {

struct Storage {
  enum Kind : unsigned char { HOST, MAPPED, CUDA, PINNED };  // PINNED: host memory the GPU copies from
  void* data = nullptr;
  size_t bytes = 0;
  Kind kind = HOST;
  Device device;
  std::shared_ptr<const void> keep_alive;  // MAPPED: the mapping this storage looks into

  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

// `bytes` of uninitialised memory on `device`; `what` names the use in an out-of-memory message.
std::shared_ptr<Storage> storage_alloc(size_t bytes, Device device, const char* what = "a tensor");
// Host tensor bytes alive now, and at most since host_reset_peak() (mapped files not counted).
size_t host_live_bytes();
size_t host_peak_bytes();
void host_reset_peak();
// `bytes` of page-locked host memory (CUDA builds only): weights a GPU streams in (layer offloading).
std::shared_ptr<Storage> storage_pinned(size_t bytes, const char* what);
// A read-only view of [data, data + bytes) inside a mapping kept alive by `mapping`.
std::shared_ptr<Storage> storage_mapped(const void* data, size_t bytes, std::shared_ptr<const void> mapping);

// A file mapped read-only into memory. Pages are read from disk as they are touched and belong to
// the page cache, so a checkpoint costs no host copy; release() drops pages already used (after a
// tensor went to the GPU) so the process's resident memory stays near one tensor while loading.
struct MappedFile {
  std::string path;
  const unsigned char* data = nullptr;
  size_t size = 0;
  static std::shared_ptr<MappedFile> open(const std::string& path);  // throws Error naming the path
  void release(const void* p, size_t bytes) const;
  ~MappedFile();
};

}  // namespace graft
