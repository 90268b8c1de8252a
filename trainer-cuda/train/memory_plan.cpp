#include "train/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>

#include "core/common.h"
#include "core/cuda_runtime.h"
#include "models/weights.h"
#include "train/job.h"
#include "train/lora.h"

namespace graft {

namespace {

const double kGiB = 1024.0 * 1024.0 * 1024.0;
const double kWorkspace = 32.0 * 1024 * 1024;  // cuBLASLt's (cuda/cublaslt.cu)
const double kHostDecodeBlock = 16.0 * 1024 * 1024;  // the CPU's rows of a converted weight (ops/cpu_ops.cpp)

// Bytes per value of an unquantized tensor as the device keeps it.
double kept_bytes(DType stored, bool cuda) {
  return (double)dtype_size(kept_dtype(stored, cuda ? Device::cuda(0) : Device::cpu()));
}

std::string gib(double bytes) {
  char buf[32];
  if (bytes >= kGiB) std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / kGiB);
  else std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / (1024.0 * 1024.0));
  return buf;
}

std::string count_str(double n) {
  char buf[32];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.1fB", n / 1e9);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.1fM", n / 1e6);
  else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

double sum(const std::vector<MemoryPlan::Line>& lines) {
  double s = 0;
  for (const MemoryPlan::Line& l : lines) s += l.bytes;
  return s;
}

