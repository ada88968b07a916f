// Bag gather with augmentation (flip, shift, per-modality scale and offset inside the brain mask) from
// resident cases image [4][D][H][W] fp16 + mask [D][H][W] u8 into out [B][n][S][H][W][4] f32 or bf16.
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>

#include "kernels/common.cuh"
#include "kernels/gather_bags.h"

namespace dsmil::kernels {

namespace {

// Each thread writes a few voxels of one output slice; the block count per slice follows from it.
constexpr int kVoxelsPerThread = 4;
constexpr int64_t kMaxBlocksPerSlice = 65535;  // gridDim.y limit

// One voxel's 4 channels as one store: 16 bytes for f32, 8 bytes for bf16. The store intrinsics keep the
// vector store (a plain assignment of v was split into four scalar stores by nvcc 13).
__device__ __forceinline__ void store_voxel(float* out, float4 v) { __stwb(reinterpret_cast<float4*>(out), v); }
// Two bf16 (round to nearest even) in one 32-bit word, the first at the lower address.
__device__ __forceinline__ uint32_t pack_bf16x2(float first, float second) {
  return uint32_t{__bfloat16_as_ushort(__float2bfloat16_rn(first))} |
         (uint32_t{__bfloat16_as_ushort(__float2bfloat16_rn(second))} << 16);
}
__device__ __forceinline__ void store_voxel(__nv_bfloat16* out, float4 v) {
  __stwb(reinterpret_cast<uint2*>(out), make_uint2(pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w)));
}

// v * scale + offset as two separately rounded operations, exactly as tensor/cpu/gather_bags.cpp computes it on
// the CPU; the _rn intrinsics keep nvcc from contracting them into one fused multiply-add.
__device__ __forceinline__ float augment(uint16_t half_bits, float scale, float offset) {
  return __fadd_rn(__fmul_rn(__half2float(__ushort_as_half(half_bits)), scale), offset);
}

// blockIdx.x: one output slice (bag, instance, s); blockIdx.y and the threads stride over its H*W voxels.
// Everything a slice needs besides the voxels (its bag's job and start) is uniform across the block.
template <typename T>
__global__ void gather_bags_kernel(const GatherBagJob* __restrict__ jobs, const int32_t* __restrict__ starts,
                                   GatherGeometry g, T* __restrict__ out) {
  const int64_t slice = blockIdx.x;
  const int64_t row = slice / g.slab_depth;  // bag * n + instance
  const int64_t s = slice - row * g.slab_depth;
  const int64_t bag = row / g.instances_per_bag;
  const int64_t instance = row - bag * g.instances_per_bag;
  const int height = static_cast<int>(g.height), width = static_cast<int>(g.width);
  const int slice_voxels = height * width;
  const int first = blockIdx.y * blockDim.x + threadIdx.x, step = gridDim.y * blockDim.x;
  T* dst = out + slice * slice_voxels * 4;
  const GatherBagJob job = jobs[bag];

  if (instance >= job.instances) {  // a padded row of a bag with fewer slabs than n
    for (int p = first; p < slice_voxels; p += step) store_voxel(dst + int64_t(p) * 4, make_float4(0.f, 0.f, 0.f, 0.f));
    return;
  }
  const int64_t volume = g.depth * slice_voxels;  // stride between the modality planes
  const uint16_t* image = job.image + (starts[row] + s) * slice_voxels;
  const uint8_t* mask = job.mask + (starts[row] + s) * slice_voxels;
  for (int p = first; p < slice_voxels; p += step) {
    const int y = p / width, x = p - y * width;
    const int sy = y - job.shift_y;
    const int u = x - job.shift_x;
    const int sx = job.flip ? width - 1 - u : u;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (sy >= 0 && sy < height && sx >= 0 && sx < width) {
      const int source = sy * width + sx;
      if (__ldg(mask + source) != 0) {
        v.x = augment(__ldg(image + source), job.scale[0], job.offset[0]);
        v.y = augment(__ldg(image + volume + source), job.scale[1], job.offset[1]);
        v.z = augment(__ldg(image + 2 * volume + source), job.scale[2], job.offset[2]);
        v.w = augment(__ldg(image + 3 * volume + source), job.scale[3], job.offset[3]);
      }
    }
    store_voxel(dst + int64_t(p) * 4, v);
  }
}

template <typename T>
cudaError_t launch_gather_bags(const GatherBagJob* jobs, const int32_t* starts, const GatherGeometry& g, T* out,
                               cudaStream_t stream) {
  const int64_t slices = g.bags * g.instances_per_bag * g.slab_depth;
  const int64_t slice_voxels = g.height * g.width;
  if (slices == 0 || slice_voxels == 0) return cudaSuccess;
  if (reinterpret_cast<uintptr_t>(out) % (4 * sizeof(T)) != 0) return cudaErrorMisalignedAddress;
  // Slices index gridDim.x; in-slice positions are int, and p + step stays below 2 * slice_voxels.
  if (slices > INT_MAX || slice_voxels > INT_MAX / 2) return cudaErrorInvalidValue;
  const int64_t per_slice = (slice_voxels + int64_t{kThreads} * kVoxelsPerThread - 1) / (kThreads * kVoxelsPerThread);
  const dim3 grid(static_cast<unsigned>(slices), static_cast<unsigned>(std::min(per_slice, kMaxBlocksPerSlice)));
  gather_bags_kernel<<<grid, kThreads, 0, stream>>>(jobs, starts, g, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t gather_bags(const GatherBagJob* jobs, const int32_t* starts, const GatherGeometry& geometry, float* out,
                        cudaStream_t stream) {
  return launch_gather_bags(jobs, starts, geometry, out, stream);
}

cudaError_t gather_bags(const GatherBagJob* jobs, const int32_t* starts, const GatherGeometry& geometry,
                        __nv_bfloat16* out, cudaStream_t stream) {
  return launch_gather_bags(jobs, starts, geometry, out, stream);
}

}  // namespace dsmil::kernels
