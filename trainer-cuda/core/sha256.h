// SHA-256 of buffers and files, the identity of cached latents and text embeddings (cache.h).
// OpenSSL's libcrypto (EVP API, Debian's libssl-dev) computes it; where its headers are absent (the
// GPU machine builds with no -dev packages) a portable implementation of FIPS 180-4 stands in. The
// two are checked against each other and against the standard's test vectors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace graft {

// Incremental: update() any number of times, then hex() once.
struct Sha256 {
  void* ctx = nullptr;  // EVP_MD_CTX, or the portable state
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t n);
  void update(const std::string& s) { update(s.data(), s.size()); }
  std::string hex();  // 64 lowercase hex digits; ends the computation
};

std::string sha256_hex(const void* data, size_t n);
inline std::string sha256_hex(const std::string& s) { return sha256_hex(s.data(), s.size()); }
// Reads the file in 1 MiB pieces. Throws Error naming the file when it cannot be read.
std::string sha256_file_hex(const std::string& path);

// The portable implementation, always compiled so tests can compare it with OpenSSL's.
std::string sha256_portable_hex(const void* data, size_t n);
// True when Sha256 runs on OpenSSL (built with GRAFT_HAVE_OPENSSL).
bool sha256_uses_openssl();

}  // namespace graft
