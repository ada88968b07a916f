// Helpers shared by the CUDA ops: element type dispatch (f32 / bf16 tensors to float / __nv_bfloat16
// kernels), typed device pointers, output allocation and the input checks every op repeats.
#pragma once

#include <cuda_bf16.h>
#include <fmt/format.h>

#include <type_traits>

#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"
#include "tensor/ops.h"

namespace dsmil::cuda {

// Calls f(std::type_identity<T>{}) with T the kernel element type of an F32 or BF16 tensor.
template <typename F>
decltype(auto) with_float_type(const char* op, const Tensor& t, F&& f) {
  switch (t.dtype()) {
    case DType::F32:
      return f(std::type_identity<float>{});
    case DType::BF16:
      return f(std::type_identity<__nv_bfloat16>{});
    case DType::I32:
      break;
  }
  throw ShapeError(fmt::format("{}: expected an f32 or bf16 tensor, got {}", op, t.describe()));
}

template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

inline Tensor empty_device(const Shape& shape, DType dtype) { return Tensor::empty(shape, dtype, Device::CUDA); }

// The tensor is on the GPU (ops reached directly, not through ops::, are checked here too).
inline void check_on_device(const char* op, const Tensor& t, const char* name) {
  if (!t.defined() || t.device() != Device::CUDA)
    throw ShapeError(
        fmt::format("{}: {} must be a CUDA tensor, got {}", op, name, t.defined() ? t.describe() : "undefined"));
}

// An f32 or bf16 tensor (the element types the float kernels take).
inline void check_float(const char* op, const Tensor& t, const char* name) {
  if (t.dtype() == DType::I32)
    throw ShapeError(fmt::format("{}: {} must be f32 or bf16, got {}", op, name, t.describe()));
}

// F32 tensor of numel n on the device (per-channel parameters, statistics, weights of samples).
inline void check_f32_vector(const char* op, const Tensor& t, int64_t n, const char* name) {
  check_on_device(op, t, name);
  check_dtype(op, t, DType::F32, name);
  if (t.numel() != n) throw ShapeError(fmt::format("{}: {} must hold {} values, got {}", op, name, n, t.describe()));
}

inline void check_shape(const char* op, const Tensor& t, const Shape& expected, const char* name) {
  if (t.shape() != expected)
    throw ShapeError(fmt::format("{}: {} must have shape {}, got {}", op, name, shape_str(expected), t.describe()));
}

}  // namespace dsmil::cuda
