#include "core/tensor.h"

#include <cstring>

#include "core/autograd.h"
#include "core/common.h"
#include "core/cuda_runtime.h"

namespace graft {

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

int64_t Tensor::numel() const { return shape_numel(shape); }

Tensor Tensor::detach() const {
  Tensor t = *this;
  t.meta.reset();
  return t;
}

Tensor Tensor::view(const Shape& s) const {
  if (shape_numel(s) != numel()) fail("internal: view " + shape_str(s) + " of a tensor of shape " + shape_str(shape));
  Tensor t = detach();
  t.shape = s;
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t count) const {
  if (dim() == 0 || begin < 0 || count < 0 || begin + count > shape[0])
    fail("internal: rows [" + std::to_string(begin) + ", +" + std::to_string(count) + ") of " + str());
  Tensor t = detach();
  t.shape[0] = count;
  t.offset += (size_t)begin * (size_t)shape_numel(Shape(shape.begin() + 1, shape.end())) * dtype_size(dtype);
  return t;
}

std::string Tensor::str() const {
  if (!defined()) return "(undefined tensor)";
  return shape_str(shape) + " " + dtype_name(dtype) + " " + device().str();
}

DType compute_dtype(Device d) { return d.is_cuda() ? DType::BF16 : DType::F32; }

Tensor empty(const Shape& shape, DType dtype, Device device, const char* what) {
  for (int64_t d : shape)
    if (d < 0) fail("internal: negative dimension in " + shape_str(shape));
  Tensor t;
  t.shape = shape;
  t.dtype = dtype;
  t.storage = storage_alloc((size_t)shape_numel(shape) * dtype_size(dtype), device, what);
  return t;
}

Tensor zeros(const Shape& shape, DType dtype, Device device, const char* what) {
  Tensor t = empty(shape, dtype, device, what);
  zero_(t);
  return t;
}

void zero_(const Tensor& t) {
  if (t.nbytes() == 0) return;
  if (t.is_cuda()) cuda::memset_zero(t.raw(), t.nbytes());
  else std::memset(t.raw(), 0, t.nbytes());
}

// Host fp32 into `dst` of any float dtype on any device.
static void upload_floats(const Tensor& dst, const float* data) {
  const size_t n = (size_t)dst.numel();
  if (!dst.is_cuda()) {
    convert_host(dst.raw(), dst.dtype, data, DType::F32, n);
    return;
  }
  if (dst.dtype == DType::F32) {
    cuda::copy_to_device(dst.raw(), data, n * 4);
    return;
  }
  std::vector<uint8_t> staged(n * dtype_size(dst.dtype));  // converted on the host: one copy across the bus
  convert_host(staged.data(), dst.dtype, data, DType::F32, n);
  cuda::copy_to_device(dst.raw(), staged.data(), staged.size());
}

Tensor from_floats(const float* data, const Shape& shape, Device device, DType dtype) {
  Tensor t = empty(shape, dtype, device);
  upload_floats(t, data);
  return t;
}

Tensor from_vector(const std::vector<float>& v, const Shape& shape, Device device, DType dtype) {
  if ((int64_t)v.size() != shape_numel(shape))
    fail("internal: " + std::to_string(v.size()) + " values for a tensor of shape " + shape_str(shape));
  return from_floats(v.data(), shape, device, dtype);
}

Tensor from_ints(const std::vector<int>& v, const Shape& shape, Device device) {
  if ((int64_t)v.size() != shape_numel(shape))
    fail("internal: " + std::to_string(v.size()) + " ids for a tensor of shape " + shape_str(shape));
  Tensor t = empty(shape, DType::I32, device);
  if (device.is_cuda()) cuda::copy_to_device(t.raw(), v.data(), v.size() * 4);
  else if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * 4);
  return t;
}

std::vector<float> to_floats(const Tensor& t) {
  std::vector<float> out((size_t)t.numel());
  if (out.empty()) return out;
  if (!t.is_cuda()) {
    convert_host(out.data(), DType::F32, t.raw(), t.dtype, out.size());
    return out;
  }
  std::vector<uint8_t> staged(t.nbytes());
  cuda::copy_to_host(staged.data(), t.raw(), staged.size());
  convert_host(out.data(), DType::F32, staged.data(), t.dtype, out.size());
  return out;
}

float item(const Tensor& t) {
  if (t.numel() != 1) fail("internal: item() of a tensor of shape " + shape_str(t.shape));
  return to_floats(t)[0];
}

void copy_into(const Tensor& dst, const Tensor& src) {
  if (dst.numel() != src.numel())
    fail("internal: copy of " + src.str() + " into " + dst.str() + ": sizes differ");
  const size_t n = (size_t)src.numel();
  if (n == 0) return;
  const bool dc = dst.is_cuda(), sc = src.is_cuda();
  if (!dc && !sc) {
    convert_host(dst.raw(), dst.dtype, src.raw(), src.dtype, n);
  } else if (dc && sc) {
    if (dst.dtype == src.dtype) cuda::copy_on_device(dst.raw(), src.raw(), src.nbytes());
    else cuda::convert(dst.raw(), dst.dtype, src.raw(), src.dtype, n);
  } else if (dc) {  // host -> device: the bytes cross as they are, the device converts
    if (dst.dtype == src.dtype) {
      cuda::copy_to_device(dst.raw(), src.raw(), src.nbytes());
    } else {
      Tensor staged = empty(src.shape, src.dtype, dst.device(), "a host-to-device copy");
      cuda::copy_to_device(staged.raw(), src.raw(), src.nbytes());
      cuda::convert(dst.raw(), dst.dtype, staged.raw(), src.dtype, n);
    }
  } else {  // device -> host
    if (dst.dtype == src.dtype) {
      cuda::copy_to_host(dst.raw(), src.raw(), src.nbytes());
    } else {
      std::vector<uint8_t> staged(src.nbytes());
      cuda::copy_to_host(staged.data(), src.raw(), staged.size());
      convert_host(dst.raw(), dst.dtype, staged.data(), src.dtype, n);
    }
  }
}

Tensor to_device(const Tensor& t, Device d) {
  if (t.device() == d) return t.detach();
  Tensor out = empty(t.shape, t.dtype, d);
  copy_into(out, t);
  return out;
}

Tensor to_dtype(const Tensor& t, DType dtype) {
  if (t.dtype == dtype) return t.detach();
  Tensor out = empty(t.shape, dtype, t.device());
  copy_into(out, t);
  return out;
}

Tensor clone(const Tensor& t) {
  Tensor out = empty(t.shape, t.dtype, t.device());
  copy_into(out, t);
  return out;
}

}  // namespace graft
