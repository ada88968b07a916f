// CPU matrix products: c[M, N] = op(a) op(b) in fixed row tiles (tensor/cpu/products.h), bias add and its grad.
#include <Eigen/Core>

#include "tensor/cpu/common.h"
#include "tensor/cpu/products.h"

namespace dsmil::cpu {

void fix_eigen_products() {
  // Typical L1 / L2 / L3 sizes of current x86-64 cores; what matters is that they are the same on every machine.
  static const bool fixed = [] {
    Eigen::setNbThreads(1);
    Eigen::setCpuCacheSizes(std::ptrdiff_t{32} << 10, std::ptrdiff_t{1} << 20, std::ptrdiff_t{8} << 20);
    return true;
  }();
  (void)fixed;
}

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const MathMode&) {
  const int64_t m = transpose_a ? a.size(1) : a.size(0);
  const int64_t n = transpose_b ? b.size(0) : b.size(1);
  Tensor c = Tensor::empty({m, n});
  auto A = as_const_matrix(a, a.size(0), a.size(1));
  auto B = as_const_matrix(b, b.size(0), b.size(1));
  auto C = as_matrix(c, m, n);
  if (transpose_a && transpose_b)
    multiply_in_row_tiles(C, A.transpose(), B.transpose());
  else if (transpose_a)
    multiply_in_row_tiles(C, A.transpose(), B);
  else if (transpose_b)
    multiply_in_row_tiles(C, A, B.transpose());
  else
    multiply_in_row_tiles(C, A, B);
  return c;
}

Tensor add_bias(const Tensor& x, const Tensor& bias) {
  Tensor y = Tensor::empty(x.shape());
  as_matrix(y, x.size(0), x.size(1)) =
      as_const_matrix(x, x.size(0), x.size(1)).rowwise() + ConstVectorMap(bias.f32(), x.size(1)).transpose();
  return y;
}

Tensor bias_backward(const Tensor& dy) {
  Tensor db = Tensor::empty({dy.size(1)});
  VectorMap(db.f32(), dy.size(1)) = as_const_matrix(dy, dy.size(0), dy.size(1)).colwise().sum().transpose();
  return db;
}

}  // namespace dsmil::cpu
