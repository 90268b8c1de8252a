// Safetensors reading (through a memory map) and writing (streamed, atomic).
// Format: u64 little-endian header length N, N bytes of UTF-8 JSON, then the data buffer.
#include "core/safetensors.h"

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

#include "core/common.h"

// Tensor bytes are reinterpreted in place (memcpy into uint16_t, float, ...), and the format is
// little-endian, so a big-endian host would read garbage. Every machine we target is little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors.cpp assumes a little-endian host");
static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE float and double expected");

namespace graft {

// ------------------------------------------------------------------------------------------------
// Reading

namespace {
// The header of a real checkpoint is a few hundred KB; a larger length means this is not a safetensors file.
const uint64_t kMaxHeader = 100u * 1000 * 1000;

using json = nlohmann::ordered_json;

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
  st.map = MappedFile::open(path);
  const uint64_t file_size = st.map->size;
  if (file_size < 8)
    fail(path + ": too short to be a safetensors file (" + std::to_string(file_size) +
         " bytes; the header length alone is 8)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | st.map->data[i];
  if (header_len > kMaxHeader)
    fail(path + ": header length " + std::to_string(header_len) +
         " is absurd (limit 100 MB): this is not a safetensors file, or it is corrupt");
  if (header_len > file_size - 8)
    fail(path + ": truncated: header says it is " + std::to_string(header_len) + " bytes but the file has " +
         std::to_string(file_size - 8) + " after the length field (re-download or re-save it)");
  std::string header((const char*)st.map->data + 8, header_len);
  const uint64_t buffer_size = file_size - 8 - header_len;
  st.buffer = st.map->data + 8 + header_len;

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

const uint8_t* SafeTensorsFile::raw(const TensorInfo& t) const { return buffer + t.begin; }

Tensor SafeTensorsFile::tensor(const TensorInfo& t) const {
  Tensor out;
  out.shape = t.shape;
  out.dtype = t.dtype;
  out.storage = storage_mapped(raw(t), t.end - t.begin, map);
  return out;
}

void SafeTensorsFile::release(const TensorInfo& t) const { map->release(raw(t), t.end - t.begin); }

std::vector<float> SafeTensorsFile::read_f32(const std::string& name, const std::vector<int64_t>& expect) const {
  const TensorInfo& t = info(name);
  if (!expect.empty() && t.shape != expect)
    fail(path + ": tensor '" + name + "' has shape " + shape_str(t.shape) + " but " + shape_str(expect) +
         " was expected (wrong model family or a file from another base model?)");
  size_t n = (size_t)numel(t.shape);
  std::vector<float> out(n);
  if (!dtype_is_float(t.dtype))
    fail(path + ": tensor '" + name + "' is " + dtype_name(t.dtype) +
         ", not a float dtype (read_f32 reads F64, F32, F16, BF16, F8_E4M3, F8_E5M2)");
  convert_host(out.data(), DType::F32, raw(t), t.dtype, n);
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

}  // namespace

void SafeTensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            const float* data) {
  check_new_entry(entries, name, shape);
  if (!dtype_is_float(dtype))
    fail("safetensors writer: tensor '" + name + "': add() converts fp32 to float dtypes only, not " +
         dtype_name(dtype) + " (use add_raw)");
  size_t n = (size_t)numel(shape);
  Entry e{name, dtype, shape, std::vector<uint8_t>(n * dtype_size(dtype)), nullptr};
  convert_host(e.data.data(), dtype, data, DType::F32, n);
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
  entries.push_back(Entry{name, dtype, shape, std::vector<uint8_t>(p, p + nbytes), nullptr});
}

void SafeTensorsWriter::add_lazy(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                                 std::function<void(uint8_t* dst)> fill) {
  check_new_entry(entries, name, shape);
  entries.push_back(Entry{name, dtype, shape, {}, std::move(fill)});
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
                  {"data_offsets", {offset, offset + e->nbytes()}}};
    offset += e->nbytes();
  }
  std::string header;
  try {
    header = h.dump();
  } catch (const json::exception& e) {  // a name or metadata value that is not valid UTF-8
    fail(path + ": cannot encode the header: " + e.what());
  }
  header.append((8 - header.size() % 8) % 8, ' ');

  std::vector<uint8_t> head(8 + header.size());
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) head[i] = (uint8_t)(n >> (8 * i));
  std::memcpy(head.data() + 8, header.data(), header.size());
  write_file_atomic(path, [&](const std::function<void(const void*, size_t)>& put) {
    put(head.data(), head.size());
    std::vector<uint8_t> buf;
    for (const Entry* e : order) {
      if (!e->fill) {
        put(e->data.data(), e->data.size());
        continue;
      }
      buf.resize(e->nbytes());
      e->fill(buf.data());
      put(buf.data(), buf.size());
    }
  });
}

// Write "<path>.tmp" beside the target, flush it to disk, then rename over the target: readers (and a
// crash at any moment) see either the old file or the complete new one, never a half-written file.
// The folder is synced last so the rename itself survives a power cut.
void write_file_atomic(const std::string& path, const void* data, size_t n) {
  write_file_atomic(path, [&](const std::function<void(const void*, size_t)>& put) { put(data, n); });
}

void write_file_atomic(const std::string& path, const std::function<void(const std::function<void(const void*, size_t)>&)>& produce) {
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail(path + ": cannot write (creating " + tmp + "): " + std::strerror(errno));

  // Any failure below removes the tmp file so that no debris is left, then reports the first errno.
  auto abandon = [&](const char* step, int err) {
    if (f) std::fclose(f);
    f = nullptr;
    std::remove(tmp.c_str());
    fail(path + ": cannot write (" + step + " " + tmp + "): " + std::strerror(err));
  };
  try {
    produce([&](const void* data, size_t n) {
      if (n && std::fwrite(data, 1, n, f) != n) abandon("writing", errno);
    });
  } catch (...) {  // abandon() already cleaned up for its own errors; anything else lands here
    if (f) std::fclose(f), std::remove(tmp.c_str());
    throw;
  }
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
