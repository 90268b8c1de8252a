#include "train/train.h"

#include <dirent.h>
#include <omp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "train/cache.h"
#include "train/family.h"
#include "core/common.h"
#include "core/autograd.h"
#include "core/cuda_runtime.h"
#include "ops/ops.h"
#include "train/lora.h"
#include "train/memory_plan.h"
#include "train/metrics.h"
#include "ops/cpu_ops.h"
#include "train/optim.h"
#include "train/optimizers.h"
#include "train/pipeline.h"
#include "core/rng.h"
#include "train/train_samples.h"

namespace graft {

using json = nlohmann::json;

static const uint64_t kStreamStep = 0x57E9;

// ---------------------------------------------------------------- signals
// First SIGINT: finish the step, save, stop. Second SIGINT or SIGTERM: stop at once (every file we
// write is written atomically, so nothing is left half-written).
static volatile sig_atomic_t g_stop_requested = 0;
static int g_metrics_fd = -1;

static void on_signal(int sig) {
  if (sig == SIGINT && !g_stop_requested) {
    g_stop_requested = 1;
    return;
  }
  static const char msg[] = "{\"event\":\"end\",\"status\":\"stopped\",\"forced\":true}\n";
  if (g_metrics_fd >= 0) {
    ssize_t r = write(g_metrics_fd, msg, sizeof msg - 1);
    (void)r;
    fsync(g_metrics_fd);
  }
  _exit(130);
}

// The run's last event; the signal handler stops writing to the closed file.
static void end_run(Metrics& metrics, const char* status, int step) {
  metrics.event({{"event", "end"}, {"status", status}, {"step", step}});
  metrics.close();
  g_metrics_fd = -1;
}

static void install_signals() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// ---------------------------------------------------------------- batches

// The batch's text conditioning: each slot's caption (or its dropout caption), or with `preservation`
// its DOP / blank-prompt preservation prompt. Captions of their own lengths (data.ragged_text) are
// padded with zero rows to the longest, their lengths in txt_lens.
static void set_texts(FluxInputs& in, const TrainData& data, const BatchPick& pick, const ModelWidths& w, bool preservation) {
  const int B = (int)pick.samples.size();
  std::vector<int> ids(B);
  int Lt = 0;
  for (int b = 0; b < B; ++b) {
    ids[b] = preservation ? data.samples[pick.samples[b]].preserve_text : pick.texts[b];
    if (ids[b] < 0) fail("internal: no preservation text for a training item");
    const int L = data.texts[ids[b]].L;
    if (b > 0 && L != Lt && !data.ragged_text)
      fail("internal: a batch mixes text lengths " + std::to_string(Lt) + " and " + std::to_string(L));
    Lt = std::max(Lt, L);
  }
  in.L_txt = Lt;
  in.txt.assign((size_t)B * Lt * w.context_dim, 0.0f);
  in.y.resize((size_t)B * w.vec_dim);
  in.txt_ids.assign((size_t)B * Lt * 3, 0.0f);
  in.txt_lens.clear();
  for (int b = 0; b < B; ++b) {
    const TextEmbedding& t = data.texts[ids[b]];
    std::copy(t.txt.begin(), t.txt.end(), in.txt.begin() + (size_t)b * Lt * w.context_dim);
    std::copy(t.y.begin(), t.y.end(), in.y.begin() + (size_t)b * w.vec_dim);
    if (data.ragged_text) in.txt_lens.push_back(t.L);
  }
}

TrainBatch make_batch(const TrainData& data, const BatchPick& pick, const ModelWidths& widths, const Job& job, uint64_t g) {
  const std::vector<int>& idx = pick.samples;
  const Latent& l0 = data.latents[data.samples[idx[0]].latent];
  const int B = (int)idx.size(), C = l0.C, H = l0.H, W = l0.W;
  const int gh = H / 2, gw = W / 2, Li = gh * gw, P = C * 4;
  const size_t lat = (size_t)C * H * W;
  TrainBatch tb;
  FluxInputs& in = tb.in;
  in.B = B;
  in.L_img = Li;
  std::vector<float> xt((size_t)B * lat), vel((size_t)B * lat);
  in.timesteps.resize(B);
  tb.weight.resize(B);
  Rng rng(job.seed, kStreamStep, g);
  for (int b = 0; b < B; ++b) {
    const float t = timestep_draw(job.timesteps, Li, rng);
    in.timesteps[b] = t;
    tb.weight[b] = timestep_weight(job.timesteps, t);
    const float* x0 = data.latents[data.samples[idx[b]].latent].z.data();
    for (size_t i = 0; i < lat; ++i) {
      float noise = rng.normal();
      xt[b * lat + i] = (1.0f - t) * x0[i] + t * noise;
      vel[b * lat + i] = noise - x0[i];
    }
  }
  in.img.resize((size_t)B * Li * P);
  tb.target.resize((size_t)B * Li * P);
  cpu::patchify_forward(in.img.data(), xt.data(), B, C, H, W, 2);
  cpu::patchify_forward(tb.target.data(), vel.data(), B, C, H, W, 2);
  in.img_ids.resize((size_t)B * Li * 3);
  flux_img_ids(in.img_ids.data(), B, gh, gw);
  set_texts(in, data, pick, widths, false);
  in.guidance.assign(B, job.guidance);
  return tb;
}

// ---------------------------------------------------------------- files

static std::string step_file(const Job& job, int step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "_%09d.safetensors", step);
  return job.output_dir + "/" + job.name + buf;
}

