// Z-Image and its Qwen3 text encoder beyond what the PyTorch reference covers (test_zimage_torch.py
// checks the forward passes and LoRA gradients against an independent implementation): the three
// checkpoint layouts and save() load the same model, the trainer's sign and timestep convention,
// gradient checkpointing, quantized loading, the LoRA file's names, the decoder LLM's partial
// loading, causality and save(), and the errors a wrong file gets.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/autograd.h"
#include "core/common.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "demo/random_models.h"
#include "demo/tiny.h"
#include "job_fixture.h"
#include "models/llm.h"
#include "models/weights.h"
#include "models/zimage.h"
#include "ops/ops.h"
#include "ops/quant.h"
#include "test.h"
#include "train/lora.h"

using namespace graft;
using namespace graft_test;

namespace {

const int kGrid = 4;  // the latent's patch grid: 4 x 4 image tokens

// B = 2 items on a 4 x 4 patch grid with captions of `lens` tokens (37 and 5 by default: padded to 64
// and 32, so the two items' sequences differ in length and the batch padding is exercised).
FluxInputs zimage_inputs(const ZImageConfig& c, uint64_t seed, const std::vector<int>& lens = {37, 5}) {
  FluxInputs in;
  in.B = (int)lens.size();
  in.L_img = kGrid * kGrid;
  in.L_txt = *std::max_element(lens.begin(), lens.end());
  in.txt_lens = lens;
  Rng rng(seed);
  auto fill = [&](std::vector<float>& v, size_t n) {
    v.resize(n);
    for (float& x : v) x = rng.normal();
  };
  fill(in.img, (size_t)in.B * in.L_img * c.patch_features());
  fill(in.txt, (size_t)in.B * in.L_txt * c.cap_dim);
  in.img_ids.resize((size_t)in.B * in.L_img * 3);
  flux_img_ids(in.img_ids.data(), in.B, kGrid, kGrid);
  in.txt_ids.assign((size_t)in.B * in.L_txt * 3, 0.0f);
  for (int b = 0; b < in.B; ++b) in.timesteps.push_back(0.2f + 0.6f * rng.uniform());
  return in;
}

std::vector<float> run_model(const ZImageTransformer& m, const FluxInputs& in) {
  NoGrad no_grad;
  return to_floats(m.forward_model(in));
}

double max_abs(const std::vector<float>& a) {
  double m = 0.0;
  for (float v : a) m = std::max(m, (double)std::fabs(v));
  return m;
}

// max |a - b| / max |b|
double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0.0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, (double)std::fabs(a[i] - b[i]));
  return d / max_abs(b);
}

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

void randomize_lora(LoraSet& set, uint64_t seed) {
  Rng rng(seed, 3);
  std::vector<float> p(set.size());
  for (float& v : p) v = 0.2f * rng.normal();
  set.set_params(p);
}

std::vector<float> random_values(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> t(n);
  for (float& v : t) v = rng.normal();
  return t;
}

// The LoRA gradients of mean((forward(in) - target)^2), through the tape.
std::vector<float> lora_gradients(const ZImageTransformer& m, LoraSet& lora, const FluxInputs& in,
                                  const std::vector<float>& target) {
  lora.zero_grad();
  Tensor out = m.forward(in);
  backward(out, mse_grad(out, from_vector(target, out.shape, Device::cpu()), 1.0f));
  return to_floats(lora.grads);
}

// Every tensor a model lists: canonical name and shape.
std::vector<std::pair<std::string, Shape>> listing(ZImageTransformer& m) {
  std::vector<std::pair<std::string, Shape>> out;
  for (NamedParam& p : m.params()) out.push_back({p.name, p.t->shape});
  return out;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

// A checkpoint's tensors by name, as fp32 values.
std::map<std::string, std::vector<float>> tensors_of_checkpoint(const std::string& path) {
  Checkpoint c = Checkpoint::open(path);
  std::map<std::string, std::vector<float>> out;
  for (const std::string& n : c.names()) out[n] = to_floats(c.tensor(n));
  return out;
}

// Rewrites a folder's config.json with `edit` applied.
void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(read_text_file(dir + "/config.json"));
  edit(j);
  write_text(dir + "/config.json", j.dump(2));
}

std::vector<int> llm_ids(int n, int vocab, int seed) {
  std::vector<int> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (seed * 31 + i * 17 + 5) % vocab;
  return ids;
}