// The plan without its fixes.
MemoryPlan count(const PlanInputs& in) {
  MemoryPlan p;
  p.available = in.available;
  // The transformer: linear weights in the job's format (an fp8 checkpoint asked for fp8 stays as
  // stored, with its scales), everything else as the device keeps it.
  std::vector<PlanWeight> linears, rest;
  double largest = 0;
  int64_t linear_values = 0;
  bool converts = in.quantize != WeightFormat::dense;
  for (const PlanWeight& t : in.transformer) {
    (t.linear ? linears : rest).push_back(t);
    if (!t.linear) continue;
    linear_values += t.numel;
    largest = std::max(largest, (double)t.numel);
    converts |= t.dtype == DType::F8_E4M3;  // an fp8 checkpoint's weights are converted at each use
  }
  const double linear = weights_bytes(linears, in.cuda, in.quantize), other = weights_bytes(rest, in.cuda, in.quantize);
  const std::string format = in.quantize == WeightFormat::dense ? "as stored" : weight_format_name(in.quantize);
  p.training.push_back({"transformer: " + count_str((double)linear_values) + " linear weights " + format, linear});
  p.training.push_back({"transformer: norms, biases and the rest", other});
  if (in.cuda && in.offload > 0) {
    // Blocks in forward order (FLUX's double, then single; Z-Image's layers), each with its linear
    // layers' weights and biases.
    const bool z = in.arch == "zimage";
    const int n = z ? in.zimage.n_layers : in.cfg.n_double + in.cfg.n_single;
    std::vector<std::vector<PlanWeight>> blocks(n);
    for (const PlanWeight& t : in.transformer) {
      const bool frozen = t.linear || ends_with(t.name, ".bias");
      const int k = z ? zimage_block_of(t.name) : flux_block_of(in.cfg, t.name);
      if (frozen && k >= 0 && k < n) blocks[k].push_back(t);
    }
    const int count = offload_count(n, in.offload);
    double off = 0, two = 0;
    for (int k = 0; k < count; ++k) {
      const double b = weights_bytes(blocks[k], true, in.quantize);
      off += b;
      two = std::max(two, b + (k + 1 < count ? weights_bytes(blocks[k + 1], true, in.quantize) : 0.0));
    }
    p.offloaded = off;
    p.training.push_back({"layer offloading: " + std::to_string(count) + " of " + std::to_string(n) +
                              " blocks in pinned host memory, two streamed in at a time",
                          two - off});
  }

  const bool zimage = in.arch == "zimage";
  const std::vector<ParamSegment> segs =
      adapter_layout(zimage ? zimage_lora_targets(in.zimage) : flux_lora_targets(in.cfg, in.train_modulation), in.rank,
                     in.lokr, in.lokr_factor, in.lokr_full_rank);
  int64_t n = 0;
  for (const ParamSegment& s : segs) n += s.size;
  p.training.push_back({std::string(in.lokr ? "LoKr" : "LoRA") + ": " + count_str((double)n) + " parameters, gradients" +
                            (in.ema ? ", EMA" : ""),
                        4.0 * (double)n * (in.ema ? 3 : 2)});
  p.training.push_back({"optimizer " + in.optimizer.type, (double)optimizer_memory_bytes(in.optimizer, n, segs)});

  const int act = in.cuda ? 2 : 4;
  auto activations = [&](bool ckpt) {
    return zimage ? zimage_activation_bytes(in.zimage, in.batch, in.image_tokens, in.text_tokens, in.rank, ckpt, act, in.cuda)
                  : flux_activation_bytes(in.cfg, in.batch, in.image_tokens, in.text_tokens, in.rank, ckpt, act, in.cuda);
  };
  const FluxActivations a = activations(in.checkpointing), other_ckpt = activations(!in.checkpointing);
  p.activations_other = other_ckpt.kept + other_ckpt.transient;
  const std::string shape = std::to_string(in.batch) + " x (" + std::to_string(in.image_tokens) + " image + " +
                            std::to_string(in.text_tokens) + " text tokens)";
  p.training.push_back({"activations kept for backward, " + shape + (in.checkpointing ? ", checkpointing" : ""), a.kept});
  p.training.push_back({"backward's working set (gradients" + std::string(in.checkpointing ? ", a recomputed block)" : ")"),
                        a.transient});
  // One product's scratch: a weight decoded for it (on the CPU a block of rows), and cuBLASLt's.
  const double scratch = in.cuda ? kWorkspace + (converts ? 2.0 * largest : 0.0) : kHostDecodeBlock;
  p.training.push_back({"scratch of one product", scratch});
  const double te_bytes = weights_bytes(in.text_encoders, in.cuda, in.quantize_te);
  const double ae_bytes = weights_bytes(in.autoencoder, in.cuda, WeightFormat::dense);
  if (in.sampling) p.training.push_back({"autoencoder (kept for samples)", ae_bytes});

  // Encoding runs before the transformer loads: the text encoders, the autoencoder and its largest
  // picture's activations (a few 128-channel maps at full size, the middle block's attention).
  if (te_bytes > 0 || in.encode_pixels > 0) {
    const std::string te_format = in.quantize_te == WeightFormat::dense ? "" : std::string(" ") + weight_format_name(in.quantize_te);
    p.encoding.push_back({"text encoders" + te_format, te_bytes});
    p.encoding.push_back({"autoencoder", ae_bytes});
    const double px = (double)in.encode_pixels, mid = px / 64.0;
    if (px > 0) p.encoding.push_back({"autoencoder activations", 4 * 128 * px * act + mid * mid * 4});
  }
  p.training_total = sum(p.training);
  p.encoding_total = sum(p.encoding);
  double stored = 2;
  for (const PlanWeight& t : linears) stored = std::max(stored, (double)dtype_size(t.dtype));
  const double layer = in.quantize == WeightFormat::dense ? 0 : largest * (in.cuda ? 2.0 : 4.0 + stored);
  p.loading_total = linear + other - p.offloaded + (in.cuda && in.offload > 0 ? 2.0 * largest : layer) +
                    (in.sampling ? ae_bytes : 0.0);
  p.total = std::max({p.training_total, p.encoding_total, p.loading_total});
  return p;
}

const char* qtype_of(WeightFormat f) {
  switch (f) {
    case WeightFormat::fp8: return "qfloat8";
    case WeightFormat::int8: return "uint8";
    default: return "uint4";
  }
}

}  // namespace

