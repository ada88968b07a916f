// Backward of every differentiable function against central finite differences (tests/test_util.h).
// Tolerances: fp32 forward values, h = 1e-2 on O(1) inputs: truncation ~h^2 |f'''| and rounding
// ~1e-7 |L| / h keep the error near 1e-5 of the gradient scale (seen: at most 3e-5); 2e-3 leaves
// room for neither a wrong factor nor a missing term.
#include <cmath>

#include "tensor/functions.h"
#include "tests/test_util.h"

using namespace dsmil;
using namespace dsmil::test;

namespace {
constexpr double kH = 1e-2;
constexpr double kTol = 2e-3;
}  // namespace

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

TEST_CASE("gradcheck: the same variable used twice accumulates both paths") {
  gradcheck(
      "x*x + x", [](const auto& v) { return fn::add(fn::mul(v[0], v[0]), v[0]); }, {random_tensor({6})}, kH, kTol);
}

TEST_CASE("gradcheck: linear with and without bias") {
  gradcheck(
      "linear+bias", [](const auto& v) { return fn::linear(v[0], v[1], v[2], MathMode{}); },
      {random_tensor({5, 7}), random_tensor({3, 7}), random_tensor({3})}, kH, kTol);
  gradcheck(
      "linear", [](const auto& v) { return fn::linear(v[0], v[1], Variable(), MathMode{}); },
      {random_tensor({4, 3}), random_tensor({2, 3})}, kH, kTol);
}

TEST_CASE("gradcheck: conv3d input and weight, stem-like and block-like geometry") {
  gradcheck(
      "conv3d stem",
      [](const auto& v) {
        return fn::conv3d(v[0], v[1], {{3, 5, 5}, {1, 2, 2}, {1, 2, 2}}, MathMode{});
      },
      {random_tensor({2, 3, 7, 6, 3}), random_tensor({4, 3, 5, 5, 3}, -0.3f, 0.3f)}, kH, kTol);
  gradcheck(
      "conv3d 3x3x3",
      [](const auto& v) {
        return fn::conv3d(v[0], v[1], {{3, 3, 3}, {1, 1, 1}, {1, 1, 1}}, MathMode{});
      },
      {random_tensor({2, 3, 4, 5, 2}), random_tensor({3, 3, 3, 3, 2}, -0.3f, 0.3f)}, kH, kTol);
  gradcheck(
      "conv3d 1x1x1 s2",
      [](const auto& v) {
        return fn::conv3d(v[0], v[1], {{1, 1, 1}, {1, 2, 2}, {0, 0, 0}}, MathMode{});
      },
      {random_tensor({2, 2, 5, 4, 3}), random_tensor({4, 1, 1, 1, 3})}, kH, kTol);
}

TEST_CASE("gradcheck: batch norm in training mode (x, gamma, beta)") {
  Tensor rm = Tensor::zeros({4}), rv = Tensor::full({4}, 1.0f);
  gradcheck(
      "batchnorm", [&](const auto& v) { return fn::batchnorm(v[0], v[1], v[2], rm, rv, true, 0.1f, 1e-5f); },
      {random_tensor({3, 2, 3, 2, 4}, -2.0f, 2.0f), random_tensor({4}, 0.5f, 1.5f), random_tensor({4})}, kH, kTol);
}

TEST_CASE("gradcheck: max pool and global average pool") {
  gradcheck(
      "maxpool3d",
      [](const auto& v) {
        return fn::maxpool3d(v[0], {{1, 3, 3}, {1, 2, 2}, {0, 1, 1}});
      },
      {spread_tensor({2, 2, 5, 6, 3}, 0.05f)}, kH, kTol);
  gradcheck(
      "global_avg_pool", [](const auto& v) { return fn::global_avg_pool(v[0]); }, {random_tensor({3, 2, 3, 4, 5})}, kH,
      kTol);
}