// Step checkpoints of this job, oldest first.
static std::vector<std::pair<int, std::string>> step_files(const Job& job) {
  std::vector<std::pair<int, std::string>> out;
  DIR* d = opendir(job.output_dir.c_str());
  if (!d) return out;
  const std::string prefix = job.name + "_", suffix = ".safetensors";
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.size() != prefix.size() + 9 + suffix.size() || n.compare(0, prefix.size(), prefix) != 0 ||
        n.compare(n.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    std::string digits = n.substr(prefix.size(), 9);
    if (!std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    out.push_back({std::stoi(digits), job.output_dir + "/" + n});
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

static void make_dir(const std::string& p) {
  if (mkdir(p.c_str(), 0755) != 0 && errno != EEXIST) fail(p + ": cannot create folder: " + std::strerror(errno));
}

static std::map<std::string, std::string> lora_metadata(const Job& job, int step, int epoch) {
  json software = {{"name", "graft"}, {"version", GRAFT_VERSION}};
  json info = {{"step", step}, {"epoch", epoch}};
  json network = {{"type", job.network_type}, {"linear", job.rank}, {"linear_alpha", job.alpha}};
  if (job.network_type == "lokr") network["lokr_factor"] = job.lokr_factor, network["lokr_full_rank"] = job.lokr_full_rank;
  std::map<std::string, std::string> md = {
      {"format", "pt"},
      {"software", software.dump()},
      {"training_info", info.dump()},
      {"base_model", job.base_model},
      {"name", job.name},
      {"trigger_word", job.trigger_word},
      {"network", network.dump()},
  };
  if (!job.config_json.empty()) md["config"] = job.config_json;
  return md;
}

struct TrainState {
  int step = 0;
  LoraSet* lora = nullptr;
  Optimizer* opt = nullptr;
  WeightEma* ema = nullptr;  // train.ema_config.use_ema: the average of lora->params
};

static std::string state_path(const Job& job) { return job.output_dir + "/state/state.safetensors"; }

static void state_save(const Job& job, const TrainState& st) {
  make_dir(job.output_dir + "/state");
  SafeTensorsWriter w;
  const int64_t n = (int64_t)st.lora->size();
  w.metadata = {{"format", "graft-state/2"},
                {"step", std::to_string(st.step)},
                {"optimizer", st.opt->config.type},
                {"seed", std::to_string(job.seed)},
                {"name", job.name}};
  auto put = [&](const char* name, const Tensor& t) {
    std::vector<float> v = t.defined() ? to_floats(t) : std::vector<float>((size_t)n, 0.0f);
    w.add(name, DType::F32, {n}, v.data());
  };
  put("lora", st.lora->params);
  optimizer_save(*st.opt, w, "opt.");
  if (st.ema) {
    w.metadata["ema_updates"] = std::to_string(st.ema->n);
    put("ema", st.ema->avg[0]);
  }
  w.write(state_path(job));
}

// Returns the step to continue from (0 when there is no state).
static int state_load(const Job& job, TrainState& st) {
  struct stat sb;
  if (stat(state_path(job).c_str(), &sb) != 0) return 0;
  SafeTensorsFile f = SafeTensorsFile::open(state_path(job));
  const int64_t n = (int64_t)st.lora->size();
  const TensorInfo& t = f.info("lora");
  if (t.shape.size() != 1 || t.shape[0] != n)
    fail(f.path + ": saved for a different network (" + shape_str(t.shape) + " parameters, this job has " +
         std::to_string(n) + "); move state/ away to start over");
  auto need = [&](const char* k) {
    auto it = f.metadata.find(k);
    if (it == f.metadata.end()) fail(f.path + ": metadata '" + k + "' is missing");
    return std::stol(it->second);
  };
  if ((uint64_t)need("seed") != job.seed)
    fail(f.path + ": saved with seed " + f.metadata.at("seed") + " but the job has seed " + std::to_string(job.seed) +
         "; a resumed run keeps its seed");
  auto saved = f.metadata.find("optimizer");
  const std::string saved_opt = saved == f.metadata.end() ? "adamw" : saved->second;  // graft-state/1: AdamW
  if (saved_opt != st.opt->config.type)
    fail(f.path + ": saved by the " + saved_opt + " optimizer, but the job now asks for " + st.opt->config.type +
         "; set train.optimizer back to " + saved_opt + " to resume, or move state/ away to start over");
  st.lora->set_params(f.read_f32("lora", {n}));
  // graft-state/1 (AdamW only) named its moments adam_m, adam_v and its count adam_t.
  optimizer_load(*st.opt, f, saved == f.metadata.end() ? "adam_" : "opt.");
  if (st.ema && f.has("ema")) {
    copy_into(st.ema->avg[0], from_vector(f.read_f32("ema", {n}), {n}, Device::cpu()));
    st.ema->n = need("ema_updates");
  } else if (st.ema) {
    copy_into(st.ema->avg[0], st.lora->params);
    st.ema->n = 0;
    std::printf("  note: %s has no EMA weights (saved with train.ema_config.use_ema off); the average starts "
                "from the resumed weights\n", f.path.c_str());
  }
  return (int)need("step");
}

static void save_checkpoint(const Job& job, const TrainState& st, const std::string& path, int epoch, Metrics& metrics) {
  if (st.ema) st.ema->swap();  // the LoRA file holds the average; the state keeps both
  lora_save(*st.lora, path, job.save_dtype, lora_metadata(job, st.step, epoch));
  if (st.ema) st.ema->swap();
  state_save(job, st);
  struct stat sb;
  long size = stat(path.c_str(), &sb) == 0 ? (long)sb.st_size : 0;
  metrics.event({{"event", "checkpoint"}, {"step", st.step}, {"file", path}, {"bytes", size}});
  metrics.sync();
}

static void rotate(const Job& job) {
  if (job.max_step_saves_to_keep <= 0) return;  // 0 keeps every step file
  auto files = step_files(job);
  // Only files older than the newest are removed, and only after the newest was written.
  for (size_t i = 0; i + job.max_step_saves_to_keep < files.size(); ++i) unlink(files[i].second.c_str());
}

static double rss_mb() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  std::fclose(f);
  return resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

static std::string duration_str(double s) {
  char buf[32];
  int t = (int)std::lround(s);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", t / 3600, t / 60 % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%dm%02ds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%ds", t);
  return buf;
}

// ---------------------------------------------------------------- the loop

int train_run(const std::string& dir) {
  // Everything that can be wrong with the job is found here, before anything is written.
  Job job = job_load(dir);
  const Device device = parse_device(job.device, job.file);
  // The transformer's checkpoint checked name by name, and the memory the job needs counted, before
  // anything loads: a job that cannot fit stops here with what would make it fit.
  const PlanInputs plan_in = plan_inputs(job, device);
  const MemoryPlan plan = plan_memory(plan_in);
  const char* check_env = std::getenv("GRAFT_MEMORY_CHECK");
  if (!plan.fits() && !(check_env && std::strcmp(check_env, "0") == 0)) fail(plan.refusal(job.file));
  const ModelFamily family = model_family(job, plan_in);
  // The text encoder and autoencoder encode the datasets and serve sampling, on the same device; the
  // transformer loads once they are done with (FLUX.1's T5-XXL alone holds 9.5 GB).
  std::unique_ptr<PromptEncoder> te;
  std::unique_ptr<FluxVae> ae;
  if (!job.datasets.empty() || job.sample.enabled) {
    te = load_prompt_encoder(job.text_parts, device, job.file, job.quantize_te, job.text_encoder_config);
    ae = std::make_unique<FluxVae>(FluxVae::load(job.ae, device));
    check_model_parts(family.widths, *te, ae->cfg, job.file);
    job_check_models(job, *te, ae->cfg);
  }
  TrainData data;
  if (job.datasets.empty()) {
    if (family.arch != "flux") fail(job.file + ": pre-encoded `items` are FLUX's; a " + family.arch + " job gives `datasets`");
    data = data_load(job, family.flux);
  }
  LoraSet lora = job.network_type == "lokr"
                     ? lokr_create(family.targets, job.rank, job.alpha, job.lokr_factor, job.lokr_full_rank, job.seed)
                     : lora_create(family.targets, job.rank, job.alpha, job.seed);
  lora.prefix = family.lora_prefix;
  lora.to(device);
  std::unique_ptr<Optimizer> opt = make_optimizer(job.optimizer, lora.params, lora.segments());
  WeightEma ema;
  if (job.use_ema) {
    ema.decay = job.ema_decay;
    ema.add(lora.params);
  }
  TrainState st{0, &lora, opt.get(), job.use_ema ? &ema : nullptr};
  make_dir(job.output_dir);
  st.step = state_load(job, st);
  if (st.step >= job.steps) {
    std::printf("%s: already trained to step %d of %d; nothing to do (move state/ away to train again)\n",
                job.name.c_str(), st.step, job.steps);
    return 0;
  }

  // Gradient checkpointing recomputes each block's activations in backward (both devices);
  // GRAFT_GRAD_CHECKPOINT=0/1 overrides the job, for measurements.
  const char* ckpt_env = std::getenv("GRAFT_GRAD_CHECKPOINT");
  const bool checkpointing = ckpt_env && *ckpt_env ? std::strcmp(ckpt_env, "0") != 0 : job.gradient_checkpointing;
  const std::string device_name = describe_device(device);
  if (device.is_cuda()) cuda::reset_peak();
  Metrics metrics;
  metrics.open(job.output_dir + "/metrics.jsonl");
  g_metrics_fd = metrics.fd;
  install_signals();
  const bool resumed = st.step > 0;
  std::printf("graft-trainer %s: %s '%s' on %s from step %d of %d\n", GRAFT_VERSION,
              resumed ? "resuming" : "training", job.name.c_str(), device_name.c_str(), st.step, job.steps);
  std::printf("  model %s: %s\n", job.transformer.c_str(), family.describe.c_str());
  if (checkpointing) std::printf("  gradient checkpointing: block activations are recomputed in backward\n");
  std::fputs(plan.report().c_str(), stdout);
  if (job.quantize != WeightFormat::dense)
    std::printf("  quantized: every linear weight of the transformer as %s\n", weight_format_describe(job.quantize));
  std::fflush(stdout);
  metrics.event({{"event", "start"}, {"step", st.step}, {"steps", job.steps}, {"name", job.name},
                 {"resumed", resumed}, {"device", device_name}, {"threads", omp_get_max_threads()},
                 {"lora_params", lora.size()}, {"optimizer", job.optimizer.type}, {"optimizer_state_bytes", opt->state_bytes()},
                 {"items", job_item_count(job)},
                 {"datasets", std::max<size_t>(1, job.datasets.size())},
                 {"batch_size", job.batch_size}, {"gradient_accumulation", job.grad_accum}, {"pid", (int)getpid()}});
  metrics.event({{"event", "memory_plan"}, {"step", st.step}, {"plan", plan.to_json()}});

  // Encoding (or reading the cache) and the sample prompts: failures from here on end the run in
  // metrics.jsonl too.
  std::unique_ptr<TrainSampler> sampler;
  try {
    if (!job.datasets.empty()) data = data_encode(job, *ae, *te, metrics, nullptr, &g_stop_requested);
    if (job.sample.enabled && !g_stop_requested) sampler = std::make_unique<TrainSampler>(job, *te, ae.get());
  } catch (const Error& e) {
    metrics.event({{"event", "error"}, {"step", st.step}, {"message", e.what()}});
    end_run(metrics, "failed", st.step);
    throw;
  }
  if (!sampler) ae.reset();
  if (g_stop_requested) {  // SIGINT while encoding: what was cached stays cached, no step was trained
    end_run(metrics, "stopped", st.step);
    std::printf("stopped before step %d (the caches written so far are kept)\n", st.step + 1);
    return 130;
  }
  // Every caption and sample prompt is encoded by now (whether or not to disk): the text encoders have
  // nothing left to do, and FLUX.1's T5-XXL alone holds 9.5 GB.
  if (te) {
    te.reset();
    std::printf("  text encoder%s freed: every caption and sample prompt is encoded\n", job.text_parts.size() > 1 ? "s" : "");
  }
  std::unique_ptr<Denoiser> model;
  LoraSet assistant;  // Z-Image Turbo's de-distillation adapter: merged while training, taken out for samples
  try {
    model = load_denoiser(job, device, &assistant);
  } catch (const Error& e) {
    metrics.event({{"event", "error"}, {"step", st.step}, {"message", e.what()}});
    end_run(metrics, "failed", st.step);
    throw;
  }
  model->checkpointing = checkpointing;
  lora_attach(model->linears(), &lora);
  if (!assistant.adapters.empty())
    std::printf("  assistant adapter %s merged into the transformer (%zu layers); samples take it out again\n",
                job.assistant_lora.c_str(), assistant.adapters.size());
  if (job.offload > 0 && device.is_cuda())
    std::printf("  layer offloading: %d of %d blocks' weights in pinned host memory (%.2f GiB), streamed in ahead of use\n",
                offload_count(model->block_count(), job.offload), model->block_count(), plan.offloaded / 1073741824.0);
  else if (job.offload > 0)
    std::printf("  layer offloading: nothing to do on the CPU (the weights are in host memory already)\n");
  const int nb = data.batches_per_epoch(job.batch_size);
  std::string network = "LoRA rank " + std::to_string(job.rank);
  if (job.network_type == "lokr")
    network = "LoKr factor " + std::to_string(job.lokr_factor) +
              (job.lokr_full_rank ? ", full rank" : ", rank " + std::to_string(job.rank));
  std::printf("  %s alpha %g on %zu layers (%zu parameters); %zu items in %zu buckets of %zu dataset%s\n",
              network.c_str(), job.alpha, lora.adapters.size(), lora.size(), data.samples.size(),
              data.bucket_count(), data.datasets.size(), data.datasets.size() == 1 ? "" : "s");
  // The reference toolkit runs Prodigy with lr 1 when the job's is below 0.1: Prodigy estimates the
  // step size itself and lr only scales that estimate.
  LrSchedule schedule = job.schedule;
  if (job.optimizer.type == "prodigy" && schedule.base < 0.1f) {
    std::printf("  note: Prodigy estimates its own learning rate; train.lr %g (below 0.1) runs as 1, as the reference "
                "toolkit runs it\n", schedule.base);
    schedule.base = 1.0f;
  }
  const size_t state_bytes = opt->state_bytes();
  std::printf("  optimizer %s: state %.1f MB (%.2f bytes per parameter); learning rate %g, %s", job.optimizer.type.c_str(),
              state_bytes / 1e6, (double)state_bytes / std::max<size_t>(1, lora.size()), schedule.base,
              schedule.type.c_str());
  if (schedule.warmup > 0) std::printf(" after %d warmup steps", schedule.warmup);
  if (schedule.type == "cosine_with_restarts")
    std::printf(" (cycles of %d steps, x%d each)", schedule.cycle_steps > 0 ? schedule.cycle_steps
                                                                           : std::max(1, job.steps - schedule.warmup),
                schedule.cycle_mult);
  std::printf("\n");
  std::string advanced;
  char buf[128];
  if (job.use_ema) std::snprintf(buf, sizeof buf, "; EMA decay %g", job.ema_decay), advanced += buf;
  if (job.differential_guidance)
    std::snprintf(buf, sizeof buf, "; differential guidance scale %g", job.differential_guidance_scale), advanced += buf;
  if (job.dop) std::snprintf(buf, sizeof buf, "; DOP multiplier %g", job.dop_multiplier), advanced += buf;
  if (job.blank_prompt_preservation)
    std::snprintf(buf, sizeof buf, "; blank prompt preservation multiplier %g", job.bpp_multiplier), advanced += buf;
  if (!advanced.empty()) std::printf("  advanced: %s\n", advanced.c_str() + 2);
  std::fflush(stdout);

  auto sample = [&](int step) {
    auto ts = std::chrono::steady_clock::now();
    if (st.ema) st.ema->swap();  // samples show the averaged adapter
    lora_attach_more(model->linears(), &assistant);  // at -1: the base model as users have it
    std::vector<std::string> files;
    try {
      files = sampler->run(*model, lora, step);
    } catch (...) {
      lora_attach(model->linears(), &lora);
      throw;
    }
    lora_attach(model->linears(), &lora);
    if (st.ema) st.ema->swap();
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    metrics.event({{"event", "sample"}, {"step", step}, {"files", files}, {"seconds", secs}});
  };
  if (sampler && job.sample.first && !resumed) sample(0);

  const bool tty = isatty(1);
  // Differential guidance: the target pred + s (target - pred), pred held constant, has the gradient
  // 2 s (pred - target) / n: the flow loss's, s times. The loss reported stays the plain flow loss
  // (without this factor or the weighted timesteps' weights), comparable across settings.
  const float dg = job.differential_guidance ? job.differential_guidance_scale : 1.0f;
  const float preserve = job.dop ? job.dop_multiplier : job.blank_prompt_preservation ? job.bpp_multiplier : 0.0f;
  const DType act = compute_dtype(device);
  double ema_s = 0.0;
  while (st.step < job.steps) {
    auto t0 = std::chrono::steady_clock::now();
    const int step = st.step + 1;
    lora.zero_grad();
    double loss_sum = 0.0, preserve_sum = 0.0;
    for (int micro = 0; micro < job.grad_accum; ++micro) {
      const uint64_t g = (uint64_t)(step - 1) * job.grad_accum + micro;
      const BatchPick pick = data.batch(job.seed, g, job.batch_size);
      TrainBatch tb = make_batch(data, pick, family.widths, job, g);  // a pure function of g
      Tensor out = model->forward(tb.in);
      const Tensor target = from_vector(tb.target, out.shape, device, act);
      loss_sum += mse(out, target);
      // timestep_type weighted: each picture's share of the gradient scaled by its weight
      backward(out, mse_grad(out, target, dg / job.grad_accum, tb.weight));
      if (preserve > 0) {
        // DOP / Blank Prompt Preservation: at the batch's own noisy latents and timesteps, the
        // adapter's prediction for the preservation prompt (the caption with the trigger replaced by
        // the class, or the empty prompt) is pulled toward the base model's, so what the adapter
        // learns stays with the trigger.
        set_texts(tb.in, data, pick, family.widths, true);
        Tensor prior;
        {
          NoGrad reference;
          with_lora_scale(lora, 0.0f, [&] { prior = model->forward(tb.in); });
        }
        out = model->forward(tb.in);
        preserve_sum += mse(out, prior);
        backward(out, mse_grad(out, prior, preserve / job.grad_accum));
      }
    }
    const double loss = loss_sum / job.grad_accum;
    if (!std::isfinite(loss)) {
      std::string msg = "loss became " + std::to_string(loss) + " at step " + std::to_string(step) +
                        ": stopped; the last checkpoint is kept. Try a lower learning rate (train.lr = " +
                        std::to_string(job.lr) + ")";
      metrics.event({{"event", "error"}, {"step", step}, {"message", msg}});
      end_run(metrics, "failed", st.step);
      std::fprintf(stderr, "\nerror: %s\n", msg.c_str());
      return 1;
    }
    const float grad_norm = clip_grad_norm({lora.grads}, job.max_grad_norm);
    const float lr = schedule.at(step);
    opt->step(lora.params, lora.grads, lr);
    if (st.ema) st.ema->update();
    st.step = step;

    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ema_s = ema_s == 0.0 ? secs : 0.9 * ema_s + 0.1 * secs;
    const int epoch = (int)((uint64_t)step * job.grad_accum / (uint64_t)nb);
    json ev = {{"event", "step"}, {"step", step}, {"steps", job.steps}, {"loss", loss}, {"lr", lr},
               {"grad_norm", grad_norm}, {"s_per_step", secs}, {"epoch", epoch}, {"rss_mb", std::round(rss_mb())},
               {"vram_mb", std::round(cuda::peak_bytes() / 1048576.0)}};
    if (preserve > 0) ev["preservation_loss"] = preserve_sum / job.grad_accum;
    metrics.event(ev);
    if (tty || step % 10 == 0 || step == job.steps) {
      std::printf("%sstep %d/%d  loss %.4f  lr %.1e  %.3f s/step  eta %s%s", tty ? "\r" : "", step, job.steps, loss,
                  lr, ema_s, duration_str(ema_s * (job.steps - step)).c_str(), tty ? "\033[K" : "\n");
      std::fflush(stdout);
    }

    if (g_stop_requested) {
      std::string path = step_file(job, step);
      save_checkpoint(job, st, path, epoch, metrics);
      rotate(job);
      end_run(metrics, "stopped", step);
      std::printf("\nstopped at step %d: saved %s and the state to resume from\n", step, path.c_str());
      return 130;
    }
    if (sampler && (step % job.sample.every == 0 || step == job.steps)) sample(step);
    if (step % job.save_every == 0 && step < job.steps) {
      save_checkpoint(job, st, step_file(job, step), epoch, metrics);
      rotate(job);
    }
  }
  std::string final_path = job.output_dir + "/" + job.name + ".safetensors";
  save_checkpoint(job, st, final_path, (int)((uint64_t)st.step * job.grad_accum / (uint64_t)nb), metrics);
  end_run(metrics, "finished", st.step);
  std::printf("%sfinished: %s\n", tty ? "\n" : "", final_path.c_str());
  return 0;
}

}  // namespace graft
