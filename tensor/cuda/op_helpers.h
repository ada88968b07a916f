// Helpers shared by the CUDA ops: element type dispatch (f32 / bf16 tensors to float / __nv_bfloat16
// kernels), typed device pointers and output allocation. The ops' input checks live in the dispatch (tensor/ops.cpp).
#pragma once

#include <cuda_bf16.h>
#include <fmt/format.h>

#include <type_traits>

#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"
#include "tensor/ops.h"

namespace dsmil::cuda {

// Calls f(std::type_identity<T>{}) with T the kernel element type of an F32 or BF16 tensor. The dispatch
// (tensor/ops.cpp) has refused the integer dtypes already; the throw ends the switch for the compiler.
template <typename F>
decltype(auto) with_float_type(const char* op, const Tensor& t, F&& f) {
  switch (t.dtype()) {
    case DType::F32:
      return f(std::type_identity<float>{});
    case DType::BF16:
      return f(std::type_identity<__nv_bfloat16>{});
    case DType::I32:
    case DType::U8:
      break;
  }
  throw ShapeError(fmt::format("{}: expected an f32 or bf16 tensor, got {}", op, t.describe()));
}

template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

inline Tensor empty_device(const Shape& shape, DType dtype) { return Tensor::empty(shape, dtype, Device::CUDA); }

}  // namespace dsmil::cuda
