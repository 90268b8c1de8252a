// What the trainer and the sampler ask of a diffusion transformer, whatever its family (FLUX.1,
// Z-Image): a velocity for a batch in one layout, and the linear layers adapters attach to; and the
// block schedule layer offloading runs on.
#pragma once
#include <functional>
#include <memory>
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

  // Layer offloading: what happens around each block k (in forward order) in forward and backward
  // (BlockSchedule); null: every weight stays where it is.
  struct BlockStreamer {
    virtual ~BlockStreamer() = default;
    virtual void prefetch(int k) = 0;  // block k's weights are wanted soon
    virtual void release(int k) = 0;   // block k's weights are done with for now
  };
  std::shared_ptr<BlockStreamer> streamer;

  virtual ~Denoiser() = default;
  // The velocity noise - x0 at noise level in.timesteps (FLUX's convention: x_t = (1 - t) x0 + t
  // noise), [B, L_img, P] for 2x2 patches in (c, ph, pw) order.
  virtual Tensor forward(const FluxInputs& in) const = 0;
  virtual std::vector<Linear*> linears() = 0;
  virtual int latent_channels() const = 0;
  // Whether captions of different lengths can share a batch (FluxInputs::txt_lens).
  virtual bool ragged_text() const { return false; }
  // The blocks layer offloading moves, in forward order, and each one's linear layers.
  virtual int block_count() const = 0;
  virtual std::vector<const Linear*> block_linears(int k) const = 0;
  // Moves the first `fraction` of the blocks' linear layers (rounded up) into pinned host memory on
  // CUDA and streams them in ahead of use (ops/weight_stream.h); returns the bytes moved off the
  // device (0 on the CPU, where the weights already are in host memory).
  size_t offload_blocks(double fraction);
};

// How many blocks (the first ones) layer offloading moves for a share `fraction` of `n`.
int offload_count(int n, double fraction);

// The streamer's calls around a model's blocks in forward, and the hooks that make the same calls in
// backward: block k+1's weights are fetched while block k runs, and block k's let go after it; in
// backward, a hook after each block's outputs lets the block after go and fetches this block's and
// the one before's, so at most two blocks' weights are on the device at once. A null streamer makes
// every call a no-op.
struct BlockSchedule {
  std::shared_ptr<Denoiser::BlockStreamer> st;
  int n = 0;
  std::vector<Tensor> start(std::vector<Tensor> inputs) const;  // before block 0, on its inputs
  void before(int k) const;                                     // as block k starts
  std::vector<Tensor> after(int k, std::vector<Tensor> outs) const;  // on block k's outputs
};

}  // namespace graft
