#include "models/weights.h"

#include <dirent.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/common.h"
#include "core/cuda_runtime.h"
#include "ops/update_ops.h"

namespace graft {

// ------------------------------------------------------------------------------------------------
// Checkpoint


static std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) out.push_back(e->d_name);
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// The shard files a "*.safetensors.index.json" names (its weight_map values), in first-seen order.
static std::vector<std::string> shards_of(const std::string& index_path) {
  std::ifstream f(index_path);
  std::stringstream buf;
  buf << f.rdbuf();
  nlohmann::json j = nlohmann::json::parse(buf.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    fail(index_path + ": not a safetensors index (a JSON object with a \"weight_map\" object is expected)");
  std::vector<std::string> files;
  std::set<std::string> seen;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string()) fail(index_path + ": weight_map entry '" + name + "' is not a file name");
    if (seen.insert(file.get<std::string>()).second) files.push_back(file.get<std::string>());
  }
  if (files.empty()) fail(index_path + ": weight_map lists no files");
  return files;
}

Checkpoint Checkpoint::open(const std::string& path) {
  Checkpoint c;
  c.path = path;
  std::vector<std::string> files;
  if (!is_dir(path)) {
    files.push_back(path);
  } else {
    std::vector<std::string> entries = list_dir(path), indexes, singles;
    for (const std::string& e : entries) {
      if (ends_with(e, ".safetensors.index.json")) indexes.push_back(e);
      else if (ends_with(e, ".safetensors")) singles.push_back(e);
    }
    if (indexes.size() == 1) {
      for (const std::string& s : shards_of(path + "/" + indexes[0])) files.push_back(path + "/" + s);
    } else if (indexes.empty() && singles.size() == 1) {
      files.push_back(path + "/" + singles[0]);
    } else if (indexes.size() > 1) {
      fail(path + ": several safetensors indexes (" + indexes[0] + ", " + indexes[1] + "); name the file to load");
    } else {
      fail(path + ": no checkpoint here (expected one .safetensors file, or shards with a *.safetensors.index.json)");
    }
  }
  for (const std::string& f : files) {
    c.files.push_back(SafeTensorsFile::open(f));
    const SafeTensorsFile& st = c.files.back();
    for (size_t i = 0; i < st.tensors.size(); ++i) {
      auto [it, fresh] = c.index_.emplace(st.tensors[i].name, std::make_pair((int)c.files.size() - 1, (int)i));
      if (!fresh)
        fail(f + ": tensor '" + st.tensors[i].name + "' is also in " + c.files[it->second.first].path +
             " (shards must not overlap)");
    }
  }
  return c;
}

bool Checkpoint::has(const std::string& name) const { return index_.count(name) > 0; }

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(path + ": tensor '" + name + "' is missing");
  return files[it->second.first].tensors[it->second.second];
}

const SafeTensorsFile& Checkpoint::file_of(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(path + ": tensor '" + name + "' is missing");
  return files[it->second.first];
}

Tensor Checkpoint::tensor(const std::string& name) const { return file_of(name).tensor(info(name)); }

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& f : files)
    for (const auto& t : f.tensors) out.push_back(t.name);
  return out;
}

// ------------------------------------------------------------------------------------------------
// Layouts and the loader

bool find_prefix(const Checkpoint& ckpt, const std::string& anchor, std::string* prefix) {
  bool found = false;
  for (const std::string& n : ckpt.names())
    if (ends_with(n, anchor) && (n.size() == anchor.size() || n[n.size() - anchor.size() - 1] == '.') &&
        (!found || n.size() - anchor.size() < prefix->size())) {
      *prefix = n.substr(0, n.size() - anchor.size());
      found = true;
    }
  return found;
}

std::string folder_config_text(const std::string& path) {
  if (!is_dir(path)) return "";
  std::ifstream f(path + "/config.json");
  if (!f) return "";
  std::stringstream buf;
  buf << f.rdbuf();
  return buf.str();
}

Layout identity_layout(const std::string& name, const std::string& prefix) {
  return Layout{name, [prefix](const std::string& canonical) { return Stored{{prefix + canonical}, false}; }};
}

WeightLoader::WeightLoader(const Checkpoint* c, Layout l, Device d, uint64_t s)
    : ckpt(c), layout(std::move(l)), device(d), seed(s) {}

std::string WeightLoader::problem(const std::string& name, const std::string& what, int part) const {
  Stored st = layout.map(name);
  std::string stored;
  if (part >= 0 && part < (int)st.parts.size()) stored = "'" + st.parts[part] + "'";
  else
    for (const std::string& p : st.parts) stored += (stored.empty() ? "'" : " + '") + p + "'";
  if (stored.empty()) stored = "'" + name + "'";
  std::string note = st.parts.size() == 1 && st.parts[0] == name ? layout.name + " layout"
                     : part >= 0 && st.parts.size() > 1 ? "part " + std::to_string(part + 1) + " of " + std::to_string(st.parts.size()) + " of " + name + " in the " + layout.name + " layout"
                                 : name + " in the " + layout.name + " layout";
  return (ckpt ? ckpt->path : std::string("weights")) + ": tensor " + stored + " " + what + " (" + note + ")";
}

bool WeightLoader::has(const std::string& name) const {
  if (!ckpt) return true;
  Stored st = layout.map(name);
  if (st.parts.empty()) return false;
  for (const std::string& p : st.parts)
    if (!ckpt->has(p)) return false;
  return true;
}