std::vector<float> llm_run(const DecoderLlm& m, const std::vector<int>& ids, int B, int L) {
  NoGrad no_grad;
  return to_floats(m.forward(ids, B, L));
}

}  // namespace

// One random transformer written in ComfyUI's single file (model.diffusion_model.), the original
// unprefixed file and diffusers' folder (fused qkv split into to_q/to_k/to_v, two shards, config.json):
// the same model, bit for bit, from each; shapes() lists what load() loads.
TEST(zimage_layouts_load_the_same_model) {
  TempDir tmp;
  const ZImageConfig c = tiny_zimage_config();
  const std::string comfy = tmp.path + "/comfy.safetensors", plain = tmp.path + "/zimage.safetensors",
                    diffusers = tmp.path + "/transformer";
  write_random_zimage(comfy, c, 3, "comfyui", DType::F32);
  write_random_zimage(plain, c, 3, "zimage", DType::F32);
  write_random_zimage(diffusers, c, 3, "diffusers", DType::F32, 2);
  Checkpoint d = Checkpoint::open(diffusers);
  CHECK(d.files.size() == 2 && d.has("layers.0.attention.to_q.weight") && d.has("all_x_embedder.2-1.weight"));
  CHECK(!d.has("layers.0.attention.qkv.weight"));
  CHECK(Checkpoint::open(comfy).has("model.diffusion_model.layers.0.attention.qkv.weight"));
  CHECK(Checkpoint::open(plain).has("layers.0.attention.qkv.weight"));

  const FluxInputs in = zimage_inputs(c, 4);
  std::vector<std::vector<float>> outs;
  for (const std::string& path : {comfy, plain, diffusers}) {
    ZImageTransformer m = ZImageTransformer::load(path, Device::cpu());
    const ZImageConfig& g = m.cfg;
    CHECK(g.dim == c.dim && g.heads == c.heads && g.head_dim == c.head_dim && g.n_layers == c.n_layers);
    CHECK(g.n_refiner == c.n_refiner && g.cap_dim == c.cap_dim && g.ffn_hidden == c.ffn_hidden);
    CHECK(g.adaln_dim == c.adaln_dim && g.t_mid == c.t_mid && g.in_channels == c.in_channels);
    CHECK(g.axes_dim[0] == c.axes_dim[0] && g.axes_dim[1] == c.axes_dim[1] && g.axes_dim[2] == c.axes_dim[2]);
    outs.push_back(run_model(m, in));
    ZImageTransformer s = ZImageTransformer::shapes(path);
    const auto loaded = listing(m), listed = listing(s);
    CHECK(listed.size() == loaded.size() && !listed.empty());
    CHECK(listed == loaded);
  }
  CHECK(outs[0].size() == (size_t)in.B * in.L_img * c.patch_features());
  CHECK(all_finite(outs[0]) && max_abs(outs[0]) > 0.1);
  CHECK(outs[1] == outs[0]);
  CHECK(outs[2] == outs[0]);
  std::printf("      %zu outputs up to %.3g, identical from the three layouts\n", outs[0].size(), max_abs(outs[0]));
}

// save() writes x_embedder's columns and final_layer.linear's rows back in Z-Image's patch order (the
// model keeps them in FLUX's): the saved files hold exactly the tensors the random writer wrote, in
// the canonical and in diffusers' names, and load back to the same outputs.
TEST(zimage_save_round_trips) {
  TempDir tmp;
  const ZImageConfig c = tiny_zimage_config();
  const std::string plain = tmp.path + "/zimage.safetensors", diffusers = tmp.path + "/transformer";
  write_random_zimage(plain, c, 5, "zimage", DType::F32);
  write_random_zimage(diffusers, c, 5, "diffusers", DType::F32, 1);
  ZImageTransformer m = ZImageTransformer::load(plain, Device::cpu());
  const FluxInputs in = zimage_inputs(c, 6);
  const std::vector<float> before = run_model(m, in);

  const std::string again = tmp.path + "/again.safetensors";
  m.save(again, DType::F32, "comfyui");
  CHECK(tensors_of_checkpoint(again) == tensors_of_checkpoint(plain));
  CHECK(run_model(ZImageTransformer::load(again, Device::cpu()), in) == before);

  const std::string folder = tmp.path + "/saved_transformer";
  make_dirs(folder);
  m.save(folder + "/diffusion_pytorch_model.safetensors", DType::F32, "diffusers");
  write_text(folder + "/config.json", zimage_diffusers_config(m.cfg));
  const auto saved = tensors_of_checkpoint(folder), written = tensors_of_checkpoint(diffusers);
  CHECK(saved.size() == written.size() && saved.count("all_x_embedder.2-1.weight") && saved.count("layers.1.attention.to_v.weight"));
  CHECK(saved == written);
  CHECK(run_model(ZImageTransformer::load(folder, Device::cpu()), in) == before);

  // The permutation is not the identity: the stored x_embedder differs from the model's own.
  CHECK(to_floats(m.x_embedder.W) != saved.at("all_x_embedder.2-1.weight"));
  CHECK_THROWS(m.save(tmp.path + "/x.safetensors", DType::F32, "bfl"), "comfyui or diffusers");
}

