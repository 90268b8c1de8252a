#include "core/storage.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/common.h"
#include "core/cuda_runtime.h"

namespace graft {

// ------------------------------------------------------------------------------------------------
// The host caching allocator. A training step makes and drops the same few hundred activations
// every step; from malloc, each large one would be a fresh mmap and a page fault per 4 KB. Blocks
// are kept by size class (quarter powers of two, at most 25% slack) up to a cap, so steady-state
// steps reuse memory; blocks above kMaxBlock and frees past the cap go straight back to the system.
// The caps are small on purpose: a large model on the CPU converts each bf16 weight to fp32 for its
// one call (hundreds of MB), and caching those would hold several at once.

namespace {

const size_t kMaxBlock = (size_t)32 << 20;
const size_t kMaxCached = (size_t)256 << 20;

size_t size_class(size_t bytes) {
  if (bytes <= 4096) return (bytes + 63) & ~(size_t)63;
  size_t p = (size_t)1 << (63 - __builtin_clzll(bytes));  // highest power of two <= bytes
  size_t step = p / 4;
  return (bytes + step - 1) / step * step;
}

struct HostCache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  size_t cached = 0;
};
HostCache& host_cache() {
  static HostCache* c = new HostCache;  // never destroyed: storages may outlive static destruction
  return *c;
}

void* host_alloc(size_t bytes, const char* what) {
  size_t c = size_class(bytes);
  if (c > kMaxBlock) {  // straight from the kernel, so freeing it gives it back (malloc may keep it)
    void* p = mmap(nullptr, c, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("out of host memory: asked for " + std::to_string(c >> 20) + " MiB for " + what);
    return p;
  }
  {
    HostCache& hc = host_cache();
    std::lock_guard<std::mutex> lock(hc.mu);
    auto it = hc.free_blocks.find(c);
    if (it != hc.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      hc.cached -= c;
      return p;
    }
  }
  void* p = nullptr;
  if (posix_memalign(&p, 64, c) != 0)
    fail("out of host memory: asked for " + std::to_string(c >> 20) + " MiB for " + what);
  return p;
}

void host_free(void* p, size_t bytes) {
  size_t c = size_class(bytes);
  if (c > kMaxBlock) {
    munmap(p, c);
    return;
  }
  HostCache& hc = host_cache();
  std::lock_guard<std::mutex> lock(hc.mu);
  if (hc.cached + c > kMaxCached) {
    std::free(p);
    return;
  }
  hc.free_blocks[c].push_back(p);
  hc.cached += c;
}

// Bytes of host tensors alive now and at most since the last reset (what was asked for, before the
// size classes' slack): the CPU's stand-in for device memory in the memory plan's tests.
std::atomic<size_t> g_host_live{0}, g_host_peak{0};

void count_host(size_t bytes, bool alloc) {
  if (!alloc) {
    g_host_live -= bytes;
    return;
  }
  const size_t now = g_host_live += bytes;
  size_t peak = g_host_peak.load();
  while (now > peak && !g_host_peak.compare_exchange_weak(peak, now)) {}
}

}  // namespace

size_t host_live_bytes() { return g_host_live.load(); }
size_t host_peak_bytes() { return g_host_peak.load(); }
void host_reset_peak() { g_host_peak = g_host_live.load(); }

Storage::~Storage() {
  if (!data) return;
  if (kind == HOST) host_free(data, bytes), count_host(bytes, false);
  else if (kind == PINNED) cuda::free_pinned(data);
  else if (kind == CUDA) cuda::free(data);
}

std::shared_ptr<Storage> storage_alloc(size_t bytes, Device device, const char* what) {
  auto s = std::make_shared<Storage>();
  s->bytes = bytes;
  s->device = device;
  if (bytes == 0) return s;
  if (device.is_cuda()) {
    s->kind = Storage::CUDA;
    s->data = cuda::alloc(bytes, what);
  } else {
    s->kind = Storage::HOST;
    s->data = host_alloc(bytes, what);
    count_host(bytes, true);
  }
  return s;
}

std::shared_ptr<Storage> storage_pinned(size_t bytes, const char* what) {
  auto s = std::make_shared<Storage>();
  s->bytes = bytes;
  s->device = Device::cpu();
  s->kind = Storage::PINNED;
  s->data = cuda::alloc_pinned(bytes, what);
  return s;
}

std::shared_ptr<Storage> storage_mapped(const void* data, size_t bytes, std::shared_ptr<const void> mapping) {
  auto s = std::make_shared<Storage>();
  s->data = const_cast<void*>(data);
  s->bytes = bytes;
  s->kind = Storage::MAPPED;
  s->keep_alive = std::move(mapping);
  return s;
}

// ------------------------------------------------------------------------------------------------
// Mapped files

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path + ": cannot open: " + std::strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int err = errno;
    ::close(fd);
    fail(path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(sb.st_mode)) {
    ::close(fd);
    fail(path + ": not a regular file");
  }
  auto m = std::make_shared<MappedFile>();
  m->path = path;
  m->size = (size_t)sb.st_size;
  if (m->size > 0) {
    void* p = mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail(path + ": cannot map into memory: " + std::strerror(err));
    }
    m->data = (const unsigned char*)p;
  }
  ::close(fd);  // the mapping keeps the file open
  return m;
}

void MappedFile::release(const void* p, size_t bytes) const {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  uintptr_t a = ((uintptr_t)p + page - 1) / page * page, b = ((uintptr_t)p + bytes) / page * page;
  if (b > a) madvise((void*)a, b - a, MADV_DONTNEED);  // a hint: a failure only costs memory
}

MappedFile::~MappedFile() {
  if (data) munmap((void*)data, size);
}

}  // namespace graft
