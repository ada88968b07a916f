// Batch normalisation over x[rows, C] (rows = N*D*H*W, channels-last): per-channel sums in fp64 over row
// chunks (one 32-channel x 8-row tile per chunk), totalled by one warp per channel; then elementwise normalisation.
#include <cuda_bf16.h>

#include "kernels/batchnorm.h"
#include "kernels/common.cuh"
#include "kernels/vector_access.cuh"

namespace dsmil::kernels {

namespace {

constexpr int kRowLanes = 8;
// Blocks of the statistics pass, whatever the device, so that the summation order is fixed by the shape.
constexpr int64_t kStatisticsBlocks = 512;

int64_t channel_tiles(int64_t channels) { return (channels + 31) / 32; }

int64_t chunk_count(int64_t rows, int64_t channels) {
  const int64_t by_blocks = kStatisticsBlocks / channel_tiles(channels);
  const int64_t by_rows = (rows + kRowLanes - 1) / kRowLanes;
  const int64_t chunks = by_blocks < by_rows ? by_blocks : by_rows;
  return chunks < 1 ? 1 : chunks;
}

// What the statistics pass sums per channel: (x, x^2) forward; (dy, dy * xhat) backward.
enum class Moments { Forward, Backward };

// grid (channel tiles, chunks), block (32, kRowLanes). scratch[(chunk * 2 + k) * C + c].
template <Moments moments, typename T>
__global__ void partial_sums_kernel(const T* __restrict__ a, const T* __restrict__ x, const float* __restrict__ mean,
                                    const float* __restrict__ invstd, int64_t rows, int64_t channels,
                                    int64_t chunk_rows, double* __restrict__ scratch) {
  __shared__ double lane_sums[2][kRowLanes][32];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const int64_t begin = blockIdx.y * chunk_rows;
  const int64_t end = begin + chunk_rows < rows ? begin + chunk_rows : rows;
  double first = 0.0, second = 0.0;
  if (c < channels) {
    if constexpr (moments == Moments::Forward) {
      for (int64_t r = begin + threadIdx.y; r < end; r += kRowLanes) {
        const double v = to_float(a[r * channels + c]);
        first += v;
        second += v * v;
      }
    } else {
      const float m = mean[c], s = invstd[c];
      for (int64_t r = begin + threadIdx.y; r < end; r += kRowLanes) {
        const double g = to_float(a[r * channels + c]);
        first += g;
        second += g * static_cast<double>((to_float(x[r * channels + c]) - m) * s);
      }
    }
  }
  lane_sums[0][threadIdx.y][threadIdx.x] = first;
  lane_sums[1][threadIdx.y][threadIdx.x] = second;
  __syncthreads();
  if (threadIdx.y < 2 && c < channels) {
    double total = 0.0;
    for (int lane = 0; lane < kRowLanes; ++lane) total += lane_sums[threadIdx.y][lane][threadIdx.x];
    scratch[(blockIdx.y * 2 + threadIdx.y) * channels + c] = total;
  }
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

// Rows each thread of the eval kernel loads before it stores: 2 x 16 bytes in flight per thread.
constexpr int kEvalRowsInFlight = 2;

// y = x scale + shift with scale = gamma / sqrt(var + eps) and shift = beta - mean scale (the CPU twin's
// form), kept in registers for the thread's V consecutive channels (c0 = group * V). Block (tx, ty): tx
// channel groups of one row side by side (a warp reads contiguous memory), ty rows; grid (group tiles, row
// blocks); each step of a thread's row-stride loop loads kEvalRowsInFlight rows, then converts and stores them.
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
  for (int64_t first = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; first < rows;
       first += kEvalRowsInFlight * stride) {
    float v[kEvalRowsInFlight][V];
#pragma unroll
    for (int u = 0; u < kEvalRowsInFlight; ++u)
      if (first + u * stride < rows) load_floats<T, V>(x + (first + u * stride) * channels + c0, v[u]);
#pragma unroll
    for (int u = 0; u < kEvalRowsInFlight; ++u) {
      if (first + u * stride >= rows) continue;
#pragma unroll
      for (int k = 0; k < V; ++k) v[u][k] = fmaf(v[u][k], scale[k], shift[k]);
      store_floats<T, V>(y + (first + u * stride) * channels + c0, v[u]);
    }
  }
}

template <typename T, int V>
cudaError_t launch_eval_normalize(const T* x, const float* gamma, const float* beta, const float* mean,
                                  const float* var, float eps, int64_t rows, int64_t channels, T* y,
                                  cudaStream_t stream) {
  const int64_t groups = channels / V;
  const unsigned tx = static_cast<unsigned>(groups < 32 ? groups : 32), ty = kThreads / tx;
  const int64_t group_tiles = (groups + tx - 1) / tx;
  const int64_t needed = (rows + int64_t(ty) * kEvalRowsInFlight - 1) / (int64_t(ty) * kEvalRowsInFlight);
  const int64_t cap = kMaxBlocks / group_tiles > 1 ? kMaxBlocks / group_tiles : 1;
  const dim3 grid(static_cast<unsigned>(group_tiles), static_cast<unsigned>(needed < cap ? needed : cap));
  eval_normalize_kernel<T, V><<<grid, dim3(tx, ty), 0, stream>>>(x, gamma, beta, mean, var, eps, rows, channels, y);
  return cudaGetLastError();
}

// Blocks for one warp per channel.
unsigned channel_warp_blocks(int64_t channels) {
  return static_cast<unsigned>((channels * 32 + kThreads - 1) / kThreads);
}

}  // namespace

int64_t batchnorm_scratch_size(int64_t rows, int64_t channels) { return chunk_count(rows, channels) * 2 * channels; }

template <typename T>
cudaError_t batchnorm_statistics(const T* x, float* running_mean, float* running_var, float momentum, float eps,
                                 int64_t rows, int64_t channels, float* save_mean, float* save_invstd, double* scratch,
                                 cudaStream_t stream) {
  if (channels == 0) return cudaSuccess;
  const int64_t chunks = chunk_count(rows, channels);
  const int64_t chunk_rows = (rows + chunks - 1) / chunks;
  const dim3 grid(static_cast<unsigned>(channel_tiles(channels)), static_cast<unsigned>(chunks));
  partial_sums_kernel<Moments::Forward, T>
      <<<grid, dim3(32, kRowLanes), 0, stream>>>(x, nullptr, nullptr, nullptr, rows, channels, chunk_rows, scratch);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
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
  constexpr int kWide = kVectorWidth<T>;
  if (channels % kWide == 0 && vector_aligned({x, y}))
    return launch_eval_normalize<T, kWide>(x, gamma, beta, running_mean, running_var, eps, rows, channels, y, stream);
  return launch_eval_normalize<T, 1>(x, gamma, beta, running_mean, running_var, eps, rows, channels, y, stream);
}

template <typename T>
cudaError_t batchnorm_backward(const T* dy, const T* x, const float* gamma, const float* save_mean,
                               const float* save_invstd, int64_t rows, int64_t channels, T* dx, float* dgamma,
                               float* dbeta, double* scratch, cudaStream_t stream) {
  if (channels == 0) return cudaSuccess;
  const int64_t chunks = chunk_count(rows, channels);
  const int64_t chunk_rows = (rows + chunks - 1) / chunks;
  const dim3 grid(static_cast<unsigned>(channel_tiles(channels)), static_cast<unsigned>(chunks));
  partial_sums_kernel<Moments::Backward, T>
      <<<grid, dim3(32, kRowLanes), 0, stream>>>(dy, x, save_mean, save_invstd, rows, channels, chunk_rows, scratch);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
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
