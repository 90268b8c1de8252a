#include "train/job.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/common.h"
#include "core/image_io.h"
#include "demo/text_encoder.h"
#include "train/json_fields.h"
#include "train/prompt_encoder.h"
#include "models/flux_vae.h"

namespace graft {

using json = nlohmann::json;

namespace {

// job.json's fields, with the token lists of the prompts.
struct Fields : JsonFields {
  Fields(const json& root, std::string file) : JsonFields{root, std::move(file)} {}

  // A list of exactly `len` token ids (integers >= 0).
  std::vector<int> tokens(const std::string& path, int len, bool required) const {
    const json* j = find(path);
    if (!j) {
      if (required) fail(file + ": " + path + " is missing (a list of " + std::to_string(len) + " token ids)");
      return {};
    }
    const std::string want = "a list of " + std::to_string(len) + " token ids (the text encoder's max_len)";
    if (!j->is_array()) bad(path, want, *j);
    if ((int)j->size() != len)
      fail(file + ": " + path + " must be " + want + ", got " + std::to_string(j->size()) + " ids");
    std::vector<int> ids;
    for (size_t i = 0; i < j->size(); ++i) {
      const json& v = (*j)[i];
      if (!v.is_number_integer() || v.get<long long>() < 0 || v.get<long long>() > INT_MAX)
        bad(path + "[" + std::to_string(i) + "]", "a token id (an integer >= 0)", v);
      ids.push_back((int)v.get<long long>());
    }
    return ids;
  }

  // A prompt's ids for every text part, concatenated: a list (one part) or an object with exactly
  // the parts' names, each list that part's max_len long. Without parts (a job with no `text`), a
  // list of any length.
  std::vector<int> token_set(const std::string& path, const std::vector<TextPart>& parts, bool required) const {
    const json* j = find(path);
    if (!j) {
      if (required) fail(file + ": " + path + " is missing (the token ids of the prompt)");
      return {};
    }
    if (parts.empty()) {
      if (!j->is_array() || j->empty()) bad(path, "a non-empty list of token ids", *j);
      return tokens(path, (int)j->size(), true);
    }
    if (j->is_array()) {
      if (parts.size() != 1) bad(path, "an object with the ids of each text encoder (" + part_names(parts) + ")", *j);
      return tokens(path, parts[0].max_len, true);
    }
    if (!j->is_object()) bad(path, "a list of token ids or an object of lists by text encoder (" + part_names(parts) + ")", *j);
    for (const auto& [name, v] : j->items()) {
      bool known = false;
      for (const TextPart& p : parts) known = known || p.name == name;
      if (!known) fail(file + ": " + path + "." + name + ": no such text encoder in text.encoders (" + part_names(parts) + ")");
    }
    std::vector<int> ids;
    for (const TextPart& p : parts) {
      std::vector<int> part = tokens(path + "." + p.name, p.max_len, true);
      ids.insert(ids.end(), part.begin(), part.end());
    }
    return ids;
  }

