#include "core/autograd.h"

#include <algorithm>
#include <atomic>
#include <unordered_set>

#include "core/common.h"

namespace graft {

namespace {
thread_local bool g_grad_enabled = true;
std::atomic<uint64_t> g_seq{1};

std::shared_ptr<AutogradMeta> new_meta(const Tensor& t, DType grad_dtype) {
  auto m = std::make_shared<AutogradMeta>();
  m->shape = t.shape;
  m->grad_dtype = grad_dtype;
  m->device = t.device();
  return m;
}
}  // namespace

bool grad_enabled() { return g_grad_enabled; }
NoGrad::NoGrad() : prev(g_grad_enabled) { g_grad_enabled = false; }
NoGrad::~NoGrad() { g_grad_enabled = prev; }

Tensor* GradContext::din(int i) {
  const std::shared_ptr<AutogradMeta>& m = node->inputs.at(i);
  if (!m) return nullptr;
  if (!m->grad.defined()) m->grad = zeros(m->shape, m->grad_dtype, m->device, "a gradient");
  return &m->grad;
}

void make_leaf(Tensor& t, const Tensor& grad) {
  t.meta = new_meta(t, t.dtype == DType::BF16 || t.dtype == DType::F16 ? t.dtype : DType::F32);
  if (grad.defined()) {
    if (grad.numel() != t.numel() || grad.dtype != t.meta->grad_dtype || grad.device() != t.device())
      fail("internal: gradient buffer " + grad.str() + " for parameter " + t.str());
    t.meta->grad = grad.view(t.shape);
  }
}

bool any_requires_grad(const std::vector<const Tensor*>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t && t->meta) return true;
  return false;
}

void record(const char* op, const std::vector<const Tensor*>& inputs, const std::vector<Tensor*>& outputs,
            BackwardFn fn, bool always) {
  if (!g_grad_enabled || (!always && !any_requires_grad(inputs))) return;
  auto node = std::make_shared<Node>();
  node->op = op;
  node->seq = g_seq++;
  for (const Tensor* t : inputs) node->inputs.push_back(t ? t->meta : nullptr);
  node->backward = std::move(fn);
  for (Tensor* out : outputs) {
    // Activations' gradients keep the activation dtype (bf16 on CUDA); fp32 stays fp32.
    out->meta = new_meta(*out, out->dtype == DType::BF16 || out->dtype == DType::F16 ? out->dtype : DType::F32);
    out->meta->node = node;
    node->outputs.push_back(out->meta);
  }
}

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& douts) {
  if (roots.size() != douts.size()) fail("internal: backward with " + std::to_string(roots.size()) + " roots and " +
                                         std::to_string(douts.size()) + " gradients");
  std::vector<std::shared_ptr<AutogradMeta>> keep;  // the roots' records stay alive for the walk
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    if (!r.meta || !douts[i].defined()) continue;
    if (douts[i].numel() != r.numel()) fail("internal: gradient " + douts[i].str() + " for output " + r.str());
    Tensor d = to_dtype(to_device(douts[i], r.meta->device), r.meta->grad_dtype).view(r.shape);
    if (!r.meta->grad.defined()) r.meta->grad = d.storage == douts[i].storage ? clone(d) : d;
    else {
      Tensor& g = r.meta->grad;
      // Two roots sharing a record: add on the host side of whatever device (rare: tests only).
      std::vector<float> a = to_floats(g), b = to_floats(d);
      for (size_t k = 0; k < a.size(); ++k) a[k] += b[k];
      copy_into(g, from_vector(a, g.shape, Device()));
    }
    keep.push_back(r.meta);
  }

  // Every node reachable from the roots, newest first. The records met on the way are held until
  // the walk ends: a node's inputs are dropped as it runs, and an output made by an earlier node
  // must still be there when that node's turn comes.
  std::vector<std::shared_ptr<Node>> order;
  std::unordered_set<Node*> seen;
  std::vector<std::shared_ptr<AutogradMeta>> stack = keep;
  while (!stack.empty()) {
    std::shared_ptr<AutogradMeta> m = stack.back();
    stack.pop_back();
    if (!m->node || !seen.insert(m->node.get()).second) continue;
    order.push_back(m->node);
    for (auto& in : m->node->inputs)
      if (in) stack.push_back(in), keep.push_back(in);
  }
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a->seq > b->seq; });

  for (auto& node : order) {
    GradContext g;
    g.node = node.get();
    bool any = false;
    std::vector<std::shared_ptr<AutogradMeta>> outs;
    for (auto& w : node->outputs) {
      outs.push_back(w.lock());
      g.douts.push_back(outs.back() ? outs.back()->grad : Tensor());
      any = any || g.douts.back().defined();
    }
    if (any && node->backward) node->backward(g);
    // The outputs' gradients have been passed on; the node's saved activations are not needed again.
    for (auto& o : outs)
      if (o && o->node) o->grad = Tensor();
    node->backward = nullptr;
    node->inputs.clear();
  }
}

std::vector<Tensor> checkpoint(const BlockFn& block, const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return block(inputs);
  std::vector<Tensor> outs;
  {
    NoGrad off;
    outs = block(inputs);
  }
  std::vector<const Tensor*> in_ptrs;
  for (const Tensor& t : inputs) in_ptrs.push_back(&t);
  std::vector<Tensor*> out_ptrs;
  for (Tensor& t : outs) out_ptrs.push_back(&t);
  std::vector<Tensor> saved;
  for (const Tensor& t : inputs) saved.push_back(t.detach());
  record("checkpoint", in_ptrs, out_ptrs, [block, saved](GradContext& g) {
    // The block again, recording: its inputs become leaves whose gradients land straight in the
    // buffers of the original inputs; parameters inside accumulate into their own as usual.
    std::vector<Tensor> in = saved;
    for (size_t i = 0; i < in.size(); ++i)
      if (Tensor* d = g.din((int)i)) {
        in[i].meta = new_meta(in[i], d->dtype);
        in[i].meta->grad = *d;
      }
    std::vector<Tensor> again = block(in);
    std::vector<Tensor> roots, douts;
    for (size_t i = 0; i < again.size(); ++i)
      if (g.dout((int)i).defined()) roots.push_back(again[i]), douts.push_back(g.dout((int)i));
    backward(roots, douts);
  }, /*always=*/true);
  return outs;
}

}  // namespace graft
