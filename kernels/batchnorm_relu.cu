// Fused batch norm + ReLU over x[rows, C] (rows = N*D*H*W, channels-last): y = max(s[n] BN(x) + r, 0) in
// one pass after the statistics of kernels/batchnorm.cu (that pass alone recomputes y from saved statistics);
// backward in two passes (fp64 sums, then dx), its ReLU mask read from y or, without y and residual, from x.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/batchnorm.h"
#include "kernels/batchnorm_relu.h"
#include "kernels/channel_groups.cuh"
#include "kernels/common.cuh"

namespace dsmil::kernels {

namespace {

__device__ __forceinline__ float relu_mask(float grad, float out) { return out > 0.0f ? grad : 0.0f; }

// BN's output (x - centre) scale + shift, scale = gamma invstd: one expression for the forward and the backward's
// recomputed mask, so that both round (and contract to an FMA) alike and the mask is the forward's.
__device__ __forceinline__ float normalised(float x, float centre, float scale, float shift) {
  return (x - centre) * scale + shift;
}

__device__ __forceinline__ float sample_factor(const SampleFactor& factor, int64_t row) {
  return factor.values ? factor.values[row / factor.rows_per_sample] : 1.0f;
}

// Every kernel below gives each thread one group of V consecutive channels and walks rows (kernels/channel_groups.cuh).

// y = max(s[n] ((x - mean) gamma invstd + beta) + r, 0); invstd null: 1 / sqrt(var + eps).
template <typename T, int V>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ residual, SampleFactor factor,
                               const float* __restrict__ gamma, const float* __restrict__ beta,
                               const float* __restrict__ mean, const float* __restrict__ invstd,
                               const float* __restrict__ var, float eps, int64_t rows, int64_t channels,
                               T* __restrict__ y) {
  const int64_t c0 = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * V;
  if (c0 >= channels) return;
  float centre[V], scale[V], shift[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const float inv = invstd ? invstd[c0 + k] : 1.0f / sqrtf(var[c0 + k] + eps);
    centre[k] = mean[c0 + k];
    scale[k] = gamma[c0 + k] * inv;
    shift[k] = beta[c0 + k];
  }
  for (int64_t row = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; row < rows;
       row += int64_t(gridDim.y) * blockDim.y) {
    const int64_t at = row * channels + c0;
    float v[V], added[V] = {};
    load_channels<T, V>(x + at, v);
    if (residual) load_channels<T, V>(residual + at, added);
    const float s = sample_factor(factor, row);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float out = s * normalised(v[k], centre[k], scale[k], shift[k]) + added[k];
      v[k] = out > 0.0f ? out : 0.0f;
    }
    store_channels<T, V>(y + at, v);
  }
}

