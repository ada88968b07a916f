// The basic layers: Conv3d (no bias, channels-last), BatchNorm3d, Linear; and parameter initialisation.
#pragma once

#include <random>

#include "dist/communicator.h"
#include "nn/module.h"
#include "tensor/functions.h"

namespace dsmil::nn {

// Weights are drawn from one engine at construction, so a model is a function of its init seed.
using InitEngine = std::mt19937_64;

// y[N, D', H', W', out] = conv(x[N, D, H, W, in], w[out, T, R, S, in]); Kaiming-normal init
// (fan-out, ReLU gain) as in torchvision's ResNets.
class Conv3d : public Module {
 public:
  Conv3d(int64_t in, int64_t out, const Conv3dGeometry& g, InitEngine& engine);
  Variable forward(const Variable& x) const;
  Variable weight;
  Conv3dGeometry geometry;
};

// Per-channel batch norm of x[..., C]: momentum 0.1, eps 1e-5 (PyTorch's defaults).
class BatchNorm3d : public Module {
 public:
  explicit BatchNorm3d(int64_t channels);
  Variable forward(const Variable& x);
  // relu(sample_factor[n] forward(x) + residual) in one fused op (fn::batchnorm_relu); both optional.
  Variable forward_relu(const Variable& x, const Variable& residual = Variable(),
                        const Tensor& sample_factor = Tensor());
  Variable gamma, beta;
  Tensor running_mean, running_var;
  float momentum = 0.1f, eps = 1e-5f;
  // Set: training statistics are those of the batch over these ranks (synchronised batch norm,
  // nn/sync_batchnorm.h); null: of this process's batch.
  dist::Communicator* statistics_ranks = nullptr;
};

// Sets statistics_ranks of every BatchNorm3d under `model`.
void synchronise_batchnorm(Module& model, dist::Communicator* ranks);

// y[M, out] = x[M, in] W[out, in]^T + b; PyTorch's default init U(-1/sqrt(in), 1/sqrt(in)).
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, InitEngine& engine, bool bias = true);
  Variable forward(const Variable& x) const;
  Variable weight, bias;
};

}  // namespace dsmil::nn
