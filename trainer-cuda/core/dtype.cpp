// dtype names and sizes, and the scalar conversions behind every dtype change on the host.
#include "core/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/common.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "dtype.cpp assumes a little-endian host");

namespace graft {

namespace {
struct DTypeDesc { DType t; const char* name; size_t size; };
const DTypeDesc kDTypes[] = {
    {DType::F32, "F32", 4},         {DType::F16, "F16", 2},         {DType::BF16, "BF16", 2},
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1}, {DType::F64, "F64", 8},
    {DType::I64, "I64", 8},         {DType::I32, "I32", 4},         {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},           {DType::U8, "U8", 1},           {DType::BOOL, "BOOL", 1},
};

const DTypeDesc& desc(DType t) {
  for (const DTypeDesc& d : kDTypes)
    if (d.t == t) return d;
  fail("internal error: unknown DType value " + std::to_string((int)t));
}

bool is_float(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F8_E4M3 ||
         t == DType::F8_E5M2 || t == DType::F64;
}
}  // namespace

const char* dtype_name(DType t) { return desc(t).name; }
size_t dtype_size(DType t) { return desc(t).size; }

bool dtype_from_name(const std::string& s, DType* t) {
  for (const DTypeDesc& d : kDTypes) {
    if (s == d.name) {
      *t = d.t;
      return true;
    }
  }
  return false;
}

// ------------------------------------------------------------------------------------------------
// Scalar conversions. Decoding is exact (every narrow value is a float). Encoding rounds to nearest,
// ties to even, through one shared routine so the four formats cannot disagree on rounding.

namespace {
uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Encodes a finite, non-negative fp32 value (given as its bits, sign cleared) into a binary float format
// with `mbits` mantissa bits and exponent bias `bias`, rounding to nearest even, subnormals included.
// Returns (exponent_field << mbits) | mantissa. Rounding may carry into the next exponent, which is what
// we want; a result past the format's largest finite value is left for the caller to saturate or make inf.
uint32_t encode_magnitude(uint32_t ax, int mbits, int bias) {
  // fp32 zeros and subnormals (< 2^-126) are far below half the smallest subnormal of every narrow
  // format we encode (fp16's is 2^-25), so they round to zero.
  if ((ax >> 23) == 0) return 0;
  int e = (int)(ax >> 23) - 127;           // unbiased exponent
  uint32_t m = (ax & 0x7FFFFF) | 0x800000;  // 24-bit significand: value = m * 2^(e - 23)
  int emin = 1 - bias;                      // exponent of the smallest normal
  int shift = 23 - mbits;                   // significand bits to drop for a normal result
  if (e < emin) shift += emin - e;          // subnormal: the result's unit is 2^(emin - mbits)
  if (shift > 24) return 0;                 // below half the smallest subnormal
  uint32_t q = m >> shift;
  uint32_t rem = m & ((1u << shift) - 1);
  uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1))) ++q;
  if (e < emin) return q;  // subnormal (q == 2^mbits means it rounded up to the smallest normal)
  // Normal: q = 2^mbits + mantissa, so adding q to (exponent_field - 1) << mbits sets both fields.
  return ((uint32_t)(e + bias - 1) << mbits) + q;
}
}  // namespace

float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  if (exp == 0x1F) return f32_from_bits(sign | 0x7F800000 | (mant << 13));  // inf, or NaN keeping its payload
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in fp32
    float v = (float)mant * 0x1p-24f;
    return sign ? -v : v;
  }
  return f32_from_bits(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  uint32_t ax = x & 0x7FFFFFFF;
  if (ax > 0x7F800000) return sign | 0x7E00 | ((ax >> 13) & 0x1FF);  // NaN: quiet bit set, payload kept
  if (ax == 0x7F800000) return sign | 0x7C00;
  uint32_t code = encode_magnitude(ax, 10, 15);
  if (code >= 0x7C00) return sign | 0x7C00;  // IEEE: rounds past 65504 become inf
  return sign | (uint16_t)code;
}

float bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

