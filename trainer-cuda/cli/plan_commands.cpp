// graft-trainer memory-plan: the memory plan of a prepared job, or of settings the TUI is editing
// (train/memory_plan.h), as JSON (or the text the trainer prints with --text).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli/args.h"
#include "core/cuda_runtime.h"
#include "models/clip.h"
#include "models/flux_vae.h"
#include "models/llm.h"
#include "models/zimage.h"
#include "models/t5.h"
#include "train/job.h"
#include "train/memory_plan.h"

namespace graft {

namespace {

// The tensors of a model of `cfg` (every one listed by a shapes-only loader) as a bf16 file holds them.
template <class Model, class Config>
std::vector<PlanWeight> bf16_weights(const Config& cfg) {
  WeightLoader w(nullptr, identity_layout("shapes"), Device::cpu());
  w.shapes_only = true;
  Model m(cfg, w);
  std::vector<PlanWeight> out = plan_tensors(m.params());
  for (PlanWeight& t : out) t.dtype = DType::BF16;
  return out;
}

// --model: FLUX.1's or Z-Image's shapes by name (dev, schnell, zimage: the real sizes, bf16), a
// checkpoint file, or a model folder (graft's: transformer.safetensors beside text_encoder.safetensors
// and ae.safetensors; diffusers': transformer/, text_encoder/, text_encoder_2/, vae/), FLUX.1 or
// Z-Image by the transformer's names.
// Returns the autoencoder's path ("" for the shapes by name) and sets `text_tokens` from a graft text
// encoder's positions when the folder has one.
std::string model_inputs(const std::string& model, PlanInputs& in, int64_t* text_tokens) {
  if (model == "dev" || model == "schnell") {
    WeightLoader w(nullptr, identity_layout("shapes"), Device::cpu());
    w.shapes_only = true;
    FluxConfig c = flux1_dev_config();
    c.guidance_embed = model == "dev";
    FluxTransformer m(c, w);
    in.cfg = c;
    in.transformer = plan_tensors(m.linears(), m.params());
    for (PlanWeight& t : in.transformer) t.dtype = DType::BF16;
    in.text_encoders = bf16_weights<T5Encoder>(t5_xxl_config());
    for (const PlanWeight& t : bf16_weights<ClipTextModel>(clip_l_config())) in.text_encoders.push_back(t);
    in.autoencoder = bf16_weights<FluxVae>(VaeConfig());
    return "";
  }
  if (model == "zimage") {
    WeightLoader w(nullptr, identity_layout("shapes"), Device::cpu());
    w.shapes_only = true;
    in.arch = "zimage";
    in.zimage = zimage_config();
    ZImageTransformer m(in.zimage, w);
    in.transformer = plan_tensors(m.quantized_linears(), m.params());
    for (PlanWeight& t : in.transformer) t.dtype = DType::BF16;
    DecoderLlm te(qwen3_4b_config(), w, -2);  // the layers Z-Image reads
    in.text_encoders = plan_tensors(te.params());
    for (PlanWeight& t : in.text_encoders) t.dtype = DType::BF16;
    in.autoencoder = bf16_weights<FluxVae>(VaeConfig());
    return "";
  }
  std::string transformer = model, ae;
  std::vector<std::string> tes;
  if (is_dir(model)) {
    if (path_exists(model + "/transformer.safetensors")) {
      transformer = model + "/transformer.safetensors";
      if (path_exists(model + "/text_encoder.safetensors")) tes.push_back(model + "/text_encoder.safetensors");
      if (path_exists(model + "/ae.safetensors")) ae = model + "/ae.safetensors";
    } else if (is_dir(model + "/transformer")) {
      transformer = model + "/transformer";
      for (const char* t : {"/text_encoder", "/text_encoder_2"})
        if (is_dir(model + t)) tes.push_back(model + t);
      if (is_dir(model + "/vae")) ae = model + "/vae";
    } else {
      fail("memory-plan: --model " + model + ": a folder with transformer.safetensors (graft's) or transformer/ "
           "(diffusers'), a checkpoint file, or dev / schnell");
    }
  } else if (!path_exists(model)) {
    fail("memory-plan: --model " + model + ": no such file or folder (or give dev / schnell / zimage for FLUX.1's or "
         "Z-Image's sizes)");
  }
  if (is_zimage_checkpoint(Checkpoint::open(transformer))) {
    ZImageTransformer m = ZImageTransformer::shapes(transformer);
    in.arch = "zimage";
    in.zimage = m.cfg;
    in.transformer = plan_tensors(m.quantized_linears(), m.params());
  } else {
    FluxTransformer m = FluxTransformer::shapes(transformer);
    in.cfg = m.cfg;
    in.transformer = plan_tensors(m.linears(), m.params());
  }
  for (const std::string& t : tes) {
    for (const PlanWeight& w : checkpoint_weights(t)) in.text_encoders.push_back(w);
    const Checkpoint c = Checkpoint::open(t);
    if (c.has("position_embedding.weight")) *text_tokens = c.info("position_embedding.weight").shape.at(0);
  }
  in.autoencoder = checkpoint_weights(ae);
  return ae;
}

int cmd_memory_plan(const std::vector<std::string>& a) {
  need_args(a, 2, "memory-plan");
  bool text = false;
  PlanInputs in;
  std::string model, device_name = "cpu";
  int resolution = 1024;
  std::string job_dir;
  for (size_t i = 1; i < a.size(); ++i) {
    const std::string& k = a[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= a.size()) fail("memory-plan: " + k + " needs a value");
      return a[++i];
    };
    if (k == "--text") text = true;
    else if (k == "--model") model = value();
    else if (k == "--device") device_name = value();
    else if (k == "--quantize" || k == "--quantize-te") {
      if (!weight_format_from_name(value(), k == "--quantize" ? &in.quantize : &in.quantize_te))
        fail("memory-plan: " + k + " " + a[i] + ": one of none, fp8, int8, nf4");
    } else if (k == "--network") {
      const std::string& v = value();
      if (v != "lora" && v != "lokr") fail("memory-plan: --network " + v + ": lora or lokr");
      in.lokr = v == "lokr";
    } else if (k == "--rank") in.rank = count_arg(a, ++i, "memory-plan", 1);
    else if (k == "--lokr-factor") in.lokr_factor = parse_number<int>(value(), "memory-plan --lokr-factor");
    else if (k == "--lokr-full-rank") in.lokr_full_rank = true;
    else if (k == "--optimizer") {
      in.optimizer.type = value();
      bool known = false;
      for (const std::string& n : optimizer_names()) known |= n == in.optimizer.type;
      if (!known) fail("memory-plan: --optimizer " + in.optimizer.type + ": unknown");
    } else if (k == "--batch") in.batch = count_arg(a, ++i, "memory-plan", 1);
    else if (k == "--resolution") resolution = count_arg(a, ++i, "memory-plan", 16);
    else if (k == "--text-tokens") in.text_tokens = count_arg(a, ++i, "memory-plan", 1);
    else if (k == "--checkpointing") in.checkpointing = true;
    else if (k == "--offload") in.offload = parse_number<float>(value(), "memory-plan --offload");
    else if (k == "--ema") in.ema = true;
    else if (k == "--sample") in.sampling = true;
    else if (k.rfind("--", 0) == 0) fail("memory-plan: unknown option " + k);
    else if (job_dir.empty()) job_dir = k;
    else fail("memory-plan: unexpected argument " + k);
  }
  if (!job_dir.empty()) {
    const Job job = job_load(job_dir);
    in = plan_inputs(job, parse_device(job.device, job.file));
  } else {
    if (model.empty()) fail("memory-plan: give a prepared job's folder, or --model");
    // A CUDA plan is counted without a device too (the TUI on a machine without one, benchmarks); its
    // free memory is then unknown unless GRAFT_DEVICE_MEMORY says it.
    const bool cuda = device_name.rfind("cuda", 0) == 0;
    if (!cuda && device_name != "cpu") fail("memory-plan: --device " + device_name + ": cpu or cuda[:N]");
    in.cuda = cuda;
    int64_t te_tokens = 0;
    const int f = pixels_per_token(model_inputs(model, in, &te_tokens));
    in.image_tokens = (int64_t)(resolution / f) * (resolution / f);
    in.encode_pixels = (int64_t)resolution * resolution;
    if (in.text_tokens == 0) in.text_tokens = te_tokens > 0 ? te_tokens : model == "schnell" ? 256 : 512;
    const char* env = std::getenv("GRAFT_DEVICE_MEMORY");
    if (env && *env) in.available = std::atof(env);
    else if (!cuda || cuda::device_count() > 0) in.available = device_free_bytes(parse_device(device_name, "memory-plan --device"));
  }
  const MemoryPlan plan = plan_memory(in);
  if (text) std::fputs(plan.report().c_str(), stdout);
  else std::printf("%s\n", plan.to_json().dump().c_str());
  return 0;
}

}  // namespace

std::vector<Command> plan_commands() {
  return {
      {"memory-plan", "<job-dir> | --model dev|schnell|zimage|<path> [--device D] [--quantize none|fp8|int8|nf4] "
                      "[--quantize-te none|fp8|int8|nf4] [--network lora|lokr] [--rank N] [--lokr-factor N] [--lokr-full-rank] [--optimizer NAME] [--batch N] "
                      "[--resolution PX] [--text-tokens N] [--checkpointing] [--offload SHARE] [--ema] [--sample] [--text]  the memory a job "
                      "needs against what the device has free, as JSON (--text: as the trainer prints it)",
       cmd_memory_plan},
  };
}

}  // namespace graft
