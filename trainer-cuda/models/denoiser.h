// What the trainer and the sampler ask of a diffusion transformer, whatever its family (FLUX.1,
// Z-Image): a velocity for a batch in one layout, and the linear layers adapters attach to.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/module.h"

namespace graft {

struct FluxInputs;

struct Denoiser {
  Device device;
  // Recompute each block's activations in backward instead of keeping them (core/autograd.h).
  bool checkpointing = false;

  virtual ~Denoiser() = default;
  // The velocity noise - x0 at noise level in.timesteps (FLUX's convention: x_t = (1 - t) x0 + t
  // noise), [B, L_img, P] for 2x2 patches in (c, ph, pw) order.
  virtual Tensor forward(const FluxInputs& in) const = 0;
  virtual std::vector<Linear*> linears() = 0;
  virtual int latent_channels() const = 0;
  // Whether captions of different lengths can share a batch (FluxInputs::txt_lens).
  virtual bool ragged_text() const { return false; }
};

}  // namespace graft
