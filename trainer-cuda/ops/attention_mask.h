// What an attention op adds to plain softmax(q k^T / sqrt(D)) v, shared by the CPU and CUDA
// kernels: another scale (T5 does not scale its scores), an additive bias per head (T5's relative
// positions) and a causal mask (CLIP's text model).
#pragma once
#include <cmath>

namespace graft {

struct AttentionMask {
  float scale = 0.0f;           // 0: 1/sqrt(head size)
  bool causal = false;          // position i attends to positions <= i only
  const float* bias = nullptr;  // fp32 [H, L, L] added to the scores of every batch row, or nullptr

  float scale_for(int D) const { return scale != 0.0f ? scale : 1.0f / std::sqrt((float)D); }
  bool plain() const { return scale == 0.0f && !causal && !bias; }
};

}  // namespace graft
