#include "demo/demo_model.h"

#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/autograd.h"
#include "core/common.h"
#include "models/flux.h"
#include "core/image_io.h"
#include "train/lora.h"
#include "ops/cpu_ops.h"
#include "ops/ops.h"
#include "train/optim.h"
#include "train/pipeline.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "demo/shapes.h"
#include "demo/text_encoder.h"
#include "demo/tiny.h"
#include "models/flux_vae.h"

namespace graft {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

std::vector<Scene> make_scenes(const DemoModelOptions& o) {
  std::vector<Scene> s;
  for (int i = 0; i < o.pictures; ++i) s.push_back(random_scene(o.seed, i));
  return s;
}

VaeConfig demo_vae_config(int latent_factor) {
  VaeConfig c;
  c.ch = 32;
  c.ch_mult = latent_factor == 4 ? std::vector<int>{1, 2, 2} : std::vector<int>{1, 2};  // one halving per level after the first
  c.num_res_blocks = 1;
  c.z_channels = 4;
  c.groups = 8;
  return c;
}

}  // namespace

FluxConfig demo_flux_config(int context_dim, int vec_dim) {
  FluxConfig c;
  c.in_channels = 16;  // 4 latent channels x 2 x 2
  c.out_channels = 16;
  c.hidden = 128;
  c.heads = 4;
  c.head_dim = 32;
  c.mlp_hidden = 512;
  c.context_dim = context_dim;
  c.vec_dim = vec_dim;
  c.n_double = 2;
  c.n_single = 4;
  c.guidance_embed = false;  // guidance comes from CFG against the empty prompt
  c.axes_dim[0] = 4;
  c.axes_dim[1] = 14;
  c.axes_dim[2] = 14;
  return c;
}

namespace {

// DiT initialisation (adaLN-Zero): every block starts as the identity and the output at zero, so
// early training is stable; other weights N(0, 1/fan_in), biases 0, norm scales 1.
void init_for_training(FluxTransformer& m, uint64_t seed) {
  Rng rng(seed, 0x1417, 0);
  for (NamedParam& p : m.params()) {
    const std::string& n = p.name;
    const bool zero = n.find("_mod.lin") != std::string::npos || n.find("modulation.lin") != std::string::npos ||
                      n.find("adaLN_modulation") != std::string::npos || n.find("final_layer.linear") != std::string::npos;
    const bool bias = n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0;
    std::vector<float> v((size_t)p.t->numel());
    if (n.find(".scale") != std::string::npos) std::fill(v.begin(), v.end(), 1.0f);
    else if (zero || bias) std::fill(v.begin(), v.end(), 0.0f);
    else {
      float std = 1.0f / std::sqrt((float)p.t->shape[1]);
      for (float& x : v) x = std * rng.normal();
    }
    *p.t = from_vector(v, p.t->shape, m.device);
  }
}

// Trains the autoencoder on posterior samples of random pictures (MSE + KL), or with decoder_only the
// decoder alone (MSE): then the encoder gets no gradient, so Adam (no weight decay) leaves its
// weights, the latent statistics and the transformer's latent space exactly as they were. Returns the
// smoothed reconstruction loss.
double train_autoencoder(FluxVae& ae, const std::vector<Scene>& scenes, const DemoModelOptions& o, bool decoder_only) {
  const int S = o.image_size, B = o.ae_batch, steps = decoder_only ? o.decoder_steps : o.ae_steps;
  const float base_lr = decoder_only ? o.decoder_lr : o.ae_lr;
  const char* what = decoder_only ? "decoder" : "autoencoder";
  const size_t img = (size_t)3 * S * S;
  std::vector<NamedParam> params = decoder_only ? ae.decoder_params() : ae.params();
  make_trainable(params);
  MultiAdam opt;
  for (NamedParam& p : params) opt.add(*p.t, p.t->meta->grad, 0.0f);
  std::vector<float> x(B * img), noise;
  const Device dev = ae.device;
  const DType act = compute_dtype(dev);
  double ema = 0.0;
  auto t0 = clock_type::now();
  for (int step = 1; step <= steps; ++step) {
    Rng rng(o.seed, decoder_only ? 0xDEC : 0xAE, step);
    for (int b = 0; b < B; ++b) {
      std::vector<float> pic = draw(scenes[rng.next() % scenes.size()], S);
      std::copy(pic.begin(), pic.end(), x.begin() + b * img);
    }
    zero_grads(params);
    const Tensor xt = from_vector(x, {B, 3, S, S}, dev, act);
    FluxVae::Moments m = ae.encode(xt);  // decoder_only: nothing to record here (the encoder is frozen)
    const long nz = (long)m.mean.numel();
    noise.resize(nz);
    for (float& v : noise) v = rng.normal();
    Tensor recon = ae.decode(gaussian_sample(m.mean, m.logvar, from_vector(noise, m.mean.shape, dev, act)));
    const float rec = (float)mse(recon, xt);
    Tensor kl = gaussian_kl(m.mean, m.logvar);
    if (decoder_only) backward(recon, mse_grad(recon, xt, 1.0f));
    else backward({recon, kl}, {mse_grad(recon, xt, 1.0f), from_vector({o.ae_kl_weight}, {1}, dev)});
    opt.clip(1.0f);
    opt.step(lr_at("cosine", base_lr, step, steps, 100));
    ema = step == 1 ? rec : 0.98 * ema + 0.02 * rec;
    if (step % o.log_every == 0 || step == steps) {
      std::printf("%s step %d/%d  reconstruction %.5f (smoothed %.5f)  kl %.4f  %.2f s/step\n", what, step, steps, rec,
                  ema, item(kl), seconds_since(t0) / step);
      std::fflush(stdout);
    }
  }
  return ema;
}

// Latents of every picture in the transformer's space, after fixing scale/shift from their statistics.
std::vector<std::vector<float>> encode_all(FluxVae& ae, const std::vector<Scene>& scenes, int S, bool fix_scale) {
  NoGrad no_grad;
  std::vector<std::vector<float>> lat;
  double sum = 0.0, sq = 0.0;
  long n = 0;
  for (const Scene& s : scenes) {
    std::vector<float> pic = draw(s, S);
    std::vector<float> mean = to_floats(ae.encode(from_vector(pic, {1, 3, S, S}, ae.device, compute_dtype(ae.device))).mean);
    for (float v : mean) sum += v, sq += (double)v * v, ++n;
    lat.push_back(mean);
  }
  const double mu = sum / n, sd = std::sqrt(std::max(1e-12, sq / n - mu * mu));
  if (fix_scale) {
    ae.cfg.shift_factor = (float)mu;
    ae.cfg.scale_factor = (float)(1.0 / sd);
  }
  for (auto& l : lat) vae_latent_to_dit(ae.cfg, l.data(), (long)l.size());
  return lat;
}

struct DitResult { double final_loss, final_shape_gap, final_count_gap; };

}  // namespace

