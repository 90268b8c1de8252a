#include "job.h"

#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common.h"

namespace graft {

using json = nlohmann::json;

namespace {

// Typed access to dotted fields of job.json with one-line errors that name the field.
struct Fields {
  const json& root;
  std::string file;

  const json* find(const std::string& path) const {
    const json* j = &root;
    std::stringstream ss(path);
    std::string key;
    while (std::getline(ss, key, '.')) {
      if (j->is_array() && !key.empty() && key.find_first_not_of("0123456789") == std::string::npos) {
        size_t i = std::stoul(key);
        if (i >= j->size()) return nullptr;
        j = &(*j)[i];
        continue;
      }
      if (!j->is_object()) return nullptr;
      auto it = j->find(key);
      if (it == j->end() || it->is_null()) return nullptr;
      j = &*it;
    }
    return j;
  }
  [[noreturn]] void bad(const std::string& path, const std::string& want, const json& got) const {
    fail(file + ": " + path + " must be " + want + ", got " + got.dump());
  }
  double number(const std::string& path, double def, double lo, double hi, bool required = false) const {
    const json* j = find(path);
    if (!j) {
      if (required) fail(file + ": " + path + " is missing");
      return def;
    }
    std::ostringstream want;
    want << "a number in [" << lo << ", " << hi << "]";
    if (!j->is_number()) bad(path, want.str(), *j);
    double v = j->get<double>();
    if (!(v >= lo && v <= hi)) bad(path, want.str(), *j);
    return v;
  }
  int integer(const std::string& path, int def, int lo, int hi, bool required = false) const {
    const json* j = find(path);
    if (!j) {
      if (required) fail(file + ": " + path + " is missing");
      return def;
    }
    std::string want = "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
    if (!j->is_number_integer()) bad(path, want, *j);
    long long v = j->get<long long>();
    if (v < lo || v > hi) bad(path, want, *j);
    return (int)v;
  }
  bool boolean(const std::string& path, bool def) const {
    const json* j = find(path);
    if (!j) return def;
    if (!j->is_boolean()) bad(path, "true or false", *j);
    return j->get<bool>();
  }
  std::string str(const std::string& path, const std::string& def, const std::vector<std::string>& allowed = {},
                  bool required = false) const {
    const json* j = find(path);
    if (!j) {
      if (required) fail(file + ": " + path + " is missing");
      return def;
    }
    if (!j->is_string()) bad(path, "a string", *j);
    std::string v = j->get<std::string>();
    if (!allowed.empty()) {
      for (const auto& a : allowed)
        if (a == v) return v;
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      bad(path, "one of " + list, *j);
    }
    return v;
  }
};

std::string absolute(const std::string& base, const std::string& p) {
  if (p.empty() || p[0] == '/') return p;
  return base + "/" + p;
}

bool is_dir(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

Job job_load(const std::string& dir_in) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (!is_dir(dir)) fail(dir + ": job folder not found (create it with the graft TUI, or `graft-trainer make-tiny " + dir + "`)");
  if (dir[0] != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd)) dir = std::string(cwd) + "/" + dir;
  }
  Job job;
  job.dir = dir;
  job.file = dir + "/job.json";
  std::ifstream in(job.file);
  if (!in) fail(job.file + ": cannot read the job file (missing? prepare the job first)");
  std::stringstream buf;
  buf << in.rdbuf();
  json root;
  try {
    root = json::parse(buf.str());
  } catch (const json::parse_error& e) {
    fail(job.file + ": not valid JSON (near byte " + std::to_string(e.byte) + "); fix or re-create the job");
  }
  if (!root.is_object()) fail(job.file + ": must hold a JSON object");
  Fields f{root, job.file};

  job.name = f.str("name", "", {}, true);
  if (job.name.empty() || job.name.find('/') != std::string::npos)
    fail(job.file + ": name must be a non-empty file name without '/', got \"" + job.name + "\"");
  job.output_dir = absolute(dir, f.str("output_dir", dir));
  job.device = f.str("device", "cpu");
  job.trigger_word = f.str("trigger_word", "");

  job.arch = f.str("model.arch", "flux", {"flux"});
  job.transformer = absolute(dir, f.str("model.transformer", "", {}, true));
  job.base_model = f.str("model.name_or_path", job.transformer);
  job.text_encoder = absolute(dir, f.str("model.text_encoder", ""));
  job.ae = absolute(dir, f.str("model.ae", ""));

  job.network_type = f.str("network.type", "lora", {"lora"});
  job.rank = f.integer("network.linear", 16, 1, 1024);
  job.alpha = (float)f.number("network.linear_alpha", job.rank, 1e-6, 1e6);
  job.train_modulation = f.boolean("network.train_modulation", false);

