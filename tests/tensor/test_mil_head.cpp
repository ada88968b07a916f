// The MIL head's ops on the CPU: masked softmax with temperature and its statistics, top-k selection and
// gather_mean, the bag contractions against direct double-precision sums, the temperature refused in the
// dispatch, and the gradients against central finite differences.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "tensor/functions.h"
#include "tests/tensor/op_test_util.h"

using namespace dsmil;
using namespace dsmil::test;

TEST_CASE("masked softmax with temperature and its attention statistics") {
  const int64_t bags = 3, n = 7;
  const Tensor e = random_tensor({bags, n}, -3.0f, 3.0f);
  std::vector<int32_t> mv(bags * n, 1);
  mv[2] = mv[5] = 0;                              // bag 0 has two masked instances
  for (int i = 1; i < n; ++i) mv[2 * n + i] = 0;  // bag 2 keeps only one
  const Tensor mask = Tensor::from_ints({bags, n}, mv);
  const float temperature = 0.7f;
  MaskedSoftmaxOut out = ops::masked_softmax(e, mask, temperature);
  const auto ev = e.to_vector();
  std::vector<double> ref(bags * n, 0.0), stats(bags * 3);
  for (int64_t b = 0; b < bags; ++b) {
    double z = 0.0;
    for (int64_t i = 0; i < n; ++i) z += mv[b * n + i] ? std::exp(ev[b * n + i] / temperature) : 0.0;
    double ent = 0.0, top = 0.0, sq = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double a = mv[b * n + i] ? std::exp(ev[b * n + i] / temperature) / z : 0.0;
      ref[b * n + i] = a;
      ent -= a > 0 ? a * std::log(a) : 0.0;
      top = std::max(top, a);
      sq += a * a;
    }
    stats[b * 3] = ent;
    stats[b * 3 + 1] = top;
    stats[b * 3 + 2] = 1.0 / sq;
  }
  CHECK(max_rel_error("masked_softmax", out.a.to_vector(), ref, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("attention stats", out.stats.to_vector(), stats, kF32Tol) <= kF32Tol);
  CHECK(out.a.to_vector()[2 * n] == doctest::Approx(1.0));  // a single kept instance takes all
}

TEST_CASE("masked softmax and its backward refuse a temperature that is not > 0, in the dispatch") {
  const Tensor e = random_tensor({2, 5}), mask = Tensor::from_ints({2, 5}, std::vector<int>(10, 1));
  for (const float temperature : {0.0f, -0.5f, NAN}) {
    CAPTURE(temperature);
    CHECK_THROWS_WITH_AS(ops::masked_softmax(e, mask, temperature),
                         ("masked_softmax: temperature must be > 0, got " + fmt::format("{}", temperature)).c_str(),
                         ShapeError);
    CHECK_THROWS_WITH_AS(
        ops::masked_softmax_backward(e, e, temperature),
        ("masked_softmax_backward: temperature must be > 0, got " + fmt::format("{}", temperature)).c_str(),
        ShapeError);
  }
}

TEST_CASE("top-k selection: descending, ties to the lower index, masked never chosen, -1 fills") {
  const Tensor score = Tensor::from_vector({2, 6}, {0.5f, 2.0f, 2.0f, -1.0f, 3.0f, 0.0f,  //
                                                    1.0f, 9.0f, 2.0f, 3.0f, 4.0f, 5.0f});
  const Tensor mask = Tensor::from_ints({2, 6}, {1, 1, 1, 1, 0, 1,  //
                                                 0, 0, 1, 0, 1, 0});
  const auto idx = ops::topk_indices(score, mask, 3).to_vector();
  CHECK(idx == std::vector<float>{1, 2, 0, 4, 2, -1});
  // gather_mean over the valid indices only
  const Tensor x = random_tensor({2, 6, 4});
  const auto xv = x.to_vector(), y = ops::gather_mean(x, ops::topk_indices(score, mask, 3)).to_vector();
  std::vector<double> ref(8);
  for (int f = 0; f < 4; ++f) {
    ref[f] = (xv[(0 * 6 + 1) * 4 + f] + xv[(0 * 6 + 2) * 4 + f] + xv[(0 * 6 + 0) * 4 + f]) / 3.0;
    ref[4 + f] = (xv[(1 * 6 + 4) * 4 + f] + xv[(1 * 6 + 2) * 4 + f]) / 2.0;
  }
  CHECK(max_rel_error("gather_mean", y, ref, kF32Tol) <= kF32Tol);
}

TEST_CASE("bag contractions weighted_sum, dot, outer") {
  const int64_t bags = 3, n = 5, f = 4;
  const Tensor a = random_tensor({bags, n}), v = random_tensor({bags, n, f}), m = random_tensor({bags, f});
  const auto av = a.to_vector(), vv = v.to_vector(), mv = m.to_vector();
  std::vector<double> ws(bags * f, 0.0), dot(bags * n, 0.0), outer(bags * n * f);
  for (int64_t b = 0; b < bags; ++b)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < f; ++k) {
        ws[b * f + k] += static_cast<double>(av[b * n + i]) * vv[(b * n + i) * f + k];
        dot[b * n + i] += static_cast<double>(vv[(b * n + i) * f + k]) * mv[b * f + k];
        outer[(b * n + i) * f + k] = static_cast<double>(av[b * n + i]) * mv[b * f + k];
      }
  CHECK(max_rel_error("bag_weighted_sum", ops::bag_weighted_sum(a, v).to_vector(), ws, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("bag_dot", ops::bag_dot(v, m).to_vector(), dot, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("bag_outer", ops::bag_outer(a, m).to_vector(), outer, kF32Tol) <= kF32Tol);
}

TEST_CASE("gradcheck: masked softmax, gather mean, bag contractions") {
  const Tensor mask = Tensor::from_ints({2, 5}, {1, 1, 0, 1, 1, 1, 0, 1, 1, 1});
  gradcheck(
      "masked_softmax T=0.6", [&](const auto& v) { return fn::masked_softmax(v[0], mask, 0.6f, nullptr); },
      {random_tensor({2, 5}, -2.0f, 2.0f)}, kH, kTol);
  const Tensor idx = Tensor::from_ints({2, 3}, {4, 0, 3, 2, -1, -1});
  gradcheck(
      "gather_mean", [&](const auto& v) { return fn::gather_mean(v[0], idx); }, {random_tensor({2, 5, 3})}, kH, kTol);
  gradcheck(
      "bag_weighted_sum", [](const auto& v) { return fn::bag_weighted_sum(v[0], v[1]); },
      {random_tensor({2, 4}), random_tensor({2, 4, 3})}, kH, kTol);
  gradcheck(
      "bag_dot", [](const auto& v) { return fn::bag_dot(v[0], v[1]); },
      {random_tensor({2, 4, 3}), random_tensor({2, 3})}, kH, kTol);
}
