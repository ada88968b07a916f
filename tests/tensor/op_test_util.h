// Tolerances and references shared by the per-op CPU tests of tests/tensor/ (test_<op group>.cpp): the forward
// checks' fp32 tolerance and direct conv3d sum, and the finite-difference step and tolerance of the gradchecks
// (tests/test_util.h).
#pragma once

#include <omp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tensor/ops.h"
#include "tests/test_util.h"

namespace dsmil::test {

// fp32 ops against double references over short sums: a few ulps of the largest term.
constexpr double kF32Tol = 1e-5;

// Backward of every differentiable function against central finite differences.
// Tolerances: fp32 forward values, h = 1e-2 on O(1) inputs: truncation ~h^2 |f'''| and rounding
// ~1e-7 |L| / h keep the error near 1e-5 of the gradient scale (seen: at most 3e-5); 2e-3 leaves
// room for neither a wrong factor nor a missing term.
constexpr double kH = 1e-2;
constexpr double kTol = 2e-3;

// Runs `outputs` (the ops' results as float vectors) on 1, 2 and 3 OpenMP threads and checks that every output
// has the same bits each time: the CPU backend's results must not depend on the machine's core count (a run and
// `dsmil reproduce` of it on another machine give the same predictions).
template <typename F>
void check_same_on_thread_counts(const std::string& what, F outputs) {
  const int threads_before = omp_get_max_threads();
  std::vector<std::vector<std::vector<float>>> runs;  // [threads - 1][output]
  for (const int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    runs.push_back(outputs());
  }
  omp_set_num_threads(threads_before);  // before any check can end the test case
  for (size_t t = 1; t < runs.size(); ++t) {
    REQUIRE(runs[t].size() == runs[0].size());
    for (size_t k = 0; k < runs[0].size(); ++k)
      CHECK_MESSAGE(runs[t][k] == runs[0][k], what << " output " << k << " on " << t + 1 << " threads differs from 1");
  }
}

inline float at5(const std::vector<float>& v, const Shape& s, int64_t a, int64_t b, int64_t c, int64_t d, int64_t e) {
  return v[(((a * s[1] + b) * s[2] + c) * s[3] + d) * s[4] + e];
}

inline std::vector<double> conv3d_reference(const Tensor& x, const Tensor& w, const Conv3dGeometry& g) {
  const Shape xs = x.shape(), ws = w.shape(), ys = ops::conv3d_output_shape(xs, ws, g);
  const auto xv = x.to_vector(), wv = w.to_vector();
  std::vector<double> y(shape_numel(ys), 0.0);
  for (int64_t n = 0; n < ys[0]; ++n)
    for (int64_t od = 0; od < ys[1]; ++od)
      for (int64_t oh = 0; oh < ys[2]; ++oh)
        for (int64_t ow = 0; ow < ys[3]; ++ow)
          for (int64_t k = 0; k < ys[4]; ++k) {
            double acc = 0.0;
            for (int64_t t = 0; t < ws[1]; ++t)
              for (int64_t r = 0; r < ws[2]; ++r)
                for (int64_t s = 0; s < ws[3]; ++s) {
                  const int64_t id = od * g.stride[0] - g.pad[0] + t, ih = oh * g.stride[1] - g.pad[1] + r,
                                iw = ow * g.stride[2] - g.pad[2] + s;
                  if (id < 0 || id >= xs[1] || ih < 0 || ih >= xs[2] || iw < 0 || iw >= xs[3]) continue;
                  for (int64_t c = 0; c < xs[4]; ++c)
                    acc += static_cast<double>(at5(xv, xs, n, id, ih, iw, c)) * at5(wv, ws, k, t, r, s, c);
                }
            y[(((n * ys[1] + od) * ys[2] + oh) * ys[3] + ow) * ys[4] + k] = acc;
          }
  return y;
}

}  // namespace dsmil::test
