// Whole-tensor reductions over n contiguous elements (float or bf16), one launch each: the fp64 sum of
// squares in a fixed order (bit-identical between runs) and a flag for any NaN / infinite element.
#include <cuda_bf16.h>

#include "kernels/common.cuh"
#include "kernels/reductions.h"
#include "kernels/vector_access.cuh"

namespace dsmil::kernels {

namespace {

// Loads each thread issues before it uses their values: 4 x 16 bytes in flight per thread.
constexpr int kLoadsInFlight = 4;
// Blocks per SM the kernels must fit (at most 64 registers a thread): kSumSquaresBlocks in one wave on an H100.
constexpr int kMinBlocksPerSm = 4;
// Elements per thread below which a smaller grid is used.
constexpr int64_t kMinElementsPerThread = 16;

// Blocks of finished launches counted by the last block's test (atomicInc wraps back to 0 after the last
// block, so the counters are 0 between launches; launches of one op must not overlap: one stream).
__device__ unsigned int g_sum_squares_finished = 0;
__device__ unsigned int g_any_nonfinite_finished = 0;
// Set by the blocks that saw a non-finite element; read and cleared by the last block.
__device__ int g_nonfinite_seen = 0;

// Blocks of both reductions: a function of n alone, so that with the pack width (16 bytes, or one element
// where x is misaligned) the summation order is fixed by the input, whatever the device.
unsigned reduction_blocks(int64_t n) {
  const int64_t wanted = (n + kThreads * kMinElementsPerThread - 1) / (kThreads * kMinElementsPerThread);
  return static_cast<unsigned>(wanted < 1 ? 1 : (wanted < kSumSquaresBlocks ? wanted : kSumSquaresBlocks));
}

// Calls visit(value) for every element this thread owns, in a fixed order: packs thread, thread + threads,
// ... of V elements, kLoadsInFlight packs loaded together, then element n - n % V + thread if it exists.
template <typename T, int V, typename Visit>
__device__ __forceinline__ void for_each_owned(const T* __restrict__ x, int64_t n, Visit&& visit) {
  const int64_t thread = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, threads = int64_t(gridDim.x) * blockDim.x;
  const int64_t packs = n / V;
  for (int64_t first = thread; first < packs; first += kLoadsInFlight * threads) {
    float v[kLoadsInFlight][V];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u)
      if (first + u * threads < packs) load_floats<T, V>(x + (first + u * threads) * V, v[u]);
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u)
      if (first + u * threads < packs)
#pragma unroll
        for (int k = 0; k < V; ++k) visit(v[u][k]);
  }
  if (const int64_t i = packs * V + thread; i < n) visit(to_float(x[i]));
}

// Thread 0 of each block, after the block's result is stored: true for the block that finishes last.
// The fence makes this block's stores visible before its count; the last block fences again before it
// reads the others'.
__device__ __forceinline__ bool finished_last(unsigned int* finished) {
  __threadfence();
  const bool last = atomicInc(finished, gridDim.x - 1) == gridDim.x - 1;
  if (last) __threadfence();
  return last;
}

// partial[block] = the block's fp64 sum of x^2 (each thread in for_each_owned order, then block_sum);
// the last block sums partial[0, gridDim.x) (thread t: t, t + blockDim.x, ...; then block_sum) into *result.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    sum_squares_kernel(const T* __restrict__ x, int64_t n, double* partial, double* __restrict__ result) {
  __shared__ double scratch[32];
  __shared__ bool last_block;
  double acc = 0.0;
  for_each_owned<T, V>(x, n, [&](float value) {
    const double v = value;
    acc += v * v;
  });
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = acc;
    last_block = finished_last(&g_sum_squares_finished);
  }
  __syncthreads();
  if (!last_block) return;
  double total = 0.0;
  for (unsigned b = threadIdx.x; b < gridDim.x; b += blockDim.x) total += __ldcg(partial + b);
  total = block_sum(total, scratch);
  if (threadIdx.x == 0) *result = total;
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    any_nonfinite_kernel(const T* __restrict__ x, int64_t n, int32_t* __restrict__ result) {
  __shared__ bool last_block;
  bool bad = false;
  for_each_owned<T, V>(x, n, [&](float value) { bad |= !isfinite(value); });
  const bool block_bad = __syncthreads_or(bad);
  if (threadIdx.x == 0) {
    if (block_bad) atomicOr(&g_nonfinite_seen, 1);
    last_block = finished_last(&g_any_nonfinite_finished);
    if (last_block) *result = atomicExch(&g_nonfinite_seen, 0);
  }
}

}  // namespace

template <typename T>
cudaError_t sum_squares(const T* x, int64_t n, double* partial, double* result, cudaStream_t stream) {
  const unsigned blocks = reduction_blocks(n);
  if (vector_aligned({x}))
    sum_squares_kernel<T, kVectorWidth<T>><<<blocks, kThreads, 0, stream>>>(x, n, partial, result);
  else
    sum_squares_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(x, n, partial, result);
  return cudaGetLastError();
}

template <typename T>
cudaError_t any_nonfinite(const T* x, int64_t n, int32_t* result, cudaStream_t stream) {
  const unsigned blocks = reduction_blocks(n);
  if (vector_aligned({x}))
    any_nonfinite_kernel<T, kVectorWidth<T>><<<blocks, kThreads, 0, stream>>>(x, n, result);
  else
    any_nonfinite_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(x, n, result);
  return cudaGetLastError();
}

template cudaError_t sum_squares<float>(const float*, int64_t, double*, double*, cudaStream_t);
template cudaError_t sum_squares<__nv_bfloat16>(const __nv_bfloat16*, int64_t, double*, double*, cudaStream_t);
template cudaError_t any_nonfinite<float>(const float*, int64_t, int32_t*, cudaStream_t);
template cudaError_t any_nonfinite<__nv_bfloat16>(const __nv_bfloat16*, int64_t, int32_t*, cudaStream_t);

}  // namespace dsmil::kernels
