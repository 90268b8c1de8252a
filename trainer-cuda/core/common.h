// Shared basics of the trainer: errors, version, small helpers.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#define GRAFT_VERSION "0.1.0"

namespace graft {

// Every user-facing failure is an Error whose message already names the file, field or value
// and what to do; main() prints it on one line and exits non-zero.
struct Error : std::runtime_error {
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

[[noreturn]] inline void fail(const std::string& msg) { throw Error(msg); }

inline int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape);

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_dir(const std::string& path);
bool path_exists(const std::string& path);  // a file, a folder or anything else
// A whole text file; fails naming it when it cannot be read.
std::string read_text_file(const std::string& path);

// mkdir -p: every missing folder of `path`; fails naming the folder that cannot be made.
void make_dirs(const std::string& path);

}  // namespace graft
