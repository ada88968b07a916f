// conv3d on the CPU: the forward against a direct double-precision sum at several geometries, the gradients of
// input and weight against central finite differences, and the same bits whatever the thread count.
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

TEST_CASE("conv3d and its gradients give the same bits on 1, 2 and 3 threads") {
  // 2 x 4 x 24 x 24 = 4608 output voxels: 18 product tiles of 256 rows, 5 filter-gradient chunks of 1024 rows
  // (seen: Eigen's own threading gave another filter gradient on 2 and 3 threads than on one).
  const Tensor x = random_tensor({2, 4, 24, 24, 8}), w = random_tensor({16, 3, 3, 3, 8}, -0.3f, 0.3f);
  const Conv3dGeometry g{{3, 3, 3}, {1, 1, 1}, {1, 1, 1}};
  const Tensor dy = random_tensor(ops::conv3d_output_shape(x.shape(), w.shape(), g));
  check_same_on_thread_counts("conv3d", [&] {
    return std::vector<std::vector<float>>{ops::conv3d_forward(x, w, g, MathMode{}).to_vector(),
                                           ops::conv3d_backward_data(dy, w, x.shape(), g, MathMode{}).to_vector(),
                                           ops::conv3d_backward_filter(x, dy, w.shape(), g, MathMode{}).to_vector()};
  });
}
