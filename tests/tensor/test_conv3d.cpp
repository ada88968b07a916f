// conv3d on the CPU: the forward against a direct double-precision sum at several geometries, and the gradients
// of input and weight against central finite differences.
#include "tensor/functions.h"
#include "tests/tensor/op_test_util.h"

using namespace dsmil;
using namespace dsmil::test;

TEST_CASE("conv3d forward matches the direct sum (several geometries)") {
  struct Case {
    Shape x, w;
    Conv3dGeometry g;
  };
  const std::vector<Case> cases = {
      {{2, 3, 9, 7, 4}, {5, 3, 7, 7, 4}, {{3, 7, 7}, {1, 2, 2}, {1, 3, 3}}},  // the stem
      {{3, 3, 5, 6, 3}, {4, 3, 3, 3, 3}, {{3, 3, 3}, {1, 1, 1}, {1, 1, 1}}},  // a block conv
      {{2, 1, 7, 5, 6}, {3, 1, 1, 1, 6}, {{1, 1, 1}, {1, 2, 2}, {0, 0, 0}}},  // a projection shortcut
      {{1, 4, 6, 5, 2}, {3, 2, 3, 2, 2}, {{2, 3, 2}, {2, 1, 3}, {0, 1, 1}}},  // uneven everything
  };
  for (const Case& c : cases) {
    const Tensor x = random_tensor(c.x), w = random_tensor(c.w);
    const Tensor y = ops::conv3d_forward(x, w, c.g, MathMode{});
    CHECK(y.shape() == ops::conv3d_output_shape(c.x, c.w, c.g));
    CHECK(max_rel_error("conv3d " + shape_str(c.x) + "*" + shape_str(c.w), y.to_vector(), conv3d_reference(x, w, c.g),
                        kF32Tol) <= kF32Tol);
  }
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
