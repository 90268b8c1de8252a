// Helpers for the GPU parity tests and the benchmark: device buffers, bf16 round trips, random
// data, and the comparison that every parity check uses.
#pragma once
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_common.h"
#include "core/rng.h"

namespace graft {
namespace gpu {

// A device buffer that frees itself.
template <typename T>
struct DevBuf {
  T* ptr = nullptr;
  size_t n = 0;
  DevBuf() {}
  explicit DevBuf(size_t count, const char* what = "test buffer") : n(count) { ptr = device_alloc_n<T>(count ? count : 1, what); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : ptr(o.ptr), n(o.n) { o.ptr = nullptr; }
  ~DevBuf() { if (ptr) cudaFree(ptr); }
  operator T*() const { return ptr; }
  // Every byte 0xFF: NaN in bf16 and fp32, so an element an op forgot to write shows up.
  void poison() { cudaCheck(cudaMemset(ptr, 0xFF, n * sizeof(T))); }
};

inline std::vector<float> random_vec(size_t n, uint64_t seed, float scale = 1.0f, float offset = 0.0f) {
  Rng rng(seed, 77);
  std::vector<float> v(n);
  for (auto& x : v) x = offset + scale * rng.normal();
  return v;
}
// Rounds every value to bf16 in place, so CPU and GPU see the very same inputs.
inline std::vector<float>& round_bf16(std::vector<float>& v) {
  for (auto& x : v) x = bf16_bits_to_f32(f32_to_bf16_bits(x));
  return v;
}
inline DevBuf<bf16> upload_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); i++) h[i] = f32_to_bf16_bits(v[i]);
  DevBuf<bf16> d(v.size());
  cudaCheck(cudaMemcpy(d.ptr, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  return d;
}
inline DevBuf<float> upload_f32(const std::vector<float>& v) {
  DevBuf<float> d(v.size());
  cudaCheck(cudaMemcpy(d.ptr, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  return d;
}
inline std::vector<float> download(const DevBuf<bf16>& d) {
  std::vector<uint16_t> h(d.n);
  cudaCheck(cudaDeviceSynchronize());
  cudaCheck(cudaMemcpy(h.data(), d.ptr, d.n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> v(d.n);
  for (size_t i = 0; i < d.n; i++) v[i] = bf16_bits_to_f32(h[i]);
  return v;
}
inline std::vector<float> download(const DevBuf<float>& d) {
  std::vector<float> v(d.n);
  cudaCheck(cudaDeviceSynchronize());
  cudaCheck(cudaMemcpy(v.data(), d.ptr, d.n * 4, cudaMemcpyDeviceToHost));
  return v;
}

struct Compare {
  double rel = 0, max_abs = 0;
  long nan = 0;
};
// ||got - ref|| / ||ref|| over all elements, in double; NaN/Inf in `got` are counted.
inline Compare compare(const std::vector<float>& got, const std::vector<float>& ref) {
  Compare c;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    if (!std::isfinite(got[i])) { c.nan++; continue; }
    double d = (double)got[i] - ref[i];
    num += d * d;
    den += (double)ref[i] * ref[i];
    c.max_abs = std::fmax(c.max_abs, std::fabs(d));
  }
  c.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return c;
}

}  // namespace gpu
}  // namespace graft
