// Safetensors reading and writing, and the scalar dtype conversions behind them.
// Format: u64 little-endian header length N, N bytes of UTF-8 JSON, then the data buffer.
#include "safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common.h"

// Tensor bytes are reinterpreted in place (memcpy into uint16_t, float, ...), and the format is
// little-endian, so a big-endian host would read garbage. Every machine we target is little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors.cpp assumes a little-endian host");
static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE float and double expected");

namespace graft {

// ------------------------------------------------------------------------------------------------
// dtypes

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

// ------------------------------------------------------------------------------------------------
// Reading

namespace {
// The header of a real checkpoint is a few hundred KB; a larger length means this is not a safetensors file.
const uint64_t kMaxHeader = 100u * 1000 * 1000;

using json = nlohmann::ordered_json;

// Reads exactly n bytes or throws; `what` says which part of the file was being read.
void read_exact(FILE* f, void* dst, size_t n, const std::string& path, const char* what) {
  if (n == 0) return;
  if (std::fread(dst, 1, n, f) != n) {
    std::string why = std::ferror(f) ? std::strerror(errno) : "unexpected end of file";
    std::fclose(f);
    fail(path + ": cannot read the " + what + ": " + why);
  }
}

// Reads a non-negative JSON integer; false when the value is anything else (float, negative, string...).
bool json_u64(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;
  *out = v.get<uint64_t>();
  return true;
}

// Parses one header entry, checking everything that can be checked without the other entries.
TensorInfo parse_entry(const std::string& path, const std::string& name, const json& e, uint64_t buffer_size) {
  std::string where = path + ": tensor '" + name + "'";
  if (!e.is_object()) fail(where + ": header entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!e.contains(key)) fail(where + ": header entry is missing '" + key + "'");

  TensorInfo t;
  t.name = name;
  const json& dt = e.at("dtype");
  if (!dt.is_string()) fail(where + ": 'dtype' is not a string: " + dt.dump());
  if (!dtype_from_name(dt.get<std::string>(), &t.dtype))
    fail(where + ": unknown dtype '" + dt.get<std::string>() +
         "' (known: F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 U8 BOOL)");

  const json& sh = e.at("shape");
  if (!sh.is_array()) fail(where + ": 'shape' is not an array: " + sh.dump());
  // The size is computed with overflow checks: a hostile header must not wrap around to a small byte
  // count that then passes the size check. Requiring the non-zero dims times the element size to fit
  // in int64 also keeps numel() (signed) safe for every shape we accept.
  int64_t nonzero_bytes = (int64_t)dtype_size(t.dtype);
  bool has_zero = false;
  for (const json& d : sh) {
    // nlohmann stores non-negative integers as unsigned, so a signed one is negative.
    if (d.is_number_integer() && !d.is_number_unsigned()) fail(where + ": negative dimension in shape " + sh.dump());
    uint64_t dim;
    if (!json_u64(d, &dim) || dim > (uint64_t)INT64_MAX)
      fail(where + ": 'shape' must be an array of non-negative integers, got " + sh.dump());
    t.shape.push_back((int64_t)dim);
    if (dim == 0) has_zero = true;
    else if (__builtin_mul_overflow(nonzero_bytes, (int64_t)dim, &nonzero_bytes))
      fail(where + ": shape " + sh.dump() + " is impossibly large");
  }
  uint64_t nbytes = has_zero ? 0 : (uint64_t)nonzero_bytes;

  const json& off = e.at("data_offsets");
  if (!off.is_array() || off.size() != 2 || !json_u64(off[0], &t.begin) || !json_u64(off[1], &t.end))
    fail(where + ": 'data_offsets' must be [begin, end] with non-negative integers, got " + off.dump());
  std::string offs = "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
  if (t.begin > t.end) fail(where + ": " + offs + " have begin after end");
  if (t.end > buffer_size)
    fail(where + ": " + offs + " are outside the data buffer (" + std::to_string(buffer_size) +
         " bytes): the file is truncated or the header is wrong");
  if (t.end - t.begin != nbytes)
    fail(where + ": " + offs + " span " + std::to_string(t.end - t.begin) + " bytes but shape " +
         shape_str(t.shape) + " of " + dtype_name(t.dtype) + " needs " + std::to_string(nbytes));
  return t;
}
}  // namespace

SafeTensorsFile SafeTensorsFile::open(const std::string& path) {
  SafeTensorsFile st;
  st.path = path;

  // The whole data buffer is read into memory: simple, and fine for LoRA files and today's base models.
  // Mapping the file (mmap) is the later optimisation for large checkpoints.
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(path + ": cannot open: " + std::strerror(errno));
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0) {
    int err = errno;
    std::fclose(f);
    fail(path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(sb.st_mode)) {
    std::fclose(f);
    fail(path + ": not a regular file");
  }
  uint64_t file_size = (uint64_t)sb.st_size;
  if (file_size < 8) {
    std::fclose(f);
    fail(path + ": too short to be a safetensors file (" + std::to_string(file_size) +
         " bytes; the header length alone is 8)");
  }

  uint8_t len_bytes[8];
  read_exact(f, len_bytes, 8, path, "header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > kMaxHeader) {
    std::fclose(f);
    fail(path + ": header length " + std::to_string(header_len) +
         " is absurd (limit 100 MB): this is not a safetensors file, or it is corrupt");
  }
  if (header_len > file_size - 8) {
    std::fclose(f);
    fail(path + ": truncated: header says it is " + std::to_string(header_len) + " bytes but the file has " +
         std::to_string(file_size - 8) + " after the length field (re-download or re-save it)");
  }
  std::string header(header_len, '\0');
  read_exact(f, header.data(), header_len, path, "header");
  uint64_t buffer_size = file_size - 8 - header_len;
  st.bytes_.resize(buffer_size);
  read_exact(f, st.bytes_.data(), buffer_size, path, "data buffer");
  if (std::fclose(f) != 0) fail(path + ": cannot close: " + std::strerror(errno));

  json h;
  try {
    h = json::parse(header);
  } catch (const json::exception& e) {
    fail(path + ": header is not valid JSON (" + e.what() + ")");
  }
  if (!h.is_object()) fail(path + ": header is not a JSON object");

  for (const auto& [name, entry] : h.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(path + ": __metadata__ is not a JSON object");
      // The format says values are strings; a non-string written by some other tool is kept as its
      // JSON text rather than refusing an otherwise good file over informational fields.
      for (const auto& [k, v] : entry.items()) st.metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
      continue;
    }
    st.tensors.push_back(parse_entry(path, name, entry, buffer_size));
  }

