// graft-trainer optim-check: an optimizer's updates from given gradients, written out for the
// independent PyTorch references (tests/test_optim_torch.py).
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "core/safetensors.h"
#include "train/optimizers.h"

namespace graft {

namespace {

using json = nlohmann::json;

int cmd_optim_check(const std::vector<std::string>& a) {
  need_args(a, 3, "optim-check");
  std::vector<std::string> rest;
  const Device device = device_option(a, 3, "optim-check", &rest);
  if (!rest.empty()) fail("optim-check: unknown argument '" + rest[0] + "'");
  const SafeTensorsFile in = SafeTensorsFile::open(a[1]);
  auto it = in.metadata.find("config");
  if (it == in.metadata.end()) fail(a[1] + ": metadata 'config' is missing");
  const json cfg = json::parse(it->second, nullptr, false);
  if (!cfg.is_object()) fail(a[1] + ": metadata 'config' is not a JSON object");
  // The optimizer's fields under the names job.json gives them, so errors read as a job's would.
  const json root = {{"train", {{"optimizer", cfg.value("optimizer", json())},
                                {"optimizer_params", cfg.value("params", json::object())}}}};
  const OptimizerConfig oc = optimizer_config(JsonFields{root, a[1]});

  const int64_t n = in.info("p0").shape.at(0);
  const std::vector<float> p0 = in.read_f32("p0", {n});
  const TensorInfo& gi = in.info("grads");
  if (gi.shape.size() != 2 || gi.shape[1] != n) fail(a[1] + ": grads must be [steps, " + std::to_string(n) + "]");
  const int64_t steps = gi.shape[0];
  const std::vector<float> grads = in.read_f32("grads");
  const std::vector<float> lr = cfg.value("lr", std::vector<float>());
  if ((int64_t)lr.size() != steps) fail(a[1] + ": config.lr must have one value per step (" + std::to_string(steps) + ")");
  std::vector<ParamSegment> segments;
  for (const json& s : cfg.value("segments", json::array())) {
    const std::vector<int64_t> shape = s.at("shape").get<std::vector<int64_t>>();
    ParamSegment seg{s.at("offset").get<int64_t>(), shape.size() == 2 ? shape[0] * shape[1] : shape.at(0), 0, 0};
    if (shape.size() == 2) seg.rows = (int)shape[0], seg.cols = (int)shape[1];
    segments.push_back(seg);
  }
  const int64_t resume_at = cfg.value("resume_at", (int64_t)0);

  Tensor p = from_vector(p0, {n}, device);
  std::unique_ptr<Optimizer> opt = make_optimizer(oc, p, segments);
  std::vector<float> trace;
  for (int64_t s = 0; s < steps; ++s) {
    if (s == resume_at && s > 0) {  // through a state file and a fresh optimizer, as a resumed job
      const std::string path = a[2] + ".state";
      SafeTensorsWriter w;
      optimizer_save(*opt, w, "opt.");
      w.write(path);
      opt = make_optimizer(oc, p, segments);
      optimizer_load(*opt, SafeTensorsFile::open(path), "opt.");
      std::remove(path.c_str());
    }
    const Tensor g = from_vector(std::vector<float>(grads.begin() + s * n, grads.begin() + (s + 1) * n), {n}, device);
    opt->step(p, g, lr[s]);
    const std::vector<float> now = to_floats(p);
    trace.insert(trace.end(), now.begin(), now.end());
  }
  SafeTensorsWriter w;
  w.add("p", DType::F32, {steps, n}, trace.data());
  optimizer_save(*opt, w, "state.");
  w.metadata["state_bytes"] = std::to_string(opt->state_bytes());
  w.write(a[2]);
  return 0;
}

}  // namespace

std::vector<Command> optim_commands() {
  return {
      {"optim-check", "<in> <out> [--device D]  an optimizer's steps from p0, grads and config (tests/test_optim_torch.py); "
                      "writes p [steps, n] and state.*",
       cmd_optim_check},
  };
}

}  // namespace graft
