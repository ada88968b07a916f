// Batch normalisation over x[rows, C] (rows = N*D*H*W, channels-last): per-channel sums in fp64 over row chunks
// (a block of channel groups per chunk), totalled by one warp per channel; then elementwise normalisation.
#include <cuda_bf16.h>

#include "kernels/batchnorm.h"
#include "kernels/channel_groups.cuh"
#include "kernels/common.cuh"

namespace dsmil::kernels {

namespace {

// What the statistics pass sums per channel: (x, x^2) forward; (dy, dy * xhat) backward.
enum class Moments { Forward, Backward };

// grid (group tiles, chunks), block channel_layout(C, V): per channel, each thread sums every ty-th row of its
// chunk in row order (kRowsInFlight rows loaded at a time), then the block's ty lanes are added in lane order,
// into scratch[(chunk * 2 + k) * C + c]. One channel and one row a thread (a 2-byte load in flight in bf16) took
// 49% of the copy bandwidth on the stem's [64,4,64,64,64] (kernels/README.md). The forward sums take at most 64
// registers a thread (ptxas: 12 bytes spilled in bf16), so that four blocks fit an SM and the kReductionBlocks
// blocks run in one wave on an H100 or H200 (132 SMs); the backward's (the plain batch norm's, on small tensors)
// spill ~150 bytes under that bound and keep their 128.
template <Moments moments, typename T, int V>
__global__ void __launch_bounds__(kThreads, moments == Moments::Forward ? 4 : 1)
    partial_sums_kernel(const T* __restrict__ a, const T* __restrict__ x, const float* __restrict__ mean,
                        const float* __restrict__ invstd, int64_t rows, int64_t channels, int64_t chunk_rows,
                        double* __restrict__ scratch) {
  __shared__ double lane_sums[kThreads];
  const int64_t c0 = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * V;
  const bool owns_channels = c0 < channels;
  double first[V] = {}, second[V] = {};
  if (owns_channels) {
    float centre[V] = {}, inv[V] = {};
    if constexpr (moments == Moments::Backward) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        centre[k] = mean[c0 + k];
        inv[k] = invstd[c0 + k];
      }
    }
    const int64_t begin = blockIdx.y * chunk_rows;
    const int64_t end = begin + chunk_rows < rows ? begin + chunk_rows : rows;
    const int64_t step = blockDim.y;
    for (int64_t row = begin + threadIdx.y; row < end; row += kRowsInFlight * step) {
      float va[kRowsInFlight][V], vx[kRowsInFlight][V];
#pragma unroll
      for (int u = 0; u < kRowsInFlight; ++u) {
        if (row + u * step >= end) continue;
        load_channels<T, V>(a + (row + u * step) * channels + c0, va[u]);
        if constexpr (moments == Moments::Backward) load_channels<T, V>(x + (row + u * step) * channels + c0, vx[u]);
      }
#pragma unroll
      for (int u = 0; u < kRowsInFlight; ++u) {
        if (row + u * step >= end) continue;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const double v = va[u][k];
          first[k] += v;
          if constexpr (moments == Moments::Forward)
            second[k] += v * v;
          else
            second[k] += v * static_cast<double>((vx[u][k] - centre[k]) * inv[k]);
        }
      }
    }
  }
  block_column_totals<V>(first, owns_channels, c0, lane_sums, scratch + (blockIdx.y * int64_t(2)) * channels);
  block_column_totals<V>(second, owns_channels, c0, lane_sums, scratch + (blockIdx.y * int64_t(2) + 1) * channels);
}

// The per-channel totals of the two moments over the chunks, for finalize kernels run by one warp per
// channel: lane-strided sums, then warp_sum's fixed butterfly (every lane gets the totals; the order depends
// only on the chunk count). One thread per channel summing 256 chunks in a row took ~57 us a launch on the
// H100 (Nsight Compute, notes/PERF.md): the loads of a thread wait on each other.
__device__ void chunk_totals(const double* scratch, int64_t chunks, int64_t channels, int64_t c, int lane,
                             double& first, double& second) {
  first = 0.0;
  second = 0.0;
  for (int64_t k = lane; k < chunks; k += 32) {
    first += scratch[(k * 2) * channels + c];
    second += scratch[(k * 2 + 1) * channels + c];
  }
  first = warp_sum(first);
  second = warp_sum(second);
}

// Blocks of kThreads threads, one warp per channel.
__global__ void finalize_train_kernel(const double* __restrict__ scratch, int64_t chunks, int64_t rows,
                                      int64_t channels, float momentum, float eps, float* __restrict__ running_mean,
                                      float* __restrict__ running_var, float* __restrict__ save_mean,
                                      float* __restrict__ save_invstd) {
  const int64_t c = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (c >= channels) return;  // c is the same across a warp: whole warps leave
  double sum, sum_sq;
  chunk_totals(scratch, chunks, channels, c, lane, sum, sum_sq);
  if (lane != 0) return;
  const double mean = sum / rows;
  const double var = fmax(sum_sq / rows - mean * mean, 0.0);
  const double unbiased = rows > 1 ? var * rows / (rows - 1) : var;
  save_mean[c] = static_cast<float>(mean);
  save_invstd[c] = static_cast<float>(1.0 / sqrt(var + eps));
  running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * static_cast<float>(mean);
  running_var[c] = (1.0f - momentum) * running_var[c] + momentum * static_cast<float>(unbiased);
}