MemoryPlan plan_memory(const PlanInputs& in) {
  MemoryPlan p = count(in);
  if (p.fits()) return p;
  // Single changes, from the cheapest in quality and speed, that bring the total under what is free.
  std::vector<std::pair<std::string, PlanInputs>> tries;
  if (!in.checkpointing) {
    PlanInputs t = in;
    t.checkpointing = true;
    tries.push_back({"train.gradient_checkpointing: true", t});
  }
  for (WeightFormat f : {WeightFormat::fp8, WeightFormat::nf4}) {
    if (weight_format_bytes(f, 64, 64, 2) >= weight_format_bytes(in.quantize, 64, 64, 2)) continue;
    PlanInputs t = in;
    t.quantize = f;
    tries.push_back({std::string("model.quantize: true with model.qtype: ") + qtype_of(f), t});
  }
  if (in.quantize_te == WeightFormat::dense && !in.text_encoders.empty()) {
    PlanInputs t = in;
    t.quantize_te = WeightFormat::fp8;
    tries.push_back({"model.quantize_te: true with model.qtype_te: qfloat8", t});
  }
  if (in.optimizer.type == "adamw" || in.optimizer.type == "prodigy" || in.optimizer.type == "lion") {
    PlanInputs t = in;
    t.optimizer.type = "adamw8bit";
    tries.push_back({"train.optimizer: adamw8bit", t});
  }
  if (in.batch > 1) {
    PlanInputs t = in;
    t.batch = 1;
    tries.push_back({"train.batch_size: 1", t});
  }
  if (in.image_tokens > 1024) {
    PlanInputs t = in;
    t.image_tokens = in.image_tokens / 4;
    const int side = (int)std::lround(std::sqrt((double)t.image_tokens)) * 16;
    tries.push_back({"a dataset resolution of at most " + std::to_string(side) + " px", t});
  }
  PlanInputs all = in;  // every change at once, each at its most frugal
  std::string all_what;
  for (auto& [what, t] : tries) {
    const MemoryPlan q = count(t);
    if (q.fits()) p.fixes.push_back(what + " (" + gib(q.total) + ")");
    all.checkpointing |= t.checkpointing;
    if (t.quantize_te != in.quantize_te) all.quantize_te = t.quantize_te;
    if (weight_format_bytes(t.quantize, 64, 64, 2) < weight_format_bytes(all.quantize, 64, 64, 2)) all.quantize = t.quantize;
    if (t.optimizer.type != in.optimizer.type) all.optimizer = t.optimizer;
    all.batch = std::min(all.batch, t.batch);
    all.image_tokens = std::min(all.image_tokens, t.image_tokens);
  }
  if (p.fixes.empty() && tries.size() > 1) {
    const MemoryPlan q = count(all);
    for (auto& [what, t] : tries) {
      const bool used = (t.checkpointing != in.checkpointing) || (t.quantize_te != in.quantize_te) || (t.quantize != in.quantize && t.quantize == all.quantize) ||
                        (t.optimizer.type != in.optimizer.type) || (t.batch != in.batch) || (t.image_tokens != in.image_tokens);
      if (used) all_what += (all_what.empty() ? "" : ", ") + what;
    }
    if (q.fits()) p.fixes.push_back("all of " + all_what + " (" + gib(q.total) + ")");
  }
  return p;
}

std::string MemoryPlan::report() const {
  std::string out = "  memory plan (before step 1):\n";
  char buf[256];
  auto lines = [&](const std::vector<Line>& ls, const char* title, double total) {
    if (ls.empty()) return;
    std::snprintf(buf, sizeof buf, "    %s: %s\n", title, gib(total).c_str());
    out += buf;
    for (const Line& l : ls) {
      std::snprintf(buf, sizeof buf, "      %-72s %s%s\n", l.what.c_str(), l.bytes < 0 ? "-" : "", gib(std::fabs(l.bytes)).c_str());
      out += buf;
    }
  };
  lines(encoding, "while encoding the datasets", encoding_total);
  if (loading_total > training_total) {
    std::snprintf(buf, sizeof buf, "    while the transformer loads (a layer quantized at a time): %s\n", gib(loading_total).c_str());
    out += buf;
  }
  lines(training, "while training", training_total);
  std::snprintf(buf, sizeof buf, "    peak %s of %s free%s\n", gib(total).c_str(),
                available > 0 ? gib(available).c_str() : "(unknown)", fits() ? "" : ": DOES NOT FIT");
  out += buf;
  return out;
}

