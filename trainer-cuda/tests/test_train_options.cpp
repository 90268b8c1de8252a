// The ADVANCED training options of SPEC section 5 on the tiny random pipeline: EMA of the adapter,
// differential guidance, and differential output / blank prompt preservation.
#include <unistd.h>

#include <cmath>
#include <string>

#include "models/flux.h"
#include "job_fixture.h"
#include "train/lora.h"
#include "train/optim.h"
#include "core/safetensors.h"
#include "train/train.h"

using namespace graft;
using namespace graft_test;
using nlohmann::json;

namespace {

std::vector<json> steps_of(const std::string& dir) { return events_of(read_events(dir + "/metrics.jsonl"), "step"); }

// The LoRA file read back in the trainer's parameter layout (the fixture's alpha = rank: scale 1, so
// the file's B is the trained B).
std::vector<float> saved_params(const std::string& file) {
  FluxTransformer m = FluxTransformer::load(tiny_model_dir() + "/transformer.safetensors", Device::cpu());
  return lora_load(file, flux_lora_targets(m.cfg, false)).host_params();
}

std::vector<float> state_tensor(const std::string& dir, const std::string& name) {
  SafeTensorsFile f = SafeTensorsFile::open(dir + "/state/state.safetensors");
  return f.read_f32(name, {f.info(name).shape[0]});
}

// v2_job with every item's DOP caption: the trigger replaced by "person".
json dop_job(const std::string& dir) {
  json j = v2_job(dir);
  for (json& ds : j["datasets"])
    for (json& it : ds["items"]) {
      std::string cap = it["caption"];
      if (cap.rfind("zxq", 0) == 0) cap = "person" + cap.substr(3);
      it["dop_tokens"] = toks(cap);
    }
  return j;
}

double mean_last(const std::vector<json>& steps, const char* key, int k) {
  double s = 0;
  for (size_t i = steps.size() - k; i < steps.size(); ++i) s += steps[i][key].get<double>();
  return s / k;
}

}  // namespace

TEST(weight_ema_warms_up_then_averages) {
  Tensor w = from_vector({1.0f}, {1}, Device::cpu());
  float* live = w.data<float>();
  WeightEma ema;
  ema.decay = 0.5f;
  ema.add(w);
  float* avg = ema.avg[0].data<float>();
  live[0] = 2.0f;
  ema.update();  // n = 0: decay min(0.5, 1/10) = 0.1
  CHECK_NEAR(avg[0], 0.1 * 1.0 + 0.9 * 2.0, 1e-6);
  live[0] = 3.0f;
  ema.update();  // n = 1: decay 2/11
  CHECK_NEAR(avg[0], 2.0 / 11 * 1.9 + 9.0 / 11 * 3.0, 1e-5);
  ema.n = 9;  // (1 + 9) / (10 + 9) > 0.5: the decay is capped
  avg[0] = 1.0f, live[0] = 0.0f;
  ema.update();
  CHECK_NEAR(avg[0], 0.5, 1e-6);
  CHECK(ema.n == 10);
  ema.swap();
  CHECK(live[0] == 0.5f && avg[0] == 0.0f);
}

// With use_ema the LoRA file holds the average and the state both weights; without it, the file holds
// the trained weights (which checks the comparison itself). The same job resumed after every step
// ends with the uninterrupted run's file, bit for bit, and that file is the EMA of the weights each
// step left, computed here by hand from their starting value.
TEST(ema_saves_the_average_and_resumes_exactly) {
  TempDir plain, ta, tb;
  json jp = v2_job(plain.path);
  write_json(plain.path + "/job.json", jp);
  CHECK(train_run(plain.path) == 0);
  CHECK(saved_params(plain.path + "/v2.safetensors") == state_tensor(plain.path, "lora"));

  const int steps = 6;
  const double decay = 0.9;
  json ja = v2_job(ta.path);
  ja["cache_dir"] = plain.path + "/cache";
  ja["train"]["steps"] = steps;
  ja["train"]["ema_config"] = {{"use_ema", true}, {"ema_decay", decay}};
  write_json(ta.path + "/job.json", ja);
  CHECK(train_run(ta.path) == 0);
  const std::vector<float> saved = saved_params(ta.path + "/v2.safetensors");
  CHECK(saved == state_tensor(ta.path, "ema"));

  json jb = v2_job(tb.path);
  jb["cache_dir"] = plain.path + "/cache";
  jb["train"] = ja["train"];
  FluxTransformer m = FluxTransformer::load(tiny_model_dir() + "/transformer.safetensors", Device::cpu());
  std::vector<double> avg;
  for (float v : lora_create(flux_lora_targets(m.cfg, false), 4, 4.0f, 11).host_params()) avg.push_back(v);
  for (int n = 0; n < steps; ++n) {
    jb["train"]["steps"] = n + 1;
    write_json(tb.path + "/job.json", jb);
    CHECK(train_run(tb.path) == 0);
    const std::vector<float> live = state_tensor(tb.path, "lora");
    const double d = std::min(decay, (1.0 + n) / (10.0 + n));
    for (size_t i = 0; i < avg.size(); ++i) avg[i] = d * avg[i] + (1 - d) * live[i];
  }
  CHECK(read_bytes(tb.path + "/v2.safetensors") == read_bytes(ta.path + "/v2.safetensors"));
  double err = 0, moved = 0;
  const std::vector<float> live = state_tensor(ta.path, "lora");
  for (size_t i = 0; i < avg.size(); ++i) {
    err = std::max(err, std::fabs(avg[i] - saved[i]));
    moved = std::max(moved, (double)std::fabs(live[i] - saved[i]));
  }
  CHECK(err < 1e-6);
  CHECK(moved > 1e-4);  // the average trails the weights
}

