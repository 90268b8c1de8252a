#include "models/module.h"

#include <algorithm>
#include <cmath>

#include "core/autograd.h"
#include "core/common.h"
#include "ops/quant.h"
#include "ops/weight_stream.h"

namespace graft {

Linear::Linear(WeightLoader& w, const std::string& n, int i, int o, Bias bias) : name(n), in(i), out(o) {
  W = w.get(n + ".weight", {o, i});
  has_bias = bias == Bias::yes || (bias == Bias::optional && w.has(n + ".bias"));
  if (has_bias) b = w.get(n + ".bias", {o});
  if (w.shapes_only) return;
  if (w.ckpt && w.has(n + ".scale_weight")) {
    const Shape s = w.shape(n + ".scale_weight");
    const int64_t count = shape_numel(s);
    if (count != 1 && count != o) fail(w.problem(n + ".scale_weight", "has " + std::to_string(count) + " values; 1 or " + std::to_string(o) + " expected"));
    const std::vector<float> v = to_floats(w.get(n + ".scale_weight", s));
    w_scale = from_vector(count == 1 ? std::vector<float>(o, v[0]) : v, {o}, w.device, DType::F32);
  } else if (W.defined() && W.dtype == DType::F8_E4M3 && w.ckpt && w.scaled_checkpoint()) {
    // In a scaled checkpoint an fp8 weight without its scale would put every output of the layer off
    // by it (an unscaled fp8 file, with no scales at all, computes with scale 1 as ComfyUI does).
    fail(w.problem(n + ".scale_weight", "is missing beside the F8_E4M3 weight in a scaled fp8 checkpoint; the file is "
                                        "incomplete: download it again, or use the bf16 checkpoint with model.quantize"));
  }
  const bool already = w.quantize == WeightFormat::fp8 && W.defined() && W.dtype == DType::F8_E4M3;
  if (w.quantize != WeightFormat::dense && W.defined() && !already) {
    quantize(w.quantize, w.device);
    w.release(n + ".weight");  // only the quantized copy stays in memory
  }
  if (w.offload && w.device.is_cuda() && w.offload(n)) offload();
}

void Linear::quantize(WeightFormat f, Device device) {
  // One tensor at a time, through the host: only this layer's fp32 copy exists beside the model. A
  // weight that is already scaled (ComfyUI's fp8) is requantized from its true values.
  std::vector<float> v = to_floats(W);
  if (w_scale.defined()) {
    const std::vector<float> s = to_floats(w_scale);
    for (int r = 0; r < out; ++r)
      for (int c = 0; c < in; ++c) v[(size_t)r * in + c] *= s[r];
    w_scale = Tensor();
  }
  std::vector<float> scale(out);
  Tensor q;
  const std::string what = std::string(weight_format_name(f)) + " weight " + name;
  if (f == WeightFormat::fp8) {
    q = empty({out, in}, DType::F8_E4M3, Device::cpu(), what.c_str());
    quantize_rows_fp8(v.data(), out, in, q.data<uint8_t>(), scale.data());
  } else if (f == WeightFormat::int8) {
    q = empty({out, in}, DType::I8, Device::cpu(), what.c_str());
    quantize_rows_int8(v.data(), out, in, q.data<int8_t>(), scale.data());
  } else if (f == WeightFormat::nf4) {
    const size_t n = v.size();
    q = empty({(int64_t)nf4_code_bytes(n)}, DType::U8, Device::cpu(), what.c_str());
    Tensor am = empty({(int64_t)nf4_block_count(n)}, DType::F32, Device::cpu(), what.c_str());
    quantize_nf4(v.data(), n, q.data<uint8_t>(), am.data<float>());
    w_absmax = to_device(am, device);
  } else {
    fail("internal: Linear::quantize to " + std::string(weight_format_name(f)));
  }
  W = to_device(q, device);
  if (f != WeightFormat::nf4) w_scale = from_vector(scale, {out}, device, DType::F32);
}

Tensor Linear::operator()(const Tensor& x) const {
  std::vector<LoraRef> loras;
  std::vector<LokrRef> lokrs;
  for (const AttachedAdapter& a : adapters) {
    if (!a.lokr) loras.push_back({a.mats[0], a.mats[1], a.row_offset, a.rows, *a.scale});
    else lokrs.push_back({a.mats[0], a.mats[1], a.mats.size() > 2 ? a.mats[2] : Tensor(), a.row_offset, a.rows, *a.scale});
  }
  if (w_absmax.defined() || w_scale.defined()) return linear(x, QuantWeight{W, w_scale, w_absmax, out, in}, b, loras, lokrs);
  return linear(x, W, b, loras, lokrs);
}

size_t Linear::weight_bytes() const {
  size_t n = 0;
  for (const Tensor* t : {&W, &w_scale, &w_absmax}) n += t->defined() ? t->nbytes() : 0;
  return n;
}

std::vector<Tensor> Linear::frozen() const { return {W, w_scale, w_absmax, b}; }

void Linear::offload() {
  for (Tensor* t : {&W, &w_scale, &w_absmax, &b})
    if (t->defined() && t->is_cuda()) *t = to_pinned(*t);
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
