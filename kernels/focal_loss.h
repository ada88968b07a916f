// Fused focal / label-smoothed cross entropy, forward and backward in one kernel: logits[B, C], target[B]
// (I32), weight[B] -> loss (sum_b w_b l_b / sum_b w_b), grad[B, C] = d loss / d logits, per_sample[B] = l.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

// Checked on the device only, so that the op never synchronises: a target outside [0, C) makes that
// sample's loss and gradient NaN, weights summing to zero make the loss non-finite; all_finite sees both.
cudaError_t focal_loss(const float* logits, const int32_t* target, const float* weight, int64_t batch, int64_t classes,
                       float eps, float gamma, float* loss, float* grad, float* per_sample, cudaStream_t stream);

}  // namespace dsmil::kernels
