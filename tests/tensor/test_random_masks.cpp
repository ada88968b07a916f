// Dropout and drop-path on the CPU: the masks follow the counter-based generator exactly, the generator is
// uniform, and the gradients agree with central finite differences at a fixed counter.
#include <cmath>
#include <cstdlib>

#include "base/counter_rng.h"
#include "tensor/functions.h"
#include "tests/tensor/op_test_util.h"

using namespace dsmil;
using namespace dsmil::test;

TEST_CASE("dropout and drop-path follow the counter-based mask exactly") {
  const Tensor x = random_tensor({4, 3, 5, 2});
  const float p = 0.3f;
  const uint64_t seed = rng()(), offset = 1234;
  const auto xv = x.to_vector(), yv = ops::dropout(x, p, seed, offset).to_vector();
  std::vector<double> ref(xv.size());
  int64_t kept = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    const bool keep = counter_uniform(seed, offset + i) >= p;
    kept += keep;
    ref[i] = keep ? xv[i] / (1.0 - p) : 0.0;
  }
  CHECK(max_rel_error("dropout", yv, ref, kF32Tol) <= kF32Tol);
  CHECK(kept > 0);
  CHECK(kept < static_cast<int64_t>(xv.size()));
  const auto dv = ops::drop_path(x, p, seed, offset).to_vector();
  const int64_t per = 30;
  for (int64_t n = 0; n < 4; ++n) {
    const bool keep = counter_uniform(seed, offset + n) >= p;
    for (int64_t i = 0; i < per; ++i) ref[n * per + i] = keep ? xv[n * per + i] / (1.0 - p) : 0.0;
  }
  CHECK(max_rel_error("drop_path", dv, ref, kF32Tol) <= kF32Tol);
}

TEST_CASE("the counter-based generator is uniform enough for masks") {
  const uint64_t seed = rng()();
  const int n = 200000;
  std::vector<int> bins(10, 0);
  for (int i = 0; i < n; ++i) {
    const float u = counter_uniform(seed, i);
    REQUIRE(u >= 0.0f);
    REQUIRE(u < 1.0f);
    ++bins[static_cast<int>(u * 10)];
  }
  // Each bin ~ Binomial(n, 0.1): sd = 134; 6 sd leaves no room for a biased generator.
  for (int b : bins) CHECK(std::abs(b - n / 10) < 6 * 134);
}

TEST_CASE("gradcheck: dropout and drop-path with a fixed counter") {
  gradcheck(
      "dropout", [](const auto& v) { return fn::dropout(v[0], 0.4f, 99, 7); }, {random_tensor({6, 5})}, kH, kTol);
  gradcheck(
      "drop_path", [](const auto& v) { return fn::drop_path(v[0], 0.5f, 3, 0); }, {random_tensor({6, 2, 3})}, kH, kTol);
}