// The trainer's convention: forward() takes the noise level sigma and predicts noise - x0, Z-Image's
// own forward_model takes t = 1 - sigma and predicts x0 - noise.
TEST(zimage_forward_is_the_negated_model_at_one_minus_sigma) {
  const ZImageConfig c = tiny_zimage_config();
  const ZImageTransformer m = ZImageTransformer::random(c, Device::cpu(), 7);
  const FluxInputs in = zimage_inputs(c, 8);
  FluxInputs flipped = in;
  for (float& s : flipped.timesteps) s = 1.0f - s;
  std::vector<float> trainer;
  {
    NoGrad no_grad;
    trainer = to_floats(m.forward(in));
  }
  const std::vector<float> model = run_model(m, flipped), same_t = run_model(m, in);
  CHECK(trainer.size() == model.size() && max_abs(model) > 0.1);
  for (size_t i = 0; i < model.size(); ++i)
    if (trainer[i] != -model[i]) fail_at(__FILE__, __LINE__, "output " + std::to_string(i) + " is not the negated model's");
  // The timestep matters: at sigma instead of 1 - sigma the model predicts something else.
  const double moved = max_rel(same_t, model);
  std::printf("      forward == -forward_model(1 - sigma) over %zu values; forward_model(sigma) differs by rel %.3g\n",
              model.size(), moved);
  CHECK(moved > 1e-3);
}

// Gradient checkpointing recomputes each main layer in backward: the same LoRA gradients bit for bit,
// on a batch whose two captions pad to different lengths.
TEST(zimage_checkpointing_gives_the_same_lora_gradients) {
  const ZImageConfig c = tiny_zimage_config();
  ZImageTransformer m = ZImageTransformer::random(c, Device::cpu(), 9);
  LoraSet lora = lora_create(zimage_lora_targets(c), 2, 4.0f, 10);
  randomize_lora(lora, 11);
  lora_attach(m.linears(), &lora);
  const FluxInputs in = zimage_inputs(c, 12);
  const std::vector<float> target = random_values((size_t)in.B * in.L_img * c.patch_features(), 13);
  m.checkpointing = false;
  const std::vector<float> plain = lora_gradients(m, lora, in, target);
  m.checkpointing = true;
  const std::vector<float> recomputed = lora_gradients(m, lora, in, target);
  CHECK(plain.size() == lora.size());
  CHECK(plain == recomputed);
  // Every adapter matrix gets a gradient.
  const std::vector<float> again = lora_gradients(m, lora, in, target);
  CHECK(again == plain);
  size_t zero = 0;
  for (const LoraAdapter& a : lora.adapters)
    for (const AdapterMatrix& mat : a.mats) {
      double n = 0.0;
      for (size_t k = 0; k < (size_t)mat.rows * mat.cols; ++k) n += (double)plain[mat.offset + k] * plain[mat.offset + k];
      zero += n == 0.0;
    }
  std::printf("      %zu LoRA parameters over %zu adapters, identical with and without checkpointing, max |g| %.3g\n",
              plain.size(), lora.adapters.size(), max_abs(plain));
  CHECK(zero == 0);
}

