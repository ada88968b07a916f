// Synchronised batch norm: training statistics over the batch of every data-parallel rank. Each rank's
// (rows, mean, variance) is gathered and combined exactly (Chan et al.), the normalisation runs as the
// eval-forward kernels with the combined statistics, and the backward pass sums the channel sums of the
// output gradient over ranks. With one rank it equals fn::batchnorm(_relu) within fp32 rounding.
#pragma once

#include <optional>

#include "dist/communicator.h"
#include "tensor/autograd.h"

namespace dsmil::nn {

// The fused tail of fn::batchnorm_relu: y = max(s[n] BN(x) + residual, 0), both terms optional.
struct ReluBranch {
  Variable residual;
  Tensor sample_factor;
};

// BN(x), or with `relu` the fused tail. The running statistics are updated with the combined ones.
// Costs a host round trip and a small collective per call in each direction (forward and backward).
Variable synchronised_batchnorm(const Variable& x, const Variable& gamma, const Variable& beta, Tensor& running_mean,
                                Tensor& running_var, float momentum, float eps, const std::optional<ReluBranch>& relu,
                                dist::Communicator& ranks);

}  // namespace dsmil::nn
