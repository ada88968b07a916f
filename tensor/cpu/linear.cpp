// CPU matrix products: c[M, N] = op(a) op(b) through Eigen's multithreaded GEMM, bias add and its grad.
#include "tensor/cpu/common.h"

namespace dsmil::cpu {

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const MathMode&) {
  const int64_t m = transpose_a ? a.size(1) : a.size(0);
  const int64_t n = transpose_b ? b.size(0) : b.size(1);
  Tensor c = Tensor::empty({m, n});
  auto A = as_const_matrix(a, a.size(0), a.size(1));
  auto B = as_const_matrix(b, b.size(0), b.size(1));
  auto C = as_matrix(c, m, n);
  if (transpose_a && transpose_b)
    C.noalias() = A.transpose() * B.transpose();
  else if (transpose_a)
    C.noalias() = A.transpose() * B;
  else if (transpose_b)
    C.noalias() = A * B.transpose();
  else
    C.noalias() = A * B;
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
