// Where a tensor lives: the host, or one CUDA device.
#pragma once
#include <string>

namespace graft {

struct Device {
  enum Kind : unsigned char { CPU, CUDA };
  Kind kind = CPU;
  int index = 0;

  static Device cpu() { return Device(); }
  static Device cuda(int i) { return Device{CUDA, i}; }
  bool is_cuda() const { return kind == CUDA; }
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const { return is_cuda() ? "cuda:" + std::to_string(index) : "cpu"; }
};

// "cpu", "cuda", "cuda:N" or "auto" (CUDA device 0 when one is usable, else the CPU). Throws Error
// naming `where` (a file or option) when the name is malformed or CUDA cannot be used.
Device parse_device(const std::string& name, const std::string& where);
// "cpu (2 threads)", "cuda:0 NVIDIA H200 (sm_90, ...)".
std::string describe_device(Device d);

}  // namespace graft
