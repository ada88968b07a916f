// Fused batch norm + ReLU over x[rows, C] (channels-last, rows = N*D*H*W, rows_per_sample = rows / N):
// y = max(s[n] (gamma (x - mean) invstd + beta) + r, 0) and its backward. x/y/dy/r/dx: T; the rest F32.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

// The per-sample factor of the normalised branch (drop-path's keep / (1 - p)): values[N], or null for
// factor 1. The sample of row `row` is row / rows_per_sample.
struct SampleFactor {
  const float* values;
  int64_t rows_per_sample;
};

// residual r may be null (no residual).
// Training: the batch statistics of kernels/batchnorm.h (save_mean, save_invstd, running update; its
// scratch of batchnorm_scratch_size doubles), then one fused pass writing y.
template <typename T>
cudaError_t batchnorm_relu_forward_train(const T* x, const float* gamma, const float* beta, float* running_mean,
                                         float* running_var, float momentum, float eps, const T* residual,
                                         SampleFactor factor, int64_t rows, int64_t channels, T* y, float* save_mean,
                                         float* save_invstd, double* scratch, cudaStream_t stream);
// Evaluation: the same pass with mean = running_mean, invstd = 1 / sqrt(running_var + eps).
template <typename T>
cudaError_t batchnorm_relu_forward_eval(const T* x, const float* gamma, const float* beta, const float* running_mean,
                                        const float* running_var, float eps, const T* residual, SampleFactor factor,
                                        int64_t rows, int64_t channels, T* y, cudaStream_t stream);
// The training forward's y again from its saved statistics, for a forward without residual or sample factor:
// the same fused pass (same kernel, same arguments), so y is bit for bit the one the training forward wrote.
template <typename T>
cudaError_t batchnorm_relu_apply(const T* x, const float* gamma, const float* beta, const float* save_mean,
                                 const float* save_invstd, int64_t rows, int64_t channels, T* y, cudaStream_t stream);

// Bytes of scratch that batchnorm_relu_backward needs.
int64_t batchnorm_relu_backward_scratch_bytes(int64_t rows, int64_t channels);

// g = dy [y > 0] (never stored, except as d_residual = g when d_residual is not null); b = s[n] g is the
// gradient of the batch norm's output: dbeta = sum b, dgamma = sum b xhat (fp64, fixed order),
// dx = gamma invstd (b - dbeta / rows - xhat dgamma / rows), xhat = (x - save_mean) save_invstd.
// y null (only for a forward without residual, and then d_residual null): the mask is
// [gamma (x - save_mean) save_invstd + beta > 0], computed from the x already read with the forward's fp32
// operations, so it is the forward's; beta is read only then (it may be null when y is given).
// Two passes over the activations: the sums (reading dy, y if given, x), then dx (reading dy, y if given or the
// stored g, and x).
template <typename T>
cudaError_t batchnorm_relu_backward(const T* dy, const T* y, const T* x, const float* gamma, const float* beta,
                                    const float* save_mean, const float* save_invstd, SampleFactor factor, int64_t rows,
                                    int64_t channels, T* dx, float* dgamma, float* dbeta, T* d_residual, void* scratch,
                                    cudaStream_t stream);

}  // namespace dsmil::kernels
