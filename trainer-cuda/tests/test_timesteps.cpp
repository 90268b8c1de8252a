// Training timesteps: each Timestep Type and Timestep Bias draws what it says, against expectations
// worked out by hand, and "weighted" scales the loss as described.
#include <cmath>

#include "train/cache.h"
#include "train/prompt_encoder.h"
#include "job_fixture.h"
#include "train/metrics.h"
#include "test.h"
#include "train/timesteps.h"
#include "train/train.h"

using namespace graft;
using namespace graft_test;
using nlohmann::json;

namespace {

struct Stats {
  double mean = 0, sd = 0, low = 0, high = 0;  // mean, standard deviation, share below 0.25, share above 0.75
  float min = 1, max = 0;
};

Stats draws(const std::string& type, const std::string& bias, int tokens, int n = 40000) {
  TimestepRule rule{type, bias};
  Rng rng(3, 0x7157, 0);
  Stats s;
  double sq = 0;
  for (int i = 0; i < n; ++i) {
    const float t = timestep_draw(rule, tokens, rng);
    s.mean += t, sq += (double)t * t;
    s.low += t < 0.25f, s.high += t > 0.75f;
    s.min = std::min(s.min, t), s.max = std::max(s.max, t);
  }
  s.mean /= n, s.low /= n, s.high /= n;
  s.sd = std::sqrt(sq / n - s.mean * s.mean);
  return s;
}

// 4 standard errors of a mean of n draws with standard deviation sd.
double tol(double sd, int n = 40000) { return 4 * sd / std::sqrt((double)n); }

}  // namespace

TEST(timestep_types_draw_their_distributions) {
  Stats lin = draws("linear", "balanced", 16);
  CHECK_NEAR(lin.mean, 0.5, tol(std::sqrt(1.0 / 12)));
  CHECK_NEAR(lin.low, 0.25, 0.01);
  // sigmoid of a standard normal: symmetric about 1/2, P(t > 3/4) = P(z > ln 3) = 0.1361.
  Stats sig = draws("sigmoid", "balanced", 16);
  CHECK_NEAR(sig.mean, 0.5, tol(0.25));
  CHECK_NEAR(sig.high, 0.1361, 0.01);
  CHECK(draws("weighted", "balanced", 16).mean == lin.mean);  // uniform draws; the weight does the rest
  // shift: t = s u / (1 + (s - 1) u) > 3/4 exactly when u > 3 / (3 + s).
  for (int tokens : {16, 256, 4096}) {
    const double s = flux_resolution_shift(tokens);
    CHECK_NEAR(draws("shift", "balanced", tokens).high, 1 - 3 / (3 + s), 0.01);
  }
  CHECK_NEAR(flux_resolution_shift(256), std::exp(0.5), 1e-5);
  CHECK_NEAR(flux_resolution_shift(4096), std::exp(1.15), 1e-4);
  // lognorm_blend: 3/4 of 1 - e^(z/3 - 1) (mean 1 - e^(1/18 - 1)) and 1/4 uniform.
  Stats lb = draws("lognorm_blend", "balanced", 16);
  CHECK_NEAR(lb.mean, 0.75 * (1 - std::exp(1.0 / 18 - 1)) + 0.25 * 0.5, tol(0.3));
  CHECK(lb.min >= 0 && lb.max <= 1);
}

TEST(timestep_bias_favours_high_or_low_noise) {
  // content t = 1 - u^3: mean 3/4, P(t > 3/4) = P(u^3 < 1/4) = 4^(-1/3); style mirrors it.
  for (const char* type : {"linear", "sigmoid", "shift"}) {
    Stats c = draws(type, "content", 16), s = draws(type, "style", 16);
    CHECK_NEAR(c.mean, 0.75, tol(0.26));
    CHECK_NEAR(c.high, std::pow(4.0, -1.0 / 3), 0.01);
    CHECK_NEAR(s.mean, 0.25, tol(0.26));
    CHECK_NEAR(s.low, std::pow(4.0, -1.0 / 3), 0.01);
  }
}

TEST(weighted_timesteps_weigh_the_middle_with_mean_one) {
  TimestepRule w{"weighted", "balanced"}, lin{"linear", "balanced"};
  CHECK_NEAR(timestep_weight(w, 0.0f), 0.0, 1e-6);
  CHECK_NEAR(timestep_weight(w, 1.0f), 0.0, 1e-6);
  CHECK_NEAR(timestep_weight(w, 0.5f), (1 - std::exp(-0.5)) / 0.24912, 1e-3);  // peak / mean
  CHECK(timestep_weight(w, 0.4f) == timestep_weight(w, 0.6f));
  double mean = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) mean += timestep_weight(w, (i + 0.5f) / n);
  CHECK_NEAR(mean / n, 1.0, 1e-4);
  CHECK(timestep_weight(lin, 0.1f) == 1.0f);
}

// Through the trainer: job.json's fields reach the rule, the batch carries each picture's weight, and
// a weighted step's gradient is the plain one times that weight (batch 1, step 1: same weights, same
// draw, since weighted draws as linear does).
TEST(train_uses_the_timestep_rule) {
  TempDir ta, tb;
  json j = v2_job(ta.path);
  j["train"]["steps"] = 1;
  j["train"]["batch_size"] = 1;
  j["train"]["timestep_type"] = "linear";
  write_json(ta.path + "/job.json", j);
  CHECK(train_run(ta.path) == 0);
  json k = v2_job(tb.path);
  k["cache_dir"] = ta.path + "/cache";
  k["train"] = j["train"];
  k["train"]["timestep_type"] = "weighted";
  write_json(tb.path + "/job.json", k);
  CHECK(train_run(tb.path) == 0);

  Job job = job_load(tb.path);
  CHECK(job.timesteps.type == "weighted" && job.timesteps.bias == "balanced");
  std::unique_ptr<PromptEncoder> te = load_prompt_encoder(job.text_parts, Device::cpu(), job.file);
  FluxVae ae = FluxVae::load(job.ae);
  Metrics m;
  m.open(tb.path + "/encode.jsonl");
  TrainData data = data_encode(job, ae, *te, m);
  FluxTransformer model = FluxTransformer::load(job.transformer, Device::cpu());
  TrainBatch batch = make_batch(data, data.batch(job.seed, 0, 1), widths_of(model.cfg), job, 0);
  const float w = batch.weight.at(0);
  CHECK(w == timestep_weight(job.timesteps, batch.in.timesteps[0]) && std::fabs(w - 1.0f) > 0.05f);
  const json a = events_of(read_events(ta.path + "/metrics.jsonl"), "step").at(0);
  const json b = events_of(read_events(tb.path + "/metrics.jsonl"), "step").at(0);
  CHECK(a["loss"] == b["loss"]);  // the reported loss is the plain flow loss
  CHECK_NEAR(b["grad_norm"].get<double>() / a["grad_norm"].get<double>(), w, 1e-4);

  k["train"]["content_or_style"] = "content";
  write_json(tb.path + "/job.json", k);
  CHECK(job_load(tb.path).timesteps.bias == "content");
  k["train"]["content_or_style"] = "detail";
  write_json(tb.path + "/job.json", k);
  CHECK_THROWS(job_load(tb.path), "train.content_or_style must be one of balanced, content, style");
}
