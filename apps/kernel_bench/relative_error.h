// The relative max error of an output against its reference, max |got - ref| / max |ref|, over two float
// vectors of one length: header-only, shared by the kernel bench's check and the GPU tests' comparisons.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace dsmil::kernel_bench {

// max |got - ref| / max |ref| (absolute where ref is all zeros); NaN or infinity anywhere gives infinity.
inline double relative_max_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double scale = 0.0, worst = 0.0;
  for (float r : ref) scale = std::max(scale, std::fabs(static_cast<double>(r)));
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
    worst = std::isfinite(err) ? std::max(worst, err) : INFINITY;
  }
  return scale > 0.0 ? worst / scale : worst;
}

}  // namespace dsmil::kernel_bench
