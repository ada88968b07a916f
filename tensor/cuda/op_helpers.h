// Helpers shared by the CUDA ops: element type dispatch (f32 / bf16 tensors to float / __nv_bfloat16
// kernels), typed device pointers, their common alignment and output allocation. The ops' input checks live in the
// dispatch (tensor/ops.cpp).
#pragma once

#include <cuda_bf16.h>
#include <fmt/format.h>

#include <cstdint>
#include <initializer_list>
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

// The largest power of two up to `cap` dividing every address: what a library plan built for these pointers may
// assume (cuDNN's tensor byte alignment, cuBLASLt's minimum alignments), and so part of the plan's key.
inline uint32_t common_alignment(std::initializer_list<const void*> pointers, uint32_t cap) {
  uintptr_t bits = cap;
  for (const void* p : pointers) bits |= reinterpret_cast<uintptr_t>(p);
  return static_cast<uint32_t>(bits & (~bits + 1));
}

inline Tensor empty_device(const Shape& shape, DType dtype) { return Tensor::empty(shape, dtype, Device::CUDA); }

}  // namespace dsmil::cuda