// Per channel and chunk of chunk_rows rows: sums of b = s[n] dy [y > 0] and b xhat in fp64, each thread
// over every ty-th row of the chunk, then over the block's ty lanes in lane order, into
// partial[(chunk * 2 + k) * C + c] (k = 0: b, 1: b xhat). Writes g = dy [y > 0] to d_residual if given.
// kMaskFromX: no y (nor residual); [y > 0] is [normalised(x) > 0] with gamma and beta (the sign of
// s[n] normalised(x) where s[n] > 0; b = 0 where s[n] = 0).
template <typename T, int V, bool kMaskFromX>
__global__ void backward_sums_kernel(const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ x,
                                     const float* __restrict__ gamma, const float* __restrict__ beta,
                                     const float* __restrict__ mean, const float* __restrict__ invstd,
                                     SampleFactor factor, int64_t rows, int64_t channels, int64_t chunk_rows,
                                     T* __restrict__ d_residual, double* __restrict__ partial) {
  __shared__ double lane_values[kThreads];
  const int64_t c0 = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * V;
  const bool owns_channels = c0 < channels;
  double sum_b[V] = {}, sum_b_xhat[V] = {};
  if (owns_channels) {
    float centre[V], inv[V], scale[V], shift[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      centre[k] = mean[c0 + k];
      inv[k] = invstd[c0 + k];
      if constexpr (kMaskFromX) {
        scale[k] = gamma[c0 + k] * inv[k];
        shift[k] = beta[c0 + k];
      }
    }
    const int64_t begin = blockIdx.y * chunk_rows;
    const int64_t end = begin + chunk_rows < rows ? begin + chunk_rows : rows;
    for (int64_t row = begin + threadIdx.y; row < end; row += blockDim.y) {
      const int64_t at = row * channels + c0;
      float g[V], out[V], v[V];
      load_channels<T, V>(dy + at, g);
      if constexpr (!kMaskFromX) load_channels<T, V>(y + at, out);
      load_channels<T, V>(x + at, v);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        if constexpr (kMaskFromX) out[k] = normalised(v[k], centre[k], scale[k], shift[k]);
        g[k] = relu_mask(g[k], out[k]);
      }
      if (d_residual) store_channels<T, V>(d_residual + at, g);
      const float s = sample_factor(factor, row);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float b = s * g[k];
        sum_b[k] += b;
        sum_b_xhat[k] += static_cast<double>(b) * ((v[k] - centre[k]) * inv[k]);
      }
    }
  }
  block_column_totals<V>(sum_b, owns_channels, c0, lane_values, partial + (blockIdx.y * int64_t(2)) * channels);
  block_column_totals<V>(sum_b_xhat, owns_channels, c0, lane_values,
                         partial + (blockIdx.y * int64_t(2) + 1) * channels);
}

// One warp per channel: totals over the chunks (lane-strided, then a fixed butterfly); dbeta, dgamma and
// the coefficients of dx = a (b - mean_b - (x - mean) w): coef[0*C + c] = a = gamma invstd,
// coef[1*C + c] = mean_b = dbeta / rows, coef[2*C + c] = w = invstd dgamma / rows.
__global__ void backward_finalize_kernel(const double* __restrict__ partial, int64_t chunks, int64_t rows,
                                         int64_t channels, const float* __restrict__ gamma,
                                         const float* __restrict__ invstd, float* __restrict__ dgamma,
                                         float* __restrict__ dbeta, float* __restrict__ coef) {
  const int64_t c = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (c >= channels) return;  // c is the same across a warp: whole warps leave
  double sum_b = 0.0, sum_b_xhat = 0.0;
  for (int64_t k = lane; k < chunks; k += 32) {
    sum_b += partial[(k * 2) * channels + c];
    sum_b_xhat += partial[(k * 2 + 1) * channels + c];
  }
  sum_b = warp_sum(sum_b);
  sum_b_xhat = warp_sum(sum_b_xhat);
  if (lane != 0) return;
  dbeta[c] = static_cast<float>(sum_b);
  dgamma[c] = static_cast<float>(sum_b_xhat);
  const double inv = invstd[c];
  coef[c] = static_cast<float>(gamma[c] * inv);
  coef[channels + c] = static_cast<float>(sum_b / rows);
  coef[2 * channels + c] = static_cast<float>(inv * sum_b_xhat / rows);
}

