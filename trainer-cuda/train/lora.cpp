#include "train/lora.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "core/autograd.h"
#include "core/common.h"
#include "core/rng.h"

namespace graft {

// The prefixes adapter files put before module names: diffusers/PEFT's for FLUX, the reference
// toolkit's (ComfyUI's) for Z-Image.
static const char* kPrefixes[] = {"transformer.", "diffusion_model."};

void LoraSet::to(Device device) {
  params = to_device(params, device);
  grads = zeros(params.shape, DType::F32, device, "adapter gradients");
  views.clear();
  const Tensor flat = params.view({params.numel()}), gflat = grads.view({grads.numel()});
  for (const LoraAdapter& a : adapters) {
    std::vector<Tensor> v;
    for (const AdapterMatrix& m : a.mats) {
      const int64_t n = (int64_t)m.rows * m.cols;
      Tensor t = flat.rows((int64_t)m.offset, n).view({m.rows, m.cols});
      make_leaf(t, gflat.rows((int64_t)m.offset, n));
      v.push_back(t);
    }
    views.push_back(v);
  }
}

void LoraSet::zero_grad() { zero_(grads); }

void LoraSet::set_params(const std::vector<float>& values) {
  if ((int64_t)values.size() != params.numel())
    fail("internal: " + std::to_string(values.size()) + " values for " + std::to_string(params.numel()) + " adapter parameters");
  copy_into(params, from_vector(values, params.shape, Device::cpu()));
}

std::vector<ParamSegment> LoraSet::segments() const {
  std::vector<ParamSegment> out;
  for (const LoraAdapter& a : adapters)
    for (const AdapterMatrix& m : a.mats) out.push_back({(int64_t)m.offset, (int64_t)m.rows * m.cols, m.rows, m.cols});
  return out;
}

static std::map<std::string, Linear*> layer_map(const std::vector<Linear*>& layers) {
  std::map<std::string, Linear*> by_name;
  for (Linear* l : layers) by_name[l->name] = l;
  return by_name;
}

void lora_attach(const std::vector<Linear*>& layers, LoraSet* lora) {
  for (Linear* l : layers) l->adapters.clear();
  lora_attach_more(layers, lora);
}

void lora_merge(const std::vector<Linear*>& layers, const LoraSet& lora, const std::string& what) {
  const std::map<std::string, Linear*> by_name = layer_map(layers);
  const std::vector<float> p = lora.host_params();
  std::map<Linear*, std::vector<float>> merged;  // each layer's fp32 weight, read once
  for (const LoraAdapter& ad : lora.adapters) {
    const LoraTarget& t = ad.target;
    if (ad.lokr) fail(what + ": '" + t.module + "' is a LoKr; a merged adapter must be a LoRA");
    auto it = by_name.find(t.base);
    if (it == by_name.end()) fail(what + ": module '" + t.module + "' targets layer '" + t.base + "', which this model does not have");
    Linear* l = it->second;
    if (l->w_absmax.defined() || l->w_scale.defined() || l->W.dtype == DType::F8_E4M3)
      fail(what + ": layer '" + t.base + "' is quantized; the adapter merges into dense weights");
    auto [slot, fresh] = merged.try_emplace(l);
    if (fresh) slot->second = to_floats(l->W);
    std::vector<float>& W = slot->second;
    const AdapterMatrix& A = ad.mats[0];  // lora_A [rank, in]
    const AdapterMatrix& B = ad.mats[1];  // lora_B [rows, rank]
    for (int r = 0; r < t.rows; ++r)
      for (int k = 0; k < ad.rank; ++k) {
        const float b = ad.scale * p[B.offset + (size_t)r * ad.rank + k];
        if (b == 0.0f) continue;
        float* row = W.data() + (size_t)(t.row_offset + r) * t.in;
        const float* a = p.data() + A.offset + (size_t)k * t.in;
        for (int c = 0; c < t.in; ++c) row[c] += b * a[c];
      }
  }
  for (auto& [l, W] : merged) l->W = from_vector(W, l->W.shape, l->W.device(), l->W.dtype);
}

void lora_attach_more(const std::vector<Linear*>& layers, LoraSet* lora) {
  if (!lora) return;
  const std::map<std::string, Linear*> by_name = layer_map(layers);
  if (lora->views.size() != lora->adapters.size()) fail("internal: adapter set without parameter views (LoraSet::to)");
  for (size_t i = 0; i < lora->adapters.size(); ++i) {
    const LoraAdapter& ad = lora->adapters[i];
    const LoraTarget& t = ad.target;
    auto it = by_name.find(t.base);
    if (it == by_name.end()) fail("adapter module '" + t.module + "' targets layer '" + t.base + "', which this model does not have");
    Linear* l = it->second;
    if (l->in != t.in || t.row_offset + t.rows > l->out) fail("adapter module '" + t.module + "' does not fit layer '" + t.base + "'");
    l->adapters.push_back({ad.lokr, lora->views[i], t.row_offset, t.rows, &lora->adapters[i].scale});
  }
}

// Lays the adapters' matrices out one after another in a zero buffer on the host.
static LoraSet layout(std::vector<LoraAdapter> adapters) {
  LoraSet set;
  size_t off = 0;
  for (LoraAdapter& a : adapters)
    for (AdapterMatrix& m : a.mats) m.offset = off, off += (size_t)m.rows * m.cols;
  set.adapters = std::move(adapters);
  set.params = zeros({(int64_t)off}, DType::F32, Device::cpu(), "adapter parameters");
  set.to(Device::cpu());
  return set;
}

static LoraAdapter lora_adapter(const LoraTarget& t, int rank, float scale) {
  LoraAdapter a;
  a.target = t, a.rank = rank, a.scale = scale;
  a.mats = {{"lora_A.weight", 0, rank, t.in}, {"lora_B.weight", 0, t.rows, rank}};
  return a;
}

// PEFT's and LyCORIS' kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = cols.
static void kaiming_uniform(LoraSet& set, size_t adapter, size_t mat, uint64_t seed) {
  const AdapterMatrix& m = set.adapters[adapter].mats[mat];
  Rng rng(seed, /*stream=*/0x10A, adapter);
  const float bound = 1.0f / std::sqrt((float)m.cols);
  float* p = set.params.data<float>() + m.offset;
  for (int j = 0; j < m.rows * m.cols; ++j) p[j] = (2.0f * rng.uniform() - 1.0f) * bound;
}

LoraSet lora_create(const std::vector<LoraTarget>& targets, int rank, float alpha, uint64_t seed) {
  if (rank <= 0) fail("network.linear (rank) must be a positive integer, got " + std::to_string(rank));
  std::vector<LoraAdapter> adapters;
  for (const LoraTarget& t : targets) adapters.push_back(lora_adapter(t, rank, alpha / (float)rank));
  LoraSet set = layout(adapters);
  for (size_t i = 0; i < set.adapters.size(); ++i) kaiming_uniform(set, i, 0, seed);  // B = 0
  return set;
}

std::pair<int, int> lokr_factorization(int dim, int factor) {
  if (factor > 0 && dim % factor == 0) return {factor, dim / factor};
  if (factor <= 0) factor = dim;
  int m = 1, n = dim;
  while (m < n) {
    int next = m + 1;
    while (dim % next != 0) ++next;
    const int other = dim / next;
    if (next + other > m + n || next > factor) break;
    m = next, n = other;
  }
  if (m > n) std::swap(m, n);
  return {m, n};
}

// A LoKr adapter's matrices for a slice of `rows` outputs and `in` inputs.
static LoraAdapter lokr_adapter(const LoraTarget& t, int rank, float alpha, int factor, bool full_rank) {
  const auto [a, b] = lokr_factorization(t.rows, factor);
  const auto [c, d] = lokr_factorization(t.in, factor);
  LoraAdapter ad;
  ad.target = t, ad.lokr = true;
  ad.mats.push_back({"lokr_w1", 0, a, c});
  if (full_rank || 2 * rank >= std::max(b, d)) {
    ad.mats.push_back({"lokr_w2", 0, b, d});
    ad.rank = 0, ad.alpha = (float)rank, ad.scale = 1.0f;  // LyCORIS: both factors full, scale 1
  } else {
    ad.mats.push_back({"lokr_w2_a", 0, b, rank});
    ad.mats.push_back({"lokr_w2_b", 0, rank, d});
    ad.rank = rank, ad.alpha = alpha, ad.scale = alpha / (float)rank;
  }
  return ad;
}

LoraSet lokr_create(const std::vector<LoraTarget>& targets, int rank, float alpha, int factor, bool full_rank,
                    uint64_t seed) {
  if (rank <= 0) fail("network.linear (rank) must be a positive integer, got " + std::to_string(rank));
  std::vector<LoraAdapter> adapters;
  for (const LoraTarget& t : targets) adapters.push_back(lokr_adapter(t, rank, alpha, factor, full_rank));
  LoraSet set = layout(adapters);
  for (size_t i = 0; i < set.adapters.size(); ++i) {
    kaiming_uniform(set, i, 0, seed);                                    // w1
    if (set.adapters[i].mats.size() == 3) kaiming_uniform(set, i, 1, seed ^ 0x2A);  // w2_a (w2_b = 0)
  }
  return set;
}

std::vector<ParamSegment> adapter_layout(const std::vector<LoraTarget>& targets, int rank, bool lokr, int factor,
                                         bool full_rank) {
  std::vector<ParamSegment> out;
  int64_t off = 0;
  for (const LoraTarget& t : targets) {
    const LoraAdapter a = lokr ? lokr_adapter(t, rank, (float)rank, factor, full_rank) : lora_adapter(t, rank, 1.0f);
    for (const AdapterMatrix& m : a.mats) {
      out.push_back({off, (int64_t)m.rows * m.cols, m.rows, m.cols});
      off += (int64_t)m.rows * m.cols;
    }
  }
  return out;
}

void lora_save(const LoraSet& set, const std::string& path, DType dtype,
               const std::map<std::string, std::string>& metadata) {
  SafeTensorsWriter w;
  w.metadata = metadata;
  const std::vector<float> p = set.host_params();
  std::vector<float> buf;
  for (const LoraAdapter& a : set.adapters) {
    const std::string key = set.prefix + a.target.module;
    for (const AdapterMatrix& m : a.mats) {
      buf.assign(p.data() + m.offset, p.data() + m.offset + (size_t)m.rows * m.cols);
      if (!a.lokr && m.key == "lora_B.weight")
        for (float& v : buf) v *= a.scale;
      w.add(key + "." + m.key, dtype, {m.rows, m.cols}, buf.data());
    }
    if (a.lokr) w.add(key + ".alpha", DType::F32, {}, &a.alpha);
  }
  w.write(path);
}

namespace {

const char* kSuffixes[] = {".lora_A.weight", ".lora_B.weight", ".alpha", ".lokr_w1", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b"};

// The module a key belongs to ("" when it is no adapter key we read).
std::string module_of(const std::string& name, std::string* suffix) {
  std::string k = name;
  for (const char* prefix : kPrefixes)
    if (k.rfind(prefix, 0) == 0) k = k.substr(strlen(prefix));
  for (const char* s : kSuffixes) {
    const size_t n = strlen(s);
    if (k.size() > n && k.compare(k.size() - n, n, s) == 0) {
      *suffix = s;
      return k.substr(0, k.size() - n);
    }
  }
  return "";
}

}  // namespace

LoraSet lora_load(const std::string& path, const std::vector<LoraTarget>& targets, float strength) {
  SafeTensorsFile f = SafeTensorsFile::open(path);
  std::map<std::string, const LoraTarget*> by_module;
  for (const LoraTarget& t : targets) by_module[t.module] = &t;

  // Every key must belong to a known module and be one of the adapter suffixes.
  std::set<std::string> modules;
  for (const TensorInfo& t : f.tensors) {
    std::string suffix;
    const std::string module = module_of(t.name, &suffix);
    if (module.empty()) {
      if (t.name.find(".lokr_") != std::string::npos || t.name.find(".hada_") != std::string::npos)
        fail(path + ": key '" + t.name + "' is a LyCORIS form graft does not read (it reads LoKr with lokr_w1 and lokr_w2 "
             "or lokr_w2_a/lokr_w2_b, and LoRA)");
      fail(path + ": key '" + t.name + "' is not an adapter key (expected <module>.lora_A.weight, .lora_B.weight, "
           ".lokr_w1, .lokr_w2, .lokr_w2_a, .lokr_w2_b or .alpha)");
    }
    if (!by_module.count(module))
      fail(path + ": '" + t.name + "' names module '" + module + "', which this model does not have (an adapter for another model?)");
    modules.insert(module);
  }
  if (modules.empty()) fail(path + ": no LoRA or LoKr tensors found");

  std::vector<LoraAdapter> adapters;
  std::vector<std::vector<std::string>> names;  // the file's key of each matrix
  std::string file_prefix = "transformer.";     // saved again under the file's own prefix
  for (const LoraTarget& t : targets) {  // model order, so layouts are stable
    if (!modules.count(t.module)) continue;
    std::string prefix;
    for (const char* p : kPrefixes)
      if (f.has(p + t.module + ".lora_A.weight") || f.has(p + t.module + ".lokr_w1")) prefix = p;
    if (!prefix.empty()) file_prefix = prefix;
    const std::string key = prefix + t.module;
    auto shape_of = [&](const std::string& k) { return f.info(key + "." + k).shape; };
    auto want = [&](const std::string& k, int64_t rows, int64_t cols) {
      const std::vector<int64_t> s = shape_of(k);
      if (s.size() != 2 || (rows >= 0 && s[0] != rows) || (cols >= 0 && s[1] != cols))
        fail(path + ": " + key + "." + k + " has shape " + shape_str(s) + ", expected [" +
             (rows >= 0 ? std::to_string(rows) : "rank") + ", " + (cols >= 0 ? std::to_string(cols) : "rank") + "]");
      return s;
    };
    const float file_alpha = f.has(key + ".alpha") ? f.read_f32(key + ".alpha")[0] : 0.0f;
    LoraAdapter ad;
    ad.target = t;
    if (f.has(key + ".lokr_w1")) {
      ad.lokr = true;
      const std::vector<int64_t> w1 = want("lokr_w1", -1, -1);
      const int a = (int)w1[0], c = (int)w1[1];
      if (a <= 0 || c <= 0 || t.rows % a != 0 || t.in % c != 0)
        fail(path + ": " + key + ".lokr_w1 has shape " + shape_str(w1) + ", which does not divide the layer's [" +
             std::to_string(t.rows) + ", " + std::to_string(t.in) + "]");
      const int b = t.rows / a, d = t.in / c;
      ad.mats.push_back({"lokr_w1", 0, a, c});
      if (f.has(key + ".lokr_w2")) {
        want("lokr_w2", b, d);
        ad.mats.push_back({"lokr_w2", 0, b, d});
        ad.rank = 0, ad.alpha = file_alpha, ad.scale = 1.0f;
      } else {
        const int r = (int)want("lokr_w2_a", b, -1)[1];
        want("lokr_w2_b", r, d);
        ad.mats.push_back({"lokr_w2_a", 0, b, r});
        ad.mats.push_back({"lokr_w2_b", 0, r, d});
        ad.rank = r, ad.alpha = file_alpha, ad.scale = file_alpha > 0.0f ? file_alpha / (float)r : 1.0f;
      }
    } else {
      const int rank = (int)want("lora_A.weight", -1, t.in)[0];
      want("lora_B.weight", t.rows, rank);
      ad = lora_adapter(t, rank, file_alpha > 0.0f ? file_alpha / (float)rank : 1.0f);
    }
    ad.scale *= strength;
    std::vector<std::string> keys;
    for (const AdapterMatrix& m : ad.mats) keys.push_back(key + "." + m.key);
    names.push_back(keys);
    adapters.push_back(ad);
  }
  LoraSet set = layout(adapters);
  set.prefix = file_prefix;
  for (size_t i = 0; i < set.adapters.size(); ++i)
    for (size_t j = 0; j < set.adapters[i].mats.size(); ++j) {
      const AdapterMatrix& m = set.adapters[i].mats[j];
      const std::vector<float> v = f.read_f32(names[i][j], {m.rows, m.cols});
      std::copy(v.begin(), v.end(), set.params.data<float>() + m.offset);
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
