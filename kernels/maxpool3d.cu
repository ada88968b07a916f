// 3-D max pooling over channels-last x[N, D, H, W, C] -> y[N, D', H', W', C] with argmax (first maximum in
// (d, h, w) order wins); backward scatters dy[N, D', H', W', C] into dx[N, D, H, W, C] (atomic or sorted).
#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>

#include <cfloat>

#include "kernels/common.cuh"
#include "kernels/maxpool3d.h"

namespace dsmil::kernels {

namespace {

template <typename T>
__global__ void maxpool3d_forward_kernel(const T* __restrict__ x, Volume in, Volume out, Window3 win,
                                         T* __restrict__ y, int32_t* __restrict__ argmax) {
  const int64_t total = out.numel();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = i;
    const int64_t c = rest % out.c; rest /= out.c;
    const int64_t ow = rest % out.w; rest /= out.w;
    const int64_t oh = rest % out.h; rest /= out.h;
    const int64_t od = rest % out.d;
    const int64_t n = rest / out.d;
    const T* volume = x + n * in.spatial() * in.c + c;
    float best = -FLT_MAX;
    int32_t best_index = -1;
    for (int t = 0; t < win.kernel[0]; ++t) {
      const int64_t d = od * win.stride[0] - win.pad[0] + t;
      if (d < 0 || d >= in.d) continue;
      for (int r = 0; r < win.kernel[1]; ++r) {
        const int64_t h = oh * win.stride[1] - win.pad[1] + r;
        if (h < 0 || h >= in.h) continue;
        for (int s = 0; s < win.kernel[2]; ++s) {
          const int64_t w = ow * win.stride[2] - win.pad[2] + s;
          if (w < 0 || w >= in.w) continue;
          const int64_t index = (d * in.h + h) * in.w + w;
          const float v = to_float(volume[index * in.c]);
          if (best_index < 0 || v > best) {
            best = v;
            best_index = static_cast<int32_t>(index);
          }
        }
      }
    }
    y[i] = from_float<T>(best);
    argmax[i] = best_index;
  }
}

// The position in dx[N, D, H, W, C] that output i's gradient goes to.
__device__ __forceinline__ int64_t target_of(int64_t i, const int32_t* argmax, Volume in, Volume out) {
  const int64_t c = i % out.c;
  const int64_t n = i / (out.spatial() * out.c);
  return (n * in.spatial() + argmax[i]) * in.c + c;
}

template <typename T>
__global__ void scatter_atomic_kernel(const T* __restrict__ dy, const int32_t* __restrict__ argmax, Volume in,
                                      Volume out, float* __restrict__ dx_accum) {
  const int64_t total = out.numel();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    atomicAdd(dx_accum + target_of(i, argmax, in, out), to_float(dy[i]));
}

__global__ void sort_keys_kernel(const int32_t* __restrict__ argmax, Volume in, Volume out, uint32_t* __restrict__ keys,
                                 uint32_t* __restrict__ order) {
  const int64_t total = out.numel();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    keys[i] = static_cast<uint32_t>(target_of(i, argmax, in, out));
    order[i] = static_cast<uint32_t>(i);
  }
}

// After the stable sort, the outputs of one target are adjacent and in ascending order; the first of
// each run sums the run.
template <typename T>
__global__ void sum_runs_kernel(const T* __restrict__ dy, const uint32_t* __restrict__ keys,
                                const uint32_t* __restrict__ order, int64_t total, T* __restrict__ dx) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t key = keys[i];
    if (i > 0 && keys[i - 1] == key) continue;
    float acc = 0.0f;
    for (int64_t j = i; j < total && keys[j] == key; ++j) acc += to_float(dy[order[j]]);
    dx[key] = from_float<T>(acc);
  }
}

struct SortedScratch {
  uint32_t *keys_in, *keys_out, *order_in, *order_out;
  void* cub_temp;
  size_t cub_bytes;
};

size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

int key_bits(Volume in) {
  int bits = 1;
  while (bits < 32 && (uint64_t{1} << bits) < static_cast<uint64_t>(in.numel())) ++bits;
  return bits;
}

size_t cub_sort_bytes(Volume in, Volume out) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
                                  static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
                                  static_cast<int64_t>(out.numel()), 0, key_bits(in));
  return bytes;
}

