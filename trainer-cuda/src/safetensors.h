// Safetensors, the only weight format we read and write.
// Layout: u64 little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "...", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data buffer. Offsets are relative to the buffer's start.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace graft {

enum class DType { F32, F16, BF16, F8_E4M3, F8_E5M2, F64, I64, I32, I16, I8, U8, BOOL };

const char* dtype_name(DType t);                       // "F32", "BF16", ...
size_t dtype_size(DType t);                            // bytes per element
bool dtype_from_name(const std::string& s, DType* t);  // false when unknown

// Scalar conversions (round to nearest even; fp8 saturates to the largest finite value).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f8e4m3_to_f32(uint8_t v);
uint8_t f32_to_f8e4m3(float f);
float f8e5m2_to_f32(uint8_t v);
uint8_t f32_to_f8e5m2(float f);

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range inside the data buffer
};

// A file opened for reading. The whole file is read (or mapped) at open; every structural problem
// (short file, bad header length, bad JSON, unknown dtype, offsets out of range or overlapping,
// size not matching shape) throws graft::Error naming the file and the tensor.
struct SafeTensorsFile {
  std::string path;
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> tensors;  // in file order

  static SafeTensorsFile open(const std::string& path);

  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws: "<path>: tensor '<name>' is missing"
  // Converts any float dtype to fp32. When `expect` is non-empty, the shape must match it exactly
  // (throws naming the file, tensor, found and expected shapes).
  std::vector<float> read_f32(const std::string& name, const std::vector<int64_t>& expect = {}) const;
  const uint8_t* raw(const TensorInfo& t) const;

  std::vector<uint8_t> bytes_;  // the file's data buffer (after the header)
};

// Collects tensors (from fp32, converted to the chosen dtype) and writes them atomically:
// write to "<path>.tmp", fsync, rename over <path>, fsync the folder.
struct SafeTensorsWriter {
  std::map<std::string, std::string> metadata;
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const float* data);
  void add_raw(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes);
  void write(const std::string& path) const;  // throws graft::Error naming the path on any I/O failure

  struct Entry { std::string name; DType dtype; std::vector<int64_t> shape; std::vector<uint8_t> data; };
  std::vector<Entry> entries;
};

// Atomic file write used for every file that matters (checkpoints, state, job outputs).
void write_file_atomic(const std::string& path, const void* data, size_t n);

}  // namespace graft
