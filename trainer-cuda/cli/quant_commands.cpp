// graft-trainer quant-check: one linear layer quantized in a model.quantize format, with a LoRA on it,
// forward and backward, and the weight it computes with, written out for the independent PyTorch references (tests/test_quant_torch.py).
#include <string>
#include <vector>

#include "cli/args.h"
#include "core/autograd.h"
#include "core/safetensors.h"
#include "models/module.h"
#include "ops/ops.h"
#include "ops/quant.h"

namespace graft {

namespace {

int cmd_quant_check(const std::vector<std::string>& a) {
  need_args(a, 3, "quant-check");
  std::vector<std::string> rest;
  const Device device = device_option(a, 3, "quant-check", &rest);
  if (!rest.empty()) fail("quant-check: unknown argument '" + rest[0] + "'");
  const SafeTensorsFile in = SafeTensorsFile::open(a[1]);
  auto meta = [&](const char* key) {
    auto it = in.metadata.find(key);
    if (it == in.metadata.end()) fail(a[1] + ": metadata '" + key + "' is missing");
    return it->second;
  };
  WeightFormat f;
  if (!weight_format_from_name(meta("format"), &f) || f == WeightFormat::dense)
    fail(a[1] + ": metadata format '" + meta("format") + "': one of fp8, int8, nf4");
  const float lora_scale = std::stof(meta("lora_scale"));
  const Shape ws = in.info("w").shape, xs = in.info("x").shape;
  if (ws.size() != 2 || xs.size() != 2 || xs[1] != ws[1]) fail(a[1] + ": w must be [out, in] and x [N, in]");
  const int O = (int)ws[0], I = (int)ws[1], N = (int)xs[0];
  const DType act = compute_dtype(device);

  Linear l;
  l.name = "layer", l.in = I, l.out = O, l.has_bias = true;
  l.W = from_vector(in.read_f32("w"), {O, I}, Device::cpu(), DType::F32);
  l.b = from_vector(in.read_f32("b", {O}), {O}, device, DType::F32);
  l.quantize(f, device);
  auto leaf = [&](const char* name, const Shape& shape) {
    Tensor t = from_vector(in.read_f32(name, shape), shape, device, DType::F32);
    make_leaf(t, zeros(shape, DType::F32, device, "a gradient"));
    return t;
  };
  const int rank = (int)in.info("A").shape.at(0);
  AttachedAdapter lora;
  lora.mats = {leaf("A", {rank, I}), leaf("B", {O, rank})};
  lora.rows = O;
  lora.scale = &lora_scale;
  l.adapters.push_back(lora);
  Tensor x = from_vector(in.read_f32("x", {N, I}), {N, I}, device, act);
  make_leaf(x, zeros({N, I}, act, device, "the input's gradient"));

  const Tensor y = l(x);
  backward(y, from_vector(in.read_f32("dy", {N, O}), {N, O}, device, act));
  // The weight the layer computes with, through its own product: the identity through it, bias and
  // adapter off, is W^T.
  Linear bare = l;
  bare.adapters.clear(), bare.has_bias = false, bare.b = Tensor();
  std::vector<float> eye((size_t)I * I, 0.0f);
  for (int i = 0; i < I; ++i) eye[(size_t)i * I + i] = 1.0f;
  const Tensor deq_t = bare(from_vector(eye, {I, I}, device, act));

  SafeTensorsWriter w;
  const Tensor codes = to_device(l.W, Device::cpu());
  w.add_raw("codes", codes.dtype, codes.shape, codes.raw(), codes.nbytes());
  if (l.w_scale.defined()) w.add("scale", DType::F32, {O}, to_floats(l.w_scale).data());
  if (l.w_absmax.defined()) w.add("absmax", DType::F32, l.w_absmax.shape, to_floats(l.w_absmax).data());
  w.add("deq_t", DType::F32, {I, O}, to_floats(deq_t).data());
  w.add("y", DType::F32, {N, O}, to_floats(y).data());
  w.add("dx", DType::F32, {N, I}, to_floats(x.meta->grad).data());
  w.add("dA", DType::F32, {rank, I}, to_floats(lora.mats[0].meta->grad).data());
  w.add("dB", DType::F32, {O, rank}, to_floats(lora.mats[1].meta->grad).data());
  w.write(a[2]);
  return 0;
}

}  // namespace

std::vector<Command> quant_commands() {
  return {
      {"quant-check", "<in> <out> [--device D]  a linear layer quantized as metadata format says, with a LoRA: codes, "
                      "scales, deq_t, y, dx, dA, dB (tests/test_quant_torch.py)",
       cmd_quant_check},
  };
}

}  // namespace graft
