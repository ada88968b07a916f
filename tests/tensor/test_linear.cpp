// The linear ops on the CPU: matmul (every transpose) and the bias add and its gradient against direct sums, with
// the global average pool's forward (pooling, tests/tensor/test_pooling.cpp) in the same case; fn::linear's
// gradients against central finite differences; matmul's bits whatever the thread count.
#include <string>

#include "tensor/functions.h"
#include "tests/tensor/op_test_util.h"

using namespace dsmil;
using namespace dsmil::test;

TEST_CASE("global average pool, matmul and bias against direct sums") {
  const Tensor x = random_tensor({3, 2, 5, 3, 6});
  const auto xv = x.to_vector();
  std::vector<double> ref(18, 0.0);
  for (int64_t n = 0; n < 3; ++n)
    for (int64_t v = 0; v < 30; ++v)
      for (int64_t c = 0; c < 6; ++c) ref[n * 6 + c] += xv[(n * 30 + v) * 6 + c] / 30.0;
  CHECK(max_rel_error("global_avg_pool", ops::global_avg_pool(x).to_vector(), ref, kF32Tol) <= kF32Tol);

  for (int flags = 0; flags < 4; ++flags) {
    const bool ta = flags & 1, tb = flags & 2;
    const int64_t m = 7, k = 5, n = 3;
    const Tensor a = random_tensor(ta ? Shape{k, m} : Shape{m, k}), b = random_tensor(tb ? Shape{n, k} : Shape{k, n});
    const auto av = a.to_vector(), bv = b.to_vector();
    std::vector<double> c(m * n, 0.0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t l = 0; l < k; ++l)
          c[i * n + j] +=
              static_cast<double>(ta ? av[l * m + i] : av[i * k + l]) * (tb ? bv[j * k + l] : bv[l * n + j]);
    CHECK(max_rel_error("matmul flags " + std::to_string(flags), ops::matmul(a, b, ta, tb, MathMode{}).to_vector(), c,
                        kF32Tol) <= kF32Tol);
  }
  const Tensor y = random_tensor({4, 3}), bias = random_tensor({3});
  std::vector<double> yb(12), db(3, 0.0);
  for (int i = 0; i < 12; ++i) yb[i] = y.to_vector()[i] + bias.to_vector()[i % 3];
  for (int i = 0; i < 12; ++i) db[i % 3] += y.to_vector()[i];
  CHECK(max_rel_error("add_bias", ops::add_bias(y, bias).to_vector(), yb, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("bias_backward", ops::bias_backward(y).to_vector(), db, kF32Tol) <= kF32Tol);
}

TEST_CASE("gradcheck: linear with and without bias") {
  gradcheck(
      "linear+bias", [](const auto& v) { return fn::linear(v[0], v[1], v[2], MathMode{}); },
      {random_tensor({5, 7}), random_tensor({3, 7}), random_tensor({3})}, kH, kTol);
  gradcheck(
      "linear", [](const auto& v) { return fn::linear(v[0], v[1], Variable(), MathMode{}); },
      {random_tensor({4, 3}), random_tensor({2, 3})}, kH, kTol);
}

TEST_CASE("matmul gives the same bits on 1, 2 and 3 threads, every transpose") {
  // m = 700: three row tiles of 256; k = 1200: a depth that Eigen's own threading blocks differently on 2 and 3
  // threads than on one (seen: every transpose differed before the fixed tiles).
  const int64_t m = 700, k = 1200, n = 200;
  for (int flags = 0; flags < 4; ++flags) {
    const bool ta = flags & 1, tb = flags & 2;
    const Tensor a = random_tensor(ta ? Shape{k, m} : Shape{m, k}), b = random_tensor(tb ? Shape{n, k} : Shape{k, n});
    check_same_on_thread_counts("matmul flags " + std::to_string(flags), [&] {
      return std::vector<std::vector<float>>{ops::matmul(a, b, ta, tb, MathMode{}).to_vector()};
    });
  }
}