// dx = a (s[n] g - mean_b - (x - mean) w), g read from stored_g when given, else dy [y > 0]; kMaskFromX as in
// backward_sums_kernel (then stored_g is null).
template <typename T, int V, bool kMaskFromX>
__global__ void backward_data_kernel(const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ stored_g,
                                     const T* __restrict__ x, const float* __restrict__ gamma,
                                     const float* __restrict__ beta, const float* __restrict__ mean,
                                     const float* __restrict__ invstd, const float* __restrict__ coef,
                                     SampleFactor factor, int64_t rows, int64_t channels, T* __restrict__ dx) {
  const int64_t c0 = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * V;
  if (c0 >= channels) return;
  float a[V], mean_b[V], w[V], centre[V], scale[V], shift[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    a[k] = coef[c0 + k];
    mean_b[k] = coef[channels + c0 + k];
    w[k] = coef[2 * channels + c0 + k];
    centre[k] = mean[c0 + k];
    if constexpr (kMaskFromX) {
      scale[k] = gamma[c0 + k] * invstd[c0 + k];
      shift[k] = beta[c0 + k];
    }
  }
  for (int64_t row = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; row < rows;
       row += int64_t(gridDim.y) * blockDim.y) {
    const int64_t at = row * channels + c0;
    float g[V], v[V];
    if constexpr (kMaskFromX) {
      load_channels<T, V>(dy + at, g);
      load_channels<T, V>(x + at, v);
#pragma unroll
      for (int k = 0; k < V; ++k) g[k] = relu_mask(g[k], normalised(v[k], centre[k], scale[k], shift[k]));
    } else {
      if (stored_g) {
        load_channels<T, V>(stored_g + at, g);
      } else {
        float out[V];
        load_channels<T, V>(dy + at, g);
        load_channels<T, V>(y + at, out);
#pragma unroll
        for (int k = 0; k < V; ++k) g[k] = relu_mask(g[k], out[k]);
      }
      load_channels<T, V>(x + at, v);
    }
    const float s = sample_factor(factor, row);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = a[k] * (s * g[k] - mean_b[k] - (v[k] - centre[k]) * w[k]);
    store_channels<T, V>(dx + at, v);
  }
}

template <typename T>
cudaError_t launch_forward(const T* x, const T* residual, SampleFactor factor, const float* gamma, const float* beta,
                           const float* mean, const float* invstd, const float* var, float eps, int64_t rows,
                           int64_t channels, T* y, cudaStream_t stream) {
  if (rows == 0 || channels == 0) return cudaSuccess;
  return with_channel_width<T>(channel_width<T>(channels, {x, residual, y}), [&](auto width) {
    constexpr int V = decltype(width)::value;
    const ChannelLayout layout = channel_layout(channels, V);
    forward_kernel<T, V><<<dim3(layout.group_tiles, row_blocks(rows, layout)), layout.block, 0, stream>>>(
        x, residual, factor, gamma, beta, mean, invstd, var, eps, rows, channels, y);
    return cudaGetLastError();
  });
}

template <typename T, bool kMaskFromX>
cudaError_t launch_backward(const T* dy, const T* y, const T* x, const float* gamma, const float* beta,
                            const float* save_mean, const float* save_invstd, SampleFactor factor, int64_t rows,
                            int64_t channels, T* dx, float* dgamma, float* dbeta, T* d_residual, void* scratch,
                            cudaStream_t stream) {
  double* partial = static_cast<double*>(scratch);
  float* coef = reinterpret_cast<float*>(partial + row_chunk_capacity(rows, channels) * 2 * channels);
  return with_channel_width<T>(channel_width<T>(channels, {dy, y, x, dx, d_residual}), [&](auto width) {
    constexpr int V = decltype(width)::value;
    const ChannelLayout layout = channel_layout(channels, V);
    const int64_t chunks = row_chunks(rows, layout);
    const int64_t chunk_rows = (rows + chunks - 1) / chunks;
    backward_sums_kernel<T, V, kMaskFromX>
        <<<dim3(layout.group_tiles, static_cast<unsigned>(chunks)), layout.block, 0, stream>>>(
            dy, y, x, gamma, beta, save_mean, save_invstd, factor, rows, channels, chunk_rows, d_residual, partial);
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    const unsigned finalize_blocks = static_cast<unsigned>((channels * 32 + kThreads - 1) / kThreads);
    backward_finalize_kernel<<<finalize_blocks, kThreads, 0, stream>>>(partial, chunks, rows, channels, gamma,
                                                                       save_invstd, dgamma, dbeta, coef);
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    backward_data_kernel<T, V, kMaskFromX>
        <<<dim3(layout.group_tiles, row_blocks(rows, layout)), layout.block, 0, stream>>>(
            dy, y, d_residual, x, gamma, beta, save_mean, save_invstd, coef, factor, rows, channels, dx);
    return cudaGetLastError();
  });
}

}  // namespace

