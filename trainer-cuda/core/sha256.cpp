#include "core/sha256.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#ifdef GRAFT_HAVE_OPENSSL
#include <openssl/evp.h>
#endif

#include "core/common.h"

namespace graft {

namespace {

// ---------------------------------------------------------------- portable SHA-256 (FIPS 180-4)

const uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

struct Portable {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t block[64];
  size_t fill = 0;    // bytes waiting in block
  uint64_t bytes = 0; // message length so far

  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void compress(const uint8_t* p) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + kK[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
  }
  void update(const uint8_t* p, size_t n) {
    bytes += n;
    while (n > 0) {
      size_t take = std::min(n, 64 - fill);
      std::memcpy(block + fill, p, take);
      fill += take, p += take, n -= take;
      if (fill == 64) compress(block), fill = 0;
    }
  }
  void final(uint8_t out[32]) {
    const uint64_t bits = bytes * 8;
    const uint8_t one = 0x80, zero = 0;
    update(&one, 1);
    while (fill != 56) update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = (uint8_t)(bits >> (56 - 8 * i));
    update(len, 8);
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 4; ++j) out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
  }
};

std::string to_hex(const uint8_t* d, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (size_t i = 0; i < n; ++i) s[2 * i] = digits[d[i] >> 4], s[2 * i + 1] = digits[d[i] & 15];
  return s;
}

}  // namespace

std::string sha256_portable_hex(const void* data, size_t n) {
  Portable p;
  p.update((const uint8_t*)data, n);
  uint8_t out[32];
  p.final(out);
  return to_hex(out, 32);
}

// ---------------------------------------------------------------- Sha256: OpenSSL, or the portable one

#ifdef GRAFT_HAVE_OPENSSL
bool sha256_uses_openssl() { return true; }

Sha256::Sha256() {
  EVP_MD_CTX* c = EVP_MD_CTX_new();
  if (!c || EVP_DigestInit_ex(c, EVP_sha256(), nullptr) != 1) fail("SHA-256: OpenSSL could not start a digest");
  ctx = c;
}
Sha256::~Sha256() { EVP_MD_CTX_free((EVP_MD_CTX*)ctx); }
void Sha256::update(const void* data, size_t n) {
  if (EVP_DigestUpdate((EVP_MD_CTX*)ctx, data, n) != 1) fail("SHA-256: OpenSSL digest update failed");
}
std::string Sha256::hex() {
  uint8_t out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex((EVP_MD_CTX*)ctx, out, &len) != 1 || len != 32) fail("SHA-256: OpenSSL digest failed");
  return to_hex(out, 32);
}
#else
bool sha256_uses_openssl() { return false; }

Sha256::Sha256() { ctx = new Portable(); }
Sha256::~Sha256() { delete (Portable*)ctx; }
void Sha256::update(const void* data, size_t n) { ((Portable*)ctx)->update((const uint8_t*)data, n); }
std::string Sha256::hex() {
  uint8_t out[32];
  ((Portable*)ctx)->final(out);
  return to_hex(out, 32);
}
#endif

std::string sha256_hex(const void* data, size_t n) {
  Sha256 h;
  h.update(data, n);
  return h.hex();
}

std::string sha256_file_hex(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(path + ": cannot read to hash it: " + std::strerror(errno));
  Sha256 h;
  std::vector<uint8_t> buf((size_t)1 << 20);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) h.update(buf.data(), n);
  const bool err = std::ferror(f);
  std::fclose(f);
  if (err) fail(path + ": read error while hashing it");
  return h.hex();
}

}  // namespace graft
