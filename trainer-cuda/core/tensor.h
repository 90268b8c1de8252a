// Tensors: a dtype, a shape, and a window into a Storage on some device. Always contiguous and
// row-major; a view (reshape, a run of leading rows) shares the storage at no cost. Autodiff
// information hangs off `meta` (autograd.h) only when the tensor takes part in a gradient.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/storage.h"

namespace graft {

using Shape = std::vector<int64_t>;
struct AutogradMeta;

struct Tensor {
  std::shared_ptr<Storage> storage;
  size_t offset = 0;  // bytes from the storage's start to element 0
  Shape shape;
  DType dtype = DType::F32;
  std::shared_ptr<AutogradMeta> meta;  // set when a gradient flows through this tensor

  bool defined() const { return storage != nullptr; }
  int dim() const { return (int)shape.size(); }
  int64_t size(int d) const { return shape.at(d < 0 ? d + dim() : d); }
  int64_t numel() const;
  size_t nbytes() const { return (size_t)numel() * dtype_size(dtype); }
  Device device() const { return storage ? storage->device : Device(); }
  bool is_cuda() const { return device().is_cuda(); }
  void* raw() const { return static_cast<char*>(storage->data) + offset; }
  template <class T>
  T* data() const { return static_cast<T*>(raw()); }
  bool requires_grad() const { return meta != nullptr; }

  // The same values without autodiff (a saved activation, a value to compare).
  Tensor detach() const;
  // The same storage seen with another shape of as many elements; the view takes no part in
  // autodiff (tensor_ops.h's reshape is the differentiable one).
  Tensor view(const Shape& shape) const;
  // Rows [begin, begin + count) of dim 0, a contiguous window of the storage; no autodiff.
  Tensor rows(int64_t begin, int64_t count) const;
  std::string str() const;  // "[2, 3] BF16 cuda:0"
};

int64_t shape_numel(const Shape& s);

// The dtype activations are computed in on a device: fp32 on the CPU (the reference), bf16 on CUDA.
DType compute_dtype(Device d);

// New tensors. `what` names the use in an out-of-memory message.
Tensor empty(const Shape& shape, DType dtype, Device device, const char* what = "a tensor");
Tensor zeros(const Shape& shape, DType dtype, Device device, const char* what = "a tensor");
// From host fp32 values, converted to `dtype` on `device`.
Tensor from_floats(const float* data, const Shape& shape, Device device, DType dtype = DType::F32);
Tensor from_vector(const std::vector<float>& v, const Shape& shape, Device device, DType dtype = DType::F32);
// Integers (token ids) on a device, as I32.
Tensor from_ints(const std::vector<int>& v, const Shape& shape, Device device);
// Every element as host fp32 (any float dtype, any device).
std::vector<float> to_floats(const Tensor& t);
float item(const Tensor& t);  // the one element of a one-element tensor

// Copies: to another device keeping the dtype; to another dtype on the same device (the same
// tensor when it already has it); `src` into `dst` (same element count; converts and crosses
// devices). None of them take part in autodiff.
Tensor to_device(const Tensor& t, Device d);
Tensor to_dtype(const Tensor& t, DType dtype);
Tensor clone(const Tensor& t);
void copy_into(const Tensor& dst, const Tensor& src);
void zero_(const Tensor& t);

}  // namespace graft
