// The identity of a model part for cache keys: the SHA-256 of its checkpoint file, or of a folder's
// files (shards, index, config.json). Hashing T5-XXL's 9.5 GB takes seconds to minutes, so the
// hash of a large file is remembered in <memo_dir>/model-hashes.json under its path, size and
// modification time, and computed again only when one of those changes.
#pragma once
#include <string>
#include <vector>

namespace graft {

// A file: its SHA-256 (exactly sha256_file_hex, so caches keyed by it before stay valid). A folder:
// SHA-256 of "<name> <sha256>\n" over its .safetensors and .json files in name order. `memo_dir`
// may be empty (no memo).
std::string model_sha256(const std::string& path, const std::string& memo_dir);

// SHA-256 of several parts named (a model with two text encoders): "<name>=<sha> ..." hashed, or the
// single part's own hash when there is one.
struct NamedHash {
  std::string name, sha;
};
std::string combined_sha256(const std::vector<NamedHash>& parts);

}  // namespace graft