Scene with_wrong_word(const Scene& s, bool count, Rng& rng) {
  Scene w = s;
  if (count) {
    const int counts = s.large ? 2 : 3;  // as random_scene draws them
    w.count = 1 + (s.count + (int)(rng.next() % (counts - 1))) % counts;
  } else {
    w.shape = kBaseShapeList[((int)s.shape + 1 + rng.next() % (kBaseShapes - 1)) % kBaseShapes];
    w.word = shape_name(w.shape);
  }
  return w;
}

WordContrast::WordContrast(FluxTransformer* d, const TextEncoder* t, float weight, float margin, float count_share, int B,
                           int L, int gh, int P)
    : dit(d), te(t), weight(weight), margin(margin), count_share(count_share), B(B), L(L), gh(gh), P(P) {}

float WordContrast::step(const std::vector<Scene>& scenes, const std::vector<int>& pick, const FluxInputs& batch,
                         const std::vector<float>& true_out, const std::vector<float>& target, std::vector<float>& dtrue,
                         Rng& rng) {
  rows.clear();
  count_rows.clear();
  wrong_captions.clear();
  gap_shape = gap_count = 0;
  n_count = 0;
  if (weight <= 0) return 0.0f;
  for (int b = 0; b < B; ++b)
    if (pick[b] >= 0 && batch.timesteps[b] >= min_t) rows.push_back(b);
  const int A = (int)rows.size(), n = gh * gh * P;
  if (A == 0) return 0.0f;
  FluxInputs in;
  in.B = A, in.L_img = gh * gh, in.L_txt = L;
  in.img_ids.resize((size_t)A * in.L_img * 3);
  flux_img_ids(in.img_ids.data(), A, gh, gh);
  in.txt_ids.assign((size_t)A * L * 3, 0.0f);
  in.timesteps.resize(A);
  in.img.resize((size_t)A * n);
  ids.clear();
  for (int a = 0; a < A; ++a) {
    const int b = rows[a];
    const bool count = count_share > 0 && rng.uniform() < count_share;
    count_rows.push_back(count);
    wrong_captions.push_back(caption(with_wrong_word(scenes[pick[b]], count, rng)));
    std::vector<int> t = tokenize_bytes(wrong_captions.back(), L);
    ids.insert(ids.end(), t.begin(), t.end());
    in.timesteps[a] = batch.timesteps[b];
    std::copy_n(batch.img.begin() + (size_t)b * n, n, in.img.begin() + (size_t)a * n);
  }
  const Device dev = dit->device;
  TextEncoder::Output text = te->forward(ids, A, L);
  out = dit->forward(from_vector(in.img, {A, in.L_img, P}, dev, compute_dtype(dev)), text.context, text.pooled,
                     from_vector(in.timesteps, {A}, dev), Tensor(), dit->rope_for(in));
  const std::vector<float> wrong = to_floats(out);
  dout.assign(wrong.size(), 0.0f);
  double gap_sum = 0.0;
  const float g = weight / B;  // the flow loss is a mean over the batch; so is this term
  for (int a = 0; a < A; ++a) {
    const size_t tb = (size_t)rows[a] * n, wa = (size_t)a * n;
    const float l_true = cpu::mse_forward(true_out.data() + tb, target.data() + tb, n);
    const float l_wrong = cpu::mse_forward(wrong.data() + wa, target.data() + tb, n);
    gap_sum += l_wrong - l_true;
    (count_rows[a] ? gap_count : gap_shape) += l_wrong - l_true;
    n_count += count_rows[a];
    if (l_wrong - l_true >= margin) continue;
    for (int i = 0; i < n; ++i) {
      dtrue[tb + i] += g * 2.0f * (true_out[tb + i] - target[tb + i]) / n;
      dout[wa + i] = -g * 2.0f * (wrong[wa + i] - target[tb + i]) / n;
    }
  }
  if (n_count > 0) gap_count /= n_count;
  if (A - n_count > 0) gap_shape /= A - n_count;
  return (float)(gap_sum / A);
}