// The target pred + s (target - pred) gives s times the flow loss's gradient: at step 1 (same weights,
// same batch) the gradient norm is s times the plain run's and the reported loss is the same.
TEST(differential_guidance_scales_the_gradient) {
  TempDir ta, tb;
  json ja = v2_job(ta.path);
  ja["train"]["steps"] = 1;
  write_json(ta.path + "/job.json", ja);
  CHECK(train_run(ta.path) == 0);
  json jb = v2_job(tb.path);
  jb["cache_dir"] = ta.path + "/cache";
  jb["train"] = ja["train"];
  jb["train"]["do_differential_guidance"] = true;
  jb["train"]["differential_guidance_scale"] = 3.0;
  write_json(tb.path + "/job.json", jb);
  CHECK(train_run(tb.path) == 0);
  const json a = steps_of(ta.path).at(0), b = steps_of(tb.path).at(0);
  CHECK(a["loss"] == b["loss"]);
  CHECK_NEAR(b["grad_norm"].get<double>() / a["grad_norm"].get<double>(), 3.0, 1e-4);
}

// DOP and blank prompt preservation: the adapter's drift from the base model on the preservation
// prompt is reported each step (0 at step 1: the adapter starts as the base model), and a strong
// multiplier keeps it well below a negligible one's.
TEST(preservation_holds_the_adapter_to_the_base_model) {
  for (const char* option : {"diff_output_preservation", "blank_prompt_preservation"}) {
    double drift[2];
    const double multipliers[2] = {1e-6, 30.0};
    for (int k = 0; k < 2; ++k) {
      TempDir t;
      json j = dop_job(t.path);
      j["train"]["steps"] = 12;
      j["train"]["lr"] = 1e-2;
      j["train"][option] = true;
      j["train"][std::string(option) + "_multiplier"] = multipliers[k];
      write_json(t.path + "/job.json", j);
      CHECK(train_run(t.path) == 0);
      std::vector<json> steps = steps_of(t.path);
      CHECK(steps.size() == 12 && steps[0]["preservation_loss"] == 0.0);
      drift[k] = mean_last(steps, "preservation_loss", 4);
    }
    std::printf("    %s: drift %.3g with a negligible multiplier, %.3g with 30\n", option, drift[0], drift[1]);
    CHECK(drift[0] > 0 && drift[1] < 0.5 * drift[0]);
  }
}

TEST(preservation_errors_name_the_field) {
  TempDir t;
  json j = v2_job(t.path);
  j["train"]["diff_output_preservation"] = true;
  write_json(t.path + "/job.json", j);
  CHECK_THROWS(job_load(t.path), "datasets[0].items[0].dop_tokens is missing");
  j = dop_job(t.path);
  j["train"]["diff_output_preservation"] = true;
  j["train"]["blank_prompt_preservation"] = true;
  write_json(t.path + "/job.json", j);
  CHECK_THROWS(job_load(t.path), "train.diff_output_preservation and train.blank_prompt_preservation are both true");
  j = v2_job(t.path);
  j["train"]["ema_config"] = {{"use_ema", true}, {"ema_decay", 1.0}};
  write_json(t.path + "/job.json", j);
  CHECK_THROWS(job_load(t.path), "train.ema_config.ema_decay must be a number in [0, 1)");
}