// model.quantize: every linear layer but the two whose patch order is permuted takes the format; the
// output moves from the dense model's by the format's rounding only.
TEST(zimage_quantized_loading_stays_close_to_the_dense_model) {
  TempDir tmp;
  const ZImageConfig c = tiny_zimage_config();
  const std::string path = tmp.path + "/z.safetensors";
  write_random_zimage(path, c, 15, "comfyui", DType::BF16);  // as Z-Image Turbo's file is stored
  const FluxInputs in = zimage_inputs(c, 16);
  const std::vector<float> dense = run_model(ZImageTransformer::load(path, Device::cpu()), in);
  const struct { WeightFormat f; DType codes; double lo, hi; } formats[] = {
      {WeightFormat::fp8, DType::F8_E4M3, 1e-4, 0.1}, {WeightFormat::int8, DType::I8, 1e-6, 0.1},
      {WeightFormat::nf4, DType::U8, 1e-3, 0.5}};
  for (const auto& fmt : formats) {
    ZImageTransformer q = ZImageTransformer::load(path, Device::cpu(), fmt.f);
    // x_embedder and final_layer.linear as stored (BF16, no scales); every other linear quantized.
    for (Linear* l : {&q.x_embedder, &q.final_linear}) CHECK(l->W.dtype == DType::BF16 && !l->w_scale.defined() && !l->w_absmax.defined());
    size_t quantized = 0, others = 0;
    for (Linear* l : q.linears()) {
      if (l == &q.x_embedder || l == &q.final_linear) continue;
      ++others;
      quantized += l->W.dtype == fmt.codes && (fmt.f == WeightFormat::nf4 ? l->w_absmax.defined() : l->w_scale.numel() == l->out);
    }
    const std::vector<float> out = run_model(q, in);
    const double rel = max_rel(out, dense);
    std::printf("      %s: %zu of %zu linears quantized, output vs the dense model: rel %.3g\n", weight_format_name(fmt.f),
                quantized, others, rel);
    CHECK(others > 0 && quantized == others);
    CHECK(all_finite(out));
    CHECK(rel > fmt.lo && rel < fmt.hi);
  }
}

// The LoRA file in the reference toolkit's names for Z-Image ("diffusion_model.<diffusers module>"),
// every target there with its shapes; read back to the same adapters, as is a "transformer." file.
TEST(zimage_lora_file_names_and_reload) {
  TempDir tmp;
  const ZImageConfig c = tiny_zimage_config();
  const int D = c.dim, F = c.ffn_hidden, rank = 4;
  const std::vector<LoraTarget> targets = zimage_lora_targets(c);
  CHECK(targets.size() == (size_t)8 * c.n_layers);
  LoraSet lora = lora_create(targets, rank, 8.0f, 21);  // alpha / rank = 2: folded into B on save
  randomize_lora(lora, 22);
  lora.prefix = "diffusion_model.";
  const std::string file = tmp.path + "/zimage_lora.safetensors";
  lora_save(lora, file, DType::F32, {{"software", "graft"}});
  SafeTensorsFile f = SafeTensorsFile::open(file);
  CHECK(f.tensors.size() == 2 * targets.size());
  for (const TensorInfo& t : f.tensors) CHECK(t.name.rfind("diffusion_model.layers.", 0) == 0);
  const struct { const char* module; int rows, in; } expect[] = {
      {"attention.to_q", D, D}, {"attention.to_k", D, D}, {"attention.to_v", D, D}, {"attention.to_out.0", D, D},
      {"feed_forward.w1", F, D}, {"feed_forward.w2", D, F}, {"feed_forward.w3", F, D}, {"adaLN_modulation.0", 4 * D, c.adaln_dim}};
  for (int i = 0; i < c.n_layers; ++i)
    for (const auto& e : expect) {
      const std::string key = "diffusion_model.layers." + std::to_string(i) + "." + e.module;
      CHECK(f.has(key + ".lora_A.weight") && f.has(key + ".lora_B.weight"));
      CHECK(f.info(key + ".lora_A.weight").shape == std::vector<int64_t>({rank, e.in}));
      CHECK(f.info(key + ".lora_B.weight").shape == std::vector<int64_t>({e.rows, rank}));
    }
  // to_q, to_k, to_v are the thirds of the fused qkv.
  for (int k = 0; k < 3; ++k) CHECK(targets[k].base == "layers.0.attention.qkv" && targets[k].row_offset == k * D && targets[k].rows == D);

  // Back: A as trained, B with the scale folded in, scale 1.
  LoraSet back = lora_load(file, targets);
  CHECK(back.prefix == "diffusion_model.");  // saved again under the names it was read with
  CHECK(back.adapters.size() == lora.adapters.size());
  const std::vector<float> p0 = lora.host_params(), p1 = back.host_params();
  for (size_t i = 0; i < lora.adapters.size(); ++i) {
    const LoraAdapter &a = lora.adapters[i], &b = back.adapters[i];
    CHECK(a.target.module == b.target.module && b.scale == 1.0f && a.scale == 2.0f && b.mats.size() == a.mats.size());
    for (size_t j = 0; j < a.mats.size(); ++j) {
      const AdapterMatrix &ma = a.mats[j], &mb = b.mats[j];
      CHECK(ma.key == mb.key && ma.rows == mb.rows && ma.cols == mb.cols);
      const float s = ma.key == "lora_B.weight" ? a.scale : 1.0f;
      for (size_t k = 0; k < (size_t)ma.rows * ma.cols; ++k)
        if (p1[mb.offset + k] != p0[ma.offset + k] * s) fail_at(__FILE__, __LINE__, a.target.module + "." + ma.key + " differs");
    }
  }
  // The same predictions through the model, and the adapter does act.
  ZImageTransformer m = ZImageTransformer::random(c, Device::cpu(), 23);
  const FluxInputs in = zimage_inputs(c, 24);
  const std::vector<float> base = run_model(m, in);
  lora_attach(m.linears(), &lora);
  const std::vector<float> trained = run_model(m, in);
  lora_attach(m.linears(), &back);
  const std::vector<float> reloaded = run_model(m, in);
  const double same = max_rel(reloaded, trained), acts = max_rel(trained, base);
  std::printf("      %zu keys; reloaded vs trained rel %.2e, adapter's effect rel %.3g\n", f.tensors.size(), same, acts);
  CHECK(same < 1e-5);
  CHECK(acts > 1e-2);

  // A FLUX-style file ("transformer.<module>") of the same adapters loads to the same parameters.
  lora.prefix = "transformer.";
  const std::string flux_style = tmp.path + "/flux_style.safetensors";
  lora_save(lora, flux_style, DType::F32, {});
  CHECK(SafeTensorsFile::open(flux_style).has("transformer.layers.0.attention.to_q.lora_A.weight"));
  LoraSet other = lora_load(flux_style, targets);
  CHECK(other.adapters.size() == back.adapters.size() && other.host_params() == p1 && other.prefix == "transformer.");
}

