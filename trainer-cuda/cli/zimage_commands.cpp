// Z-Image's side of forward and lora-grad (model_commands.cpp hands a Z-Image checkpoint here): the
// checks tests/test_zimage_torch.py runs against a PyTorch implementation. Inputs are the diffusers
// forward's: latents x [B, C, H, W], the model's own timestep t [B] (1: clean), captions cap_feats
// [B, L, cap_dim] with cap_lens [B]; the output is that forward's, [B, C, H, W].
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/zimage_commands.h"
#include "core/autograd.h"
#include "core/safetensors.h"
#include "models/zimage.h"
#include "ops/cpu_ops.h"
#include "ops/ops.h"
#include "train/lora.h"

namespace graft {

namespace {

struct ZImageCase {
  FluxInputs in;
  int C = 0, H = 0, W = 0;
};

ZImageCase read_case(const SafeTensorsFile& f, const ZImageConfig& c) {
  ZImageCase z;
  const TensorInfo& x = f.info("x");
  const TensorInfo& cap = f.info("cap_feats");
  if (x.shape.size() != 4 || x.shape[1] != c.in_channels || x.shape[2] % 2 || x.shape[3] % 2)
    fail(f.path + ": tensor 'x' must be [B, " + std::to_string(c.in_channels) + ", H, W] with H and W even, got " + shape_str(x.shape));
  if (cap.shape.size() != 3 || cap.shape[0] != x.shape[0] || cap.shape[2] != c.cap_dim)
    fail(f.path + ": tensor 'cap_feats' must be [B, L, " + std::to_string(c.cap_dim) + "], got " + shape_str(cap.shape));
  const int B = (int)x.shape[0];
  z.C = (int)x.shape[1], z.H = (int)x.shape[2], z.W = (int)x.shape[3];
  FluxInputs& in = z.in;
  in.B = B;
  in.L_img = (z.H / 2) * (z.W / 2);
  in.L_txt = (int)cap.shape[1];
  const std::vector<float> lat = f.read_f32("x", x.shape);
  in.img.resize((size_t)B * in.L_img * z.C * 4);
  cpu::patchify_forward(in.img.data(), lat.data(), B, z.C, z.H, z.W, 2);
  in.img_ids.resize((size_t)B * in.L_img * 3);
  flux_img_ids(in.img_ids.data(), B, z.H / 2, z.W / 2);
  in.timesteps = f.read_f32("t", {B});
  in.txt = f.read_f32("cap_feats", cap.shape);
  for (float n : f.read_f32("cap_lens", {B})) in.txt_lens.push_back((int)n);
  return z;
}

std::vector<float> unpatchified(const Tensor& out, const ZImageCase& z) {
  const std::vector<float> tokens = to_floats(out);
  std::vector<float> lat(tokens.size());
  cpu::unpatchify_forward(lat.data(), tokens.data(), z.in.B, z.C, z.H, z.W, 2);
  return lat;
}

}  // namespace

void write_lora_grads(SafeTensorsWriter& w, const LoraSet& lora, const std::string& lora_path, const std::vector<float>& grads) {
  const SafeTensorsFile lf = SafeTensorsFile::open(lora_path);
  for (const LoraAdapter& ad : lora.adapters) {
    std::string key = ad.target.module;
    for (const char* prefix : {"transformer.", "diffusion_model."})
      if (lf.has(prefix + ad.target.module + "." + ad.mats[0].key)) key = prefix + ad.target.module;
    for (const AdapterMatrix& m : ad.mats) w.add("grad." + key + "." + m.key, DType::F32, {m.rows, m.cols}, grads.data() + m.offset);
  }
}

bool is_zimage_path(const std::string& path) { return is_zimage_checkpoint(Checkpoint::open(path)); }

int zimage_forward(const std::string& ckpt, const std::string& inputs, const std::string& outputs, Device device,
                   const std::string& lora_path, WeightFormat quantize) {
  ZImageTransformer model = ZImageTransformer::load(ckpt, device, quantize);
  const ZImageCase z = read_case(SafeTensorsFile::open(inputs), model.cfg);
  LoraSet lora;
  if (!lora_path.empty()) {
    lora = lora_load(lora_path, zimage_lora_targets(model.cfg));
    lora.to(device);
    lora_attach(model.linears(), &lora);
  }
  NoGrad no_grad;
  const std::vector<float> out = unpatchified(model.forward_model(z.in), z);
  SafeTensorsWriter w;
  w.add("out", DType::F32, {z.in.B, z.C, z.H, z.W}, out.data());
  w.write(outputs);
  return 0;
}

int zimage_lora_grad(const std::string& ckpt, const std::string& inputs, const std::string& lora_path,
                     const std::string& outputs, Device device, bool checkpointing) {
  ZImageTransformer model = ZImageTransformer::load(ckpt, device);
  model.checkpointing = checkpointing;
  const SafeTensorsFile f = SafeTensorsFile::open(inputs);
  const ZImageCase z = read_case(f, model.cfg);
  const std::vector<float> target_lat = f.read_f32("target", {z.in.B, z.C, z.H, z.W});
  std::vector<float> target(target_lat.size());
  cpu::patchify_forward(target.data(), target_lat.data(), z.in.B, z.C, z.H, z.W, 2);
  LoraSet lora = lora_load(lora_path, zimage_lora_targets(model.cfg));
  lora.to(device);
  lora_attach(model.linears(), &lora);
  Tensor out = model.forward_model(z.in);
  const Tensor t = from_vector(target, out.shape, device, out.dtype);
  float loss = (float)mse(out, t);
  backward(out, mse_grad(out, t, 1.0f));
  const std::vector<float> out_lat = unpatchified(out, z), grads = to_floats(lora.grads);
  SafeTensorsWriter w;
  w.add("out", DType::F32, {z.in.B, z.C, z.H, z.W}, out_lat.data());
  w.add("loss", DType::F32, {1}, &loss);
  write_lora_grads(w, lora, lora_path, grads);
  w.write(outputs);
  return 0;
}

}  // namespace graft