void WordContrast::backward() {
  if (rows.empty()) return;
  graft::backward(out, from_vector(dout, out.shape, out.device(), out.dtype));
  out = Tensor();
}

namespace {

// save(step) writes the model folder's text encoder and transformer, with the averaged weights in
// place, every save_every steps, so a run stopped early keeps its progress.
DitResult train_transformer(FluxTransformer& dit, TextEncoder& te, const std::vector<Scene>& scenes,
                            const std::vector<std::vector<float>>& latents, int C, int h, const DemoModelOptions& o,
                            const std::function<void(int)>& save) {
  const int B = o.dit_batch, L = te.cfg.max_len, gh = h / 2, Li = gh * gh, P = C * 4;
  const size_t lat = (size_t)C * h * h;
  std::vector<NamedParam> params = dit.params(), te_params = te.params();
  params.insert(params.end(), te_params.begin(), te_params.end());
  make_trainable(params);
  MultiAdam opt;
  for (NamedParam& p : params) opt.add(*p.t, p.t->meta->grad, 0.0f);
  WeightEma ema_w;
  ema_w.decay = o.ema_decay;
  if (o.ema_decay > 0)
    for (NamedParam& p : params) ema_w.add(*p.t);
  auto checkpoint = [&](int step) {
    if (o.ema_decay > 0) ema_w.swap();
    save(step);
    if (o.ema_decay > 0) ema_w.swap();
  };
  const Device dev = dit.device;
  FluxInputs in;
  in.B = B;
  in.L_img = Li;
  in.L_txt = L;
  in.img_ids.resize((size_t)B * Li * 3);
  flux_img_ids(in.img_ids.data(), B, gh, gh);
  in.txt_ids.assign((size_t)B * L * 3, 0.0f);
  std::vector<float> xt(B * lat), vel(B * lat), target, dout;
  std::vector<int> ids, pick(B);
  const Tensor pe = dit.rope_for(in);
  WordContrast contrast(&dit, &te, o.shape_contrast, o.contrast_margin, o.count_contrast, B, L, gh, P);
  double ema = 0.0, shape_gap = 0.0, count_gap = 0.0;  // smoothed
  bool shape_seen = false, count_seen = false;
  auto t0 = clock_type::now();
  const int last = o.stop_at > 0 ? std::min(o.stop_at, o.dit_steps) : o.dit_steps;
  for (int step = 1; step <= last; ++step) {
    Rng rng(o.seed, 0xD17, step);
    Rng words(o.seed, 0x30D5, step);  // a stream of its own: without novel words every other draw stays as it was
    ids.clear();
    in.timesteps.resize(B);
    for (int b = 0; b < B; ++b) {
      size_t k = rng.next() % scenes.size();
      const bool dropped = rng.uniform() < o.caption_dropout;
      pick[b] = dropped ? -1 : (int)k;
      std::string text = dropped ? "" : caption(scenes[k]);
      if (!dropped && o.novel_words > 0 && words.uniform() < o.novel_words) {
        Scene named = scenes[k];
        named.word = made_up_word(words);
        text = caption(named);
        pick[b] = -1;  // the word contrast has no true word to set a wrong one against
      }
      std::vector<int> t = tokenize_bytes(text, L);
      ids.insert(ids.end(), t.begin(), t.end());
      float tt = 1.0f / (1.0f + std::exp(-rng.normal()));  // sigmoid timesteps: most steps mid-noise
      in.timesteps[b] = tt;
      for (size_t i = 0; i < lat; ++i) {
        float noise = rng.normal(), x0 = latents[k][i];
        xt[b * lat + i] = (1 - tt) * x0 + tt * noise;
        vel[b * lat + i] = noise - x0;
      }
    }
    in.img.resize((size_t)B * Li * P);
    target.resize(in.img.size());
    cpu::patchify_forward(in.img.data(), xt.data(), B, C, h, h, 2);
    cpu::patchify_forward(target.data(), vel.data(), B, C, h, h, 2);
    zero_grads(params);
    TextEncoder::Output text = te.forward(ids, B, L);
    Tensor out_t = dit.forward(from_vector(in.img, {B, Li, P}, dev, compute_dtype(dev)), text.context, text.pooled,
                               from_vector(in.timesteps, {B}, dev), Tensor(), pe);
    const std::vector<float> out = to_floats(out_t);
    const float loss = cpu::mse_forward(out.data(), target.data(), (long)out.size());
    dout.assign(out.size(), 0.0f);
    cpu::mse_backward(dout.data(), out.data(), target.data(), (long)out.size(), 1.0f);
    contrast.step(scenes, pick, in, out, target, dout, rng);
    backward(out_t, from_vector(dout, out_t.shape, dev, out_t.dtype));
    contrast.backward();
    opt.clip(1.0f);
    opt.step(lr_at("cosine", o.dit_lr, step, o.dit_steps, 200));
    if (o.ema_decay > 0) ema_w.update();
    ema = step == 1 ? loss : 0.98 * ema + 0.02 * loss;
    auto smooth = [](double& avg, bool& seen, double v) { avg = seen ? 0.98 * avg + 0.02 * v : v, seen = true; };
    if (contrast.n_count > 0) smooth(count_gap, count_seen, contrast.gap_count);
    if ((int)contrast.rows.size() > contrast.n_count) smooth(shape_gap, shape_seen, contrast.gap_shape);
    if (step % o.log_every == 0 || step == last) {
      std::printf("transformer step %d/%d  loss %.4f (smoothed %.4f)", step, o.dit_steps, loss, ema);
      if (o.shape_contrast > 0) std::printf("  wrong-shape gap %.4f", shape_gap);
      if (o.shape_contrast > 0 && o.count_contrast > 0) std::printf("  wrong-count gap %.4f", count_gap);
      std::printf("  (smoothed)  %.2f s/step\n", seconds_since(t0) / step);
      std::fflush(stdout);
    }
    if (o.save_every > 0 && step % o.save_every == 0 && step < last) checkpoint(step);
  }
  if (o.ema_decay > 0) ema_w.swap();  // leave the averaged weights in the model: the caller saves them
  return {ema, shape_gap, count_gap};
}

// The training runs a model folder's model.json records, oldest first (none when it has no model.json).
nlohmann::json training_runs(const std::string& dir) {
  std::ifstream f(dir + "/model.json");
  std::stringstream buf;
  buf << f.rdbuf();
  nlohmann::json old = nlohmann::json::parse(buf.str(), nullptr, false);
  if (old.is_discarded() || !old.contains("training")) return nlohmann::json::array();
  return old["training"].is_array() ? old["training"] : nlohmann::json::array({old["training"]});
}

}  // namespace

