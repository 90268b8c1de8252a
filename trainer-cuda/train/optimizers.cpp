#include "train/optimizers.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/common.h"
#include "ops/update_ops.h"

namespace graft {

using json = nlohmann::json;

const std::vector<std::string>& optimizer_names() {
  static const std::vector<std::string> names = {"adamw", "adamw8bit", "lion", "adafactor", "prodigy"};
  return names;
}

namespace {

const char* kParams = "train.optimizer_params";

// The keys each optimizer's constructor takes (the reference passes optimizer_params to it as they are).
std::vector<std::string> known_keys(const std::string& type) {
  if (type == "adamw" || type == "adamw8bit") return {"weight_decay", "betas", "eps"};
  if (type == "lion") return {"weight_decay", "betas"};
  if (type == "adafactor")
    return {"weight_decay", "eps", "clip_threshold", "decay_rate", "beta1", "relative_step", "scale_parameter", "warmup_init"};
  return {"weight_decay", "betas", "beta3", "eps", "decouple", "use_bias_correction", "safeguard_warmup", "d0", "d_coef",
          "growth_rate"};
}

std::string key(const char* name) { return std::string(kParams) + "." + name; }

// A list of `n` numbers, each in [lo, hi).
std::vector<double> numbers(const JsonFields& f, const char* name, size_t n, double lo, double hi) {
  const json* j = f.find(key(name));
  if (!j) return {};
  char want[96];
  std::snprintf(want, sizeof want, "%zu numbers in [%g, %g)", n, lo, hi);
  if (!j->is_array() || j->size() != n) f.bad(key(name), want, *j);
  std::vector<double> v;
  for (const json& x : *j) {
    if (!x.is_number() || !(x.get<double>() >= lo && x.get<double>() < hi)) f.bad(key(name), want, *j);
    v.push_back(x.get<double>());
  }
  return v;
}

}  // namespace

OptimizerConfig optimizer_config(const JsonFields& f) {
  OptimizerConfig c;
  c.type = f.str("train.optimizer", "adamw", optimizer_names());
  if (const json* p = f.find(kParams)) {
    if (!p->is_object()) f.bad(kParams, "an object of the optimizer's settings", *p);
    const std::vector<std::string> keys = known_keys(c.type);
    for (const auto& [k, v] : p->items()) {
      if (std::find(keys.begin(), keys.end(), k) != keys.end()) continue;
      std::string list;
      for (const std::string& x : keys) list += (list.empty() ? "" : ", ") + x;
      fail(f.file + ": " + kParams + "." + k + " is not a setting of the " + c.type + " optimizer (it takes " + list +
           "); remove it or pick another train.optimizer");
    }
  }
  const bool adam = c.type == "adamw" || c.type == "adamw8bit";
  c.weight_decay = (float)f.number(key("weight_decay"), adam ? 1e-4 : 0.0, 0.0, 10.0);
  if (c.type == "lion") c.beta2 = 0.99;
  const std::vector<double> betas = numbers(f, "betas", 2, 0.0, 1.0);
  if (!betas.empty()) c.beta1 = betas[0], c.beta2 = betas[1];
  if (c.type == "adafactor") {
    const std::vector<double> eps = numbers(f, "eps", 2, 0.0, 1.0);
    if (!eps.empty()) c.eps1 = (float)eps[0], c.eps2 = (float)eps[1];
    c.clip_threshold = (float)f.number(key("clip_threshold"), 1.0, 1e-12, 1e12);
    c.decay_rate = (float)f.number(key("decay_rate"), -0.8, -1.0, 0.0);
    if (f.find(key("beta1"))) c.first_moment = true, c.beta1 = f.number(key("beta1"), 0.0, 0.0, 0.999999);
    c.relative_step = f.boolean(key("relative_step"), false);
    c.scale_parameter = f.boolean(key("scale_parameter"), false);
    c.warmup_init = f.boolean(key("warmup_init"), false);
    if (c.warmup_init && !c.relative_step)
      fail(f.file + ": " + key("warmup_init") + " needs " + key("relative_step") + ": true (as in transformers' Adafactor)");
  } else if (c.type != "lion") {
    c.eps = (float)f.number(key("eps"), 1e-6, 1e-30, 1.0);
  }
  if (c.type == "prodigy") {
    if (f.find(key("beta3"))) c.beta3 = f.number(key("beta3"), 0.0, 0.0, 0.999999);
    c.d0 = f.number(key("d0"), 1e-6, 1e-30, 1e6);
    c.d_coef = f.number(key("d_coef"), 1.0, 1e-12, 1e6);
    c.growth_rate = f.number(key("growth_rate"), std::numeric_limits<double>::infinity(), 1.0, 1e300);
    c.decouple = f.boolean(key("decouple"), true);
    if (!c.decouple)
      fail(f.file + ": " + key("decouple") + ": false (weight decay added to the gradient) is not built; graft's "
           "Prodigy decays weights decoupled, as AdamW does: remove the setting");
    c.use_bias_correction = f.boolean(key("use_bias_correction"), false);
    c.safeguard_warmup = f.boolean(key("safeguard_warmup"), false);
  }
  return c;
}

size_t Optimizer::state_bytes() {
  size_t n = 0;
  for (auto& [name, t] : state_tensors()) n += t->defined() ? t->nbytes() : 0;
  return n;
}

namespace {

Tensor state_zeros(int64_t n, DType dtype, const Tensor& like, const char* what) {
  return zeros({n}, dtype, like.device(), what);
}

class AdamWOptimizer : public Optimizer {
 public:
  AdamWOptimizer(const OptimizerConfig& c, const Tensor& p) {
    config = c;
    m = state_zeros(p.numel(), DType::F32, p, "AdamW moments");
    v = state_zeros(p.numel(), DType::F32, p, "AdamW moments");
  }
  void step(const Tensor& p, const Tensor& g, float lr) override {
    t += 1;
    adamw_update(p, g, m, v, lr, config.beta1, config.beta2, config.eps, config.weight_decay, (long)t);
  }
  std::vector<std::pair<std::string, Tensor*>> state_tensors() override { return {{"m", &m}, {"v", &v}}; }
  std::vector<std::pair<std::string, double*>> state_scalars() override { return {{"t", &t}}; }

