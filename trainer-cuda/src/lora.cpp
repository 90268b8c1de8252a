#include "lora.h"

#include <cmath>
#include <cstring>
#include <set>

#include "common.h"
#include "rng.h"

namespace graft {

static const char* kPrefix = "transformer.";

void LoraSet::zero_grad() { std::fill(grads.begin(), grads.end(), 0.0f); }

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
  set.params.assign(off, 0.0f);
  set.grads.assign(off, 0.0f);
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
    float* A = set.A((int)i);
    for (int j = 0; j < a.rank * a.target.in; ++j) A[j] = (2.0f * rng.uniform() - 1.0f) * bound;
  }
  return set;
}

void lora_save(const LoraSet& set, const std::string& path, DType dtype,
               const std::map<std::string, std::string>& metadata) {
  SafeTensorsWriter w;
  w.metadata = metadata;
  std::vector<float> B;
  for (size_t i = 0; i < set.adapters.size(); ++i) {
    const LoraAdapter& a = set.adapters[i];
    std::string key = kPrefix + a.target.module;
    w.add(key + ".lora_A.weight", dtype, {a.rank, a.target.in}, set.A((int)i));
    B.assign(set.B((int)i), set.B((int)i) + (size_t)a.target.rows * a.rank);
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
    std::copy(A.begin(), A.end(), set.A((int)i));
    std::copy(B.begin(), B.end(), set.B((int)i));
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