void train_demo_model(const DemoModelOptions& o) {
  make_dirs(o.out_dir);
  auto t0 = clock_type::now();
  std::vector<Scene> scenes = make_scenes(o);
  std::printf("demo model: %d pictures of %dx%d, seed %llu -> %s\n", o.pictures, o.image_size, o.image_size,
              (unsigned long long)o.seed, o.out_dir.c_str());

  FluxVae ae;
  double ae_seconds = 0, decoder_loss = 0;
  std::vector<std::vector<float>> latents;
  TextEncoderConfig tc;
  TextEncoder te;
  FluxTransformer dit;
  if (o.resume) {  // more steps on a model trained before; the encoder, and so the latent space, stays as it is
    ae = FluxVae::load(o.out_dir + "/ae.safetensors");
    if (o.decoder_steps > 0) {
      decoder_loss = train_autoencoder(ae, scenes, o, /*decoder_only=*/true);
      ae_seconds = seconds_since(t0);
      ae.save(o.out_dir + "/ae.safetensors", DType::F32);
    }
    latents = encode_all(ae, scenes, o.image_size, /*fix_scale=*/false);
    const std::string from = o.transformer_from.empty() ? o.out_dir : o.transformer_from;
    te = TextEncoder::load(from + "/text_encoder.safetensors");
    tc = te.cfg;
    dit = FluxTransformer::load(from + "/transformer.safetensors", Device::cpu());
    if (dit.cfg.in_channels != ae.cfg.z_channels * 4)
      fail(from + "/transformer.safetensors: it takes " + std::to_string(dit.cfg.in_channels) +
           " values per image token, the autoencoder in " + o.out_dir + " gives " +
           std::to_string(ae.cfg.z_channels * 4) + " (z_channels x 2 x 2); pick a model with as many latent channels");
  } else {
    ae = FluxVae::random(demo_vae_config(o.latent_factor), o.seed);
    train_autoencoder(ae, scenes, o, /*decoder_only=*/false);
    ae_seconds = seconds_since(t0);
    latents = encode_all(ae, scenes, o.image_size, /*fix_scale=*/true);
    ae.save(o.out_dir + "/ae.safetensors", DType::F32);
    te = TextEncoder::random(tc, o.seed + 1);
    FluxConfig fc = demo_flux_config(tc.context_dim, tc.vec_dim);
    write_random_flux(o.out_dir + "/transformer.safetensors", fc, o.seed + 2);  // the layout; weights set below
    dit = FluxTransformer::load(o.out_dir + "/transformer.safetensors", Device::cpu());
    init_for_training(dit, o.seed + 2);
  }
  const int h = o.image_size / ae.cfg.downscale();
  std::printf("latents %dx%d: %d image tokens of %dx%d pixels\n", h, h, h * h / 4, 2 * ae.cfg.downscale(), 2 * ae.cfg.downscale());
  auto t1 = clock_type::now();
  auto save = [&](int step) {
    nlohmann::json partial = {{"pictures", o.pictures}, {"seed", o.seed}, {"resume", o.resume},
                              {"transformer", {{"steps_done", step}, {"steps", o.dit_steps}, {"lr", o.dit_lr}}}};
    std::map<std::string, std::string> md = {{"software", "graft " GRAFT_VERSION}, {"training_in_progress", partial.dump()}};
    dit.save(o.out_dir + "/transformer.safetensors", DType::F32, md);
    te.save(o.out_dir + "/text_encoder.safetensors", DType::F32, md);
    std::printf("saved the transformer and text encoder at step %d (averaged weights)\n", step);
    std::fflush(stdout);
  };
  DitResult r = train_transformer(dit, te, scenes, latents, ae.cfg.z_channels, h, o, save);
  double dit_seconds = seconds_since(t1);

  nlohmann::json info = {{"pictures", o.pictures}, {"seed", o.seed}};
  if (o.dit_steps > 0)
    info["transformer"] = {{"steps", o.dit_steps}, {"batch", o.dit_batch}, {"lr", o.dit_lr}, {"ema_decay", o.ema_decay},
                           {"final_loss", r.final_loss}, {"seconds", std::round(dit_seconds)}};
  if (o.dit_steps > 0 && o.stop_at > 0 && o.stop_at < o.dit_steps) info["transformer"]["stopped_at"] = o.stop_at;
  if (o.dit_steps > 0 && o.novel_words > 0) info["transformer"]["novel_words"] = o.novel_words;
  if (o.dit_steps > 0 && o.shape_contrast > 0) {
    info["transformer"]["shape_contrast"] = o.shape_contrast;
    info["transformer"]["contrast_margin"] = o.contrast_margin;
    info["transformer"]["final_wrong_shape_gap"] = r.final_shape_gap;
    if (o.count_contrast > 0) {
      info["transformer"]["count_contrast"] = o.count_contrast;
      info["transformer"]["final_wrong_count_gap"] = r.final_count_gap;
    }
  }
  if (!o.resume)
    info["autoencoder"] = {{"steps", o.ae_steps}, {"batch", o.ae_batch}, {"lr", o.ae_lr}, {"seconds", std::round(ae_seconds)}};
  else if (o.decoder_steps > 0)
    info["decoder"] = {{"steps", o.decoder_steps}, {"batch", o.ae_batch}, {"lr", o.decoder_lr},
                       {"final_reconstruction", decoder_loss}, {"seconds", std::round(ae_seconds)}};
  if (o.resume && !o.transformer_from.empty())
    info["transformer_from"] = {{"dir", o.transformer_from}, {"training", training_runs(o.transformer_from)}};
  // model.json keeps every training run of this model, oldest first.
  nlohmann::json runs = o.resume ? training_runs(o.out_dir) : nlohmann::json::array();
  runs.push_back(info);
  std::map<std::string, std::string> md = {{"software", "graft " GRAFT_VERSION}, {"training", info.dump()}};
  dit.save(o.out_dir + "/transformer.safetensors", DType::F32, md);
  te.save(o.out_dir + "/text_encoder.safetensors", DType::F32, md);
  nlohmann::json model = {{"name", "graft-tiny"},
                          {"text_max_len", tc.max_len},
                          {"image_size", o.image_size},
                          // Guidance 2: at 4 the shipped model drew 84% of shapes and 62% of counts as
                          // asked, at 2 94% and 72% (demo-model-eval --seeds 4).
                          {"sample", {{"steps", 20}, {"cfg_scale", 2.0}, {"shift", 1.0}}},
                          {"training", runs}};
  std::string text = model.dump(2) + "\n";
  write_file_atomic(o.out_dir + "/model.json", text.data(), text.size());
  std::printf("demo model written to %s in %.0f s (autoencoder %.0f s, transformer %.0f s)\n", o.out_dir.c_str(),
              seconds_since(t0), ae_seconds, dit_seconds);
}

