// Frozen weights in fewer bits (the job's model.quantize): the formats, how a weight is quantized
// once as it loads (on the host, one tensor at a time) and how NF4 blocks decode. A quantized linear
// layer keeps only these codes; each product dequantizes into scratch (ops.h's linear).
//
// - fp8: e4m3 ("fn") codes with one fp32 scale per output row, s = max|row| / 448 (optimum-quanto's
//   qfloat8, the reference toolkit's default); out = (x codes^T) s.
// - int8: codes in [-127, 127] with one fp32 scale per output row, s = max|row| / 127, codes
//   round(w / s) to nearest even (quanto's qint8 weights); out = (x codes^T) s.
// - nf4: QLoRA's 4-bit NormalFloat as bitsandbytes stores it: the flattened weight in blocks of 64,
//   each with its fp32 absmax, each value the index of the nearest of 16 levels (kNf4Levels) times
//   absmax; two indices per byte, the first in the high nibble.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace graft {

enum class WeightFormat { dense, fp8, int8, nf4 };
// "none", "fp8", "int8", "nf4": model.quantize's values.
const char* weight_format_name(WeightFormat f);
bool weight_format_from_name(const std::string& s, WeightFormat* f);
// "fp8 e4m3 with a scale per output channel", ...
const char* weight_format_describe(WeightFormat f);
// Bytes a [rows, cols] weight takes in a format (dense: `dense_bytes` per value), scales included.
double weight_format_bytes(WeightFormat f, int64_t rows, int64_t cols, double dense_bytes);

constexpr int kNf4Block = 64;
extern const float kNf4Levels[16];  // bitsandbytes' NF4 code values, ascending; index 7 is 0

// The index of the level nearest x (x in [-1, 1]); a value exactly between two levels takes the
// lower one, as bitsandbytes' decision tree does.
uint8_t nf4_index(float x);
size_t nf4_code_bytes(size_t n);   // (n + 1) / 2
size_t nf4_block_count(size_t n);  // ceil(n / 64)

// Row-scaled formats: q [rows, cols] and scale [rows].
void quantize_rows_fp8(const float* w, int rows, int cols, uint8_t* q, float* scale);
void quantize_rows_int8(const float* w, int rows, int cols, int8_t* q, float* scale);
// n values -> codes [nf4_code_bytes(n)] and absmax [nf4_block_count(n)].
void quantize_nf4(const float* w, size_t n, uint8_t* codes, float* absmax);
// Values [first, first + n) of an NF4 weight, as fp32.
void dequantize_nf4(const uint8_t* codes, const float* absmax, size_t first, size_t n, float* out);

}  // namespace graft
