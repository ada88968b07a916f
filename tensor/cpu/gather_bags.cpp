// CPU bag gather: x[B n, S, H, W, 4] f32 of B bags from host case volumes (fp16 image [4][D][H][W], u8 mask),
// each bag flipped, shifted and intensity-augmented (contract: tensor/op_declarations.inc; checked by ops::).
#include <cstring>

#include "base/half.h"
#include "tensor/cpu/common.h"

namespace dsmil::cpu {

namespace {

// One slab of `bag`: slices [start, start + S) of its volume into out[S][H][W][4]. Built with -ffp-contract=off
// (tensor/CMakeLists.txt): the multiply and the add round separately, as in the CUDA kernel.
void gather_slab(const BagGather& bag, int32_t start, const BagGatherGeometry& g, float* out) {
  const int64_t H = g.height, W = g.width, slice = H * W, voxels = g.depth * slice;
  const auto& table = half_to_float_table();
  for (int64_t z = start; z < start + g.slab_depth; ++z)
    for (int64_t y = 0; y < H; ++y) {
      const int64_t sy = y - bag.shift_y;
      for (int64_t x = 0; x < W; ++x, out += 4) {
        const int64_t u = x - bag.shift_x, sx = bag.flip ? W - 1 - u : u;
        if (sy < 0 || sy >= H || sx < 0 || sx >= W) continue;  // the output is zeroed
        const int64_t source = z * slice + sy * W + sx;
        if (bag.mask[source] == 0) continue;
        for (int c = 0; c < 4; ++c) out[c] = table[bag.image[c * voxels + source]] * bag.scale[c] + bag.offset[c];
      }
    }
}

}  // namespace

Tensor gather_bags(Device, std::span<const BagGather> bags, std::span<const int32_t> starts, const BagGatherGeometry& g,
                   DType) {
  const auto n = g.instances_per_bag;
  const int64_t rows = static_cast<int64_t>(bags.size()) * n, row_floats = g.slab_depth * g.height * g.width * 4;
  Tensor x = Tensor::empty({rows, g.slab_depth, g.height, g.width, 4});
  std::memset(x.f32(), 0, static_cast<size_t>(x.numel()) * sizeof(float));
#pragma omp parallel for schedule(dynamic)
  for (int64_t row = 0; row < rows; ++row) {
    const BagGather& bag = bags[row / n];
    if (row % n < bag.instances) gather_slab(bag, starts[row], g, x.f32() + row * row_floats);
  }
  return x;
}

}  // namespace dsmil::cpu
