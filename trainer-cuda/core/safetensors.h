// Safetensors, the only weight format we read and write.
// Layout: u64 little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "...", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data buffer. Offsets are relative to the buffer's start.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/storage.h"
#include "core/common.h"
#include "core/tensor.h"

namespace graft {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range inside the data buffer
};

// A file opened for reading: mapped into memory, its header parsed and checked at open. Tensor data
// is read from the mapping where it lies (pages come from disk as they are touched), so opening a
// checkpoint of any size costs no host memory. Every structural problem (short file, bad header
// length, bad JSON, unknown dtype, offsets out of range or overlapping, size not matching shape)
// throws graft::Error naming the file and the tensor.
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
  // The tensor as stored, a read-only view into the mapping (no copy).
  Tensor tensor(const TensorInfo& t) const;
  // Drops the pages of t from this process's memory (after its data went to the GPU).
  void release(const TensorInfo& t) const;

  std::shared_ptr<MappedFile> map;
  const uint8_t* buffer = nullptr;  // the data buffer (after the header) inside the mapping
};

// Collects tensors and writes them atomically: write to "<path>.tmp", fsync, rename over <path>,
// fsync the folder. Entries added with add_lazy are produced one at a time while the file is
// written, so a checkpoint larger than memory can be generated.
struct SafeTensorsWriter {
  std::map<std::string, std::string> metadata;
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const float* data);
  void add_raw(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes);
  // fill(dst) writes the tensor's bytes (numel x dtype size) when the file is written.
  void add_lazy(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                std::function<void(uint8_t* dst)> fill);
  void write(const std::string& path) const;  // throws graft::Error naming the path on any I/O failure

  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;
    std::function<void(uint8_t*)> fill;  // lazy entries: data stays empty
    size_t nbytes() const { return (size_t)numel(shape) * dtype_size(dtype); }
  };
  std::vector<Entry> entries;
};

// Atomic file write used for every file that matters (checkpoints, state, job outputs). The second
// form streams: produce(put) calls put(bytes, n) as many times as it likes.
void write_file_atomic(const std::string& path, const void* data, size_t n);
void write_file_atomic(const std::string& path,
                       const std::function<void(const std::function<void(const void*, size_t)>&)>& produce);

}  // namespace graft
