// The memory plan (train/memory_plan.h) against what the engine really allocates on the CPU: the
// transformer's weights in every format, the adapters' layout, each optimizer's memory, and a job that
// cannot fit stopping before anything is written. Its activation figure is checked in test_flux.cpp.
#include <stdlib.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/storage.h"
#include "job_fixture.h"
#include "models/flux.h"
#include "test.h"
#include "train/job.h"
#include "train/lora.h"
#include "train/memory_plan.h"
#include "train/optimizers.h"
#include "train/train.h"

using namespace graft;
using namespace graft_test;

namespace {

FluxConfig small_config() {
  FluxConfig c;
  c.in_channels = 16, c.out_channels = 16, c.hidden = 64, c.heads = 2, c.head_dim = 32, c.mlp_hidden = 256;
  c.context_dim = 32, c.vec_dim = 16, c.n_double = 2, c.n_single = 2, c.guidance_embed = true;
  c.axes_dim[0] = 8, c.axes_dim[1] = 12, c.axes_dim[2] = 12;
  return c;
}

// The plan's two transformer lines.
double transformer_bytes(const MemoryPlan& p) { return p.training.at(0).bytes + p.training.at(1).bytes; }

}  // namespace

// The transformer's weights as the plan counts them from the checkpoint's headers equal, to the byte,
// what loading the model on the CPU keeps: as stored (bf16 and fp32 files), and in each format.
TEST(memory_plan_counts_the_transformer_weights_as_loaded) {
  TempDir dir;
  const FluxConfig c = small_config();
  for (const DType stored : {DType::BF16, DType::F32}) {
    RandomFluxOptions o;
    o.dtype = stored;
    const std::string path = dir.path + "/m" + dtype_name(stored) + ".safetensors";
    write_random_flux(path, c, 3, o);
    FluxTransformer shapes = FluxTransformer::shapes(path);
    CHECK(shapes.cfg.hidden == c.hidden && shapes.cfg.n_single == c.n_single);
    for (const WeightFormat f : {WeightFormat::dense, WeightFormat::fp8, WeightFormat::int8, WeightFormat::nf4}) {
      PlanInputs in;
      in.cfg = shapes.cfg;
      in.transformer = plan_tensors(shapes.linears(), shapes.params());
      in.quantize = f;
      in.rank = 4, in.image_tokens = 16, in.text_tokens = 8;
      FluxTransformer m = FluxTransformer::load(path, Device::cpu(), f);
      double loaded = 0;
      for (NamedParam& p : m.params()) loaded += (double)p.t->nbytes();
      for (Linear* l : m.linears()) loaded += (double)(l->weight_bytes() - l->W.nbytes());  // the scales
      const double planned = transformer_bytes(plan_memory(in));
      std::printf("      %s file, %s: planned %.0f bytes, loaded %.0f\n", dtype_name(stored), weight_format_name(f), planned, loaded);
      CHECK(planned == loaded);
    }
  }
}

// The adapters the plan counts are the ones lora_create / lokr_create make, matrix for matrix.
TEST(memory_plan_adapter_layout_is_the_created_one) {
  const std::vector<LoraTarget> targets = flux_lora_targets(small_config(), true);
  auto same = [](const std::vector<ParamSegment>& a, const std::vector<ParamSegment>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].offset != b[i].offset || a[i].size != b[i].size || a[i].rows != b[i].rows || a[i].cols != b[i].cols) return false;
    return true;
  };
  CHECK(same(adapter_layout(targets, 4, false, -1, false), lora_create(targets, 4, 4.0f, 1).segments()));
  CHECK(same(adapter_layout(targets, 4, true, -1, false), lokr_create(targets, 4, 4.0f, -1, false, 1).segments()));
  CHECK(same(adapter_layout(targets, 2, true, 4, true), lokr_create(targets, 2, 2.0f, 4, true, 1).segments()));
}

// Each optimizer's memory as planned equals what making it allocates (host bytes alive before and after).
TEST(memory_plan_optimizer_memory_is_what_it_allocates) {
  const std::vector<ParamSegment> segs = adapter_layout(flux_lora_targets(small_config(), false), 4, false, -1, false);
  int64_t n = 0;
  for (const ParamSegment& s : segs) n += s.size;
  const Tensor params = zeros({n}, DType::F32, Device::cpu());
  for (const std::string& name : optimizer_names()) {
    for (const bool beta1 : {false, true}) {
      if (beta1 && name != "adafactor") continue;
      OptimizerConfig cfg;
      cfg.type = name;
      cfg.first_moment = beta1;
      const size_t before = host_live_bytes();
      std::unique_ptr<Optimizer> opt = make_optimizer(cfg, params, segs);
      const size_t made = host_live_bytes() - before;
      std::printf("      %s%s: planned %zu bytes, allocated %zu\n", name.c_str(), beta1 ? " (beta1)" : "",
                  optimizer_memory_bytes(cfg, n, segs), made);
      CHECK(optimizer_memory_bytes(cfg, n, segs) == made);
    }
  }
}

// A job that cannot fit stops before anything is written, in one message with the numbers and the
// settings that would make it fit; GRAFT_MEMORY_CHECK=0 starts it anyway.
TEST(a_job_that_cannot_fit_stops_before_step_one) {
  TempDir dir;
  nlohmann::json j = v2_job(dir.path);
  write_json(dir.path + "/job.json", j);
  const PlanInputs in = plan_inputs(job_load(dir.path), Device::cpu());
  PlanInputs tight = in;
  tight.available = 1;
  CHECK(!plan_memory(tight).fits());
  // Just under what it needs without checkpointing, well over what it needs with it.
  PlanInputs roomy = in;
  roomy.available = 1e12;
  const MemoryPlan full = plan_memory(roomy);
  CHECK(full.fits() && full.total > 0 && full.activations_other > 0);
  setenv("GRAFT_DEVICE_MEMORY", std::to_string(full.total - 1).c_str(), 1);
  std::string message;
  try {
    train_run(dir.path);
  } catch (const Error& e) {
    message = e.what();
  }
  std::printf("      %s\n", message.c_str());
  CHECK(message.find(dir.path + "/job.json: this job needs about") == 0);
  CHECK(message.find("is free") != std::string::npos);
  CHECK(message.find("GRAFT_MEMORY_CHECK=0") != std::string::npos);
  CHECK(!std::ifstream(dir.path + "/metrics.jsonl").good());  // nothing written
  setenv("GRAFT_MEMORY_CHECK", "0", 1);
  CHECK(train_run(dir.path) == 0);
  unsetenv("GRAFT_MEMORY_CHECK");
  unsetenv("GRAFT_DEVICE_MEMORY");
  const std::vector<nlohmann::json> plans = events_of(read_events(dir.path + "/metrics.jsonl"), "memory_plan");
  CHECK(plans.size() == 1 && plans[0]["plan"]["total"].get<double>() > 0);
}
