// Matrix products of the CPU backend whose results do not depend on the thread count or the machine's caches:
// C's rows in fixed tiles, each tile on one thread through Eigen's single-threaded GEMM with fixed blocking.
#pragma once

#include <algorithm>
#include <cstdint>

#include "tensor/cpu/common.h"

namespace dsmil::cpu {

// Rows of C per tile: enough tiles for the threads of a workstation at the model's convolutions (tens of
// thousands of rows), few enough that re-packing the right-hand side per tile costs nothing.
constexpr int64_t kProductTileRows = 256;

// Eigen computes each product on the calling thread (the tiles are the parallelism) with blocking sizes from fixed
// cache sizes. Eigen's own threading splits C by the thread count and its blocking splits the depth by the caches
// it finds; a sum split differently rounds differently, so the same run gave other predictions on 1 and 2 threads.
void fix_eigen_products();

// C = lhs rhs: lhs [m, k] and rhs [k, n] any Eigen expressions, C [m, n].
template <typename Lhs, typename Rhs>
void multiply_in_row_tiles(MatrixMap c, const Lhs& lhs, const Rhs& rhs) {
  fix_eigen_products();
  const int64_t m = c.rows(), tiles = (m + kProductTileRows - 1) / kProductTileRows;
#pragma omp parallel for schedule(static) if (tiles > 1)
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t first = tile * kProductTileRows, rows = std::min(kProductTileRows, m - first);
    c.middleRows(first, rows).noalias() = lhs.middleRows(first, rows) * rhs;
  }
}

}  // namespace dsmil::cpu
