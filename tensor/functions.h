// Differentiable functions on Variables: each computes its value with tensor/ops.h and records a
// backward closure next to it (flashlight's Functions.cpp pattern). Shapes as in tensor/ops.h.
#pragma once

#include <cstdint>

#include "tensor/autograd.h"
#include "tensor/ops.h"

namespace dsmil::fn {

Variable add(const Variable& a, const Variable& b);
Variable mul(const Variable& a, const Variable& b);
Variable scale(const Variable& x, float s);
Variable relu(const Variable& x);
Variable tanh(const Variable& x);
Variable sigmoid(const Variable& x);
// The same values in another dtype (F32 <-> BF16, CUDA); the gradient is converted back.
Variable to_dtype(const Variable& x, DType dtype);
// Same values, another shape (no copy).
Variable view(const Variable& x, const Shape& shape);

// y[M, N] = x[M, K] w[N, K]^T (+ bias[N] when defined). The backward runs under the forward's mode.
Variable linear(const Variable& x, const Variable& w, const Variable& bias, const MathMode& mode);

Variable conv3d(const Variable& x, const Variable& w, const Conv3dGeometry& g, const MathMode& mode);

// Batch norm over all axes but the last. Training uses and updates the running statistics (tensors,
// not Variables: they take no gradient); evaluation reads them.
Variable batchnorm(const Variable& x, const Variable& gamma, const Variable& beta, Tensor& running_mean,
                   Tensor& running_var, bool training, float momentum, float eps);

// relu(s[n] batchnorm(x) + residual) as one fused op (tensor/ops.h): the stem's and a BasicBlock's
// BN -> ReLU and BN -> (drop-path) -> add shortcut -> ReLU. residual: an undefined Variable for none;
// sample_factor: F32 [N] per-sample factor of the normalised branch (drop-path's), undefined for 1.
Variable batchnorm_relu(const Variable& x, const Variable& gamma, const Variable& beta, Tensor& running_mean,
                        Tensor& running_var, bool training, float momentum, float eps,
                        const Variable& residual = Variable(), const Tensor& sample_factor = Tensor());

Variable maxpool3d(const Variable& x, const Pool3dGeometry& g);
Variable global_avg_pool(const Variable& x);

// Counter-based dropout / drop-path (tensor/ops.h); p = 0 returns x itself.
Variable dropout(const Variable& x, float p, MaskSeed seed, uint64_t offset);
Variable drop_path(const Variable& x, float p, MaskSeed seed, uint64_t offset);

// MIL head. `stats` receives the per-bag attention statistics [B, 3] (entropy, top-1, n_eff).
Variable masked_softmax(const Variable& e, const Tensor& mask, float temperature, Tensor* stats);
Variable gather_mean(const Variable& x, const Tensor& idx);
Variable bag_weighted_sum(const Variable& a, const Variable& v);
Variable bag_dot(const Variable& q, const Variable& m);

// Weighted focal / smoothed cross-entropy loss, a scalar [1]. `per_sample` (optional) receives l_b.
Variable focal_loss(const Variable& logits, const Tensor& target, const Tensor& weight, float eps, float gamma,
                    Tensor* per_sample = nullptr);

}  // namespace dsmil::fn
