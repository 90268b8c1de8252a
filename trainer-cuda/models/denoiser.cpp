#include "models/denoiser.h"

#include <cmath>

#include "ops/ops.h"
#include "ops/weight_stream.h"

namespace graft {

namespace {

// The offloaded blocks' weights through ops/weight_stream.h.
struct PinnedStreamer : Denoiser::BlockStreamer {
  const Denoiser* model;
  int count;  // blocks [0, count) are offloaded
  Device device;
  std::vector<Tensor> weights(int k) const {
    std::vector<Tensor> ws;
    for (const Linear* l : model->block_linears(k))
      for (const Tensor& t : l->frozen()) ws.push_back(t);
    return ws;
  }
  void prefetch(int k) override { if (k >= 0 && k < count) prefetch_weights(weights(k), device); }
  void release(int k) override { if (k >= 0 && k < count) release_weights(weights(k)); }
};

}  // namespace

int offload_count(int n, double fraction) { return fraction <= 0 ? 0 : std::min(n, (int)std::ceil(fraction * n - 1e-9)); }

size_t Denoiser::offload_blocks(double fraction) {
  if (!device.is_cuda() || fraction <= 0) return 0;
  const int count = offload_count(block_count(), fraction);
  size_t moved = 0;
  for (int k = 0; k < count; ++k)
    for (const Linear* l : block_linears(k)) {
      moved += l->weight_bytes() + (l->b.defined() ? l->b.nbytes() : 0);
      const_cast<Linear*>(l)->offload();  // nothing to do for one offloaded as it loaded
    }
  auto s = std::make_shared<PinnedStreamer>();
  s->model = this, s->count = count, s->device = device;
  streamer = s;
  return moved;
}

std::vector<Tensor> BlockSchedule::start(std::vector<Tensor> inputs) const {
  if (!st || n <= 0) return inputs;
  st->prefetch(0);
  const std::shared_ptr<Denoiser::BlockStreamer> s = st;
  return on_backward(inputs, [s] { s->release(0); });
}

void BlockSchedule::before(int k) const {
  if (st && k + 1 < n) st->prefetch(k + 1);
}

std::vector<Tensor> BlockSchedule::after(int k, std::vector<Tensor> outs) const {
  if (!st) return outs;
  st->release(k);
  const std::shared_ptr<Denoiser::BlockStreamer> s = st;
  const int blocks = n;
  return on_backward(outs, [s, k, blocks] {
    if (k + 1 < blocks) s->release(k + 1);
    s->prefetch(k);
    if (k > 0) s->prefetch(k - 1);
  });
}

}  // namespace graft
