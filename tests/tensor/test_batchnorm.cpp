// Batch norm on the CPU: the training and eval forward and the running statistics against a direct
// double-precision reference, and the training gradients against central finite differences.
#include <cmath>

#include "tensor/functions.h"
#include "tests/tensor/op_test_util.h"

using namespace dsmil;
using namespace dsmil::test;

TEST_CASE("batch norm forward: training normalises with batch statistics, eval uses running ones") {
  const Shape s{3, 2, 5, 3, 7};
  const int64_t c = 7, m = shape_numel(s) / c;
  const Tensor x = random_tensor(s, -2.0f, 3.0f), gamma = random_tensor({c}, 0.5f, 1.5f), beta = random_tensor({c});
  Tensor rm = random_tensor({c}), rv = random_tensor({c}, 0.5f, 2.0f);
  const auto rm0 = rm.to_vector(), rv0 = rv.to_vector();
  const float momentum = 0.1f, eps = 1e-5f;
  BatchNormTrainOut out = ops::batchnorm_forward_train(x, gamma, beta, rm, rv, momentum, eps);
  const auto xv = x.to_vector(), gv = gamma.to_vector(), bv = beta.to_vector();
  std::vector<double> ref(xv.size()), ref_rm(c), ref_rv(c), ref_eval(xv.size());
  for (int64_t ch = 0; ch < c; ++ch) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < m; ++i) mean += xv[i * c + ch];
    mean /= m;
    for (int64_t i = 0; i < m; ++i) var += (xv[i * c + ch] - mean) * (xv[i * c + ch] - mean);
    for (int64_t i = 0; i < m; ++i)
      ref[i * c + ch] = gv[ch] * (xv[i * c + ch] - mean) / std::sqrt(var / m + eps) + bv[ch];
    ref_rm[ch] = 0.9 * rm0[ch] + 0.1 * mean;
    ref_rv[ch] = 0.9 * rv0[ch] + 0.1 * var / (m - 1);
    for (int64_t i = 0; i < m; ++i)
      ref_eval[i * c + ch] = gv[ch] * (xv[i * c + ch] - ref_rm[ch]) / std::sqrt(ref_rv[ch] + eps) + bv[ch];
  }
  CHECK(max_rel_error("batchnorm train y", out.y.to_vector(), ref, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("batchnorm running mean", rm.to_vector(), ref_rm, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("batchnorm running var", rv.to_vector(), ref_rv, kF32Tol) <= kF32Tol);
  const Tensor ye = ops::batchnorm_forward_eval(x, gamma, beta, rm, rv, eps);
  CHECK(max_rel_error("batchnorm eval y", ye.to_vector(), ref_eval, kF32Tol) <= kF32Tol);
}

TEST_CASE("gradcheck: batch norm in training mode (x, gamma, beta)") {
  Tensor rm = Tensor::zeros({4}), rv = Tensor::full({4}, 1.0f);
  gradcheck(
      "batchnorm", [&](const auto& v) { return fn::batchnorm(v[0], v[1], v[2], rm, rv, true, 0.1f, 1e-5f); },
      {random_tensor({3, 2, 3, 2, 4}, -2.0f, 2.0f), random_tensor({4}, 0.5f, 1.5f), random_tensor({4})}, kH, kTol);
}