  // "File order" is data order. Sorting by range also makes the overlap check one pass over neighbours.
  // Empty tensors take no bytes and cannot overlap anything, so they are not compared.
  std::sort(st.tensors.begin(), st.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : (a.end != b.end ? a.end < b.end : a.name < b.name);
  });
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : st.tensors) {
    if (t.begin == t.end) continue;
    if (prev && prev->end > t.begin)
      fail(path + ": tensors '" + prev->name + "' and '" + t.name + "' overlap in the data buffer (bytes " +
           std::to_string(t.begin) + ".." + std::to_string(std::min(prev->end, t.end)) + ")");
    prev = &t;
  }
  return st;
}

bool SafeTensorsFile::has(const std::string& name) const {
  // A linear scan: a few thousand tensors at most, looked up once each at load.
  for (const TensorInfo& t : tensors)
    if (t.name == name) return true;
  return false;
}

const TensorInfo& SafeTensorsFile::info(const std::string& name) const {
  for (const TensorInfo& t : tensors)
    if (t.name == name) return t;
  fail(path + ": tensor '" + name + "' is missing");
}

const uint8_t* SafeTensorsFile::raw(const TensorInfo& t) const { return bytes_.data() + t.begin; }

namespace {
// Tensor data has no alignment guarantee in the buffer (offsets are arbitrary), so elements are
// loaded with memcpy, which compiles to a plain unaligned load.
template <typename T, typename Convert>
void convert_to_f32(const uint8_t* src, size_t n, float* dst, Convert cvt) {
  for (size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    dst[i] = cvt(v);
  }
}
}  // namespace

