// Elementwise maps over n contiguous elements, computed in fp32 and stored in T (float or bf16):
// unary y = f(x), binary y = f(a, b) (activation backward ops take (dy, y)), and in-place y += alpha x.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

enum class UnaryOp { Scale, Relu, Tanh, Sigmoid };  // Scale: y = s x; `s` is unused by the others
enum class BinaryOp { Add, Mul, ReluBackward, TanhBackward, SigmoidBackward };

// y may alias x (in-place).
template <typename T>
cudaError_t unary(UnaryOp op, const T* x, T* y, float s, int64_t n, cudaStream_t stream);
template <typename T>
cudaError_t binary(BinaryOp op, const T* a, const T* b, T* y, int64_t n, cudaStream_t stream);
cudaError_t axpy(float* y, float alpha, const float* x, int64_t n, cudaStream_t stream);

}  // namespace dsmil::kernels
