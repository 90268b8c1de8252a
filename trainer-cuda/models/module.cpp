#include "models/module.h"

#include <algorithm>
#include <cmath>

#include "core/autograd.h"
#include "core/common.h"

namespace graft {

Linear::Linear(WeightLoader& w, const std::string& n, int i, int o, Bias bias) : name(n), in(i), out(o) {
  W = w.get(n + ".weight", {o, i});
  has_bias = bias == Bias::yes || (bias == Bias::optional && w.has(n + ".bias"));
  if (has_bias) b = w.get(n + ".bias", {o});
  if (w.quantize_fp8 && W.defined() && W.dtype != DType::F8_E4M3 && !(w.ckpt && w.has(n + ".scale_weight"))) {
    quantize_fp8_rows(w.device);
    w.release(n + ".weight");  // only the fp8 copy stays in memory
    return;
  }
  if (w.ckpt && w.has(n + ".scale_weight")) {
    const Shape s = w.shape(n + ".scale_weight");
    const int64_t count = shape_numel(s);
    if (count != 1 && count != o) fail(w.problem(n + ".scale_weight", "has " + std::to_string(count) + " values; 1 or " + std::to_string(o) + " expected"));
    const std::vector<float> v = to_floats(w.get(n + ".scale_weight", s));
    w_scale = from_vector(count == 1 ? std::vector<float>(o, v[0]) : v, {o}, w.device, DType::F32);
  }
}

void Linear::quantize_fp8_rows(Device device) {
  // s = max|row| / 448 (e4m3's largest finite value), each row stored as fp8(row / s): one tensor at
  // a time, through the host, so only this layer's fp32 copy exists beside the model.
  std::vector<float> v = to_floats(W);
  std::vector<float> s(out);
  for (int r = 0; r < out; ++r) {
    float amax = 0.0f;
    float* row = v.data() + (size_t)r * in;
    for (int c = 0; c < in; ++c) amax = std::max(amax, std::fabs(row[c]));
    s[r] = amax > 0.0f ? amax / 448.0f : 1.0f;
    for (int c = 0; c < in; ++c) row[c] /= s[r];
  }
  Tensor q = empty({out, in}, DType::F8_E4M3, Device::cpu(), ("fp8 weight " + name).c_str());
  convert_host(q.raw(), DType::F8_E4M3, v.data(), DType::F32, v.size());
  W = to_device(q, device);
  w_scale = from_vector(s, {out}, device, DType::F32);
}

Tensor Linear::operator()(const Tensor& x) const {
  std::vector<LoraRef> loras;
  std::vector<LokrRef> lokrs;
  for (const AttachedAdapter& a : adapters) {
    if (!a.lokr) loras.push_back({a.mats[0], a.mats[1], a.row_offset, a.rows, *a.scale});
    else lokrs.push_back({a.mats[0], a.mats[1], a.mats.size() > 2 ? a.mats[2] : Tensor(), a.row_offset, a.rows, *a.scale});
  }
  if (w_scale.defined()) {  // (x W^T) s + b: the adapters add after the scale, onto the true layer's output
    const Tensor base = affine(linear(x, W, Tensor()), w_scale, b);
    return adapters.empty() ? base : add(base, adapter_delta(x, out, loras, lokrs));
  }
  return linear(x, W, b, loras, lokrs);
}

void Linear::collect(std::vector<NamedParam>& out) {
  out.push_back({name + ".weight", &W});
  if (has_bias) out.push_back({name + ".bias", &b});
}

void make_trainable(std::vector<NamedParam>& params) {
  for (NamedParam& p : params) {
    Tensor t = to_dtype(*p.t, DType::F32);
    if (t.storage == p.t->storage) t = clone(t);  // never train in place of the mapped file
    make_leaf(t, zeros(t.shape, DType::F32, t.device(), "a parameter gradient"));
    *p.t = t;
  }
}

void zero_grads(const std::vector<NamedParam>& params) {
  for (const NamedParam& p : params)
    if (p.t->meta && p.t->meta->grad.defined()) zero_(p.t->meta->grad);
}

}  // namespace graft