uint16_t f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  // A NaN whose payload sits only in the low 16 bits would truncate to inf; force the quiet bit.
  if ((x & 0x7FFFFFFF) > 0x7F800000) return (uint16_t)((x >> 16) | 0x40);
  // bf16 is the top half of fp32, so RNE is one add: 0x7FFF rounds up past the midpoint, the kept
  // low bit breaks the tie toward even. Overflow correctly carries into inf.
  return (uint16_t)((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

// F8_E4M3 is the "fn" variant (torch.float8_e4m3fn): bias 7, no infinities, S.1111.111 is NaN,
// largest finite 448 (0x7E), smallest subnormal 2^-9.
float f8e4m3_to_f32(uint8_t v) {
  float sign = (v & 0x80) ? -1.0f : 1.0f;
  int exp = (v >> 3) & 0xF, mant = v & 0x7;
  if ((v & 0x7F) == 0x7F) return std::nanf("");
  if (exp == 0) return sign * std::ldexp((float)mant, -9);
  return sign * std::ldexp((float)(8 + mant), exp - 7 - 3);
}

// Saturating, as the CUDA __NV_SATFINITE conversion does: finite overflow and +-inf become +-448 (the
// format has no inf, and a NaN in a weight file is worse than a clipped value). NaN stays NaN.
uint8_t f32_to_f8e4m3(float f) {
  uint32_t x = f32_bits(f);
  uint8_t sign = (uint8_t)((x >> 24) & 0x80);
  uint32_t ax = x & 0x7FFFFFFF;
  if (ax > 0x7F800000) return sign | 0x7F;
  if (ax == 0x7F800000) return sign | 0x7E;
  uint32_t code = encode_magnitude(ax, 3, 7);
  return sign | (uint8_t)std::min<uint32_t>(code, 0x7E);
}

// F8_E5M2: bias 15, IEEE-like (S.11111.00 is inf, S.11111.xx NaN), largest finite 57344 (0x7B),
// smallest subnormal 2^-16.
float f8e5m2_to_f32(uint8_t v) {
  float sign = (v & 0x80) ? -1.0f : 1.0f;
  int exp = (v >> 2) & 0x1F, mant = v & 0x3;
  if (exp == 0x1F) return mant ? std::nanf("") : sign * INFINITY;
  if (exp == 0) return sign * std::ldexp((float)mant, -16);
  return sign * std::ldexp((float)(4 + mant), exp - 15 - 2);
}

// Finite values that would round past 57344 saturate to +-57344 rather than becoming inf, like
// e4m3 and the CUDA __NV_SATFINITE conversion: a finite weight stays finite. +-inf stays inf, NaN NaN.
uint8_t f32_to_f8e5m2(float f) {
  uint32_t x = f32_bits(f);
  uint8_t sign = (uint8_t)((x >> 24) & 0x80);
  uint32_t ax = x & 0x7FFFFFFF;
  if (ax > 0x7F800000) return sign | 0x7F;
  if (ax == 0x7F800000) return sign | 0x7C;
  uint32_t code = encode_magnitude(ax, 2, 15);
  return sign | (uint8_t)std::min<uint32_t>(code, 0x7B);
}


bool dtype_is_float(DType t) { return is_float(t); }

// ------------------------------------------------------------------------------------------------
// Buffers

namespace {
// Elements are loaded and stored with memcpy: mapped checkpoint data has no alignment guarantee.
template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
void store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

float read_elem(const uint8_t* p, DType t) {
  switch (t) {
    case DType::F32: return load<float>(p);
    case DType::F16: return f16_to_f32(load<uint16_t>(p));
    case DType::BF16: return bf16_to_f32(load<uint16_t>(p));
    case DType::F8_E4M3: return f8e4m3_to_f32(*p);
    case DType::F8_E5M2: return f8e5m2_to_f32(*p);
    case DType::F64: return (float)load<double>(p);
    case DType::I8: return (float)(int8_t)*p;
    default: return 0.0f;
  }
}

void write_elem(uint8_t* p, DType t, float v) {
  switch (t) {
    case DType::F32: store(p, v); break;
    case DType::F16: store(p, f32_to_f16(v)); break;
    case DType::BF16: store(p, f32_to_bf16(v)); break;
    case DType::F8_E4M3: *p = f32_to_f8e4m3(v); break;
    case DType::F8_E5M2: *p = f32_to_f8e5m2(v); break;
    case DType::F64: store(p, (double)v); break;
    default: break;
  }
}
}  // namespace

void convert_host(void* dst, DType dt, const void* src, DType st, size_t n) {
  if (n == 0) return;
  if (dt == st) {  // any dtype copies as it is (8-bit optimizer codes, block tables)
    std::memcpy(dst, src, n * dtype_size(dt));
    return;
  }
  if (!dtype_is_float(dt) || !(dtype_is_float(st) || st == DType::I8))
    fail(std::string("cannot convert ") + dtype_name(st) + " to " + dtype_name(dt) +
         ": only float dtypes convert (and I8 to a float, as its integer value)");
  const uint8_t* s = (const uint8_t*)src;
  uint8_t* d = (uint8_t*)dst;
  const size_t ss = dtype_size(st), ds = dtype_size(dt);
  if (st == DType::BF16 && dt == DType::F32 && ((uintptr_t)dst & 3) == 0) {  // the hot path: bf16 weights on the CPU
    float* out = (float*)dst;
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
    for (long i = 0; i < (long)n; ++i) out[i] = bf16_to_f32(load<uint16_t>(s + 2 * i));
    return;
  }
  if ((st == DType::F8_E4M3 || st == DType::F8_E5M2 || st == DType::I8) && dt == DType::F32 &&
      ((uintptr_t)dst & 3) == 0) {
    // fp8 and int8 weights (quantized or ComfyUI's) are converted at every use on the CPU: a table of
    // the 256 values instead of an ldexp per element.
    static const std::vector<float> e4m3 = [] {
      std::vector<float> t(256);
      for (int v = 0; v < 256; ++v) t[v] = f8e4m3_to_f32((uint8_t)v);
      return t;
    }();
    static const std::vector<float> e5m2 = [] {
      std::vector<float> t(256);
      for (int v = 0; v < 256; ++v) t[v] = f8e5m2_to_f32((uint8_t)v);
      return t;
    }();
    static const std::vector<float> i8 = [] {
      std::vector<float> t(256);
      for (int v = 0; v < 256; ++v) t[v] = (float)(int8_t)(uint8_t)v;
      return t;
    }();
    const float* table = st == DType::F8_E4M3 ? e4m3.data() : st == DType::F8_E5M2 ? e5m2.data() : i8.data();
    float* out = (float*)dst;
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
    for (long i = 0; i < (long)n; ++i) out[i] = table[s[i]];
    return;
  }
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (long i = 0; i < (long)n; ++i) write_elem(d + i * ds, dt, read_elem(s + i * ss, st));
}

}  // namespace graft