// A YAML double-quoted scalar: our strings are paths and captions, so escaping \ and " suffices.
static std::string yaml_str(const std::string& v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

void make_demo_job(const DemoJobOptions& o) {
  Pipeline pipe = Pipeline::load(o.model_dir);  // checks the model folder before anything is written
  const int S = pipe.image_size;
  for (const char* d : {"/dataset", "/dataset_reg"}) make_dirs(o.job_dir + d);
  auto write_picture = [&](const std::vector<float>& pic, const std::string& cap, const std::string& folder, int i) {
    char base[64];
    std::snprintf(base, sizeof base, "%s/%04d", folder.c_str(), i);
    png_write(o.job_dir + "/" + base + ".png", pic.data(), S, S);
    const std::string line = cap + "\n";
    write_file_atomic(o.job_dir + "/" + base + ".txt", line.data(), line.size());
  };
  // Colours in rounds of the palette: each round gives every colour once as the shape's colour, on the
  // colour 2, 3, 5 (then 6, 7) places on in the palette. With colour pairs drawn at random, 20 pictures
  // repeat some colours and miss others (the only red bar was on blue), and the LoRA learnt those
  // pairs with the shape: "a red zxq on white" came out red on blue. Offsets 1 and 4 stay out, so the
  // pairs demo_eval asks for (red/white, blue/yellow, green/black) are ones the LoRA never saw.
  const int nc = (int)palette().size();
  const int offsets[] = {2, 3, 5, 6, 7};
  for (int i = 0; i < o.pictures; ++i) {
    Scene sc = random_scene_of(Figure::Bar, "zxq", o.seed, i);
    sc.colour = i % nc;
    sc.background = (sc.colour + offsets[(i / nc) % 5]) % nc;
    write_picture(draw(sc, S), caption(sc), "dataset", i);
  }
  // Prior preservation as DreamBooth does it: the regularization pictures are the base model's own
  // pictures of captions it knows, so training on them holds those prompts where the base model has
  // them. (Drawn pictures of known shapes would instead teach it to draw them differently: a leak.)
  SampleParams sp = pipe.defaults;
  for (int i = 0; i < o.reg_pictures; ++i) {
    const std::string cap = caption(random_scene(o.seed + 1000, i));
    sp.seed = o.seed * 1000 + i;
    write_picture(pipe.generate(cap, S, sp, nullptr), cap, "dataset_reg", i);
  }

  auto abs = [](const std::string& p) {
    char buf[4096];
    return realpath(p.c_str(), buf) ? std::string(buf) : p;
  };
  const std::string job = abs(o.job_dir);
  const size_t slash = job.find_last_of('/');
  const std::string parent = slash == 0 ? "/" : job.substr(0, slash), name = job.substr(slash + 1);
  const int every = std::max(1, o.steps / 2);
  std::ostringstream y;
  y << "# The demo LoRA job, written by `graft-trainer demo-job`: teach the built-in demo model a shape it has\n"
       "# never seen (a horizontal bar, called by the trigger word zxq), with a regularization set of shapes it\n"
       "# knows and differential output preservation, so that prompts without the trigger keep their look.\n"
       "# Open it in graft, or queue it:\n"
       "#   graft queue add " << job << "/config.yaml\n"
       "job: extension\n"
       "config:\n"
       "  name: " << yaml_str(name) << "\n"
       "  process:\n"
       "    - type: diffusion_trainer\n"
       "      training_folder: " << yaml_str(parent) << "\n"
       "      device: cpu\n"
       "      trigger_word: zxq\n"
       "      network: {type: lora, linear: 8, linear_alpha: 8}\n"
       "      save: {dtype: bf16, save_every: " << every << ", max_step_saves_to_keep: 2}\n"
       "      datasets:\n"
       "        - folder_path: " << yaml_str(job + "/dataset") << "\n"
       "          caption_ext: txt\n"
       "          caption_dropout_rate: 0.05\n"
       "          resolution: [" << S << "]\n"
       "          is_reg: false\n"
       "          network_weight: 3\n"
       "          num_repeats: 1\n"
       "        - folder_path: " << yaml_str(job + "/dataset_reg") << "\n"
       "          caption_ext: txt\n"
       "          caption_dropout_rate: 0.05\n"
       "          resolution: [" << S << "]\n"
       "          is_reg: true\n"
       "          network_weight: 1\n"
       "          num_repeats: 1\n"
       "      train:\n"
       "        batch_size: 4\n"
       "        gradient_accumulation: 1\n"
       "        steps: " << o.steps << "\n"
       "        # 600 steps at 2e-3 moved bar-likeness +0.17 with DOP, +0.18 without, at 1e-3 +0.16 and +0.21\n"
       "        # (24 samples each): within the measure's noise of each other.\n"
       "        lr: 0.002\n"
       "        # Differential output preservation: the LoRA is also trained to keep the base model's\n"
       "        # prediction for each caption with zxq replaced by \"square\". It halves what prompts without\n"
       "        # the trigger change (pixel change 0.019 against 0.036; another seed changes them 0.133), and\n"
       "        # the sampled circle stays a circle. A step takes about twice as long: the class caption goes\n"
       "        # through the model without the LoRA and with it, and back.\n"
       "        diff_output_preservation: true\n"
       "        diff_output_preservation_class: square\n"
       "        diff_output_preservation_multiplier: 1\n"
       "        optimizer: adamw\n"
       "        lr_scheduler: constant\n"
       "        max_grad_norm: 1.0\n"
       "        noise_scheduler: flowmatch\n"
       "        # linear: timesteps uniform over [0, 1]. The outline is decided at high noise, which sigmoid\n"
       "        # timesteps seldom draw: 300 steps moved bar-likeness +0.08 with linear, -0.03 with sigmoid.\n"
       "        timestep_type: linear\n"
       "        # The demo model's activations are a few MB: recomputing them in backward would only cost time.\n"
       "        gradient_checkpointing: false\n"
       "        seed: " << o.seed << "\n"
       "      model:\n"
       "        arch: graft_tiny\n"
       "        name_or_path: " << yaml_str(abs(o.model_dir)) << "\n"
       "        quantize: false\n"
       "        quantize_te: false\n"
       "      sample:\n"
       "        sampler: flowmatch\n"
       "        sample_every: " << every << "\n"
       "        width: " << S << "\n"
       "        height: " << S << "\n"
       "        seed: 42\n"
       "        walk_seed: false\n"
       "        guidance_scale: 2\n"
       "        sample_steps: 20\n"
       "        samples:\n"
       "          - prompt: \"a large red [trigger] on a white background\"\n"
       "          - prompt: \"two small yellow [trigger]s on a blue background\"\n"
       "          - prompt: \"a large red circle on a white background\"\n"
       "meta: {name: \"[name]\", version: \"1.0\"}\n";
  const std::string text = y.str();
  write_file_atomic(o.job_dir + "/config.yaml", text.data(), text.size());
}

DemoEval demo_eval(const std::string& model_dir, const std::string& lora_path, int seeds, int steps) {
  Pipeline pipe = Pipeline::load(model_dir);
  LoraSet lora = lora_load(lora_path, flux_lora_targets(pipe.transformer.cfg, true));
  const int S = pipe.image_size;
  // (colour, background) pairs of the palette: red/white, blue/yellow, green/black.
  const int combos[3][2] = {{0, 4}, {2, 3}, {1, 5}};
  SampleParams sp = pipe.defaults;
  sp.steps = steps;
  DemoEval e;
  auto mad = [](const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += std::fabs(a[i] - b[i]) * 0.5;  // [-1, 1] -> [0, 1] units
    return s / a.size();
  };
  for (int seed = 0; seed < seeds; ++seed)
    for (const auto& cb : combos) {
      const std::string colour = palette()[cb[0]].name, bg = palette()[cb[1]].name;
      const std::string bg_phrase = (std::string("aeiou").find(bg[0]) != std::string::npos ? "an " : "a ") + bg;
      sp.seed = 1000 + seed;
      std::string act = "a large " + colour + " zxq on " + bg_phrase + " background";
      std::string leak = "a large " + colour + " circle on " + bg_phrase + " background";
      std::vector<float> a0 = pipe.generate(act, S, sp, nullptr), a1 = pipe.generate(act, S, sp, &lora);
      std::vector<float> l0 = pipe.generate(leak, S, sp, nullptr), l1 = pipe.generate(leak, S, sp, &lora);
      auto colours_right = [&](const std::vector<float>& pic) {
        PictureReading r = read_picture(pic, S);
        return r.colour == cb[0] && r.background == cb[1] ? 1.0 : 0.0;
      };
      e.colours_base += colours_right(a0);
      e.colours_lora += colours_right(a1);
      e.concept_base += shape_iou_any_colour(a0, S, Figure::Bar);
      e.concept_lora += shape_iou_any_colour(a1, S, Figure::Bar);
      double ob = 0, ol = 0;
      for (Figure sh : kBaseShapeList) {
        ob = std::max(ob, shape_iou_any_colour(a0, S, sh));
        ol = std::max(ol, shape_iou_any_colour(a1, S, sh));
      }
      e.other_base += ob;
      e.other_lora += ol;
      e.activation_change += mad(a0, a1);
      e.leak_change += mad(l0, l1);
      SampleParams other = sp;
      other.seed = sp.seed + 500;
      e.seed_change += mad(l0, pipe.generate(leak, S, other, nullptr));
      ++e.samples;
    }
  for (double* v : {&e.concept_base, &e.concept_lora, &e.other_base, &e.other_lora, &e.activation_change, &e.leak_change,
                    &e.seed_change, &e.colours_base, &e.colours_lora})
    *v /= e.samples;
  return e;
}

BaseEval base_eval(const std::string& model_dir, int seeds, int steps) {
  Pipeline pipe = Pipeline::load(model_dir);
  const int S = pipe.image_size;
  // (colour, background) pairs of the palette: red/white, blue/yellow, green/black, orange/purple.
  const int combos[4][2] = {{0, 4}, {2, 3}, {1, 5}, {7, 6}};
  SampleParams sp = pipe.defaults;
  sp.steps = steps;
  BaseEval e;
  for (int seed = 0; seed < seeds; ++seed)
    for (const auto& cb : combos)
      for (int k = 0; k < kBaseShapes; ++k) {
        Scene sc;
        sc.shape = kBaseShapeList[k], sc.word = shape_name(sc.shape), sc.colour = cb[0], sc.background = cb[1];
        sc.large = true, sc.count = 1;
        sp.seed = 2000 + seed;
        PictureReading r = read_picture(pipe.generate(caption(sc), S, sp, nullptr), S);
        e.shape += r.shape == sc.shape;
        e.per_shape[k] += r.shape == sc.shape;
        e.colour += r.colour == sc.colour;
        e.background += r.background == sc.background;
        ++e.samples;
        sc.large = false;
        const bool small_right = read_picture(pipe.generate(caption(sc), S, sp, nullptr), S).shape == sc.shape;
        e.small_shape += small_right;
        e.per_small_shape[k] += small_right;
      }
  e.shape /= e.samples, e.colour /= e.samples, e.background /= e.samples, e.small_shape /= e.samples;
  for (double& v : e.per_shape) v /= e.samples / kBaseShapes;
  for (double& v : e.per_small_shape) v /= e.samples / kBaseShapes;

  NoGrad no_grad;
  const Device dev = pipe.ae.device;
  int n[2] = {0, 0};
  for (int seed = 0; seed < seeds; ++seed)
    for (const auto& cb : combos)
      for (int k = 0; k < kBaseShapes; ++k)
        for (int large = 0; large < 2; ++large) {
          Scene sc;  // placed as training pictures are: the first cell of a scene of this size
          for (uint64_t i = 0;; ++i)
            if ((sc = random_scene_of(kBaseShapeList[k], "", 3000 + seed, i)).large == (bool)large) break;
          sc.colour = cb[0], sc.background = cb[1], sc.count = 1;
          const Tensor mean = pipe.ae.encode(from_vector(draw(sc, S), {1, 3, S, S}, dev, compute_dtype(dev))).mean;
          const std::vector<float> back = to_floats(pipe.ae.decode(mean));
          (large ? e.autoencoder_large : e.autoencoder_small) += read_picture(back, S).shape == sc.shape;
          ++n[large];
        }
  e.autoencoder_small /= n[0], e.autoencoder_large /= n[1];

  for (int seed = 0; seed < seeds; ++seed)
    for (int k = 0; k < kBaseShapes; ++k)
      for (int c = 0; c < kCountCases; ++c) {
        Scene sc;  // placed as training pictures are
        for (uint64_t i = 0;; ++i) {
          sc = random_scene_of(kBaseShapeList[k], shape_name(kBaseShapeList[k]), 4000 + seed, i);
          if (sc.large == kCountCaseList[c].large && sc.count == kCountCaseList[c].count) break;
        }
        const auto& cb = combos[(seed + k + c) % 4];
        sc.colour = cb[0], sc.background = cb[1];
        sp.seed = 5000 + seed;
        const int read = read_picture(pipe.generate(caption(sc), S, sp, nullptr), S).count;
        e.count += read == sc.count;
        e.per_count[c] += read == sc.count;
        e.count_drawn += read_picture(draw(sc, S), S).count == sc.count;
        ++e.count_samples;
      }
  e.count /= e.count_samples, e.count_drawn /= e.count_samples;
  for (double& v : e.per_count) v /= e.count_samples / kCountCases;
  return e;
}

}  // namespace graft