 private:
  Tensor m, v;
  double t = 0;
};

class AdamW8bitOptimizer : public Optimizer {
 public:
  AdamW8bitOptimizer(const OptimizerConfig& c, const Tensor& p, const std::vector<ParamSegment>& segments) {
    config = c;
    std::vector<int64_t> start;
    for (const ParamSegment& s : segments)
      for (int64_t o = 0; o < s.size; o += kBlock8bit) start.push_back(s.offset + o);
    const int64_t blocks = (int64_t)start.size();
    start.push_back(p.numel());
    Tensor host = empty({blocks + 1}, DType::I64, Device::cpu(), "8-bit block table");
    std::copy(start.begin(), start.end(), host.data<int64_t>());
    q.block_start = to_device(host, p.device());
    q.m_map = from_vector(dynamic_map(true), {256}, p.device());
    q.v_map = from_vector(dynamic_map(false), {256}, p.device());
    q.m_q = state_zeros(p.numel(), DType::U8, p, "8-bit AdamW moments");
    q.v_q = state_zeros(p.numel(), DType::U8, p, "8-bit AdamW moments");
    q.m_absmax = state_zeros(blocks, DType::F32, p, "8-bit AdamW block scales");
    q.v_absmax = state_zeros(blocks, DType::F32, p, "8-bit AdamW block scales");
  }
  void step(const Tensor& p, const Tensor& g, float lr) override {
    t += 1;
    adamw8bit_update(p, g, q, lr, config.beta1, config.beta2, config.eps, config.weight_decay, (long)t);
  }
  std::vector<std::pair<std::string, Tensor*>> state_tensors() override {
    return {{"m_q", &q.m_q}, {"m_absmax", &q.m_absmax}, {"v_q", &q.v_q}, {"v_absmax", &q.v_absmax}};
  }
  std::vector<std::pair<std::string, double*>> state_scalars() override { return {{"t", &t}}; }

 private:
  Blockwise8bit q;
  double t = 0;
};

class LionOptimizer : public Optimizer {
 public:
  LionOptimizer(const OptimizerConfig& c, const Tensor& p) {
    config = c;
    m = state_zeros(p.numel(), DType::F32, p, "Lion momentum");
  }
  void step(const Tensor& p, const Tensor& g, float lr) override {
    lion_update(p, g, m, lr, config.beta1, config.beta2, config.weight_decay);
  }
  std::vector<std::pair<std::string, Tensor*>> state_tensors() override { return {{"m", &m}}; }
  std::vector<std::pair<std::string, double*>> state_scalars() override { return {}; }

 private:
  Tensor m;
};

class AdafactorOptimizer : public Optimizer {
 public:
  AdafactorOptimizer(const OptimizerConfig& c, const Tensor& p, const std::vector<ParamSegment>& segs)
      : segments(segs) {
    config = c;
    int64_t rows = 0, cols = 0, vec = 0;
    for (const ParamSegment& s : segments) {
      if (s.rows > 0) rows += s.rows, cols += s.cols;
      else vec += s.size;
    }
    row = state_zeros(rows, DType::F32, p, "Adafactor row moments");
    col = state_zeros(cols, DType::F32, p, "Adafactor column moments");
    v = state_zeros(vec, DType::F32, p, "Adafactor moments");
    if (c.first_moment) m = state_zeros(p.numel(), DType::F32, p, "Adafactor first moments");
    u = state_zeros(p.numel(), DType::F32, p, "Adafactor update");
  }

