// The FLUX.1 transformer (BFL layout), built from the ops in ops.h: forward, and a backward that
// produces the gradients of the LoRA adapters attached to its linear layers.
//
// Shapes follow BFL's flux/model.py. Hyperparameters come from the checkpoint's tensor shapes
// (as stable-diffusion.cpp does); only the RoPE axis split, which shapes cannot tell, comes from
// the metadata key "graft.axes_dim" or FLUX's rule (head_dim/8, then the rest split in two).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "common.h"
#include "lora.h"
#include "safetensors.h"

namespace graft {

struct FluxConfig {
  int in_channels = 0;    // img_in input: latent channels x 2 x 2
  int out_channels = 0;   // final_layer output per token
  int hidden = 0;
  int heads = 0;
  int head_dim = 0;
  int mlp_hidden = 0;
  int context_dim = 0;    // txt_in input (T5 width in FLUX.1)
  int vec_dim = 0;        // vector_in input (CLIP pooled width in FLUX.1)
  int n_double = 0;
  int n_single = 0;
  bool guidance_embed = false;
  int axes_dim[3] = {0, 0, 0};
  float theta = 10000.0f;
};

// A frozen linear layer of the base model plus the LoRA adapters that act on slices of its output.
struct FluxLinear {
  std::string name;  // BFL name without ".weight", e.g. "double_blocks.0.img_attn.qkv"
  int in = 0, out = 0;
  std::vector<float> W, b;          // W [out, in]; b [out] (empty when the layer has no bias)
  std::vector<int> adapters;        // indices into the LoraSet attached to the model
  std::vector<float> dW, db;        // weight gradients, sized only for full training
};

struct FluxStreamWeights {  // one stream (img or txt) of a double block
  FluxLinear mod, qkv, proj, mlp0, mlp2;
  std::vector<float> q_scale, k_scale;  // QK-norm RMSNorm scales [head_dim]
  std::vector<float> dq_scale, dk_scale;
};

struct FluxDoubleWeights { FluxStreamWeights img, txt; };

struct FluxSingleWeights {
  FluxLinear mod, linear1, linear2;
  std::vector<float> q_scale, k_scale;
  std::vector<float> dq_scale, dk_scale;
};


struct FluxModel {
  FluxConfig cfg;
  std::string path;
  FluxLinear img_in, txt_in, time_in0, time_in1, vector_in0, vector_in1, guidance_in0, guidance_in1;
  FluxLinear final_mod, final_linear;
  std::vector<FluxDoubleWeights> doubles;
  std::vector<FluxSingleWeights> singles;

  // Loads by the real BFL tensor names; throws Error naming the file and a missing or misshapen tensor.
  static FluxModel load(const std::string& path);
  // Every linear layer, for attaching adapters by name.
  std::vector<FluxLinear*> linears();

  // Full training: allocates (zeroed) gradients for every weight; backward then fills them.
  void enable_full_grads();
  bool full_grads() const { return !img_in.dW.empty(); }
  void zero_full_grads();
  // Every tensor the checkpoint holds, with its gradient (valid after enable_full_grads).
  std::vector<ParamRef> params();
  // Writes the model by its BFL names (fp32 or bf16 ...), with the RoPE axes in the metadata.
  void save(const std::string& path, DType dtype, const std::map<std::string, std::string>& metadata);
};

// A model of shape `cfg` built in memory: every layer named and sized as load() names and sizes it,
// but W, b and the QK-norm scales left EMPTY. For a backend that fills its own weights: the GPU
// benchmark at FLUX.1-dev size, where a host copy of the weights alone would take 48 GB.
FluxModel flux_model_shapes(const FluxConfig& cfg);

// Attaches each adapter of `lora` (may be null: none) to the base layer it names; throws Error when
// a module targets a layer the model lacks or does not fit it.
void flux_attach_lora(FluxModel& model, LoraSet* lora);

// The layers the reference toolkit trains for FLUX.1, named as diffusers names them (the LoRA file's
// layout): attention q/k/v/out and MLPs of both streams, single-block linear1 (split into
// to_q/to_k/to_v/proj_mlp) and linear2 (proj_out); the modulation layers only when asked.
std::vector<LoraTarget> flux_lora_targets(const FluxConfig& cfg, bool include_modulation);

// Inputs as FLUX.1's forward takes them (img already 2x2-patchified), B batch items.
struct FluxInputs {
  int B = 0, L_img = 0, L_txt = 0;
  std::vector<float> img;        // [B, L_img, in_channels]
  std::vector<float> img_ids;    // [B, L_img, 3]
  std::vector<float> txt;        // [B, L_txt, context_dim]
  std::vector<float> txt_ids;    // [B, L_txt, 3]
  std::vector<float> timesteps;  // [B], in [0, 1]
  std::vector<float> y;          // [B, vec_dim]
  std::vector<float> guidance;   // [B] (used when the model has guidance_in)
};

// Reads FluxInputs from a safetensors file with tensors named img, img_ids, txt, txt_ids,
// timesteps, y, guidance; checks every shape against the model.
FluxInputs flux_inputs_load(const SafeTensorsFile& f, const FluxConfig& cfg);

// Position ids of FLUX: text tokens (0,0,0); image token (0, row, col) on the patch grid.
void flux_img_ids(float* ids, int B, int grid_h, int grid_w);

// Gradients of the conditioning inputs, for training the text encoder through the transformer.
struct FluxInputGrads {
  std::vector<float> txt;  // [B, L_txt, context_dim]
  std::vector<float> y;    // [B, vec_dim]
};

// Activations kept by the forward for the backward; sized on first use, reused while shapes hold.
struct FluxActivations;

// One forward/backward engine over a model and an optional LoRA set (adapters attached by name).
struct FluxRunner {
  FluxModel* model = nullptr;
  LoraSet* lora = nullptr;  // may be null: base model only
  FluxActivations* acts = nullptr;

  FluxRunner(FluxModel* m, LoraSet* l);
  ~FluxRunner();
  FluxRunner(const FluxRunner&) = delete;
  FluxRunner& operator=(const FluxRunner&) = delete;

  // out: [B, L_img, out_channels]. Keeps what backward needs.
  void forward(const FluxInputs& in, std::vector<float>& out);
  // Accumulates the LoRA gradients (lora->grads) for dL/dout given as dout [B, L_img, out_channels];
  // with full training on, also every weight's gradient; with `dinputs`, the gradients of txt and y.
  void backward(const std::vector<float>& dout, FluxInputGrads* dinputs = nullptr);
};

}  // namespace graft