  static std::string part_names(const std::vector<TextPart>& parts) {
    std::string s;
    for (const TextPart& p : parts) s += (s.empty() ? "" : ", ") + p.name;
    return s;
  }
};

std::string absolute(const std::string& base, const std::string& p) {
  if (p.empty() || p[0] == '/') return p;
  return base + "/" + p;
}

bool is_file(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string at(const std::string& base, size_t i) { return base + "[" + std::to_string(i) + "]"; }

// job.json `datasets`: prepared pictures and their token ids.
void load_datasets(Job& job, const Fields& f, const json& list) {
  const std::string& file = job.file;
  if (!list.is_array() || list.empty())
    f.bad("datasets", "a non-empty list of {folder, weight, is_reg, caption_dropout_rate, items}", list);
  for (const TextPart& p : job.text_parts)
    if (p.path.empty()) fail(file + ": model.text_encoder is missing (datasets need the model's text encoder)");
  if (job.text_parts.empty()) fail(file + ": model.text_encoder is missing (datasets need the model's text encoder)");
  if (job.ae.empty()) fail(file + ": model.ae is missing (datasets need the model's autoencoder)");
  if (!f.find("text")) fail(file + ": text is missing ({max_len, empty_tokens}: datasets need it)");
  job.empty_tokens = f.token_set("text.empty_tokens", job.text_parts, true);
  for (size_t d = 0; d < list.size(); ++d) {
    const std::string dp = at("datasets", d);
    if (!list[d].is_object()) f.bad(dp, "an object {folder, weight, is_reg, caption_dropout_rate, items}", list[d]);
    JobDataset ds;
    ds.folder = f.str(dp + ".folder", "");
    ds.weight = f.number(dp + ".weight", 1.0, 1e-9, 1e9);
    ds.is_reg = f.boolean(dp + ".is_reg", false);
    ds.caption_dropout_rate = (float)f.number(dp + ".caption_dropout_rate", 0.0, 0.0, 1.0);
    const json* items = f.find(dp + ".items");
    if (!items || !items->is_array() || items->empty())
      fail(file + ": " + dp + ".items must be a non-empty list of prepared pictures" +
           (ds.folder.empty() ? "" : " (dataset " + ds.folder + ")") + "; prepare the job again");
    for (size_t i = 0; i < items->size(); ++i) {
      const std::string ip = dp + at(".items", i);
      if (!(*items)[i].is_object()) f.bad(ip, "an object {image, key, width, height, tokens, ...}", (*items)[i]);
      JobImage im;
      im.source = f.str(ip + ".source", "");
      im.caption = f.str(ip + ".caption", "");
      im.image = absolute(job.dir, f.str(ip + ".image", "", {}, true));
      im.key = f.str(ip + ".key", "", {}, true);
      if (im.key.empty()) f.bad(ip + ".key", "a non-empty string (the identity of the pixels)", json(im.key));
      im.width = f.integer(ip + ".width", 0, 8, 16384, true);
      im.height = f.integer(ip + ".height", 0, 8, 16384, true);
      im.flip_x = f.boolean(ip + ".flip_x", false);
      im.flip_y = f.boolean(ip + ".flip_y", false);
      im.repeats = f.integer(ip + ".repeats", 1, 1, 100000);
      im.tokens = f.token_set(ip + ".tokens", job.text_parts, true);
      im.dropout_tokens = f.token_set(ip + ".dropout_tokens", job.text_parts, true);
      if (job.dop && !f.find(ip + ".dop_tokens"))
        fail(file + ": " + ip + ".dop_tokens is missing but train.diff_output_preservation is true (the caption "
                    "with the trigger replaced by the preservation class); prepare the job again");
      if (job.dop) im.dop_tokens = f.token_set(ip + ".dop_tokens", job.text_parts, true);
      const std::string from = im.source.empty() ? "" : " (source " + im.source + ")";
      if (!is_file(im.image))
        fail(file + ": " + ip + ".image: " + im.image + " does not exist" + from + "; prepare the job again");
      int w = 0, h = 0;
      std::string why;
      if (!image_size(im.image, &w, &h, &why))
        fail(file + ": " + ip + ".image: " + im.image + " is not a readable PNG (" + why + ")" + from +
             "; prepare the job again");
      if (w != im.width || h != im.height)
        fail(file + ": " + ip + ": " + im.image + " is " + std::to_string(w) + "x" + std::to_string(h) +
             " pixels but width x height is " + std::to_string(im.width) + "x" + std::to_string(im.height) + from +
             "; prepare the job again");
      ds.items.push_back(std::move(im));
    }
    job.datasets.push_back(std::move(ds));
  }
}

// The checks of one prompt's ids against each text encoder's vocabulary; a field path names the
// part when there are several (datasets[0].items[2].tokens.t5[14]).
void check_vocab(const Job& job, const std::string& path, const std::vector<int>& ids, const PromptEncoder& pe) {
  size_t at_id = 0;
  for (const PromptEncoder::Part& p : pe.parts) {
    const std::string where = pe.parts.size() == 1 ? path : path + "." + p.name;
    for (int i = 0; i < p.max_len && at_id < ids.size(); ++i, ++at_id)
      if (ids[at_id] >= p.vocab)
        fail(job.file + ": " + at(where, i) + " must be a token id below " + std::to_string(p.vocab) +
             " (the vocabulary of the text encoder " + p.path + "), got " + std::to_string(ids[at_id]) +
             "; prepare the job again with this model's tokenizer");
  }
}

}  // namespace

int TextPart::length(const int* ids) const {
  int n = max_len;
  if (pad_id >= 0)
    while (n > 1 && ids[n - 1] == pad_id) --n;
  return n;
}

namespace {

// model.text_encoder (one encoder, the demo model's) or model.text_encoders {name: path}, and the
// text section's length of each: text.max_len, or text.encoders {name: {max_len}}.
void load_text_parts(Job& job, const Fields& f) {
  const std::string te = absolute(job.dir, f.str("model.text_encoder", ""));
  const json* tes = f.find("model.text_encoders");
  if (!te.empty() && tes) fail(job.file + ": model has both text_encoder and text_encoders; give one");
  if (!te.empty()) job.text_parts.push_back({"text_encoder", te, 0});
  if (tes) {
    if (!tes->is_object() || tes->empty()) f.bad("model.text_encoders", "an object {name: checkpoint path}", *tes);
    for (const auto& [name, v] : tes->items())  // json objects iterate sorted by name
      job.text_parts.push_back({name, absolute(job.dir, f.str("model.text_encoders." + name, "", {}, true)), 0});
  }
  if (!f.find("text")) return;
  const json* encoders = f.find("text.encoders");
  if (!encoders) {
    const int len = f.integer("text.max_len", 0, 2, 65536, true);
    if (job.text_parts.size() > 1)
      fail(job.file + ": text.max_len is for one text encoder; this model has " + Fields::part_names(job.text_parts) +
           ": give text.encoders {name: {max_len}}");
    if (job.text_parts.empty()) job.text_parts.push_back({"text_encoder", "", 0});
    job.text_parts[0].max_len = len;
  } else {
    if (!encoders->is_object()) f.bad("text.encoders", "an object {name: {max_len}}", *encoders);
    std::vector<TextPart> named;
    for (const auto& [name, v] : encoders->items()) {
      TextPart p{name, "", f.integer("text.encoders." + name + ".max_len", 0, 2, 65536, true),
                 f.integer("text.encoders." + name + ".pad_id", -1, -1, 1 << 30)};
      for (const TextPart& m : job.text_parts)
        if (m.name == name) p.path = m.path;
      if (!job.text_parts.empty() && p.path.empty())
        fail(job.file + ": text.encoders." + name + ": the model has no such text encoder (" + Fields::part_names(job.text_parts) + ")");
      named.push_back(p);
    }
    if (!job.text_parts.empty() && named.size() != job.text_parts.size())
      fail(job.file + ": text.encoders names " + Fields::part_names(named) + " but the model has " + Fields::part_names(job.text_parts));
    job.text_parts = named;
  }
  for (const TextPart& p : job.text_parts) job.text_ids += p.max_len;
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

  job.arch = f.str("model.arch", "flux", {"flux", "zimage"});
  if (job.arch == "zimage") job.variant = f.str("model.variant", "turbo", {"turbo", "base"});
  job.transformer = absolute(dir, f.str("model.transformer", "", {}, true));
  job.text_encoder_config = absolute(dir, f.str("model.text_encoder_config", ""));
  job.assistant_lora = absolute(dir, f.str("model.assistant_lora", ""));
  if (!job.assistant_lora.empty() && !path_exists(job.assistant_lora))
    fail(job.file + ": model.assistant_lora: " + job.assistant_lora + " not found (prepare the job again to download it)");
  job.base_model = f.str("model.name_or_path", job.transformer);
  const std::string quantize = f.str("model.quantize", "none", {"none", "fp8", "int8", "nf4"});
  weight_format_from_name(quantize, &job.quantize);
  const std::string quantize_te = f.str("model.quantize_te", "none", {"none", "fp8", "int8", "nf4"});
  weight_format_from_name(quantize_te, &job.quantize_te);
  job.offload = f.number("model.offload_transformer", 0.0, 0.0, 1.0);
  job.ae = absolute(dir, f.str("model.ae", ""));
  load_text_parts(job, f);

  job.network_type = f.str("network.type", "lora", {"lora", "lokr"});
  job.lokr_factor = f.integer("network.lokr_factor", -1, -1, 1 << 20);
  if (job.lokr_factor == 0) f.bad("network.lokr_factor", "-1 (the most balanced split) or a factor of at least 1", json(0));
  job.lokr_full_rank = f.boolean("network.lokr_full_rank", false);
  job.rank = f.integer("network.linear", 16, 1, 1024);
  job.alpha = (float)f.number("network.linear_alpha", job.rank, 1e-6, 1e6);
  job.train_modulation = f.boolean("network.train_modulation", false);

  job.steps = f.integer("train.steps", 1000, 1, 100000000);
  job.batch_size = f.integer("train.batch_size", 1, 1, 4096);
  job.grad_accum = f.integer("train.gradient_accumulation", 1, 1, 4096);
  job.lr = (float)f.number("train.lr", 1e-4, 1e-12, 10.0);
  job.schedule.type = f.str("train.lr_scheduler", "constant", lr_schedule_names());
  job.schedule.base = job.lr;
  job.schedule.total = job.steps;
  job.schedule.warmup = f.integer("train.lr_warmup_steps", 0, 0, 100000000);
  job.schedule.eta_min = (float)f.number("train.lr_scheduler_params.eta_min", 0.0, 0.0, job.lr);
  job.schedule.cycle_steps = f.integer("train.lr_scheduler_params.T_0", 0, 1, 100000000);
  job.schedule.cycle_mult = f.integer("train.lr_scheduler_params.T_mult", 1, 1, 1000);
  job.optimizer = optimizer_config(f);
  job.max_grad_norm = (float)f.number("train.max_grad_norm", 1.0, 0.0, 1e9);
  job.timesteps.type = f.str("train.timestep_type", "sigmoid", {"linear", "sigmoid", "weighted", "shift", "lognorm_blend"});
  // Z-Image's scheduler shifts by a fixed 3 (no resolution-dependent shift).
  job.timesteps.static_shift = (float)f.number("train.timestep_shift", job.arch == "zimage" ? 3.0 : 0.0, 0.0, 100.0);
  job.timesteps.bias = f.str("train.content_or_style", "balanced", {"balanced", "content", "style"});
  job.seed = (uint64_t)f.number("train.seed", 42, 0, 9007199254740992.0);
  job.guidance = (float)f.number("train.guidance", 1.0, 0.0, 100.0);
  job.gradient_checkpointing = f.boolean("train.gradient_checkpointing", false);
  job.cache_latents = f.boolean("train.cache_latents", true);
  job.cache_text_embeddings = f.boolean("train.cache_text_embeddings", true);
  job.unload_text_encoder = f.boolean("train.unload_text_encoder", false);
  job.use_ema = f.boolean("train.ema_config.use_ema", false);
  const double decay = f.number("train.ema_config.ema_decay", 0.99, 0.0, 1.0);
  if (decay >= 1.0) f.bad("train.ema_config.ema_decay", "a number in [0, 1)", json(decay));
  job.ema_decay = (float)decay;
  job.differential_guidance = f.boolean("train.do_differential_guidance", false);
  job.differential_guidance_scale = (float)f.number("train.differential_guidance_scale", 3.0, 1e-6, 100.0);
  job.dop = f.boolean("train.diff_output_preservation", false);
  job.dop_multiplier = (float)f.number("train.diff_output_preservation_multiplier", 1.0, 0.0, 1e6);
  job.blank_prompt_preservation = f.boolean("train.blank_prompt_preservation", false);
  job.bpp_multiplier = (float)f.number("train.blank_prompt_preservation_multiplier", 1.0, 0.0, 1e6);
  if (job.dop && job.blank_prompt_preservation)
    fail(job.file + ": train.diff_output_preservation and train.blank_prompt_preservation are both true; use "
                    "one of them (both hold the adapter to the base model, on different prompts)");

  std::string dt = f.str("save.dtype", "bf16", {"bf16", "fp16", "fp32", "float16", "float32"});
  job.save_dtype = dt == "bf16" ? DType::BF16 : (dt == "fp16" || dt == "float16") ? DType::F16 : DType::F32;
  job.save_every = f.integer("save.save_every", 250, 1, 100000000);
  job.max_step_saves_to_keep = f.integer("save.max_step_saves_to_keep", 4, 0, 100000);

  f.str("format", "graft-job/2", {"graft-job/1", "graft-job/2"});
  job.cache_dir = absolute(dir, f.str("cache_dir", dir + "/cache"));
  if (f.find("text") && !f.find("datasets"))  // optional with items: the sampler's empty prompt
    job.empty_tokens = f.token_set("text.empty_tokens", job.text_parts, false);
  const json* datasets = f.find("datasets");
  const json* items = f.find("items");
  if (datasets && items)
    fail(job.file + ": has both datasets and items; a job has exactly one of them (datasets: prepared pictures, "
                    "items: pre-encoded latents and texts)");
  if (datasets) load_datasets(job, f, *datasets);
  if (!datasets && !items)
    fail(job.file + ": no training data: needs datasets (prepared pictures; run preparation first) or items "
                    "(pre-encoded latents and texts)");
  if (items && (!items->is_array() || items->empty()))
    fail(job.file + ": items must be a non-empty list of {latent, text} (no prepared data: run preparation first)");
  for (size_t i = 0; items && i < items->size(); ++i) {
    const json& it = (*items)[i];
    std::string p = "items[" + std::to_string(i) + "]";
    if (!it.is_object() || !it.contains("latent") || !it["latent"].is_string() || !it.contains("text") ||
        !it["text"].is_string())
      f.bad(p, "an object {\"latent\": path, \"text\": path}", it);
    job.items.push_back({absolute(dir, it["latent"].get<std::string>()), absolute(dir, it["text"].get<std::string>())});
  }
  if (items && (job.dop || job.blank_prompt_preservation))
    fail(job.file + ": train." + (job.dop ? "diff_output_preservation" : "blank_prompt_preservation") +
         " needs datasets (prepared pictures, whose prompts the trainer encodes); this job has pre-encoded items");
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
    s.guidance = (float)f.number("sample.guidance", 3.5, 0.0, 100.0);
    const json* shift = f.find("sample.shift");
    s.resolution_shift = shift && shift->is_string() && f.str("sample.shift", "", {"resolution"}) == "resolution";
    if (!s.resolution_shift) s.shift = (float)f.number("sample.shift", 1.0, 0.01, 100.0);
    s.seed = (uint64_t)f.number("sample.seed", 42, 0, 9007199254740992.0);
    s.walk_seed = f.boolean("sample.walk_seed", false);
    const json* ps = f.find("sample.prompts");
    if (!ps || !ps->is_array()) f.bad("sample.prompts", "a list of {prompt, width?, height?, seed?, lora_scale?}", ps ? *ps : json());
    for (size_t i = 0; i < ps->size(); ++i) {
      std::string p = at("sample.prompts", i);
      const json& e = (*ps)[i];
      if (!e.is_object() || !e.contains("prompt") || !e["prompt"].is_string())
        f.bad(p, "an object with a string prompt", e);
      JobSamplePrompt sp;
      sp.prompt = e["prompt"].get<std::string>();
      sp.tokens = f.token_set(p + ".tokens", job.text_ids ? job.text_parts : std::vector<TextPart>(), false);
      sp.width = f.integer(p + ".width", s.width, 8, 16384);
      sp.height = f.integer(p + ".height", s.height, 8, 16384);
      sp.seed = (int64_t)f.number(p + ".seed", -1, -1, 9007199254740992.0);
      sp.lora_scale = (float)f.number(p + ".lora_scale", 1.0, -100.0, 100.0);
      s.prompts.push_back(sp);
    }
    if (s.enabled && !s.prompts.empty() && (job.text_parts.empty() || job.text_parts[0].path.empty() || job.ae.empty()))
      fail(job.file + ": sampling needs model.text_encoder and model.ae (or set sample.disable_sampling)");
    if (s.prompts.empty()) s.enabled = false;
  }
  return job;
}

void job_check_models(const Job& job, const PromptEncoder& te, const VaeConfig& ae) {
  const std::string& file = job.file;
  for (size_t k = 0; k < te.parts.size(); ++k) {
    const PromptEncoder::Part& p = te.parts[k];
    const int len = k < job.text_parts.size() ? job.text_parts[k].max_len : 0;
    if (job.text_ids && len != p.max_len)
      fail(file + ": " + (te.parts.size() == 1 ? std::string("text.max_len") : "text.encoders." + p.name + ".max_len") +
           " is " + std::to_string(len) + " but the text encoder " + p.path + " takes " + std::to_string(p.max_len) +
           " tokens; prepare the job again with this model's tokenizer");
  }
  check_vocab(job, "text.empty_tokens", job.empty_tokens, te);
  const int factor = ae.downscale() * 2;  // image pixels per latent pixel, times the 2x2 patch
  for (size_t d = 0; d < job.datasets.size(); ++d)
    for (size_t i = 0; i < job.datasets[d].items.size(); ++i) {
      const JobImage& im = job.datasets[d].items[i];
      const std::string ip = at("datasets", d) + at(".items", i);
      for (auto [name, v] : {std::make_pair("width", im.width), std::make_pair("height", im.height)})
        if (v % factor)
          fail(file + ": " + ip + "." + name + " must be a multiple of " + std::to_string(factor) +
               " (the autoencoder's factor " + std::to_string(ae.downscale()) + " x the 2x2 patch), got " +
               std::to_string(v) + (im.source.empty() ? "" : " (source " + im.source + ")"));
      check_vocab(job, ip + ".tokens", im.tokens, te);
      check_vocab(job, ip + ".dropout_tokens", im.dropout_tokens, te);
      check_vocab(job, ip + ".dop_tokens", im.dop_tokens, te);
    }
  for (size_t i = 0; i < job.sample.prompts.size(); ++i) {
    const JobSamplePrompt& p = job.sample.prompts[i];
    if (p.tokens.empty()) continue;
    if ((int)p.tokens.size() != te.ids_per_prompt())
      fail(file + ": " + at("sample.prompts", i) + ".tokens has " + std::to_string(p.tokens.size()) +
           " ids but the text encoder " + te.parts[0].path + " takes " + std::to_string(te.ids_per_prompt()));
    check_vocab(job, at("sample.prompts", i) + ".tokens", p.tokens, te);
  }
}

size_t job_item_count(const Job& job) {
  size_t n = job.items.size();
  for (const JobDataset& d : job.datasets) n += d.items.size();
  return n;
}

}  // namespace graft