SortedScratch split_scratch(void* scratch, Volume in, Volume out) {
  const size_t array_bytes = align256(static_cast<size_t>(out.numel()) * sizeof(uint32_t));
  char* base = static_cast<char*>(scratch);
  SortedScratch s;
  s.keys_in = reinterpret_cast<uint32_t*>(base);
  s.keys_out = reinterpret_cast<uint32_t*>(base + array_bytes);
  s.order_in = reinterpret_cast<uint32_t*>(base + 2 * array_bytes);
  s.order_out = reinterpret_cast<uint32_t*>(base + 3 * array_bytes);
  s.cub_temp = base + 4 * array_bytes;
  s.cub_bytes = cub_sort_bytes(in, out);
  return s;
}

}  // namespace

template <typename T>
cudaError_t maxpool3d_forward(const T* x, Volume in, Volume out, Window3 window, T* y, int32_t* argmax,
                              cudaStream_t stream) {
  const int64_t n = out.numel();
  if (n == 0) return cudaSuccess;
  maxpool3d_forward_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, in, out, window, y, argmax);
  return cudaGetLastError();
}

template <typename T>
cudaError_t maxpool3d_backward_atomic(const T* dy, const int32_t* argmax, Volume in, Volume out, float* dx_accum,
                                      cudaStream_t stream) {
  if (const cudaError_t e = cudaMemsetAsync(dx_accum, 0, static_cast<size_t>(in.numel()) * sizeof(float), stream);
      e != cudaSuccess)
    return e;
  const int64_t n = out.numel();
  if (n == 0) return cudaSuccess;
  scatter_atomic_kernel<<<grid_for(n), kThreads, 0, stream>>>(dy, argmax, in, out, dx_accum);
  return cudaGetLastError();
}

size_t maxpool3d_backward_sorted_scratch_bytes(Volume in, Volume out) {
  return 4 * align256(static_cast<size_t>(out.numel()) * sizeof(uint32_t)) + cub_sort_bytes(in, out);
}

template <typename T>
cudaError_t maxpool3d_backward_sorted(const T* dy, const int32_t* argmax, Volume in, Volume out, void* scratch,
                                      size_t scratch_bytes, T* dx, cudaStream_t stream) {
  if (in.numel() >= (int64_t{1} << 32) || out.numel() >= (int64_t{1} << 32) ||
      scratch_bytes < maxpool3d_backward_sorted_scratch_bytes(in, out))
    return cudaErrorInvalidValue;
  if (const cudaError_t e = cudaMemsetAsync(dx, 0, static_cast<size_t>(in.numel()) * sizeof(T), stream);
      e != cudaSuccess)
    return e;
  const int64_t n = out.numel();
  if (n == 0) return cudaSuccess;
  SortedScratch s = split_scratch(scratch, in, out);
  sort_keys_kernel<<<grid_for(n), kThreads, 0, stream>>>(argmax, in, out, s.keys_in, s.order_in);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (const cudaError_t e = cub::DeviceRadixSort::SortPairs(s.cub_temp, s.cub_bytes, s.keys_in, s.keys_out, s.order_in,
                                                            s.order_out, n, 0, key_bits(in), stream);
      e != cudaSuccess)
    return e;
  sum_runs_kernel<<<grid_for(n), kThreads, 0, stream>>>(dy, s.keys_out, s.order_out, n, dx);
  return cudaGetLastError();
}

template cudaError_t maxpool3d_forward<float>(const float*, Volume, Volume, Window3, float*, int32_t*, cudaStream_t);
template cudaError_t maxpool3d_forward<__nv_bfloat16>(const __nv_bfloat16*, Volume, Volume, Window3, __nv_bfloat16*,
                                                      int32_t*, cudaStream_t);
template cudaError_t maxpool3d_backward_atomic<float>(const float*, const int32_t*, Volume, Volume, float*,
                                                      cudaStream_t);
template cudaError_t maxpool3d_backward_atomic<__nv_bfloat16>(const __nv_bfloat16*, const int32_t*, Volume, Volume,
                                                              float*, cudaStream_t);
template cudaError_t maxpool3d_backward_sorted<float>(const float*, const int32_t*, Volume, Volume, void*, size_t,
                                                      float*, cudaStream_t);
template cudaError_t maxpool3d_backward_sorted<__nv_bfloat16>(const __nv_bfloat16*, const int32_t*, Volume, Volume,
                                                              void*, size_t, __nv_bfloat16*, cudaStream_t);

}  // namespace dsmil::kernels
