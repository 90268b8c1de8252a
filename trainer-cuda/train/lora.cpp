#include "train/lora.h"

#include <cmath>
#include <cstring>
#include <set>

#include "core/autograd.h"
#include "core/common.h"
#include "core/rng.h"

namespace graft {

static const char* kPrefix = "transformer.";

void LoraSet::to(Device device) {
  params = to_device(params, device);
  grads = zeros(params.shape, DType::F32, device, "LoRA gradients");
  A.clear();
  B.clear();
  for (const LoraAdapter& a : adapters) {
    const Shape sa = {a.rank, a.target.in}, sb = {a.target.rows, a.rank};
    Tensor ta = params.view({params.numel()}).rows((int64_t)a.a_off, a.rank * (int64_t)a.target.in).view(sa);
    Tensor tb = params.view({params.numel()}).rows((int64_t)a.b_off, (int64_t)a.target.rows * a.rank).view(sb);
    make_leaf(ta, grads.rows((int64_t)a.a_off, a.rank * (int64_t)a.target.in));
    make_leaf(tb, grads.rows((int64_t)a.b_off, (int64_t)a.target.rows * a.rank));
    A.push_back(ta);
    B.push_back(tb);
  }
}

void LoraSet::zero_grad() { zero_(grads); }

void LoraSet::set_params(const std::vector<float>& values) {
  if ((int64_t)values.size() != params.numel())
    fail("internal: " + std::to_string(values.size()) + " values for " + std::to_string(params.numel()) + " LoRA parameters");
  copy_into(params, from_vector(values, params.shape, Device::cpu()));
}

std::vector<ParamSegment> LoraSet::segments() const {
  std::vector<ParamSegment> out;
  for (const LoraAdapter& a : adapters) {
    out.push_back({(int64_t)a.a_off, (int64_t)a.rank * a.target.in, a.rank, a.target.in});
    out.push_back({(int64_t)a.b_off, (int64_t)a.target.rows * a.rank, a.target.rows, a.rank});
  }
  return out;
}

void lora_attach(const std::vector<Linear*>& layers, LoraSet* lora) {
  for (Linear* l : layers) l->adapters.clear();
  if (!lora) return;
  std::map<std::string, Linear*> by_name;
  for (Linear* l : layers) by_name[l->name] = l;
  for (size_t i = 0; i < lora->adapters.size(); ++i) {
    const LoraAdapter& ad = lora->adapters[i];
    const LoraTarget& t = ad.target;
    auto it = by_name.find(t.base);
    if (it == by_name.end()) fail("LoRA module '" + t.module + "' targets layer '" + t.base + "', which this model does not have");
    Linear* l = it->second;
    if (l->in != t.in || t.row_offset + t.rows > l->out) fail("LoRA module '" + t.module + "' does not fit layer '" + t.base + "'");
    if (lora->A.size() != lora->adapters.size()) fail("internal: LoRA set without parameter views (LoraSet::to)");
    l->adapters.push_back({lora->A[i], lora->B[i], t.row_offset, t.rows, &lora->adapters[i].scale});
  }
}

static LoraSet lora_layout(const std::vector<LoraTarget>& targets, const std::vector<int>& ranks,
                           const std::vector<float>& scales) {
  LoraSet set;
  size_t off = 0;
  for (size_t i = 0; i < targets.size(); ++i) {
    LoraAdapter a;
    a.target = targets[i];
    a.rank = ranks[i];
    a.scale = scales[i];
    a.a_off = off;
    off += (size_t)a.rank * a.target.in;
    a.b_off = off;
    off += (size_t)a.target.rows * a.rank;
    set.adapters.push_back(a);
  }
  set.params = zeros({(int64_t)off}, DType::F32, Device::cpu(), "LoRA parameters");
  set.to(Device::cpu());
  return set;
}

LoraSet lora_create(const std::vector<LoraTarget>& targets, int rank, float alpha, uint64_t seed) {
  if (rank <= 0) fail("network.linear (rank) must be a positive integer, got " + std::to_string(rank));
  std::vector<int> ranks(targets.size(), rank);
  std::vector<float> scales(targets.size(), alpha / (float)rank);
  LoraSet set = lora_layout(targets, ranks, scales);
  for (size_t i = 0; i < set.adapters.size(); ++i) {
    const LoraAdapter& a = set.adapters[i];
    Rng rng(seed, /*stream=*/0x10A, i);
    float bound = 1.0f / std::sqrt((float)a.target.in);
    float* A = set.params.data<float>() + a.a_off;
    for (int j = 0; j < a.rank * a.target.in; ++j) A[j] = (2.0f * rng.uniform() - 1.0f) * bound;
  }
  return set;
}

void lora_save(const LoraSet& set, const std::string& path, DType dtype,
               const std::map<std::string, std::string>& metadata) {
  SafeTensorsWriter w;
  w.metadata = metadata;
  const std::vector<float> p = set.host_params();
  std::vector<float> B;
  for (size_t i = 0; i < set.adapters.size(); ++i) {
    const LoraAdapter& a = set.adapters[i];
    std::string key = kPrefix + a.target.module;
    w.add(key + ".lora_A.weight", dtype, {a.rank, a.target.in}, p.data() + a.a_off);
    B.assign(p.data() + a.b_off, p.data() + a.b_off + (size_t)a.target.rows * a.rank);
    for (float& v : B) v *= a.scale;
    w.add(key + ".lora_B.weight", dtype, {a.target.rows, a.rank}, B.data());
  }
  w.write(path);
}

LoraSet lora_load(const std::string& path, const std::vector<LoraTarget>& targets, float strength) {
  SafeTensorsFile f = SafeTensorsFile::open(path);
  std::map<std::string, const LoraTarget*> by_module;
  for (const LoraTarget& t : targets) by_module[t.module] = &t;

  // Group keys by module; every key must belong to a known module and be lora_A, lora_B or alpha.
  std::set<std::string> modules;
  for (const TensorInfo& t : f.tensors) {
    std::string k = t.name;
    if (k.rfind(kPrefix, 0) == 0) k = k.substr(strlen(kPrefix));
    std::string module;
    for (const char* suffix : {".lora_A.weight", ".lora_B.weight", ".alpha"}) {
      size_t n = strlen(suffix);
      if (k.size() > n && k.compare(k.size() - n, n, suffix) == 0) module = k.substr(0, k.size() - n);
    }
    if (module.empty())
      fail(path + ": key '" + t.name + "' is not a LoRA key (expected <module>.lora_A.weight, .lora_B.weight or .alpha)");
    if (!by_module.count(module))
      fail(path + ": '" + t.name + "' names module '" + module + "', which this model does not have (a LoRA for another model?)");
    modules.insert(module);
  }
  if (modules.empty()) fail(path + ": no LoRA tensors found");

  std::vector<LoraTarget> chosen;
  std::vector<int> ranks;
  std::vector<float> scales;
  for (const LoraTarget& t : targets) {  // model order, so layouts are stable
    if (!modules.count(t.module)) continue;
    std::string key = (f.has(kPrefix + t.module + ".lora_A.weight") ? kPrefix : "") + t.module;
    const TensorInfo& ia = f.info(key + ".lora_A.weight");
    if (ia.shape.size() != 2 || ia.shape[1] != t.in)
      fail(path + ": " + ia.name + " has shape " + shape_str(ia.shape) + ", expected [rank, " + std::to_string(t.in) + "]");
    int rank = (int)ia.shape[0];
    float scale = 1.0f;
    if (f.has(key + ".alpha")) scale = f.read_f32(key + ".alpha")[0] / (float)rank;
    chosen.push_back(t);
    ranks.push_back(rank);
    scales.push_back(scale * strength);
  }
  LoraSet set = lora_layout(chosen, ranks, scales);
  for (size_t i = 0; i < chosen.size(); ++i) {
    const LoraTarget& t = chosen[i];
    std::string key = (f.has(kPrefix + t.module + ".lora_A.weight") ? kPrefix : "") + t.module;
    std::vector<float> A = f.read_f32(key + ".lora_A.weight", {ranks[i], t.in});
    std::vector<float> B = f.read_f32(key + ".lora_B.weight", {t.rows, ranks[i]});
    std::copy(A.begin(), A.end(), set.params.data<float>() + set.adapters[i].a_off);
    std::copy(B.begin(), B.end(), set.params.data<float>() + set.adapters[i].b_off);
  }
  return set;
}

void with_lora_scale(LoraSet& lora, float m, const std::function<void()>& fn) {
  std::vector<float> scales;
  for (LoraAdapter& a : lora.adapters) scales.push_back(a.scale), a.scale *= m;
  auto restore = [&] {
    for (size_t k = 0; k < scales.size(); ++k) lora.adapters[k].scale = scales[k];
  };
  try {
    fn();
  } catch (...) {
    restore();
    throw;
  }
  restore();
}

}  // namespace graft
