// fp8 twins of a checkpoint for the tests: every linear weight W quantized to fp8 e4m3 with a scale
// s = max|W| / 448 (e4m3's largest value), one for the tensor (ComfyUI's *_fp8_e4m3fn_scaled files,
// with s stored beside it as <stem>.scale_weight) or one per output row (graft's model.quantize
// "fp8", which quantizes as it loads); and the fp32 file of the dequantized weights those compute with.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/safetensors.h"

namespace graft_test {

// Writes `deq` (and, unless fp8 is empty, the scaled fp8 file: per-tensor scales only) from `src`;
// everything that is not a linear weight is copied as fp32.
inline void write_fp8_twins(const std::string& src, const std::string& fp8, const std::string& deq,
                            const std::function<bool(const std::string&)>& is_linear, bool per_row) {
  using namespace graft;
  SafeTensorsFile f = SafeTensorsFile::open(src);
  SafeTensorsWriter wq, wd;
  wq.metadata = wd.metadata = f.metadata;
  for (const TensorInfo& t : f.tensors) {
    std::vector<float> v = f.read_f32(t.name);
    if (!is_linear(t.name)) {
      wq.add(t.name, DType::F32, t.shape, v.data());
      wd.add(t.name, DType::F32, t.shape, v.data());
      continue;
    }
    const int64_t rows = per_row ? t.shape[0] : 1, cols = (int64_t)v.size() / rows;
    std::vector<uint8_t> q(v.size());
    std::vector<float> scales;
    for (int64_t r = 0; r < rows; ++r) {
      float* row = v.data() + r * cols;
      float amax = 0.0f;
      for (int64_t k = 0; k < cols; ++k) amax = std::max(amax, std::fabs(row[k]));
      const float s = amax > 0.0f ? amax / 448.0f : 1.0f;
      scales.push_back(s);
      for (int64_t k = 0; k < cols; ++k) row[k] /= s;
      convert_host(q.data() + r * cols, DType::F8_E4M3, row, DType::F32, (size_t)cols);
      convert_host(row, DType::F32, q.data() + r * cols, DType::F8_E4M3, (size_t)cols);
      for (int64_t k = 0; k < cols; ++k) row[k] *= s;
    }
    wq.add_raw(t.name, DType::F8_E4M3, t.shape, q.data(), q.size());
    wq.add(t.name.substr(0, t.name.size() - 7) + ".scale_weight", DType::F32, {(int64_t)scales.size()}, scales.data());
    wd.add(t.name, DType::F32, t.shape, v.data());
  }
  if (!fp8.empty()) wq.write(fp8);
  wd.write(deq);
}

}  // namespace graft_test