// Every optimizer, and LoKr, stopped after 2 steps and resumed to 5 end with the uninterrupted
// run's adapter file and state, bit for bit (the learning rate restarting every 2 steps). A job whose optimizer
// changed is refused with what to do.
TEST(every_optimizer_and_lokr_resume_exactly) {
  TempDir cache;
  struct Case {
    const char* optimizer;
    const char* network;
    json params;
  };
  const std::vector<Case> cases = {{"adamw", "lora", json::object()},
                                   {"adamw8bit", "lora", json::object()},
                                   {"lion", "lora", {{"weight_decay", 0.01}}},
                                   {"adafactor", "lora", {{"beta1", 0.9}}},
                                   {"prodigy", "lora", json::object()},
                                   {"adamw", "lokr", json::object()}};
  for (const Case& c : cases) {
    TempDir ta, tb;
    auto job = [&](const std::string& dir, int steps) {
      json j = v2_job(dir);
      j["cache_dir"] = cache.path + "/cache";
      j["train"]["steps"] = steps;
      j["train"]["optimizer"] = c.optimizer;
      j["train"]["optimizer_params"] = c.params;
      j["train"]["lr"] = std::string(c.optimizer) == "prodigy" ? 1.0 : std::string(c.optimizer) == "lion" ? 1e-4 : 1e-3;
      j["train"]["lr_scheduler"] = "cosine_with_restarts";
      j["train"]["lr_scheduler_params"] = {{"T_0", 2}};
      j["network"]["type"] = c.network;
      write_json(dir + "/job.json", j);
    };
    job(ta.path, 5);
    CHECK(train_run(ta.path) == 0);
    job(tb.path, 2);
    CHECK(train_run(tb.path) == 0);
    job(tb.path, 5);
    CHECK(train_run(tb.path) == 0);
    const bool same = read_bytes(ta.path + "/v2.safetensors") == read_bytes(tb.path + "/v2.safetensors") &&
                      read_bytes(ta.path + "/state/state.safetensors") == read_bytes(tb.path + "/state/state.safetensors");
    std::vector<json> steps = steps_of(ta.path);
    std::printf("      %s %s: resumed run identical %s; lr %g %g %g %g %g\n", c.network, c.optimizer, same ? "yes" : "NO",
                steps[0]["lr"].get<double>(), steps[1]["lr"].get<double>(), steps[2]["lr"].get<double>(),
                steps[3]["lr"].get<double>(), steps[4]["lr"].get<double>());
    CHECK(same);
    // T_0 2: the learning rate starts over at steps 3 and 5
    CHECK(steps[2]["lr"] == steps[0]["lr"] && steps[4]["lr"] == steps[0]["lr"] && steps[1]["lr"] < steps[0]["lr"]);
  }
  TempDir tc;
  json j = v2_job(tc.path);
  j["cache_dir"] = cache.path + "/cache";
  j["train"]["steps"] = 1;
  write_json(tc.path + "/job.json", j);
  CHECK(train_run(tc.path) == 0);
  j["train"]["steps"] = 2;
  j["train"]["optimizer"] = "lion";
  write_json(tc.path + "/job.json", j);
  CHECK_THROWS(train_run(tc.path), "saved by the adamw optimizer, but the job now asks for lion");
}

// Optimizer settings are checked against the optimizer chosen, each error naming the field.
TEST(optimizer_settings_are_checked) {
  TempDir t;
  auto run_with = [&](const char* optimizer, json params) {
    json j = v2_job(t.path);
    j["train"]["optimizer"] = optimizer;
    j["train"]["optimizer_params"] = params;
    write_json(t.path + "/job.json", j);
    return job_load(t.path);
  };
  CHECK_THROWS(run_with("adamw9bit", json::object()), "train.optimizer must be one of adamw, adamw8bit, lion, adafactor, prodigy");
  CHECK_THROWS(run_with("lion", {{"eps", 1e-8}}), "train.optimizer_params.eps is not a setting of the lion optimizer");
  CHECK_THROWS(run_with("adafactor", {{"warmup_init", true}}), "warmup_init needs train.optimizer_params.relative_step: true");
  CHECK_THROWS(run_with("adamw", {{"betas", {0.9}}}), "train.optimizer_params.betas must be 2 numbers in [0, 1)");
  CHECK_THROWS(run_with("prodigy", {{"decouple", false}}), "decouple: false");
  const Job ok = run_with("prodigy", {{"d_coef", 2}, {"weight_decay", 0.01}});
  CHECK(ok.optimizer.type == "prodigy" && ok.optimizer.d_coef == 2.0 && std::fabs(ok.optimizer.weight_decay - 0.01f) < 1e-9);
  CHECK(std::isinf(ok.optimizer.growth_rate) && ok.optimizer.eps == 1e-6f);
}