  job.steps = f.integer("train.steps", 1000, 1, 100000000);
  job.batch_size = f.integer("train.batch_size", 1, 1, 4096);
  job.grad_accum = f.integer("train.gradient_accumulation", 1, 1, 4096);
  job.lr = (float)f.number("train.lr", 1e-4, 1e-12, 10.0);
  job.lr_scheduler = f.str("train.lr_scheduler", "constant", {"constant", "constant_with_warmup", "linear", "cosine"});
  job.warmup_steps = f.integer("train.lr_warmup_steps", 0, 0, 100000000);
  job.optimizer = f.str("train.optimizer", "adamw", {"adamw", "adamw8bit"});
  job.weight_decay = (float)f.number("train.optimizer_params.weight_decay", 1e-4, 0.0, 10.0);
  if (const json* b = f.find("train.optimizer_params.betas")) {
    if (!b->is_array() || b->size() != 2 || !(*b)[0].is_number() || !(*b)[1].is_number())
      f.bad("train.optimizer_params.betas", "two numbers in [0, 1)", *b);
    job.beta1 = (*b)[0].get<float>();
    job.beta2 = (*b)[1].get<float>();
    if (!(job.beta1 >= 0 && job.beta1 < 1 && job.beta2 >= 0 && job.beta2 < 1))
      f.bad("train.optimizer_params.betas", "two numbers in [0, 1)", *b);
  }
  job.eps = (float)f.number("train.optimizer_params.eps", 1e-8, 0.0, 1.0);
  job.max_grad_norm = (float)f.number("train.max_grad_norm", 1.0, 0.0, 1e9);
  job.timestep_type = f.str("train.timestep_type", "sigmoid", {"linear", "sigmoid"});
  job.seed = (uint64_t)f.number("train.seed", 42, 0, 9007199254740992.0);
  job.guidance = (float)f.number("train.guidance", 1.0, 0.0, 100.0);

  std::string dt = f.str("save.dtype", "bf16", {"bf16", "fp16", "fp32", "float16", "float32"});
  job.save_dtype = dt == "bf16" ? DType::BF16 : (dt == "fp16" || dt == "float16") ? DType::F16 : DType::F32;
  job.save_every = f.integer("save.save_every", 250, 1, 100000000);
  job.max_step_saves_to_keep = f.integer("save.max_step_saves_to_keep", 4, 0, 100000);

  const json* items = f.find("items");
  if (!items || !items->is_array() || items->empty())
    fail(job.file + ": items must be a non-empty list of {latent, text} (no prepared data: run preparation first)");
  for (size_t i = 0; i < items->size(); ++i) {
    const json& it = (*items)[i];
    std::string p = "items[" + std::to_string(i) + "]";
    if (!it.is_object() || !it.contains("latent") || !it["latent"].is_string() || !it.contains("text") ||
        !it["text"].is_string())
      f.bad(p, "an object {\"latent\": path, \"text\": path}", it);
    job.items.push_back({absolute(dir, it["latent"].get<std::string>()), absolute(dir, it["text"].get<std::string>())});
  }
  if (const json* c = f.find("config")) job.config_json = c->dump();

  if (f.find("sample")) {
    JobSample& s = job.sample;
    s.enabled = !f.boolean("sample.disable_sampling", false);
    s.every = f.integer("sample.sample_every", 250, 1, 100000000);
    s.first = !f.boolean("sample.skip_first_sample", false) || f.boolean("sample.force_first_sample", false);
    s.width = f.integer("sample.width", 32, 8, 16384);
    s.height = f.integer("sample.height", 32, 8, 16384);
    s.steps = f.integer("sample.sample_steps", 20, 1, 1000);
    s.cfg_scale = (float)f.number("sample.guidance_scale", 4.0, 0.0, 100.0);
    s.shift = (float)f.number("sample.shift", 1.0, 0.01, 100.0);
    s.seed = (uint64_t)f.number("sample.seed", 42, 0, 9007199254740992.0);
    s.walk_seed = f.boolean("sample.walk_seed", false);
    const json* ps = f.find("sample.prompts");
    if (!ps || !ps->is_array()) f.bad("sample.prompts", "a list of {prompt, width?, height?, seed?, lora_scale?}", ps ? *ps : json());
    for (size_t i = 0; i < ps->size(); ++i) {
      std::string p = "sample.prompts." + std::to_string(i);
      const json& e = (*ps)[i];
      if (!e.is_object() || !e.contains("prompt") || !e["prompt"].is_string())
        f.bad("sample.prompts[" + std::to_string(i) + "]", "an object with a string prompt", e);
      JobSamplePrompt sp;
      sp.prompt = e["prompt"].get<std::string>();
      sp.width = f.integer(p + ".width", s.width, 8, 16384);
      sp.height = f.integer(p + ".height", s.height, 8, 16384);
      sp.seed = (int64_t)f.number(p + ".seed", -1, -1, 9007199254740992.0);
      sp.lora_scale = (float)f.number(p + ".lora_scale", 1.0, -100.0, 100.0);
      s.prompts.push_back(sp);
    }
    if (s.enabled && !s.prompts.empty() && (job.text_encoder.empty() || job.ae.empty()))
      fail(job.file + ": sampling needs model.text_encoder and model.ae (or set sample.disable_sampling)");
    if (s.prompts.empty()) s.enabled = false;
  }
  return job;
}

}  // namespace graft
