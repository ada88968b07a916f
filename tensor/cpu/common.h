// Small helpers shared by the CPU backend's files: Eigen maps over tensors and input checks.
#pragma once

#include <Eigen/Core>

#include "tensor/ops.h"

namespace dsmil::cpu {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixMap = Eigen::Map<RowMatrix>;
using ConstMatrixMap = Eigen::Map<const RowMatrix>;
using VectorMap = Eigen::Map<Eigen::VectorXf>;
using ConstVectorMap = Eigen::Map<const Eigen::VectorXf>;

inline MatrixMap as_matrix(const Tensor& t, int64_t rows, int64_t cols) { return MatrixMap(t.f32(), rows, cols); }
inline ConstMatrixMap as_const_matrix(const Tensor& t, int64_t rows, int64_t cols) {
  return ConstMatrixMap(t.f32(), rows, cols);
}

inline Tensor empty_like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), Device::CPU); }

// Elements per OpenMP chunk below which a loop stays on one thread.
constexpr int64_t kParallelGrain = 1 << 15;

// gamma (x - save_mean) save_invstd + beta over x[..., C], with the very float operations by which
// batchnorm_forward_train computes its y (tensor/cpu/batchnorm.cpp): the fused backward recomputes its ReLU
// mask from it, and that mask is the forward's.
Tensor batchnorm_normalise(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& save_mean,
                           const Tensor& save_invstd);

}  // namespace dsmil::cpu