  void step(const Tensor& p, const Tensor& g, float lr) override {
    const OptimizerConfig& c = config;
    step_n += 1;
    const double beta2t = 1.0 - std::pow(step_n, (double)c.decay_rate);
    int64_t r0 = 0, c0 = 0, v0 = 0;
    for (const ParamSegment& s : segments) {
      const Tensor pv = p.rows(s.offset, s.size), gv = g.rows(s.offset, s.size), uv = u.rows(s.offset, s.size);
      double step_lr = lr;
      if (c.relative_step) step_lr = std::min(c.warmup_init ? 1e-6 * step_n : 1e-2, 1.0 / std::sqrt(step_n));
      if (c.scale_parameter) step_lr *= std::max((double)c.eps2, std::sqrt(sum_squares(pv) / (double)s.size));
      double ss;
      if (s.rows > 0) {
        ss = adafactor_factored(gv, row.rows(r0, s.rows), col.rows(c0, s.cols), uv, s.rows, s.cols, beta2t, c.eps1);
        r0 += s.rows, c0 += s.cols;
      } else {
        ss = adafactor_unfactored(gv, v.rows(v0, s.size), uv, beta2t, c.eps1);
        v0 += s.size;
      }
      const double rms = std::sqrt(ss / (double)s.size);
      const float u_scale = (float)(step_lr / std::max(1.0, rms / c.clip_threshold));
      adafactor_apply(pv, uv, m.defined() ? m.rows(s.offset, s.size) : Tensor(), u_scale, c.beta1,
                      (float)(c.weight_decay * step_lr));
    }
  }
  std::vector<std::pair<std::string, Tensor*>> state_tensors() override {
    std::vector<std::pair<std::string, Tensor*>> out = {{"row", &row}, {"col", &col}, {"v", &v}};
    if (m.defined()) out.push_back({"m", &m});
    return out;
  }
  std::vector<std::pair<std::string, double*>> state_scalars() override { return {{"step", &step_n}}; }

 private:
  std::vector<ParamSegment> segments;
  Tensor row, col, v, m, u;  // u: this step's update (scratch, not state)
  double step_n = 0;
};

class ProdigyOptimizer : public Optimizer {
 public:
  ProdigyOptimizer(const OptimizerConfig& c, const Tensor& p) {
    config = c;
    m = state_zeros(p.numel(), DType::F32, p, "Prodigy moments");
    v = state_zeros(p.numel(), DType::F32, p, "Prodigy moments");
    s = state_zeros(p.numel(), DType::F32, p, "Prodigy moments");
    p0 = clone(p);
    d = d_max = c.d0;
  }

  void step(const Tensor& p, const Tensor& g, float lr_in) override {
    const OptimizerConfig& c = config;
    const double lr = lr_in, beta1 = c.beta1, beta2 = c.beta2;
    const double beta3 = c.beta3 < 0 ? std::sqrt(beta2) : c.beta3;
    const double bias_correction =
        c.use_bias_correction ? std::sqrt(1.0 - std::pow(beta2, k + 1)) / (1.0 - std::pow(beta1, k + 1)) : 1.0;
    const double dlr = d * lr * bias_correction;
    double numerator = d_numerator * beta3, denom = 0.0;
    if (lr > 0.0) {
      const double s_scale = c.safeguard_warmup ? (d / c.d0) * d : (d / c.d0) * dlr;
      const ProdigySums sums = prodigy_accumulate(p, g, p0, m, v, s, d, beta1, beta2, beta3, (float)s_scale);
      numerator += (d / c.d0) * dlr * sums.dot;
      denom = sums.s_abs;
    }
    if (denom == 0.0) return;  // no gradient yet: prodigyopt leaves d and the step count as they are
    if (lr > 0.0) {
      const double d_hat = c.d_coef * numerator / denom;
      if (d == c.d0) d = std::max(d, d_hat);
      d_max = std::max(d_max, d_hat);
      d = std::min(d_max, d * c.growth_rate);
    }
    d_numerator = numerator;
    prodigy_apply(p, m, v, (float)dlr, (float)(d * c.eps), c.weight_decay != 0 ? (float)(c.weight_decay * dlr) : 0.0f);
    k += 1;
  }
  std::vector<std::pair<std::string, Tensor*>> state_tensors() override {
    return {{"m", &m}, {"v", &v}, {"s", &s}, {"p0", &p0}};
  }
  std::vector<std::pair<std::string, double*>> state_scalars() override {
    return {{"d", &d}, {"d_max", &d_max}, {"d_numerator", &d_numerator}, {"k", &k}};
  }
  std::string describe() const override {
    char buf[96];
    std::snprintf(buf, sizeof buf, "prodigy (learning rate estimate d = %.3g)", d);
    return buf;
  }

