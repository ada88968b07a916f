// Batch normalisation over x[rows, C] (channels-last activations with rows = N*D*H*W): per-channel batch
// statistics (fp64 partial sums, fixed order), the normalising map, and the backward pass. x/y/dy/dx: T.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

// Elements of the fp64 scratch that batchnorm_forward_train and batchnorm_backward need.
int64_t batchnorm_scratch_size(int64_t rows, int64_t channels);

// The statistics of the training forward alone (no y): save_mean, save_invstd = 1/sqrt(var + eps) with
// the batch's biased variance, and running = (1 - momentum) running + momentum batch (unbiased var).
// Fused consumers (kernels/batchnorm_relu.cu) apply the normalisation themselves.
template <typename T>
cudaError_t batchnorm_statistics(const T* x, float* running_mean, float* running_var, float momentum, float eps,
                                 int64_t rows, int64_t channels, float* save_mean, float* save_invstd, double* scratch,
                                 cudaStream_t stream);

// y = gamma (x - mean) invstd + beta with the batch's biased variance; writes save_mean, save_invstd
// = 1/sqrt(var + eps) and updates running = (1 - momentum) running + momentum batch (unbiased var).
template <typename T>
cudaError_t batchnorm_forward_train(const T* x, const float* gamma, const float* beta, float* running_mean,
                                    float* running_var, float momentum, float eps, int64_t rows, int64_t channels, T* y,
                                    float* save_mean, float* save_invstd, double* scratch, cudaStream_t stream);
// y = gamma (x - running_mean) / sqrt(running_var + eps) + beta.
template <typename T>
cudaError_t batchnorm_forward_eval(const T* x, const float* gamma, const float* beta, const float* running_mean,
                                   const float* running_var, float eps, int64_t rows, int64_t channels, T* y,
                                   cudaStream_t stream);
// dbeta = sum dy, dgamma = sum dy xhat, dx = gamma invstd (dy - dbeta/rows - xhat dgamma/rows) with
// xhat = (x - save_mean) save_invstd.
template <typename T>
cudaError_t batchnorm_backward(const T* dy, const T* x, const float* gamma, const float* save_mean,
                               const float* save_invstd, int64_t rows, int64_t channels, T* dx, float* dgamma,
                               float* dbeta, double* scratch, cudaStream_t stream);

}  // namespace dsmil::kernels