// The decoder LLM loads the layers the hidden state it serves needs: hidden_states[-2] (Z-Image's) is
// the input of the last layer, no final norm; -1 all layers and the final norm. Folder and file alike.
TEST(llm_loads_the_layers_its_hidden_state_needs) {
  TempDir tmp;
  const LlmConfig c = tiny_qwen3_config();
  CHECK(c.layers == 3);
  const std::string folder = tmp.path + "/text_encoder", file = tmp.path + "/qwen.safetensors";
  RandomWriteOptions o;
  o.shards = 2;
  write_random_llm(folder, c, 31, o);
  o.shards = 0;
  write_random_llm(file, c, 31, o);
  CHECK(Checkpoint::open(folder).files.size() == 2);
  CHECK(!read_text_file(folder + "/config.json").empty());

  const DecoderLlm m2 = DecoderLlm::load(folder, Device::cpu(), -2), m1 = DecoderLlm::load(folder, Device::cpu(), -1);
  CHECK(m2.layers.size() == 2 && !m2.final_norm.defined());
  CHECK(m1.layers.size() == 3 && m1.final_norm.defined());
  const LlmConfig& g = m2.cfg;
  CHECK(g.hidden == c.hidden && g.intermediate == c.intermediate && g.layers == c.layers && g.heads == c.heads);
  CHECK(g.kv_heads == c.kv_heads && g.head_dim == c.head_dim && g.vocab == c.vocab && g.qk_norm);

  const int B = 2, L = 7;
  std::vector<int> ids = llm_ids(B * L, c.vocab, 1);
  const std::vector<float> h2 = llm_run(m2, ids, B, L);
  CHECK(h2.size() == (size_t)B * L * c.hidden && all_finite(h2) && max_abs(h2) > 0.1);
  // The single file (no config.json: the model type's settings, the same here) gives the same.
  const DecoderLlm f2 = DecoderLlm::load(file, Device::cpu(), -2);
  CHECK(f2.layers.size() == 2 && llm_run(f2, ids, B, L) == h2);
  // -2 of three layers is hidden_states[2]; -1 is hidden_states[3]; and -1's run with its last layer
  // and final norm taken away is -2's.
  CHECK(llm_run(DecoderLlm::load(folder, Device::cpu(), 2), ids, B, L) == h2);
  const std::vector<float> h1 = llm_run(m1, ids, B, L);
  CHECK(llm_run(DecoderLlm::load(file, Device::cpu(), 3), ids, B, L) == h1);
  DecoderLlm cut = DecoderLlm::load(folder, Device::cpu(), -1);
  cut.layers.pop_back();
  cut.final_norm = Tensor();
  CHECK(llm_run(cut, ids, B, L) == h2);
  CHECK(max_rel(h1, h2) > 1e-2);
  // hidden_states[0]: the embeddings themselves.
  const DecoderLlm m0 = DecoderLlm::load(file, Device::cpu(), 0);
  CHECK(m0.layers.empty());
  const std::vector<float> h0 = llm_run(m0, ids, B, L), table = to_floats(m0.embed);
  bool rows = true;
  for (size_t t = 0; t < ids.size(); ++t)
    for (int k = 0; k < c.hidden; ++k) rows = rows && h0[t * c.hidden + k] == table[(size_t)ids[t] * c.hidden + k];
  CHECK(rows);
  CHECK_THROWS(DecoderLlm::load(folder, Device::cpu(), 4), "hidden state 4 of a model with 3 layers");
  CHECK_THROWS(DecoderLlm::load(folder, Device::cpu(), -5), "hidden state -5");
}

