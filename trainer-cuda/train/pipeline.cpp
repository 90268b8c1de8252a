#include "train/pipeline.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/autograd.h"
#include "core/common.h"

namespace graft {

Pipeline Pipeline::load(const std::string& dir, Device device) {
  Pipeline p;
  p.dir = dir;
  std::ifstream f(dir + "/model.json");
  if (!f) fail(dir + "/model.json: cannot read the model description (is " + dir + " a graft model folder?)");
  std::stringstream buf;
  buf << f.rdbuf();
  nlohmann::json j = nlohmann::json::parse(buf.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(dir + "/model.json: not valid JSON");
  p.image_size = j.value("image_size", 32);
  if (j.contains("sample")) {
    const auto& s = j["sample"];
    p.defaults.steps = s.value("steps", p.defaults.steps);
    p.defaults.cfg_scale = s.value("cfg_scale", p.defaults.cfg_scale);
    p.defaults.shift = s.value("shift", p.defaults.shift);
  }
  p.transformer = FluxTransformer::load(dir + "/transformer.safetensors", device);
  p.text_encoder = load_prompt_encoder({{"text_encoder", dir + "/text_encoder.safetensors", 0}}, device, dir + "/model.json");
  p.ae = FluxVae::load(dir + "/ae.safetensors", device);
  check_model_parts(widths_of(p.transformer.cfg), *p.text_encoder, p.ae.cfg, dir);
  return p;
}

void check_model_parts(const ModelWidths& c, const PromptEncoder& te, const VaeConfig& ae, const std::string& where) {
  if (te.context_dim != c.context_dim || te.vec_dim != c.vec_dim)
    fail(where + ": the text encoder's outputs (" + std::to_string(te.context_dim) + ", pooled " +
         std::to_string(te.vec_dim) + ") do not match the widths the transformer reads (" +
         std::to_string(c.context_dim) + ", pooled " + std::to_string(c.vec_dim) + ")");
  if (ae.z_channels != c.latent_channels)
    fail(where + ": the autoencoder's " + std::to_string(ae.z_channels) +
         " latent channels do not match the transformer's " + std::to_string(c.latent_channels));
}

TextCond encode_prompt(const PromptEncoder& te, const std::vector<int>& ids) {
  NoGrad no_grad;
  TextCond t;
  PromptEncoder::Output o = te.encode(ids, 1);
  t.L = o.lens.empty() ? te.txt_len : o.lens[0];
  t.txt = to_floats(o.txt);
  t.txt.resize((size_t)t.L * te.context_dim);  // a prompt of its own length: its rows only
  if (o.y.defined()) t.y = to_floats(o.y);
  return t;
}

std::vector<float> decode_latent(const FluxVae& ae, std::vector<float> z, int h, int w) {
  NoGrad no_grad;
  vae_latent_from_dit(ae.cfg, z.data(), (long)z.size());
  return to_floats(ae.decode(from_vector(z, {1, ae.cfg.z_channels, h, w}, ae.device, compute_dtype(ae.device))));
}

TextCond Pipeline::encode_text(const std::string& prompt) const {
  return encode_prompt(*text_encoder, tokenize_bytes(prompt, text_encoder->txt_len));
}

std::vector<float> Pipeline::generate(const std::string& prompt, int size, const SampleParams& sp, LoraSet* lora) {
  const int f = ae.cfg.downscale();
  if (size % (2 * f)) fail("image size " + std::to_string(size) + " must be a multiple of " + std::to_string(2 * f));
  TextCond cond = encode_text(prompt), uncond = encode_text("");
  lora_attach(transformer.linears(), lora);
  const int C = ae.cfg.z_channels, h = size / f;
  std::vector<float> z = sample_latent(transformer, C, h, h, cond, &uncond, sp);
  lora_attach(transformer.linears(), nullptr);
  return decode_latent(ae, z, h, h);
}

}  // namespace graft
