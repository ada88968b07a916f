// The autograd machinery on the CPU: a variable used twice accumulates both paths, gradients accumulate until
// zeroed and pass through views, the backward pass frees intermediates, and the backward observer.
#include <cmath>

#include "tensor/functions.h"
#include "tests/tensor/op_test_util.h"

using namespace dsmil;
using namespace dsmil::test;

TEST_CASE("gradcheck: the same variable used twice accumulates both paths") {
  gradcheck(
      "x*x + x", [](const auto& v) { return fn::add(fn::mul(v[0], v[0]), v[0]); }, {random_tensor({6})}, kH, kTol);
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

TEST_CASE("the graph keeps a value only for a backward that reads it") {
  constexpr int kChain = 8;
  const size_t value_bytes = (1 << 14) * sizeof(float);
  const Variable x(random_tensor({1 << 14}), true);
  const size_t before = host_bytes_in_use();
  Variable scaled = x, squashed = x;
  for (int i = 0; i < kChain; ++i) scaled = fn::scale(scaled, 1.5f);
  const size_t after_scaling = host_bytes_in_use();
  for (int i = 0; i < kChain; ++i) squashed = fn::tanh(squashed);
  const size_t after_tanh = host_bytes_in_use();
  MESSAGE("bytes held by " << kChain << " scalings " << after_scaling - before << ", by " << kChain << " tanh "
                           << after_tanh - after_scaling << " (one value " << value_bytes << ")");
  // A scaling's backward reads no value: only the chain's last value is held (its Variable). Each tanh's
  // backward reads its output: all of them are held until the backward pass.
  CHECK(after_scaling - before == value_bytes);
  CHECK(after_tanh - after_scaling == kChain * value_bytes);
  scaled.backward(Tensor::full({1 << 14}, 1.0f));
  CHECK(x.grad().data<float>()[0] == doctest::Approx(std::pow(1.5, kChain)));
}

TEST_CASE("the backward pass frees each intermediate value once its node has run, unless a Variable holds it") {
  constexpr int kChain = 8;
  const Variable x(random_tensor({1 << 14}), true);
  const size_t value_bytes = (1 << 14) * sizeof(float);
  Variable held, last;
  {
    Variable v = x;
    for (int i = 0; i < kChain; ++i) {
      v = fn::tanh(v);
      if (i == 2) held = v;
    }
    last = v;
  }
  const Tensor seed = Tensor::full({1 << 14}, 1.0f);
  const size_t before_backward = host_bytes_in_use();
  std::vector<size_t> in_use;
  set_backward_observer([&](const Shape&, DType) { in_use.push_back(host_bytes_in_use()); });
  last.backward(seed);
  set_backward_observer({});
  REQUIRE(in_use.size() == kChain);
  // Before the pass: x, the kChain values and the seed (10 values' worth). At the last node: x, `held`,
  // `last`, the node being run, the seed, the gradient passed to that node and x's new gradient (7); had the
  // walk kept every node, 12.
  MESSAGE("host bytes in use before the backward pass " << before_backward << ", at its last node " << in_use.back());
  CHECK(in_use.back() + 2 * value_bytes <= before_backward);
  CHECK(held.value().numel() == (1 << 14));
  double expected = x.value().data<float>()[0], derivative = 1.0;
  for (int i = 0; i < kChain; ++i) {
    expected = std::tanh(expected);
    derivative *= 1.0 - expected * expected;
  }
  CHECK(x.grad().data<float>()[0] == doctest::Approx(derivative).epsilon(1e-4));
}

TEST_CASE("the backward observer sees every node once, after its inputs' users, and can be turned off") {
  const Variable x(random_tensor({2, 3}), true);
  const Variable a = fn::tanh(x), b = fn::view(fn::scale(a, 2.0f), {3, 2}), c = fn::mul(b, fn::view(a, {3, 2}));
  std::vector<Shape> seen;
  set_backward_observer([&](const Shape& shape, DType) { seen.push_back(shape); });
  Variable(c).backward(Tensor::full({3, 2}, 1.0f));
  set_backward_observer({});
  // c, then its two inputs' views and the scale (in either order), then a, which they all use.
  REQUIRE(seen.size() == 5);
  CHECK(seen.front() == Shape{3, 2});
  CHECK(seen.back() == Shape{2, 3});

  const Variable d = fn::tanh(x);
  Variable(d).backward(Tensor::full({2, 3}, 1.0f));
  CHECK(seen.size() == 5);
}
