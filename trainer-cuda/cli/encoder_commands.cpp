// graft-trainer's text-encoder commands: token ids through T5, CLIP or a decoder LLM from files, the check the
// PyTorch reference (tests/test_text_encoders_torch.py) runs against.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/args.h"
#include "core/autograd.h"
#include "core/safetensors.h"
#include "models/clip.h"
#include "models/llm.h"
#include "models/t5.h"

namespace graft {

namespace {

// ids: I32 [B, L] from a safetensors file.
std::vector<int> read_ids(const std::string& path, int* B, int* L) {
  SafeTensorsFile f = SafeTensorsFile::open(path);
  const TensorInfo& t = f.info("ids");
  if (t.dtype != DType::I32 || t.shape.size() != 2)
    fail(path + ": tensor 'ids' must be I32 [B, L], got " + dtype_name(t.dtype) + " " + shape_str(t.shape));
  *B = (int)t.shape[0], *L = (int)t.shape[1];
  const int* p = (const int*)f.raw(t);
  return std::vector<int>(p, p + (size_t)*B * *L);
}

void write_floats(SafeTensorsWriter& w, const std::string& name, const Tensor& t) {
  const std::vector<float> v = to_floats(t);
  w.add(name, DType::F32, t.shape, v.data());
}

int cmd_text_encode(const std::vector<std::string>& a) {
  need_args(a, 5, "text-encode");
  std::vector<std::string> rest;
  const Device device = device_option(a, 5, "text-encode", &rest);
  int hidden_index = -2;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--hidden-index" && i + 1 < rest.size() && a[1] == "qwen3") hidden_index = parse_number<int>(rest[++i], "text-encode: --hidden-index");
    else fail("text-encode: unknown argument '" + rest[i] + "'");
  }
  int B = 0, L = 0;
  const std::vector<int> ids = read_ids(a[3], &B, &L);
  NoGrad no_grad;
  SafeTensorsWriter w;
  if (a[1] == "t5") {
    const T5Encoder m = T5Encoder::load(a[2], device);
    write_floats(w, "hidden", m.forward(ids, B, L));
  } else if (a[1] == "clip") {
    const ClipTextModel m = ClipTextModel::load(a[2], device);
    ClipTextModel::Output o = m.forward(ids, B, L);
    write_floats(w, "hidden", o.hidden);
    write_floats(w, "pooled", o.pooled);
  } else if (a[1] == "qwen3") {
    // Right padding needs no mask: attention is causal, so no token sees what follows it.
    const DecoderLlm m = DecoderLlm::load(a[2], device, hidden_index);
    write_floats(w, "hidden", m.forward(ids, B, L));
  } else {
    fail("text-encode: '" + a[1] + "': give t5, clip or qwen3");
  }
  w.write(a[4]);
  return 0;
}

}  // namespace

std::vector<Command> encoder_commands() {
  return {
      {"text-encode", "t5|clip|qwen3 <ckpt> <ids> <outputs> [--device D] [--hidden-index K]  token ids (I32 [B, L] `ids`) "
                      "through a text encoder; writes `hidden` (Qwen3: transformers' hidden_states[K], default -2) and "
                      "CLIP's `pooled`", cmd_text_encode},
  };
}

}  // namespace graft