std::string MemoryPlan::refusal(const std::string& job_file) const {
  std::string biggest;
  double top = -1;
  for (const Line& l : training)
    if (l.bytes > top) top = l.bytes, biggest = l.what + " " + gib(l.bytes);
  std::string s = job_file + ": this job needs about " + gib(total) + " (" +
                  (total == encoding_total ? "while encoding" : total == loading_total ? "while loading" : "while training") +
                  "; the largest part: " + biggest +
                  ") but " + gib(available) + " is free.";
  if (!fixes.empty()) {
    s += " It would fit with ";
    for (size_t i = 0; i < fixes.size(); ++i) s += (i ? "; or " : "") + fixes[i];
    s += ".";
  } else {
    s += " No single setting makes it fit: use a device with more memory or smaller pictures.";
  }
  return s + " (GRAFT_MEMORY_CHECK=0 starts it anyway.)";
}

nlohmann::json MemoryPlan::to_json() const {
  auto lines = [](const std::vector<Line>& ls) {
    nlohmann::json a = nlohmann::json::array();
    for (const Line& l : ls) a.push_back({{"what", l.what}, {"bytes", l.bytes}});
    return a;
  };
  return {{"training", lines(training)}, {"encoding", lines(encoding)}, {"training_total", training_total},
          {"encoding_total", encoding_total}, {"loading_total", loading_total}, {"offloaded", offloaded}, {"total", total}, {"available", available}, {"fits", fits()},
          {"activations_other", activations_other}, {"fixes", fixes}};
}

namespace {
bool linear_like(const std::string& n, const Shape& s) {
  const bool table = n.find("embed") != std::string::npos || n.find("shared") != std::string::npos ||
                     n.find("relative_attention_bias") != std::string::npos;
  return s.size() == 2 && !table && ends_with(n, ".weight");
}
PlanWeight weight_of(const std::string& name, const Shape& shape, DType dtype) {
  PlanWeight w;
  w.name = name, w.numel = shape_numel(shape), w.dtype = dtype;
  if (linear_like(name, shape)) w.linear = true, w.rows = (int)shape[0], w.cols = (int)shape[1];
  return w;
}
}  // namespace

std::vector<PlanWeight> plan_tensors(const std::vector<NamedParam>& params) {
  std::vector<PlanWeight> out;
  for (const NamedParam& p : params) out.push_back(weight_of(p.name, p.t->shape, p.t->dtype));
  return out;
}

std::vector<PlanWeight> checkpoint_weights(const std::string& path) {
  std::vector<PlanWeight> out;
  if (path.empty()) return out;
  const Checkpoint c = Checkpoint::open(path);
  for (const std::string& n : c.names()) out.push_back(weight_of(n, c.info(n).shape, c.info(n).dtype));
  return out;
}

double weights_bytes(const std::vector<PlanWeight>& ws, bool cuda, WeightFormat f) {
  double b = 0;
  for (const PlanWeight& t : ws) {
    const bool fp8_stored = t.dtype == DType::F8_E4M3;
    if (!t.linear || f == WeightFormat::dense || (f == WeightFormat::fp8 && fp8_stored))
      b += (double)t.numel * (dtype_is_float(t.dtype) ? kept_bytes(t.dtype, cuda) : (double)dtype_size(t.dtype)) +
           (t.linear && fp8_stored ? 4.0 * t.rows : 0.0);
    else
      b += weight_format_bytes(f, t.rows, t.cols, 0);
  }
  return b;
}

std::vector<PlanWeight> plan_tensors(const std::vector<Linear*>& linears, const std::vector<NamedParam>& params) {
  std::set<const graft::Tensor*> linear_weights;
  for (Linear* l : linears) linear_weights.insert(&l->W);
  std::vector<PlanWeight> out;
  for (const NamedParam& p : params) {
    PlanWeight w;
    w.name = p.name, w.numel = shape_numel(p.t->shape), w.dtype = p.t->dtype;
    if (linear_weights.count(p.t)) w.linear = true, w.rows = (int)p.t->shape[0], w.cols = (int)p.t->shape[1];
    out.push_back(w);
  }
  return out;
}