// AdamW8bit keeps AdamW's moments to within their 8-bit quantization: over 30 steps of the tiny job
// its loss trace stays with fp32 AdamW's and its adapter ends near AdamW's, while another optimizer
// (Lion at an equal step size) ends measurably farther away.
TEST(adamw8bit_follows_adamw) {
  TempDir cache;
  auto train = [&](const char* optimizer, double lr) {
    TempDir t;
    json j = v2_job(t.path);
    j["cache_dir"] = cache.path + "/cache";
    j["train"]["steps"] = 30;
    j["train"]["optimizer"] = optimizer;
    j["train"]["lr"] = lr;
    write_json(t.path + "/job.json", j);
    CHECK(train_run(t.path) == 0);
    std::vector<double> losses;
    for (const json& e : steps_of(t.path)) losses.push_back(e["loss"]);
    return std::make_pair(losses, state_tensor(t.path, "lora"));
  };
  const auto [la, pa] = train("adamw", 1e-3);
  const auto [lq, pq] = train("adamw8bit", 1e-3);
  const auto [ll, pl] = train("lion", 1e-3);
  double loss_gap = 0, moved = 0, dq = 0, dl = 0;
  for (size_t i = 0; i < la.size(); ++i) loss_gap = std::max(loss_gap, std::fabs(la[i] - lq[i]) / la[i]);
  const std::vector<float> p0 = lora_create(flux_lora_targets(FluxTransformer::load(tiny_model_dir() + "/transformer.safetensors",
                                                                                     Device::cpu()).cfg, false), 4, 4.0f, 11).host_params();
  for (size_t i = 0; i < pa.size(); ++i) {
    moved += (pa[i] - p0[i]) * (pa[i] - p0[i]);
    dq += (pq[i] - pa[i]) * (pq[i] - pa[i]);
    dl += (pl[i] - pa[i]) * (pl[i] - pa[i]);
  }
  std::printf("      30 steps: loss differs by at most %.2e (relative); distance to AdamW's adapter / AdamW's own move: "
              "adamw8bit %.3f, lion %.3f\n", loss_gap, std::sqrt(dq / moved), std::sqrt(dl / moved));
  // measured: 6.8e-5 and 0.018 (Lion 0.55)
  CHECK(loss_gap < 1e-3);
  CHECK(std::sqrt(dq / moved) < 0.05);
  CHECK(std::sqrt(dl / moved) > 3 * std::sqrt(dq / moved));
}

// model.quantize fp8, int8 and nf4: the job trains on quantized weights; its loss trace stays within
// the format's rounding of the unquantized run's, and a resumed run is bit for bit the same.
TEST(quantized_jobs_train_and_resume) {
  TempDir cache, ta;
  auto job = [&](const std::string& dir, int steps, const char* quantize) {
    json j = v2_job(dir);
    j["cache_dir"] = cache.path + "/cache";
    j["train"]["steps"] = steps;
    j["model"]["quantize"] = quantize;
    write_json(dir + "/job.json", j);
  };
  job(ta.path, 6, "none");
  CHECK(train_run(ta.path) == 0);
  const std::vector<json> a = steps_of(ta.path);
  // How far each format's losses may stray from the unquantized run's: its rounding, and only that.
  const struct { const char* name; double hi; } formats[] = {{"fp8", 0.05}, {"int8", 0.02}, {"nf4", 0.2}};
  for (const auto& fmt : formats) {
    TempDir tb, tc;
    job(tb.path, 6, fmt.name);
    CHECK(train_run(tb.path) == 0);
    job(tc.path, 3, fmt.name);
    CHECK(train_run(tc.path) == 0);
    job(tc.path, 6, fmt.name);
    CHECK(train_run(tc.path) == 0);
    CHECK(read_bytes(tb.path + "/v2.safetensors") == read_bytes(tc.path + "/v2.safetensors"));
    const std::vector<json> b = steps_of(tb.path);
    double gap = 0;
    for (size_t i = 0; i < a.size(); ++i)
      gap = std::max(gap, std::fabs(a[i]["loss"].get<double>() - b[i]["loss"].get<double>()) / a[i]["loss"].get<double>());
    std::printf("      %s against unquantized: loss differs by at most %.2e (relative) over 6 steps\n", fmt.name, gap);
    CHECK(gap > 0 && gap < fmt.hi);
  }
  json bad = v2_job(ta.path);
  bad["model"]["quantize"] = "int4";
  write_json(ta.path + "/job.json", bad);
  CHECK_THROWS(job_load(ta.path), "model.quantize must be one of none, fp8, int8, nf4");
  bad = v2_job(ta.path);
  bad["model"]["offload_transformer"] = 2;
  write_json(ta.path + "/job.json", bad);
  CHECK_THROWS(job_load(ta.path), "model.offload_transformer must be");
  // On the CPU layer offloading has nothing to move: the job trains as it would without.
  TempDir td;
  job(td.path, 6, "none");
  json off = read_json(td.path + "/job.json");
  off["model"]["offload_transformer"] = 0.5;
  write_json(td.path + "/job.json", off);
  CHECK(train_run(td.path) == 0);
  CHECK(read_bytes(td.path + "/v2.safetensors") == read_bytes(ta.path + "/v2.safetensors"));
}
