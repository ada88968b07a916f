// Bag gather with augmentation: out[bag, i, s, y, x, c] = mask ? half(image[c, z, sy, sx]) * scale[c] + offset[c] : 0
// for slab start z0 = starts[bag, i], z = z0 + s; image [4][D][H][W] fp16, mask [D][H][W] u8; out [B][n][S][H][W][4].
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

// One bag of a batch: its case's resident arrays, how many of its n instance rows hold slabs (the rest
// are written as zeros), and its augmentation, field for field data::BagAugmentation: output (y, x) reads
// source row sy = y - shift_y and column sx = u or W-1-u (flip) with u = x - shift_x; a source outside
// the grid gives 0.
struct GatherBagJob {
  const uint16_t* image = nullptr;  // [4][D][H][W] IEEE half bits, device memory
  const uint8_t* mask = nullptr;    // [D][H][W], nonzero = brain, device memory
  int32_t instances = 0;            // rows [0, instances) hold slabs, rows [instances, n) are zero
  int32_t flip = 0;
  int32_t shift_y = 0, shift_x = 0;
  float scale[4] = {1, 1, 1, 1};
  float offset[4] = {0, 0, 0, 0};
};

// Sizes shared by every bag of the batch (all cases have one grid).
struct GatherGeometry {
  int64_t bags = 0, instances_per_bag = 0;   // B, n
  int64_t depth = 0, height = 0, width = 0;  // D, H, W of the cases
  int64_t slab_depth = 0;                    // S
};

// jobs[B] and starts[B][n] are device memory; starts[b][i] (0 <= start <= D - S) is read for i < instances
// only and is not range-checked here. out (16-byte aligned for f32, 8 for bf16) is written in full; the f32
// output is bit-identical to cpu::gather_bags (separate IEEE multiply and add, no fused multiply-add), the
// bf16 output is that value rounded to nearest even. Returns cudaErrorMisalignedAddress for a misaligned out.
cudaError_t gather_bags(const GatherBagJob* jobs, const int32_t* starts, const GatherGeometry& geometry, float* out,
                        cudaStream_t stream);
cudaError_t gather_bags(const GatherBagJob* jobs, const int32_t* starts, const GatherGeometry& geometry,
                        __nv_bfloat16* out, cudaStream_t stream);

}  // namespace dsmil::kernels
