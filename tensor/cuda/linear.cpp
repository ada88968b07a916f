// CUDA matrix products c[M, N] = op(a) op(b) through cublasGemmEx (f32, TF32 when the MathMode allows it, or bf16
// with fp32 accumulation), bias add y[M, N] = x + bias[N] and its gradient db[N] (kernels/bias.cu).
#include "kernels/bias.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const MathMode& mode) {
  const char* op = "matmul";
  const int64_t m = transpose_a ? a.size(1) : a.size(0);
  const int64_t k = transpose_a ? a.size(0) : a.size(1);
  const int64_t n = transpose_b ? b.size(0) : b.size(1);
  const auto context = [&] {
    return fmt::format("{} (transpose_a={}, transpose_b={})", op_context(op, {{"a", &a}, {"b", &b}}), transpose_a,
                       transpose_b);
  };
  Tensor c = empty_device({m, n}, a.dtype());
  if (c.numel() == 0) return c;
  if (k == 0) {
    c.fill(0.0f);
    return c;
  }
  const cudaDataType_t data_type = a.dtype() == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute =
      a.dtype() == DType::F32 && mode.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  // Row-major c = op(a) op(b) is column-major c^T = op(b)^T op(a)^T, and a row-major matrix read as
  // column-major is its transpose: so b comes first, each with its own flag, leading dimensions = row lengths.
  const float alpha = 1.0f, beta = 0.0f;
  DSMIL_CUBLAS_CHECK(
      cublasGemmEx(cublas_handle(), transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                   static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b.raw(), data_type,
                   static_cast<int>(b.size(1)), a.raw(), data_type, static_cast<int>(a.size(1)), &beta, c.raw(),
                   data_type, static_cast<int>(n), compute, CUBLAS_GEMM_DEFAULT),
      context());
  return c;
}

Tensor add_bias(const Tensor& x, const Tensor& bias) {
  const char* op = "add_bias";
  Tensor y = empty_device(x.shape(), x.dtype());
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::add_bias(ptr<T>(x), bias.f32(), ptr<T>(y), x.size(0), x.size(1), stream()),
                     op_context(op, {{"x", &x}, {"bias", &bias}}));
  });
  return y;
}

Tensor bias_backward(const Tensor& dy) {
  const char* op = "bias_backward";
  Tensor db = empty_device({dy.size(1)}, DType::F32);
  with_float_type(op, dy, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::bias_backward(ptr<T>(dy), db.f32(), dy.size(0), dy.size(1), stream()),
                     op_context(op, {{"dy", &dy}}));
  });
  return db;
}

}  // namespace dsmil::cuda
