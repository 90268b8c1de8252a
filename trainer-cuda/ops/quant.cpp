#include "ops/quant.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/dtype.h"

namespace graft {

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::fp8: return "fp8";
    case WeightFormat::int8: return "int8";
    case WeightFormat::nf4: return "nf4";
    default: return "none";
  }
}

bool weight_format_from_name(const std::string& s, WeightFormat* f) {
  for (WeightFormat g : {WeightFormat::dense, WeightFormat::fp8, WeightFormat::int8, WeightFormat::nf4}) {
    if (s == weight_format_name(g)) {
      *f = g;
      return true;
    }
  }
  return false;
}

const char* weight_format_describe(WeightFormat f) {
  switch (f) {
    case WeightFormat::fp8: return "fp8 e4m3 with a scale per output channel";
    case WeightFormat::int8: return "int8 with a scale per output channel";
    case WeightFormat::nf4: return "NF4 (4-bit NormalFloat) in blocks of 64, each with its absmax";
    default: return "as stored";
  }
}

double weight_format_bytes(WeightFormat f, int64_t rows, int64_t cols, double dense_bytes) {
  const double n = (double)rows * (double)cols;
  switch (f) {
    case WeightFormat::fp8:
    case WeightFormat::int8: return n + 4.0 * (double)rows;
    case WeightFormat::nf4: return (double)nf4_code_bytes((size_t)n) + 4.0 * (double)nf4_block_count((size_t)n);
    default: return n * dense_bytes;
  }
}

// create_normal_map(0.9677083, use_extra_value=True) of bitsandbytes, normalised: 8 positive
// quantiles of N(0, 1), 7 negative ones and an exact zero.
const float kNf4Levels[16] = {-1.0f,
                              -0.6961928009986877f,
                              -0.5250730514526367f,
                              -0.39491748809814453f,
                              -0.28444138169288635f,
                              -0.18477343022823334f,
                              -0.09105003625154495f,
                              0.0f,
                              0.07958029955625534f,
                              0.16093020141124725f,
                              0.24611230194568634f,
                              0.33791524171829224f,
                              0.44070982933044434f,
                              0.5626170039176941f,
                              0.7229568362236023f,
                              1.0f};

uint8_t nf4_index(float x) {
  // The number of midpoints between neighbouring levels that x exceeds, counted without branches
  // (this runs for every value of every weight as a model loads).
  static const std::vector<float> mids = [] {
    std::vector<float> m(15);
    for (int i = 0; i < 15; ++i) m[i] = 0.5f * (kNf4Levels[i] + kNf4Levels[i + 1]);
    return m;
  }();
  const float* m = mids.data();
  int i = 0;
  for (int k = 0; k < 15; ++k) i += x > m[k];
  return (uint8_t)i;
}

size_t nf4_code_bytes(size_t n) { return (n + 1) / 2; }
size_t nf4_block_count(size_t n) { return (n + kNf4Block - 1) / kNf4Block; }

namespace {
// One scale per row from its largest magnitude (1 for an all-zero row), the row divided by it.
template <typename Encode>
void quantize_rows(const float* w, int rows, int cols, float qmax, float* scale, Encode encode) {
#pragma omp parallel for schedule(static) if ((long)rows * cols >= (1 << 16))
  for (int r = 0; r < rows; ++r) {
    const float* row = w + (size_t)r * cols;
    float amax = 0.0f;
    for (int c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(row[c]));
    const float s = amax > 0.0f ? amax / qmax : 1.0f;
    scale[r] = s;
    for (int c = 0; c < cols; ++c) encode((size_t)r * cols + c, row[c] / s);
  }
}
}  // namespace

void quantize_rows_fp8(const float* w, int rows, int cols, uint8_t* q, float* scale) {
  quantize_rows(w, rows, cols, 448.0f, scale, [&](size_t i, float v) { q[i] = f32_to_f8e4m3(v); });
}

void quantize_rows_int8(const float* w, int rows, int cols, int8_t* q, float* scale) {
  quantize_rows(w, rows, cols, 127.0f, scale, [&](size_t i, float v) {
    q[i] = (int8_t)std::clamp(std::nearbyint(v), -127.0f, 127.0f);  // the default rounding: to nearest even
  });
}

void quantize_nf4(const float* w, size_t n, uint8_t* codes, float* absmax) {
  const long blocks = (long)nf4_block_count(n);
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (long b = 0; b < blocks; ++b) {
    const size_t lo = (size_t)b * kNf4Block, hi = std::min(n, lo + kNf4Block);
    float amax = 0.0f;
    for (size_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(w[i]));
    absmax[b] = amax;
    const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;  // bitsandbytes multiplies by 1/absmax
    for (size_t i = lo; i < hi; i += 2) {  // blocks are even, so a byte never straddles two
      const uint8_t hi4 = nf4_index(w[i] * inv);
      const uint8_t lo4 = i + 1 < hi ? nf4_index(w[i + 1] * inv) : 0;
      codes[i / 2] = (uint8_t)(hi4 << 4 | lo4);
    }
  }
}

void dequantize_nf4(const uint8_t* codes, const float* absmax, size_t first, size_t n, float* out) {
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (long k = 0; k < (long)n; ++k) {
    const size_t i = first + (size_t)k;
    const uint8_t byte = codes[i / 2];
    out[k] = kNf4Levels[(i & 1) ? (byte & 15) : (byte >> 4)] * absmax[i / kNf4Block];
  }
}

}  // namespace graft