__global__ void finalize_backward_kernel(const double* __restrict__ scratch, int64_t chunks, int64_t channels,
                                         float* __restrict__ dgamma, float* __restrict__ dbeta) {
  const int64_t c = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (c >= channels) return;
  double sum_dy, sum_dy_xhat;
  chunk_totals(scratch, chunks, channels, c, lane, sum_dy, sum_dy_xhat);
  if (lane != 0) return;
  dbeta[c] = static_cast<float>(sum_dy);
  dgamma[c] = static_cast<float>(sum_dy_xhat);
}

template <typename T>
__global__ void normalize_kernel(const T* __restrict__ x, const float* __restrict__ mean,
                                 const float* __restrict__ invstd, const float* __restrict__ gamma,
                                 const float* __restrict__ beta, int64_t n, int64_t channels, T* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels;
    y[i] = from_float<T>((to_float(x[i]) - mean[c]) * invstd[c] * gamma[c] + beta[c]);
  }
}

template <typename T>
__global__ void backward_data_kernel(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ gamma,
                                     const float* __restrict__ mean, const float* __restrict__ invstd,
                                     const float* __restrict__ dgamma, const float* __restrict__ dbeta, int64_t n,
                                     int64_t rows, int64_t channels, T* __restrict__ dx) {
  const float inv_rows = 1.0f / static_cast<float>(rows);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels;
    const float xhat = (to_float(x[i]) - mean[c]) * invstd[c];
    dx[i] = from_float<T>(gamma[c] * invstd[c] * (to_float(dy[i]) - dbeta[c] * inv_rows - xhat * dgamma[c] * inv_rows));
  }
}

// y = x scale + shift with scale = gamma / sqrt(var + eps) and shift = beta - mean scale (the CPU twin's
// form), kept in registers for the thread's V consecutive channels; grid (group tiles, row blocks), block
// channel_layout(C, V); each step of a thread's row-stride loop loads kRowsInFlight rows, then converts and
// stores them.
template <typename T, int V>
__global__ void eval_normalize_kernel(const T* __restrict__ x, const float* __restrict__ gamma,
                                      const float* __restrict__ beta, const float* __restrict__ mean,
                                      const float* __restrict__ var, float eps, int64_t rows, int64_t channels,
                                      T* __restrict__ y) {
  const int64_t c0 = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * V;
  if (c0 >= channels) return;
  float scale[V], shift[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    scale[k] = gamma[c0 + k] * (1.0f / sqrtf(var[c0 + k] + eps));
    shift[k] = beta[c0 + k] - mean[c0 + k] * scale[k];
  }
  const int64_t stride = int64_t(gridDim.y) * blockDim.y;
  for (int64_t first = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; first < rows; first += kRowsInFlight * stride) {
    float v[kRowsInFlight][V];
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u)
      if (first + u * stride < rows) load_channels<T, V>(x + (first + u * stride) * channels + c0, v[u]);
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u) {
      if (first + u * stride >= rows) continue;
#pragma unroll
      for (int k = 0; k < V; ++k) v[u][k] = fmaf(v[u][k], scale[k], shift[k]);
      store_channels<T, V>(y + (first + u * stride) * channels + c0, v[u]);
    }
  }
}

// The partial sums of `moments` over every chunk of rows into scratch; returns the chunk count in `chunks`.
template <Moments moments, typename T>
cudaError_t launch_partial_sums(const T* a, const T* x, const float* mean, const float* invstd, int64_t rows,
                                int64_t channels, double* scratch, int64_t& chunks, cudaStream_t stream) {
  return with_channel_width<T>(channel_width<T>(channels, {a, x}), [&](auto width) {
    constexpr int V = decltype(width)::value;
    const ChannelLayout layout = channel_layout(channels, V);
    chunks = row_chunks(rows, layout);
    const int64_t chunk_rows = (rows + chunks - 1) / chunks;
    partial_sums_kernel<moments, T, V>
        <<<dim3(layout.group_tiles, static_cast<unsigned>(chunks)), layout.block, 0, stream>>>(
            a, x, mean, invstd, rows, channels, chunk_rows, scratch);
    return cudaGetLastError();
  });
}

// Blocks for one warp per channel.
unsigned channel_warp_blocks(int64_t channels) {
  return static_cast<unsigned>((channels * 32 + kThreads - 1) / kThreads);
}

}  // namespace

int64_t batchnorm_scratch_size(int64_t rows, int64_t channels) {
  return row_chunk_capacity(rows, channels) * 2 * channels;
}