// Causal attention: a prompt's rows do not change when more tokens follow it, and an item's rows do
// not depend on the other items of the batch.
TEST(llm_prompt_rows_do_not_see_what_follows) {
  const LlmConfig c = tiny_qwen3_config();
  const DecoderLlm m = DecoderLlm::random(c, Device::cpu(), 33, -2);
  const int L = 11;
  const std::vector<int> ids = llm_ids(L, c.vocab, 2), other = llm_ids(L, c.vocab, 3);
  const std::vector<float> full = llm_run(m, ids, 1, L);
  double worst = 0.0;
  for (int n : {1, 4, 8}) {
    const std::vector<float> part = llm_run(m, std::vector<int>(ids.begin(), ids.begin() + n), 1, n);
    const std::vector<float> head(full.begin(), full.begin() + (size_t)n * c.hidden);
    worst = std::max(worst, max_rel(part, head));
  }
  // Changing the last token leaves every earlier row alone, and changes the last.
  std::vector<int> changed = ids;
  changed[L - 1] = (changed[L - 1] + 1) % c.vocab;
  const std::vector<float> alt = llm_run(m, changed, 1, L);
  const size_t before_last = (size_t)(L - 1) * c.hidden;
  const double earlier = max_rel(std::vector<float>(alt.begin(), alt.begin() + before_last),
                                 std::vector<float>(full.begin(), full.begin() + before_last));
  const double last = max_rel(std::vector<float>(alt.begin() + before_last, alt.end()),
                              std::vector<float>(full.begin() + before_last, full.end()));
  // Batched with another prompt.
  std::vector<int> both = ids;
  both.insert(both.end(), other.begin(), other.end());
  const std::vector<float> batch = llm_run(m, both, 2, L);
  const double batched = max_rel(std::vector<float>(batch.begin(), batch.begin() + full.size()), full);
  std::printf("      prefixes vs the full run: rel %.2e; rows before a changed last token: %.2e (the last: %.3g); "
              "batched: %.2e\n", worst, earlier, last, batched);
  CHECK(worst < 1e-6);
  CHECK(earlier < 1e-6);
  CHECK(last > 1e-2);
  CHECK(batched < 1e-6);
}

// save() puts q_proj's and k_proj's rows (and their norms) back in transformers' order: the file holds
// what the random writer wrote, and loads back to the same hidden states.
TEST(llm_save_round_trips) {
  TempDir tmp;
  const LlmConfig c = tiny_qwen3_config();
  const std::string file = tmp.path + "/qwen.safetensors", again = tmp.path + "/again.safetensors";
  write_random_llm(file, c, 35, RandomWriteOptions());
  DecoderLlm m = DecoderLlm::load(file, Device::cpu(), -1);
  m.save(again, DType::F32);
  CHECK(tensors_of_checkpoint(again) == tensors_of_checkpoint(file));
  const int B = 2, L = 6;
  const std::vector<int> ids = llm_ids(B * L, c.vocab, 4);
  const std::vector<float> a = llm_run(m, ids, B, L), b = llm_run(DecoderLlm::load(again, Device::cpu(), -1), ids, B, L);
  CHECK(a == b);
  // The rotary reordering is not the identity: the model's q_proj is not the stored one.
  CHECK(to_floats(m.layers[0].q.W) != tensors_of_checkpoint(file).at("model.layers.0.self_attn.q_proj.weight"));
}

