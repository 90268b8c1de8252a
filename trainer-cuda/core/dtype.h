// Element types of tensors and checkpoints, and the exact conversions between the float ones.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace graft {

// Every dtype a safetensors file can hold. Quantized weights are tensors of these with their scales
// beside them (ops/quant.h): fp8 codes as F8_E4M3, int8 codes as I8, NF4 codes as U8.
enum class DType : uint8_t { F32, F16, BF16, F8_E4M3, F8_E5M2, F64, I64, I32, I16, I8, U8, BOOL };

const char* dtype_name(DType t);                       // "F32", "BF16", ...
size_t dtype_size(DType t);                            // bytes per element
bool dtype_from_name(const std::string& s, DType* t);  // false when unknown
bool dtype_is_float(DType t);                          // F64, F32, F16, BF16 and both fp8 formats

// Scalar conversions (round to nearest even; fp8 saturates to the largest finite value).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f8e4m3_to_f32(uint8_t v);
uint8_t f32_to_f8e4m3(float f);
float f8e5m2_to_f32(uint8_t v);
uint8_t f32_to_f8e5m2(float f);

// n elements between float dtypes on the host (through fp32, so each value rounds once), or from I8
// codes to a float dtype (their integer values); either side may be unaligned. Throws Error for
// any other dtype.
void convert_host(void* dst, DType dst_type, const void* src, DType src_type, size_t n);

}  // namespace graft
