#include "ops/weight_stream.h"

#include <memory>
#include <mutex>
#include <unordered_map>

#include "core/cuda_runtime.h"
#include "core/storage.h"

namespace graft {

namespace {

// One prefetch batch's copies: the compute stream waits for them before using any.
struct Ticket {
  void* handle = nullptr;
  ~Ticket() { cuda::release_copies(handle); }
};

struct Copy {
  Tensor device;
  std::shared_ptr<Ticket> ticket;
};

std::unordered_map<const void*, Copy>& copies() {
  static auto* m = new std::unordered_map<const void*, Copy>;  // never destroyed: tensors may outlive statics
  return *m;
}

bool streams(const Tensor& w, Device device) { return w.defined() && device.is_cuda() && !w.is_cuda(); }

}  // namespace

Tensor to_pinned(const Tensor& t) {
  Tensor out;
  out.storage = storage_pinned(t.nbytes(), "an offloaded weight");
  out.shape = t.shape;
  out.dtype = t.dtype;
  copy_into(out, t);
  return out;
}

void prefetch_weights(const std::vector<Tensor>& weights, Device device) {
  std::vector<cuda::Copy> batch;
  std::vector<std::pair<const void*, Tensor>> made;
  for (const Tensor& w : weights) {
    if (!streams(w, device) || copies().count(w.raw())) continue;
    Tensor d = empty(w.shape, w.dtype, device, "a streamed weight");
    batch.push_back({d.raw(), w.raw(), w.nbytes()});
    made.push_back({w.raw(), d});
  }
  if (batch.empty()) return;
  auto ticket = std::make_shared<Ticket>();
  ticket->handle = cuda::copy_ahead(batch.data(), batch.size());
  for (auto& [key, d] : made) copies()[key] = {d, ticket};
}

void release_weights(const std::vector<Tensor>& weights) {
  for (const Tensor& w : weights)
    if (w.defined()) copies().erase(w.raw());
}

Tensor streamed(const Tensor& w, Device device) {
  if (!streams(w, device)) return w;
  auto it = copies().find(w.raw());
  if (it != copies().end()) {
    cuda::wait_copies(it->second.ticket->handle);
    return it->second.device;
  }
  Tensor d = empty(w.shape, w.dtype, device, "a weight copied for one call");
  copy_into(d, w);
  return d;
}

size_t streamed_bytes() {
  size_t n = 0;
  for (auto& [key, c] : copies()) n += c.device.nbytes();
  return n;
}

}  // namespace graft
