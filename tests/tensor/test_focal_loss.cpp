// The focal loss on the CPU: its refusals in the dispatch and NaN for bad targets, the forward against a
// direct double-precision sum, and the gradient against central finite differences.
#include <cmath>
#include <string>

#include <fmt/format.h>

#include "tensor/functions.h"
#include "tests/tensor/op_test_util.h"

using namespace dsmil;
using namespace dsmil::test;

TEST_CASE(
    "focal loss refuses shapes, dtypes and gamma in the dispatch, and gives NaN for bad targets or zero weights") {
  const Tensor logits = random_tensor({4, 2}, -3.0f, 3.0f);
  const Tensor target = Tensor::from_ints({4}, {1, 0, 1, 0});
  const Tensor weight = Tensor::from_vector({4}, {0.7f, 2.0f, 0.7f, 2.0f});
  CHECK_THROWS_WITH_AS(ops::focal_loss(logits, Tensor::from_ints({3}, {1, 0, 1}), weight, 0.1f, 2.0f),
                       "focal_loss: logits f32[4,2] cpu, target i32[3] cpu and weight f32[4] cpu do not fit (expected "
                       "[B, C >= 1], [B], [B])",
                       ShapeError);
  CHECK_THROWS_AS(ops::focal_loss(logits, target, Tensor::from_vector({4, 1}, {1, 1, 1, 1}), 0.1f, 2.0f), ShapeError);
  CHECK_THROWS_AS(ops::focal_loss(random_tensor({4}), target, weight, 0.1f, 2.0f), ShapeError);
  CHECK_THROWS_AS(ops::focal_loss(logits, weight, weight, 0.1f, 2.0f), ShapeError);  // target must be I32
  for (const float gamma : {-1.0f, NAN}) {
    CAPTURE(gamma);
    CHECK_THROWS_WITH_AS(ops::focal_loss(logits, target, weight, 0.1f, gamma),
                         fmt::format("focal_loss: gamma {} must be >= 0", gamma).c_str(), ShapeError);
  }
  // Values are the device's to see: a target outside [0, C) poisons its sample, its gradient row and the loss.
  const FocalLossOut bad_target = ops::focal_loss(logits, Tensor::from_ints({4}, {1, 2, 0, -1}), weight, 0.1f, 2.0f);
  const std::vector<float> per_sample = bad_target.per_sample.to_vector(), grad = bad_target.grad.to_vector();
  CHECK(std::isnan(bad_target.loss.to_vector()[0]));
  for (int b = 0; b < 4; ++b) {
    CAPTURE(b);
    const bool outside = b == 1 || b == 3;
    CHECK(std::isnan(per_sample[b]) == outside);
    CHECK(std::isnan(grad[2 * b]) == outside);
    CHECK(std::isnan(grad[2 * b + 1]) == outside);
  }
  const FocalLossOut unweighted = ops::focal_loss(logits, target, Tensor::zeros({4}), 0.1f, 2.0f);
  CHECK(!std::isfinite(unweighted.loss.to_vector()[0]));
  CHECK(!ops::all_finite(unweighted.grad));
  CHECK(ops::all_finite(unweighted.per_sample));
}

TEST_CASE("focal loss forward: smoothed CE at gamma 0, focal weights, class weights") {
  const Tensor logits = random_tensor({5, 2}, -3.0f, 3.0f);
  const Tensor target = Tensor::from_ints({5}, {1, 0, 1, 1, 0});
  const Tensor weight = Tensor::from_vector({5}, {0.7f, 2.0f, 0.7f, 0.7f, 2.0f});
  const auto lv = logits.to_vector();
  for (float gamma : {0.0f, 2.0f, 0.5f}) {
    const float eps = 0.2f;
    double num = 0.0, den = 0.0;
    for (int b = 0; b < 5; ++b) {
      const int t = target.to_vector()[b];
      const double z = std::exp(lv[b * 2]) + std::exp(lv[b * 2 + 1]);
      double l = 0.0;
      for (int c = 0; c < 2; ++c) {
        const double p = std::exp(lv[b * 2 + c]) / z;
        const double q = (c == t ? 1.0 - eps : 0.0) + eps / 2;
        l -= q * std::pow(1.0 - p, gamma) * std::log(p);
      }
      num += weight.to_vector()[b] * l;
      den += weight.to_vector()[b];
    }
    const FocalLossOut out = ops::focal_loss(logits, target, weight, eps, gamma);
    CHECK(max_rel_error("focal_loss gamma " + std::to_string(gamma), out.loss.to_vector(), {num / den}, kF32Tol) <=
          kF32Tol);
  }
}

TEST_CASE("gradcheck: focal loss for gamma 0, 0.5, 2 with smoothing and class weights") {
  const Tensor target = Tensor::from_ints({4}, {1, 0, 0, 1});
  const Tensor weight = Tensor::from_vector({4}, {0.6f, 1.8f, 1.8f, 0.6f});
  for (float gamma : {0.0f, 0.5f, 2.0f})
    gradcheck(
        "focal_loss gamma " + std::to_string(gamma),
        [&](const auto& v) { return fn::focal_loss(v[0], target, weight, 0.2f, gamma); },
        {random_tensor({4, 2}, -3.0f, 3.0f)}, kH, kTol);
}