 private:
  Tensor m, v, s, p0;
  double d = 0, d_max = 0, d_numerator = 0, k = 0;
};

}  // namespace

void optimizer_save(Optimizer& opt, SafeTensorsWriter& w, const std::string& prefix) {
  for (auto& [name, t] : opt.state_tensors()) {
    const Tensor host = to_device(*t, Device::cpu());
    w.add_raw(prefix + name, host.dtype, host.shape, host.raw(), host.nbytes());
  }
  for (auto& [name, v] : opt.state_scalars()) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", *v);
    w.metadata[prefix + name] = buf;
  }
}

void optimizer_load(Optimizer& opt, const SafeTensorsFile& f, const std::string& prefix) {
  for (auto& [name, t] : opt.state_tensors()) {
    const TensorInfo& info = f.info(prefix + name);
    if (info.dtype != t->dtype || info.shape != t->shape)
      fail(f.path + ": " + info.name + " is " + dtype_name(info.dtype) + " " + shape_str(info.shape) + ", this job's " +
           opt.config.type + " state is " + dtype_name(t->dtype) + " " + shape_str(t->shape) +
           "; move state/ away to start over");
    copy_into(*t, f.tensor(info));
  }
  for (auto& [name, v] : opt.state_scalars()) {
    auto it = f.metadata.find(prefix + name);
    if (it == f.metadata.end()) fail(f.path + ": metadata '" + prefix + name + "' is missing");
    char* end = nullptr;
    *v = std::strtod(it->second.c_str(), &end);
    if (end == it->second.c_str() || *end) fail(f.path + ": metadata '" + prefix + name + "' is not a number: " + it->second);
  }
}

std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& c, const Tensor& params,
                                          const std::vector<ParamSegment>& segments_in) {
  if (params.dtype != DType::F32) fail("internal: an optimizer over " + params.str());
  std::vector<ParamSegment> segments = segments_in;
  if (segments.empty()) segments.push_back({0, params.numel(), 0, 0});
  int64_t at = 0;
  for (const ParamSegment& s : segments) {
    if (s.offset != at || s.size <= 0 || (s.rows > 0 && (int64_t)s.rows * s.cols != s.size))
      fail("internal: optimizer segments do not tile the parameters at offset " + std::to_string(at));
    at += s.size;
  }
  if (at != params.numel()) fail("internal: optimizer segments cover " + std::to_string(at) + " of " + params.str());
  if (c.type == "adamw") return std::make_unique<AdamWOptimizer>(c, params);
  if (c.type == "adamw8bit") return std::make_unique<AdamW8bitOptimizer>(c, params, segments);
  if (c.type == "lion") return std::make_unique<LionOptimizer>(c, params);
  if (c.type == "adafactor") return std::make_unique<AdafactorOptimizer>(c, params, segments);
  if (c.type == "prodigy") return std::make_unique<ProdigyOptimizer>(c, params);
  fail("unknown optimizer '" + c.type + "'");
}

}  // namespace graft

namespace graft {

size_t optimizer_memory_bytes(const OptimizerConfig& c, int64_t n, const std::vector<ParamSegment>& segments) {
  const size_t f = 4 * (size_t)n;  // one fp32 value per parameter
  if (c.type == "adamw") return 2 * f;
  if (c.type == "lion") return f;
  if (c.type == "prodigy") return 4 * f;  // m, v, s and p0
  if (c.type == "adamw8bit") {
    size_t blocks = 0;
    for (const ParamSegment& s : segments) blocks += (size_t)((s.size + kBlock8bit - 1) / kBlock8bit);
    if (segments.empty()) blocks = (size_t)((n + kBlock8bit - 1) / kBlock8bit);
    return 2 * (size_t)n + 2 * 4 * blocks + 8 * (blocks + 1) + 2 * 256 * 4;  // codes, absmax, block table, maps
  }
  if (c.type == "adafactor") {
    size_t factored = 0, vec = 0;
    for (const ParamSegment& s : segments) {
      if (s.rows > 0) factored += (size_t)s.rows + (size_t)s.cols;
      else vec += (size_t)s.size;
    }
    if (segments.empty()) vec = (size_t)n;
    return 4 * (factored + vec) + f + (c.first_moment ? f : 0);  // moments, the update, m
  }
  fail("unknown optimizer '" + c.type + "'");
}

}  // namespace graft