std::vector<float> SafeTensorsFile::read_f32(const std::string& name, const std::vector<int64_t>& expect) const {
  const TensorInfo& t = info(name);
  if (!expect.empty() && t.shape != expect)
    fail(path + ": tensor '" + name + "' has shape " + shape_str(t.shape) + " but " + shape_str(expect) +
         " was expected (wrong model family or a file from another base model?)");
  size_t n = (size_t)numel(t.shape);
  std::vector<float> out(n);
  const uint8_t* src = raw(t);
  switch (t.dtype) {
    case DType::F32: if (n) std::memcpy(out.data(), src, n * 4); break;
    case DType::F16: convert_to_f32<uint16_t>(src, n, out.data(), f16_to_f32); break;
    case DType::BF16: convert_to_f32<uint16_t>(src, n, out.data(), bf16_to_f32); break;
    case DType::F8_E4M3: convert_to_f32<uint8_t>(src, n, out.data(), f8e4m3_to_f32); break;
    case DType::F8_E5M2: convert_to_f32<uint8_t>(src, n, out.data(), f8e5m2_to_f32); break;
    case DType::F64: convert_to_f32<double>(src, n, out.data(), [](double d) { return (float)d; }); break;
    default:
      fail(path + ": tensor '" + name + "' is " + dtype_name(t.dtype) +
           ", not a float dtype (read_f32 reads F64, F32, F16, BF16, F8_E4M3, F8_E5M2)");
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// Writing

namespace {
void check_new_entry(const std::vector<SafeTensorsWriter::Entry>& entries, const std::string& name,
                     const std::vector<int64_t>& shape) {
  if (name == "__metadata__") fail("safetensors writer: '__metadata__' is reserved and cannot name a tensor");
  for (const auto& e : entries)
    if (e.name == name) fail("safetensors writer: tensor '" + name + "' added twice");
  for (int64_t d : shape)
    if (d < 0) fail("safetensors writer: tensor '" + name + "' has a negative dimension in " + shape_str(shape));
}

template <typename T, typename Convert>
void convert_from_f32(const float* src, size_t n, uint8_t* dst, Convert cvt) {
  for (size_t i = 0; i < n; ++i) {
    T v = cvt(src[i]);
    std::memcpy(dst + i * sizeof(T), &v, sizeof(T));
  }
}
}  // namespace

void SafeTensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            const float* data) {
  check_new_entry(entries, name, shape);
  if (!is_float(dtype))
    fail("safetensors writer: tensor '" + name + "': add() converts fp32 to float dtypes only, not " +
         dtype_name(dtype) + " (use add_raw)");
  size_t n = (size_t)numel(shape);
  Entry e{name, dtype, shape, std::vector<uint8_t>(n * dtype_size(dtype))};
  uint8_t* dst = e.data.data();
  switch (dtype) {
    case DType::F32: if (n) std::memcpy(dst, data, n * 4); break;
    case DType::F16: convert_from_f32<uint16_t>(data, n, dst, f32_to_f16); break;
    case DType::BF16: convert_from_f32<uint16_t>(data, n, dst, f32_to_bf16); break;
    case DType::F8_E4M3: convert_from_f32<uint8_t>(data, n, dst, f32_to_f8e4m3); break;
    case DType::F8_E5M2: convert_from_f32<uint8_t>(data, n, dst, f32_to_f8e5m2); break;
    case DType::F64: convert_from_f32<double>(data, n, dst, [](float f) { return (double)f; }); break;
    default: break;  // rejected above
  }
  entries.push_back(std::move(e));
}

void SafeTensorsWriter::add_raw(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                                const void* data, size_t nbytes) {
  check_new_entry(entries, name, shape);
  size_t need = (size_t)numel(shape) * dtype_size(dtype);
  if (nbytes != need)
    fail("safetensors writer: tensor '" + name + "': got " + std::to_string(nbytes) + " bytes but shape " +
         shape_str(shape) + " of " + dtype_name(dtype) + " needs " + std::to_string(need));
  const uint8_t* p = (const uint8_t*)data;
  entries.push_back(Entry{name, dtype, shape, std::vector<uint8_t>(p, p + nbytes)});
}

void SafeTensorsWriter::write(const std::string& path) const {
  // Layout as the reference library lays it out: larger elements first, then by name. With the header
  // padded to a multiple of 8, every tensor then starts aligned to its element size in the file.
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });

  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const Entry* e : order) {
    h[e->name] = {{"dtype", dtype_name(e->dtype)}, {"shape", e->shape},
                  {"data_offsets", {offset, offset + e->data.size()}}};
    offset += e->data.size();
  }
  std::string header;
  try {
    header = h.dump();
  } catch (const json::exception& e) {  // a name or metadata value that is not valid UTF-8
    fail(path + ": cannot encode the header: " + e.what());
  }
  header.append((8 - header.size() % 8) % 8, ' ');

  // One buffer, one atomic write. This holds the file twice in memory, which is fine for LoRA weights
  // and optimizer state; a streaming writer is the optimisation if full checkpoints are ever saved.
  std::vector<uint8_t> buf(8 + header.size() + offset);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) buf[i] = (uint8_t)(n >> (8 * i));
  std::memcpy(buf.data() + 8, header.data(), header.size());
  uint8_t* dst = buf.data() + 8 + header.size();
  for (const Entry* e : order) {
    if (!e->data.empty()) std::memcpy(dst, e->data.data(), e->data.size());
    dst += e->data.size();
  }
  write_file_atomic(path, buf.data(), buf.size());
}

// Write "<path>.tmp" beside the target, flush it to disk, then rename over the target: readers (and a
// crash at any moment) see either the old file or the complete new one, never a half-written file.
// The folder is synced last so the rename itself survives a power cut.
void write_file_atomic(const std::string& path, const void* data, size_t n) {
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail(path + ": cannot write (creating " + tmp + "): " + std::strerror(errno));

  // Any failure below removes the tmp file so that no debris is left, then reports the first errno.
  auto abandon = [&](const char* step, int err) {
    if (f) std::fclose(f);
    std::remove(tmp.c_str());
    fail(path + ": cannot write (" + step + " " + tmp + "): " + std::strerror(err));
  };
  if (n && std::fwrite(data, 1, n, f) != n) abandon("writing", errno);
  if (std::fflush(f) != 0) abandon("flushing", errno);
  if (fsync(fileno(f)) != 0) abandon("syncing", errno);
  int rc = std::fclose(f);
  f = nullptr;
  if (rc != 0) abandon("closing", errno);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) abandon("renaming", errno);

  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) fail(path + ": written, but cannot open its folder " + dir + " to sync it: " + std::strerror(errno));
  // Some filesystems cannot fsync a directory (EINVAL); the data itself is already synced there.
  if (fsync(dfd) != 0 && errno != EINVAL && errno != ENOTSUP) {
    int err = errno;
    ::close(dfd);
    fail(path + ": written, but syncing its folder " + dir + " failed: " + std::strerror(err));
  }
  ::close(dfd);
}

}  // namespace graft