template <typename T>
cudaError_t batchnorm_statistics(const T* x, float* running_mean, float* running_var, float momentum, float eps,
                                 int64_t rows, int64_t channels, float* save_mean, float* save_invstd, double* scratch,
                                 cudaStream_t stream) {
  if (channels == 0) return cudaSuccess;
  int64_t chunks = 0;
  if (const cudaError_t e = launch_partial_sums<Moments::Forward, T>(x, nullptr, nullptr, nullptr, rows, channels,
                                                                     scratch, chunks, stream);
      e != cudaSuccess)
    return e;
  finalize_train_kernel<<<channel_warp_blocks(channels), kThreads, 0, stream>>>(
      scratch, chunks, rows, channels, momentum, eps, running_mean, running_var, save_mean, save_invstd);
  return cudaGetLastError();
}

template <typename T>
cudaError_t batchnorm_forward_train(const T* x, const float* gamma, const float* beta, float* running_mean,
                                    float* running_var, float momentum, float eps, int64_t rows, int64_t channels, T* y,
                                    float* save_mean, float* save_invstd, double* scratch, cudaStream_t stream) {
  if (channels == 0) return cudaSuccess;
  if (const cudaError_t e = batchnorm_statistics(x, running_mean, running_var, momentum, eps, rows, channels, save_mean,
                                                 save_invstd, scratch, stream);
      e != cudaSuccess)
    return e;
  const int64_t n = rows * channels;
  if (n == 0) return cudaSuccess;
  normalize_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, save_mean, save_invstd, gamma, beta, n, channels, y);
  return cudaGetLastError();
}

// One launch; the per-channel factors live in registers.
template <typename T>
cudaError_t batchnorm_forward_eval(const T* x, const float* gamma, const float* beta, const float* running_mean,
                                   const float* running_var, float eps, int64_t rows, int64_t channels, T* y,
                                   cudaStream_t stream) {
  if (rows == 0 || channels == 0) return cudaSuccess;
  return with_channel_width<T>(channel_width<T>(channels, {x, y}), [&](auto width) {
    constexpr int V = decltype(width)::value;
    const ChannelLayout layout = channel_layout(channels, V);
    const dim3 grid(layout.group_tiles, row_blocks((rows + kRowsInFlight - 1) / kRowsInFlight, layout));
    eval_normalize_kernel<T, V>
        <<<grid, layout.block, 0, stream>>>(x, gamma, beta, running_mean, running_var, eps, rows, channels, y);
    return cudaGetLastError();
  });
}

template <typename T>
cudaError_t batchnorm_backward(const T* dy, const T* x, const float* gamma, const float* save_mean,
                               const float* save_invstd, int64_t rows, int64_t channels, T* dx, float* dgamma,
                               float* dbeta, double* scratch, cudaStream_t stream) {
  if (channels == 0) return cudaSuccess;
  int64_t chunks = 0;
  if (const cudaError_t e = launch_partial_sums<Moments::Backward, T>(dy, x, save_mean, save_invstd, rows, channels,
                                                                      scratch, chunks, stream);
      e != cudaSuccess)
    return e;
  finalize_backward_kernel<<<channel_warp_blocks(channels), kThreads, 0, stream>>>(scratch, chunks, channels, dgamma,
                                                                                   dbeta);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  const int64_t n = rows * channels;
  if (n == 0) return cudaSuccess;
  backward_data_kernel<<<grid_for(n), kThreads, 0, stream>>>(dy, x, gamma, save_mean, save_invstd, dgamma, dbeta, n,
                                                             rows, channels, dx);
  return cudaGetLastError();
}

template cudaError_t batchnorm_statistics<float>(const float*, float*, float*, float, float, int64_t, int64_t, float*,
                                                 float*, double*, cudaStream_t);
template cudaError_t batchnorm_statistics<__nv_bfloat16>(const __nv_bfloat16*, float*, float*, float, float, int64_t,
                                                         int64_t, float*, float*, double*, cudaStream_t);
template cudaError_t batchnorm_forward_train<float>(const float*, const float*, const float*, float*, float*, float,
                                                    float, int64_t, int64_t, float*, float*, float*, double*,
                                                    cudaStream_t);
template cudaError_t batchnorm_forward_train<__nv_bfloat16>(const __nv_bfloat16*, const float*, const float*, float*,
                                                            float*, float, float, int64_t, int64_t, __nv_bfloat16*,
                                                            float*, float*, double*, cudaStream_t);
template cudaError_t batchnorm_forward_eval<float>(const float*, const float*, const float*, const float*, const float*,
                                                   float, int64_t, int64_t, float*, cudaStream_t);
template cudaError_t batchnorm_forward_eval<__nv_bfloat16>(const __nv_bfloat16*, const float*, const float*,
                                                           const float*, const float*, float, int64_t, int64_t,
                                                           __nv_bfloat16*, cudaStream_t);
template cudaError_t batchnorm_backward<float>(const float*, const float*, const float*, const float*, const float*,
                                               int64_t, int64_t, float*, float*, float*, double*, cudaStream_t);
template cudaError_t batchnorm_backward<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, const float*,
                                                       const float*, const float*, int64_t, int64_t, __nv_bfloat16*,
                                                       float*, float*, double*, cudaStream_t);

}  // namespace dsmil::kernels