template <typename T>
cudaError_t batchnorm_relu_forward_train(const T* x, const float* gamma, const float* beta, float* running_mean,
                                         float* running_var, float momentum, float eps, const T* residual,
                                         SampleFactor factor, int64_t rows, int64_t channels, T* y, float* save_mean,
                                         float* save_invstd, double* scratch, cudaStream_t stream) {
  if (channels == 0) return cudaSuccess;
  if (const cudaError_t e = batchnorm_statistics(x, running_mean, running_var, momentum, eps, rows, channels, save_mean,
                                                 save_invstd, scratch, stream);
      e != cudaSuccess)
    return e;
  return launch_forward(x, residual, factor, gamma, beta, save_mean, save_invstd, nullptr, 0.0f, rows, channels, y,
                        stream);
}

template <typename T>
cudaError_t batchnorm_relu_forward_eval(const T* x, const float* gamma, const float* beta, const float* running_mean,
                                        const float* running_var, float eps, const T* residual, SampleFactor factor,
                                        int64_t rows, int64_t channels, T* y, cudaStream_t stream) {
  return launch_forward(x, residual, factor, gamma, beta, running_mean, nullptr, running_var, eps, rows, channels, y,
                        stream);
}

template <typename T>
cudaError_t batchnorm_relu_apply(const T* x, const float* gamma, const float* beta, const float* save_mean,
                                 const float* save_invstd, int64_t rows, int64_t channels, T* y, cudaStream_t stream) {
  return launch_forward(x, static_cast<const T*>(nullptr), SampleFactor{nullptr, 1}, gamma, beta, save_mean,
                        save_invstd, nullptr, 0.0f, rows, channels, y, stream);
}

int64_t batchnorm_relu_backward_scratch_bytes(int64_t rows, int64_t channels) {
  return row_chunk_capacity(rows, channels) * 2 * channels * static_cast<int64_t>(sizeof(double)) +
         3 * channels * static_cast<int64_t>(sizeof(float));
}

template <typename T>
cudaError_t batchnorm_relu_backward(const T* dy, const T* y, const T* x, const float* gamma, const float* beta,
                                    const float* save_mean, const float* save_invstd, SampleFactor factor, int64_t rows,
                                    int64_t channels, T* dx, float* dgamma, float* dbeta, T* d_residual, void* scratch,
                                    cudaStream_t stream) {
  if (rows == 0 || channels == 0) return cudaSuccess;
  const auto launch = y ? launch_backward<T, false> : launch_backward<T, true>;
  return launch(dy, y, x, gamma, beta, save_mean, save_invstd, factor, rows, channels, dx, dgamma, dbeta, d_residual,
                scratch, stream);
}

#define DSMIL_INSTANTIATE_BATCHNORM_RELU(T)                                                                          \
  template cudaError_t batchnorm_relu_forward_train<T>(const T*, const float*, const float*, float*, float*, float,  \
                                                       float, const T*, SampleFactor, int64_t, int64_t, T*, float*,  \
                                                       float*, double*, cudaStream_t);                               \
  template cudaError_t batchnorm_relu_forward_eval<T>(const T*, const float*, const float*, const float*,            \
                                                      const float*, float, const T*, SampleFactor, int64_t, int64_t, \
                                                      T*, cudaStream_t);                                             \
  template cudaError_t batchnorm_relu_apply<T>(const T*, const float*, const float*, const float*, const float*,     \
                                               int64_t, int64_t, T*, cudaStream_t);                                  \
  template cudaError_t batchnorm_relu_backward<T>(const T*, const T*, const T*, const float*, const float*,          \
                                                  const float*, const float*, SampleFactor, int64_t, int64_t, T*,    \
                                                  float*, float*, T*, void*, cudaStream_t);
DSMIL_INSTANTIATE_BATCHNORM_RELU(float)
DSMIL_INSTANTIATE_BATCHNORM_RELU(__nv_bfloat16)
#undef DSMIL_INSTANTIATE_BATCHNORM_RELU

}  // namespace dsmil::kernels
