#include "train/model_hash.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/common.h"
#include "core/safetensors.h"
#include "core/sha256.h"

namespace graft {

namespace {

const int64_t kMemoMinBytes = 64ll << 20;  // smaller files hash faster than a memo is worth

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) ? std::string(buf) : p;
}

nlohmann::json read_memo(const std::string& file) {
  std::ifstream f(file);
  if (!f) return nlohmann::json::object();
  std::stringstream buf;
  buf << f.rdbuf();
  nlohmann::json j = nlohmann::json::parse(buf.str(), nullptr, false);
  return j.is_object() ? j : nlohmann::json::object();  // a damaged memo is only a slower start
}

std::string file_sha256(const std::string& path, const struct stat& st, const std::string& memo_dir) {
  if (memo_dir.empty() || st.st_size < kMemoMinBytes) return sha256_file_hex(path);
  const std::string memo_file = memo_dir + "/model-hashes.json", key = real_path(path);
  const int64_t mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
  nlohmann::json memo = read_memo(memo_file);
  const nlohmann::json* e = memo.contains(key) ? &memo[key] : nullptr;
  if (e && e->is_object() && e->value("size", (int64_t)-1) == (int64_t)st.st_size && e->value("mtime_ns", (int64_t)-1) == mtime_ns &&
      e->value("sha256", std::string()).size() == 64)
    return (*e)["sha256"].get<std::string>();
  std::printf("hashing %s (%.1f GB) for the cache keys; remembered in %s\n", path.c_str(), st.st_size / 1e9, memo_file.c_str());
  std::fflush(stdout);
  const std::string sha = sha256_file_hex(path);
  memo[key] = {{"size", (int64_t)st.st_size}, {"mtime_ns", mtime_ns}, {"sha256", sha}};
  make_dirs(memo_dir);
  const std::string text = memo.dump(2);
  write_file_atomic(memo_file, text.data(), text.size());
  return sha;
}

}  // namespace

std::string model_sha256(const std::string& path, const std::string& memo_dir) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) fail(path + ": cannot read to hash it (" + std::string(std::strerror(errno)) + ")");
  if (!S_ISDIR(st.st_mode)) return file_sha256(path, st, memo_dir);
  std::vector<std::string> names;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d))
      if (ends_with(e->d_name, ".safetensors") || ends_with(e->d_name, ".json")) names.push_back(e->d_name);
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  if (names.empty()) fail(path + ": no .safetensors or .json files in this model folder");
  Sha256 h;
  for (const std::string& n : names) {
    struct stat fs;
    const std::string p = path + "/" + n;
    if (stat(p.c_str(), &fs) != 0) fail(p + ": cannot read to hash it");
    h.update(n + " " + file_sha256(p, fs, memo_dir) + "\n");
  }
  return h.hex();
}

std::string combined_sha256(const std::vector<NamedHash>& parts) {
  if (parts.size() == 1) return parts[0].sha;
  std::string s;
  for (const NamedHash& p : parts) s += p.name + "=" + p.sha + " ";
  return sha256_hex(s);
}

}  // namespace graft