TEST_CASE("gradcheck: dropout and drop-path with a fixed counter") {
  gradcheck(
      "dropout", [](const auto& v) { return fn::dropout(v[0], 0.4f, 99, 7); }, {random_tensor({6, 5})}, kH, kTol);
  gradcheck(
      "drop_path", [](const auto& v) { return fn::drop_path(v[0], 0.5f, 3, 0); }, {random_tensor({6, 2, 3})}, kH, kTol);
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

TEST_CASE("gradcheck: focal loss for gamma 0, 0.5, 2 with smoothing and class weights") {
  const Tensor target = Tensor::from_ints({4}, {1, 0, 0, 1});
  const Tensor weight = Tensor::from_vector({4}, {0.6f, 1.8f, 1.8f, 0.6f});
  for (float gamma : {0.0f, 0.5f, 2.0f})
    gradcheck(
        "focal_loss gamma " + std::to_string(gamma),
        [&](const auto& v) { return fn::focal_loss(v[0], target, weight, 0.2f, gamma); },
        {random_tensor({4, 2}, -3.0f, 3.0f)}, kH, kTol);
}

TEST_CASE("autograd: gradients accumulate across backward passes until zeroed, views route gradients") {
  Variable x(random_tensor({2, 3}), true);
  Variable y = fn::scale(fn::view(x, {6}), 2.0f);
  y.backward(Tensor::full({6}, 1.0f));
  for (float g : x.grad().to_vector()) CHECK(g == 2.0f);
  Variable z = fn::scale(x, 3.0f);
  z.backward(Tensor::full({2, 3}, 1.0f));
  for (float g : x.grad().to_vector()) CHECK(g == 5.0f);
  x.zero_grad();
  CHECK_FALSE(x.has_grad());
  {
    NoGradGuard no_grad;
    CHECK_FALSE(fn::scale(x, 2.0f).requires_grad());
  }
  CHECK_THROWS_AS(fn::scale(Variable(random_tensor({2}), false), 1.0f).backward(), Error);
}

TEST_CASE("ops reject bad shapes with a ShapeError naming the op") {
  CHECK_THROWS_AS(ops::add(random_tensor({2, 3}), random_tensor({3, 2})), ShapeError);
  CHECK_THROWS_AS(ops::matmul(random_tensor({2, 3}), random_tensor({2, 3}), false, false, MathMode{}), ShapeError);
  CHECK_THROWS_AS(ops::conv3d_forward(random_tensor({1, 2, 2, 2, 3}), random_tensor({1, 3, 3, 3, 4}),
                                      {{3, 3, 3}, {1, 1, 1}, {1, 1, 1}}, MathMode{}),
                  ShapeError);
  try {
    ops::add(random_tensor({2, 3}), random_tensor({3, 2}));
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()).find("add") != std::string::npos);
  }
}

TEST_CASE("the backward pass frees each intermediate value once its node has run, unless a Variable holds it") {
  constexpr int kChain = 8;
  const Variable x(random_tensor({1 << 14}), true);
  const size_t value_bytes = (1 << 14) * sizeof(float);
  Variable held, last;
  {
    Variable v = x;
    for (int i = 0; i < kChain; ++i) {
      v = fn::scale(v, 1.5f);
      if (i == 2) held = v;
    }
    last = v;
  }
  const Tensor seed = Tensor::full({1 << 14}, 1.0f);
  const size_t before_backward = host_bytes_in_use();
  std::vector<size_t> in_use;
  set_backward_observer([&](const Tensor&) { in_use.push_back(host_bytes_in_use()); });
  last.backward(seed);
  set_backward_observer({});
  REQUIRE(in_use.size() == kChain);
  // Before the pass: x, the kChain values and the seed (10 values' worth). At the last node: x, `held`,
  // `last`, the node being run, the seed, the gradient passed to that node and x's new gradient (7); had the
  // walk kept every node, 12.
  MESSAGE("host bytes in use before the backward pass " << before_backward << ", at its last node " << in_use.back());
  CHECK(in_use.back() + 2 * value_bytes <= before_backward);
  CHECK(held.value().numel() == (1 << 14));
  CHECK(x.grad().data<float>()[0] == doctest::Approx(std::pow(1.5, kChain)));
}

TEST_CASE("the backward observer sees every node once, after its inputs' users, and can be turned off") {
  const Variable x(random_tensor({3}), true);
  const Variable a = fn::tanh(x), b = fn::scale(a, 2.0f), c = fn::mul(b, a);
  std::vector<const void*> seen;
  set_backward_observer([&](const Tensor& node_value) { seen.push_back(node_value.raw()); });
  Variable(c).backward(Tensor::full({3}, 1.0f));
  set_backward_observer({});
  CHECK(seen == std::vector<const void*>{c.value().raw(), b.value().raw(), a.value().raw()});

  const Variable d = fn::tanh(x);
  Variable(d).backward(Tensor::full({3}, 1.0f));
  CHECK(seen.size() == 3);
}