Shape WeightLoader::shape(const std::string& name) const {
  if (!ckpt) fail("internal: shape of '" + name + "' asked of random weights");
  Stored st = layout.map(name);
  Shape s;
  for (const std::string& p : st.parts) {
    if (!ckpt->has(p)) fail(problem(name, "is missing", (int)(&p - st.parts.data())));
    const TensorInfo& t = ckpt->info(p);
    if (s.empty()) {
      s = t.shape;
    } else {
      Shape a = s, b = t.shape;
      if (a.size() != b.size() || a.empty()) fail(problem(name, "does not stack with the other parts", (int)(&p - st.parts.data())));
      a[0] = b[0] = 0;
      if (a != b) fail(problem(name, "has shape " + shape_str(t.shape) + ", which does not stack with the other parts", (int)(&p - st.parts.data())));
      s[0] += t.shape[0];
    }
  }
  if (s.empty()) fail(problem(name, "is missing"));
  return s;
}

int64_t WeightLoader::dim(const std::string& name, int d) const {
  Shape s = shape(name);
  if ((int)s.size() <= d)
    fail(problem(name, "has shape " + shape_str(s) + ", expected more dimensions"));
  return s[d];
}

// Equal up to trailing dims of size 1 ([C, C] and [C, C, 1, 1]).
static bool same_but_unit_dims(Shape a, Shape b) {
  while (!a.empty() && a.back() == 1) a.pop_back();
  while (!b.empty() && b.back() == 1) b.pop_back();
  return a == b;
}

// Random weights by the role the name gives away.
static void fill_random(const Tensor& t, const std::string& name, uint32_t seed) {
  const bool bias = ends_with(name, ".bias"), scale = ends_with(name, ".scale") || name.find("norm") != std::string::npos;
  const bool modulation = name.find("_mod.") != std::string::npos || name.find("modulation") != std::string::npos ||
                          name.find("adaLN") != std::string::npos;
  if (scale && t.dim() == 1) fill_uniform_(t, seed, 0.1f, 1.0f);
  else if (bias) fill_uniform_(t, seed, 0.02f, 0.0f);
  else {
    const int64_t fan_in = t.dim() >= 2 ? t.numel() / t.size(0) : 1;
    const float gain = modulation ? 0.2f : 1.0f;
    fill_uniform_(t, seed, gain * std::sqrt(3.0f / (float)fan_in), 0.0f);  // std gain / sqrt(fan_in)
  }
}

DType kept_dtype(DType stored, Device device) {
  return device.is_cuda() && dtype_size(stored) >= 2 ? DType::BF16 : stored;
}

bool WeightLoader::scaled_checkpoint() const {
  if (scaled_ < 0) {
    scaled_ = 0;
    for (const std::string& n : ckpt ? ckpt->names() : std::vector<std::string>()) {
      if (ends_with(n, "scaled_fp8") || ends_with(n, ".scale_weight")) scaled_ = 1;
    }
  }
  return scaled_ == 1;
}

void WeightLoader::release(const std::string& name) const {
  if (!ckpt) return;
  for (const std::string& p : layout.map(name).parts) ckpt->file_of(p).release(ckpt->info(p));
}

Tensor WeightLoader::get(const std::string& name, const Shape& expect) {
  Tensor out;
  if (!ckpt && shapes_only) {
    out.shape = expect;
    ++handed_out;
    return out;
  }
  if (!ckpt) {
    out = empty(expect, compute_dtype(device), device, "random weights");
    fill_random(out, name, (uint32_t)(seed * 0x9E3779B9u + handed_out++ * 0x6D2B79F5u));
    return out;
  }
  Shape s = shape(name);
  if (s != expect && same_but_unit_dims(s, expect)) s = expect;  // a 1x1 conv stored as a linear, or back
  if (s != expect)
    fail(problem(name, "has shape " + shape_str(s) + " but " + shape_str(expect) +
                           " was expected (a file from another model, or another size of it?)"));
  Stored st = layout.map(name);
  DType dtype = ckpt->info(st.parts[0]).dtype;
  for (const std::string& p : st.parts)
    if (ckpt->info(p).dtype != dtype)
      fail(problem(name, "is stored in parts of different dtypes"));
  if (!dtype_is_float(dtype))
    fail(problem(name, std::string("is ") + dtype_name(dtype) + ", not a float dtype"));
  if (shapes_only) {  // checked, not read: the memory plan's pass over a checkpoint
    out.shape = s;
    out.dtype = dtype;
    ++handed_out;
    return out;
  }
  const bool on_gpu = device.is_cuda();
  const DType keep = kept_dtype(dtype, device);
  if (!on_gpu && st.parts.size() == 1 && !st.swap_halves) {
    out = ckpt->tensor(st.parts[0]).view(s);  // a view into the mapping: no copy at all
  } else {
    out = empty(s, keep, device, ("weight " + name).c_str());
    int64_t at = 0;
    for (const std::string& p : st.parts) {
      const TensorInfo& ti = ckpt->info(p);
      Tensor part = ckpt->tensor(p);
      copy_into(out.rows(at, ti.shape[0]), part);
      if (on_gpu) ckpt->file_of(p).release(ti);
      at += ti.shape[0];
    }
    if (st.swap_halves) {
      const int64_t half = s[0] / 2;
      Tensor first = clone(out.rows(0, half));
      copy_into(out.rows(0, half), out.rows(half, half));
      copy_into(out.rows(half, half), first);
    }
  }
  ++handed_out;
  return out;
}

}  // namespace graft
