// Pooling on the CPU: the max pool's values and argmax against the window maximum, and the gradients of max
// and global average pooling against central finite differences (the global average pool's forward is
// checked in tests/tensor/test_linear.cpp, with matmul and the bias).
#include <algorithm>

#include "tensor/functions.h"
#include "tests/tensor/op_test_util.h"

using namespace dsmil;
using namespace dsmil::test;

TEST_CASE("max pool forward takes the window maximum and records where it was") {
  const Shape s{2, 3, 9, 7, 3};
  const Tensor x = random_tensor(s);
  const Pool3dGeometry g{{1, 3, 3}, {1, 2, 2}, {0, 1, 1}};
  MaxPoolOut out = ops::maxpool3d_forward(x, g);
  const Shape ys = out.y.shape();
  CHECK(ys == Shape{2, 3, 5, 4, 3});
  const auto xv = x.to_vector(), yv = out.y.to_vector(), av = out.argmax.to_vector();
  std::vector<double> ref(yv.size());
  int wrong_argmax = 0;
  for (int64_t n = 0; n < ys[0]; ++n)
    for (int64_t d = 0; d < ys[1]; ++d)
      for (int64_t h = 0; h < ys[2]; ++h)
        for (int64_t w = 0; w < ys[3]; ++w)
          for (int64_t c = 0; c < ys[4]; ++c) {
            double best = -1e30;
            for (int64_t r = 0; r < 3; ++r)
              for (int64_t q = 0; q < 3; ++q) {
                const int64_t ih = h * 2 - 1 + r, iw = w * 2 - 1 + q;
                if (ih >= 0 && ih < s[2] && iw >= 0 && iw < s[3])
                  best = std::max<double>(best, at5(xv, s, n, d, ih, iw, c));
              }
            const int64_t o = (((n * ys[1] + d) * ys[2] + h) * ys[3] + w) * ys[4] + c;
            ref[o] = best;
            // The window is 1 x 3 x 3: position r * 3 + q.
            const int64_t position = static_cast<int64_t>(av[o]), r = position / 3, q = position % 3;
            const int64_t ih = h * 2 - 1 + r, iw = w * 2 - 1 + q;
            const bool inside = position < 9 && ih >= 0 && ih < s[2] && iw >= 0 && iw < s[3];
            wrong_argmax += inside && at5(xv, s, n, d, ih, iw, c) == yv[o] ? 0 : 1;
          }
  CHECK(max_rel_error("maxpool3d", yv, ref, 0.0) == 0.0);
  CHECK(wrong_argmax == 0);
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
