// Reverse-mode autodiff on a tape that lives in the tensors themselves (candle's and PyTorch's
// shape): an op records a Node only when one of its inputs needs a gradient and gradients are
// enabled; the node holds the input tensors' autodiff records and a backward function that keeps
// whatever it needs from the forward. backward() walks the recorded nodes newest first, gives each
// the gradients of its outputs, and frees each node's saved activations as soon as it has run.
//
// - A trainable parameter is a leaf: make_leaf() gives it a record whose gradient buffer (fp32)
//   persists and accumulates across backward calls until the optimizer zeroes it. Frozen weights
//   have no record, so no op ever computes or stores a gradient for them, yet ops still pass the
//   gradient of their other inputs through them.
// - Gradients of activations are made on first use (zeros) in the activation's dtype (fp32 on the
//   CPU, bf16 on CUDA, arithmetic in fp32) and dropped once the node that made them has run.
// - Under NoGrad (sampling, encoding, a reference pass) nothing is recorded, and an activation is
//   freed when its last user drops it.
// - checkpoint() runs a block without recording, keeps only its inputs, and runs it again with
//   recording inside the backward pass: the same code on every device.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace graft {

struct Node;

// The autodiff record of a tensor: where its gradient accumulates and, unless it is a leaf, the
// op that made it.
struct AutogradMeta {
  Tensor grad;  // the accumulated gradient (undefined until something flows)
  Shape shape;
  DType grad_dtype = DType::F32;
  Device device;
  std::shared_ptr<Node> node;  // null: a leaf
};

// What an op's backward gets: the gradients of its outputs and the gradient buffers of its inputs.
struct GradContext {
  Node* node = nullptr;
  std::vector<Tensor> douts;
  // Gradient of output i; undefined when none reached it (treat as zero).
  const Tensor& dout(int i = 0) const { return douts.at(i); }
  // The buffer input i's gradient accumulates into (zeros on first use); nullptr when input i
  // needs no gradient. Ops ADD into it (cpu_ops.h's convention).
  Tensor* din(int i);
};

using BackwardFn = std::function<void(GradContext&)>;

struct Node {
  const char* op = "";
  uint64_t seq = 0;  // creation order: a valid order for the reverse walk
  std::vector<std::shared_ptr<AutogradMeta>> inputs;  // one per input; null when it needs no gradient
  std::vector<std::weak_ptr<AutogradMeta>> outputs;   // weak: the outputs own the node
  BackwardFn backward;
};

// Whether ops record (per thread). NoGrad turns recording off for its scope.
bool grad_enabled();
struct NoGrad {
  bool prev;
  NoGrad();
  ~NoGrad();
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;
};

// Makes `t` a leaf whose gradient is wanted: a trainable parameter (fp32: its gradient is fp32 too)
// or an input (bf16 on CUDA: its gradient keeps that dtype, as activations' do). The gradient
// accumulates into `grad` when given (same element count and dtype, on t's device: a view into an
// optimizer's flat buffer), else into a buffer made on first use.
void make_leaf(Tensor& t, const Tensor& grad = Tensor());

// True when an op over these inputs must be recorded.
bool any_requires_grad(const std::vector<const Tensor*>& inputs);

// Records an op that made `outputs` from `inputs`, when grad mode is on and an input needs a
// gradient (or `always`); otherwise does nothing. `backward` must not capture the outputs with
// their records (a cycle): capture outputs' values with detach().
void record(const char* op, const std::vector<const Tensor*>& inputs, const std::vector<Tensor*>& outputs,
            BackwardFn backward, bool always = false);

// Accumulates d(root_i) = dout_i into the graph behind the roots and runs every recorded op's
// backward, newest first. Leaves keep their gradients; the walked graph is freed.
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& douts);
inline void backward(const Tensor& root, const Tensor& dout) { backward(std::vector<Tensor>{root}, {dout}); }

// Runs `block` on `inputs` without keeping its activations; in backward, runs it again with
// recording and backpropagates through that. With grad mode off it is a plain call.
using BlockFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;
std::vector<Tensor> checkpoint(const BlockFn& block, const std::vector<Tensor>& inputs);

}  // namespace graft