TEST(llm_config_and_checkpoint_errors_are_named) {
  TempDir tmp;
  const LlmConfig c = tiny_qwen3_config();
  const std::string folder = tmp.path + "/text_encoder";
  RandomWriteOptions o;
  o.shards = 1;
  write_random_llm(folder, c, 37, o);
  CHECK(DecoderLlm::load(folder, Device::cpu()).layers.size() == 2);
  edit_config(folder, [](nlohmann::json& j) { j["num_hidden_layers"] = 5; });
  CHECK_THROWS(DecoderLlm::load(folder, Device::cpu()), "config.json: num_hidden_layers 5 but");
  edit_config(folder, [&](nlohmann::json& j) { j["num_hidden_layers"] = c.layers, j["hidden_size"] = 64; });
  CHECK_THROWS(DecoderLlm::load(folder, Device::cpu()), "config.json: hidden_size 64 but the embeddings are 48 wide");
  // A config given apart is read instead of the folder's.
  write_text(tmp.path + "/apart.json", llm_config_json(c));
  CHECK(DecoderLlm::load(folder, Device::cpu(), -1, WeightFormat::dense, tmp.path + "/apart.json").layers.size() == 3);

  // No q_proj: not a decoder LLM, and the message says what was looked for.
  const std::string file = tmp.path + "/qwen.safetensors";
  write_random_llm(file, c, 37, RandomWriteOptions());
  SafeTensorsFile f = SafeTensorsFile::open(file);
  SafeTensorsWriter w;
  for (const TensorInfo& t : f.tensors)
    if (t.name.find("q_proj") == std::string::npos) w.add(t.name, DType::F32, t.shape, f.read_f32(t.name).data());
  w.write(tmp.path + "/no_q.safetensors");
  CHECK_THROWS(DecoderLlm::load(tmp.path + "/no_q.safetensors", Device::cpu()),
               "no_q.safetensors: not a decoder LLM: no tensor named '[model.]layers.0.self_attn.q_proj.weight'");
}

// A file of another model is refused naming what was looked for; a diffusers folder whose RoPE axes do
// not fit the heads is refused naming its config.json.
TEST(zimage_wrong_files_are_refused_by_name) {
  TempDir tmp;
  const std::string flux = tmp.path + "/flux.safetensors";
  write_random_flux(flux, tiny_flux_config(), 41);
  CHECK(!is_zimage_checkpoint(Checkpoint::open(flux)));
  CHECK_THROWS(ZImageTransformer::load(flux, Device::cpu()), "flux.safetensors: not a Z-Image transformer");
  CHECK_THROWS(ZImageTransformer::load(flux, Device::cpu()), "'all_x_embedder.2-1.weight'");
  CHECK_THROWS(ZImageTransformer::shapes(flux), "not a Z-Image transformer");
  RandomFluxOptions fd;
  fd.layout = "diffusers";
  write_random_flux(tmp.path + "/flux_transformer", tiny_flux_config(), 41, fd);
  CHECK_THROWS(ZImageTransformer::load(tmp.path + "/flux_transformer", Device::cpu()), "not a Z-Image transformer");

  const ZImageConfig c = tiny_zimage_config();
  const std::string folder = tmp.path + "/transformer";
  write_random_zimage(folder, c, 42, "diffusers", DType::F32, 2);
  CHECK(is_zimage_checkpoint(Checkpoint::open(folder)));
  CHECK(ZImageTransformer::load(folder, Device::cpu()).cfg.axes_dim[2] == 12);
  edit_config(folder, [](nlohmann::json& j) { j["axes_dims"] = {8, 12, 14}; });
  CHECK_THROWS(ZImageTransformer::load(folder, Device::cpu()),
               "transformer/config.json: RoPE axes 8, 12, 14 do not sum to the head dim 32");
  edit_config(folder, [](nlohmann::json& j) { j["axes_dims"] = {8, 12}; });
  CHECK_THROWS(ZImageTransformer::load(folder, Device::cpu()), "config.json: axes_dims must be a list of 3 integers");
}
