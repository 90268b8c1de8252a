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
#include "ops/cpu_ops.h"
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
  VaeModel m = VaeModel::load(argv[2]);
  const VaeConfig& c = m.cfg;
  SafeTensorsFile in = SafeTensorsFile::open(argv[3]);
  VaeRunner r(&m);
  SafeTensorsWriter out;

  if (cmd == "encode" || cmd == "grad") {
    const TensorInfo& t = input4d(in, "image", c.in_channels);
    const int B = (int)t.shape[0], H = (int)t.shape[2], W = (int)t.shape[3];
    std::vector<float> img = in.read_f32("image"), mean, logvar;
    int h = 0, w = 0;
    r.encode(img.data(), B, H, W, mean, logvar, &h, &w);
    const std::vector<int64_t> zshape = {B, c.z_channels, h, w};
    if (cmd == "encode") {
      std::vector<float> latent = mean;
      vae_latent_to_dit(c, latent.data(), (long)latent.size());
      out.add("mean", DType::F32, zshape, mean.data());
      out.add("logvar", DType::F32, zshape, logvar.data());
      out.add("latent", DType::F32, zshape, latent.data());
    } else {
      if (c.out_channels != c.in_channels) fail("grad: the reconstruction loss needs out_channels == in_channels");
      std::vector<float> noise = in.read_f32("noise", zshape);
      const float kl_weight = in.read_f32("kl_weight", {1})[0];
      const long nz = (long)mean.size(), ni = (long)img.size();
      std::vector<float> z(nz), recon;
      gaussian_sample_forward(z.data(), mean.data(), logvar.data(), noise.data(), nz);
      r.decode(z.data(), B, h, w, recon);
      float loss = mse_forward(recon.data(), img.data(), ni) + kl_weight * gaussian_kl_forward(mean.data(), logvar.data(), nz);

      m.zero_grad();
      std::vector<float> drecon(ni, 0.0f), dz(nz, 0.0f), dmean(nz, 0.0f), dlogvar(nz, 0.0f), dimg(ni, 0.0f);
      mse_backward(drecon.data(), recon.data(), img.data(), ni, 1.0f);
      mse_backward(dimg.data(), img.data(), recon.data(), ni, 1.0f);  // the target is the input image too
      r.decode_backward(drecon.data(), dz.data());
      gaussian_sample_backward(dmean.data(), dlogvar.data(), dz.data(), logvar.data(), noise.data(), nz);
      gaussian_kl_backward(dmean.data(), dlogvar.data(), mean.data(), logvar.data(), nz, kl_weight);
      r.encode_backward(dmean.data(), dlogvar.data(), dimg.data());

      out.add("loss", DType::F32, {1}, &loss);
      out.add("recon", DType::F32, {B, c.out_channels, H, W}, recon.data());
      out.add("grad.image", DType::F32, t.shape, dimg.data());
      for (const VaeTensor& p : m.tensors) out.add("grad." + p.name, DType::F32, p.shape, m.grads.data() + p.offset);
    }
  } else if (cmd == "decode") {
    const TensorInfo& t = input4d(in, "z", c.z_channels);
    const int B = (int)t.shape[0], h = (int)t.shape[2], w = (int)t.shape[3];
    std::vector<float> z = in.read_f32("z"), img;
    r.decode(z.data(), B, h, w, img);
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
