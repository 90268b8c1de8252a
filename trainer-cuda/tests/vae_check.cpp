// graft-vae-check: a small driver that runs the autoencoder on safetensors inputs and writes its
// outputs, so an independent implementation (tests/test_vae_torch.py) can compare against it.
// Not part of graft-trainer (its CLI belongs to src/main.cpp); built by the Makefile beside the tests.
//
//   graft-vae-check encode <vae> <in> <out>  in: image [B,C,H,W]      out: mean, logvar, latent (DiT scale)
//   graft-vae-check decode <vae> <in> <out>  in: z [B,z,h,w] (raw)    out: image
//   graft-vae-check grad   <vae> <in> <out>  in: image, noise [B,z,h,w], kl_weight [1]
//       loss = mse(decode(mean + exp(logvar/2) * noise), image) + kl_weight * kl(mean, logvar)
//       out: loss [1], recon, grad.image, and grad.<name> for every weight
// Any failure: one line on stderr, exit 1.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "core/common.h"
#include "core/autograd.h"
#include "ops/ops.h"
#include "core/safetensors.h"
#include "models/flux_vae.h"

using namespace graft;

namespace {

const TensorInfo& input4d(const SafeTensorsFile& f, const std::string& name, int channels) {
  const TensorInfo& t = f.info(name);
  if (t.shape.size() != 4 || t.shape[1] != channels)
    fail(f.path + ": tensor '" + name + "' must be [B, " + std::to_string(channels) + ", H, W], got " + shape_str(t.shape));
  return t;
}

int run(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: graft-vae-check encode|decode|grad <vae.safetensors> <in.safetensors> <out.safetensors>\n");
    return 2;
  }
  const std::string cmd = argv[1];
  FluxVae m = FluxVae::load(argv[2]);
  const VaeConfig& c = m.cfg;
  SafeTensorsFile in = SafeTensorsFile::open(argv[3]);
  SafeTensorsWriter out;
  const Device cpu = Device::cpu();

  if (cmd == "encode" || cmd == "grad") {
    const TensorInfo& t = input4d(in, "image", c.in_channels);
    const int B = (int)t.shape[0], H = (int)t.shape[2], W = (int)t.shape[3];
    Tensor img = from_vector(in.read_f32("image"), t.shape, cpu);
    if (cmd == "encode") {
      NoGrad no_grad;
      FluxVae::Moments mo = m.encode(img);
      std::vector<float> mean = to_floats(mo.mean), logvar = to_floats(mo.logvar), latent = mean;
      vae_latent_to_dit(c, latent.data(), (long)latent.size());
      out.add("mean", DType::F32, mo.mean.shape, mean.data());
      out.add("logvar", DType::F32, mo.mean.shape, logvar.data());
      out.add("latent", DType::F32, mo.mean.shape, latent.data());
    } else {
      if (c.out_channels != c.in_channels) fail("grad: the reconstruction loss needs out_channels == in_channels");
      std::vector<NamedParam> params = m.params();
      make_trainable(params);
      make_leaf(img);
      FluxVae::Moments mo = m.encode(img);
      Tensor noise = from_vector(in.read_f32("noise", mo.mean.shape), mo.mean.shape, cpu);
      const float kl_weight = in.read_f32("kl_weight", {1})[0];
      Tensor recon = m.decode(gaussian_sample(mo.mean, mo.logvar, noise));
      Tensor kl = gaussian_kl(mo.mean, mo.logvar);
      const float loss = (float)(mse(recon, img) + kl_weight * item(kl));
      backward({recon, kl}, {mse_grad(recon, img, 1.0f), from_vector({kl_weight}, {1}, cpu)});
      // The image is the reconstruction's target too: that share of its gradient is added here.
      std::vector<float> dimg = to_floats(img.meta->grad), direct = to_floats(mse_grad(img, recon.detach(), 1.0f));
      for (size_t i = 0; i < dimg.size(); ++i) dimg[i] += direct[i];
      const std::vector<float> rec = to_floats(recon);
      out.add("loss", DType::F32, {1}, &loss);
      out.add("recon", DType::F32, {B, c.out_channels, H, W}, rec.data());
      out.add("grad.image", DType::F32, t.shape, dimg.data());
      for (NamedParam& p : params) out.add("grad." + p.name, DType::F32, p.t->shape, to_floats(p.t->meta->grad).data());
    }
  } else if (cmd == "decode") {
    const TensorInfo& t = input4d(in, "z", c.z_channels);
    const int B = (int)t.shape[0], h = (int)t.shape[2], w = (int)t.shape[3];
    NoGrad no_grad;
    std::vector<float> img = to_floats(m.decode(from_vector(in.read_f32("z"), t.shape, cpu)));
    out.add("image", DType::F32, {B, c.out_channels, h * c.downscale(), w * c.downscale()}, img.data());
  } else {
    fail("unknown command '" + cmd + "' (encode, decode or grad)");
  }
  out.write(argv[4]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "graft-vae-check: %s\n", e.what());
    return 1;
  }
}
