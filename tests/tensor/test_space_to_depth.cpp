// The space-to-depth fold on the CPU: a strided convolution run on the folded input and filter gives the
// direct sum's y and the unfolded convolution's dx and dw.
#include "tests/tensor/op_test_util.h"

using namespace dsmil;
using namespace dsmil::test;

TEST_CASE("the space-to-depth fold of a strided convolution gives the same y, dx and dw") {
  struct Case {
    Shape x, w;
    Conv3dGeometry g;
    int64_t folded_c;
  };
  const std::vector<Case> cases = {
      {{2, 3, 9, 7, 4}, {5, 3, 7, 7, 4}, {{3, 7, 7}, {1, 2, 2}, {1, 3, 3}}, 16},    // the stem, odd H and W
      {{2, 3, 10, 12, 4}, {5, 3, 7, 7, 4}, {{3, 7, 7}, {1, 2, 2}, {1, 3, 3}}, 32},  // widened with zeros
      {{1, 2, 11, 9, 3}, {4, 1, 7, 7, 3}, {{1, 7, 7}, {1, 2, 2}, {0, 3, 3}}, 12},   // kd = 1, C = 3
      {{2, 4, 8, 9, 2}, {3, 3, 3, 5, 2}, {{3, 3, 5}, {2, 3, 2}, {1, 1, 2}}, 16},    // uneven blocks, depth stride
  };
  for (const Case& c : cases) {
    const Conv3dFold f = ops::conv3d_fold(c.x, c.w, c.g, c.folded_c);
    const Tensor x = random_tensor(c.x), w = random_tensor(c.w);
    const Tensor xs = ops::space_to_depth(x, f.x_fold), ws = ops::space_to_depth(w, f.w_fold);
    const std::string name = "fold " + shape_str(c.x) + "*" + shape_str(c.w);
    const Tensor y = ops::conv3d_forward(xs, ws, f.geometry, MathMode{});
    REQUIRE(y.shape() == ops::conv3d_output_shape(c.x, c.w, c.g));
    CHECK(max_rel_error(name + " y", y.to_vector(), conv3d_reference(x, w, c.g), kF32Tol) <= kF32Tol);
    const Tensor dy = random_tensor(y.shape());
    const Tensor dx =
        ops::depth_to_space(ops::conv3d_backward_data(dy, ws, xs.shape(), f.geometry, MathMode{}), f.x_fold, c.x);
    CHECK(max_rel_error(name + " dx", dx.to_vector(),
                        to_double(ops::conv3d_backward_data(dy, w, c.x, c.g, MathMode{}).to_vector()),
                        kF32Tol) <= kF32Tol);
    const Tensor dw =
        ops::depth_to_space(ops::conv3d_backward_filter(xs, dy, ws.shape(), f.geometry, MathMode{}), f.w_fold, c.w);
    CHECK(max_rel_error(name + " dw", dw.to_vector(),
                        to_double(ops::conv3d_backward_filter(x, dy, c.w, c.g, MathMode{}).to_vector()),
                        kF32Tol) <= kF32Tol);
  }
}