double device_free_bytes(Device device) {
  if (device.is_cuda()) return (double)cuda::free_memory();
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024.0;
  return 0;
}

namespace {

}  // namespace

int pixels_per_token(const std::string& ae_path) {
  if (ae_path.empty()) return 16;
  const Checkpoint ae = Checkpoint::open(ae_path);
  int levels = 0;
  while (ae.has("encoder.down." + std::to_string(levels) + ".block.0.conv1.weight") ||
         ae.has("encoder.down_blocks." + std::to_string(levels) + ".resnets.0.conv1.weight"))
    ++levels;
  return levels > 0 ? (1 << (levels - 1)) * 2 : 16;
}

PlanInputs plan_inputs(const Job& job, Device device) {
  PlanInputs in;
  in.arch = job.arch;
  if (job.arch == "zimage") {
    ZImageTransformer shapes = ZImageTransformer::shapes(job.transformer);
    in.zimage = shapes.cfg;
    in.transformer = plan_tensors(shapes.quantized_linears(), shapes.params());
  } else {
    FluxTransformer shapes = FluxTransformer::shapes(job.transformer);
    in.cfg = shapes.cfg;
    in.transformer = plan_tensors(shapes.linears(), shapes.params());
  }
  in.cuda = device.is_cuda();
  in.quantize = job.quantize;
  in.quantize_te = job.quantize_te;
  in.lokr = job.network_type == "lokr";
  in.lokr_full_rank = job.lokr_full_rank, in.lokr_factor = job.lokr_factor, in.rank = job.rank;
  in.train_modulation = job.train_modulation, in.ema = job.use_ema;
  in.optimizer = job.optimizer;
  in.offload = job.offload;
  in.batch = job.batch_size;
  in.checkpointing = job.gradient_checkpointing;
  for (const TextPart& t : job.text_parts) in.text_tokens = std::max<int64_t>(in.text_tokens, t.max_len);
  if (job.text_parts.size() == 1 && job.text_parts[0].pad_id >= 0 && !job.empty_tokens.empty()) {
    // Prompts of their own lengths (Z-Image's Qwen3): the longest one the job trains on.
    const TextPart& part = job.text_parts[0];
    in.text_tokens = part.length(job.empty_tokens.data());
    for (const JobDataset& d : job.datasets)
      for (const JobImage& im : d.items)
        for (const std::vector<int>* ids : {&im.tokens, &im.dropout_tokens, &im.dop_tokens})
          if (!ids->empty()) in.text_tokens = std::max<int64_t>(in.text_tokens, part.length(ids->data()));
  }
  const int factor = pixels_per_token(job.ae);
  for (const JobDataset& d : job.datasets)
    for (const JobImage& im : d.items) {
      in.image_tokens = std::max<int64_t>(in.image_tokens, (int64_t)(im.width / factor) * (im.height / factor));
      in.encode_pixels = std::max<int64_t>(in.encode_pixels, (int64_t)im.width * im.height);
    }
  for (const JobItem& it : job.items) {  // pre-encoded: the latent's and the text's shapes
    const SafeTensorsFile l = SafeTensorsFile::open(it.latent), t = SafeTensorsFile::open(it.text);
    const Shape z = l.info("latent").shape, x = t.info("txt").shape;
    if (z.size() == 3) in.image_tokens = std::max<int64_t>(in.image_tokens, (z[1] / 2) * (z[2] / 2));
    if (!x.empty()) in.text_tokens = std::max<int64_t>(in.text_tokens, x[0]);
  }
  if (!job.datasets.empty() || job.sample.enabled) {
    for (const TextPart& t : job.text_parts)
      for (const PlanWeight& w : checkpoint_weights(t.path)) in.text_encoders.push_back(w);
    in.autoencoder = checkpoint_weights(job.ae);
  }
  in.sampling = job.sample.enabled;
  const char* env = std::getenv("GRAFT_DEVICE_MEMORY");
  in.available = env && *env ? std::atof(env) : device_free_bytes(device);
  return in;
}

}  // namespace graft
