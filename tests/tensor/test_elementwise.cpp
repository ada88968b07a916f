// The elementwise ops on the CPU: their gradients against central finite differences (tests/tensor/op_test_util.h).
#include "tensor/functions.h"
#include "tests/tensor/op_test_util.h"

using namespace dsmil;
using namespace dsmil::test;

TEST_CASE("gradcheck: elementwise add, mul, scale, tanh, sigmoid, relu") {
  gradcheck(
      "add", [](const auto& v) { return fn::add(v[0], v[1]); }, {random_tensor({3, 5}), random_tensor({3, 5})}, kH,
      kTol);
  gradcheck(
      "mul", [](const auto& v) { return fn::mul(v[0], v[1]); }, {random_tensor({3, 5}), random_tensor({3, 5})}, kH,
      kTol);
  gradcheck(
      "scale", [](const auto& v) { return fn::scale(v[0], -1.7f); }, {random_tensor({7})}, kH, kTol);
  gradcheck(
      "tanh", [](const auto& v) { return fn::tanh(v[0]); }, {random_tensor({4, 3}, -2.0f, 2.0f)}, kH, kTol);
  gradcheck(
      "sigmoid", [](const auto& v) { return fn::sigmoid(v[0]); }, {random_tensor({4, 3}, -3.0f, 3.0f)}, kH, kTol);
  gradcheck(
      "relu", [](const auto& v) { return fn::relu(v[0]); }, {spread_tensor({5, 7}, 0.05f)}, kH, kTol);
}
