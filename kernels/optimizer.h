// In-place F32 optimizer updates: AdamW (decoupled decay, bias-corrected m, v) on param[n] from grad[n] and the EMA
// ema[n] = d ema + (1 - d) value[n], per tensor or per list of tensors (a block per chunk), with the global grad norm.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsmil::kernels {

// In the order of ops::adamw_step_constants.
struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay;
  float bias_correction1, bias_correction2;  // 1 - beta^t, computed on the host
};
static_assert(sizeof(AdamWStep) == 7 * sizeof(float), "AdamWStep is read from an F32 [7] tensor");

cudaError_t adamw(float* param, const float* grad, float* m, float* v, int64_t n, AdamWStep step, cudaStream_t stream);
cudaError_t ema(float* ema_values, const float* value, int64_t n, float decay, cudaStream_t stream);

// ---------------------------------------------------------------- multi-tensor
// A list of tensors is cut into chunks of at most kChunkElements elements, one per block, in list order.
constexpr int64_t kChunkElements = 8192;
// Gradient pointers one launch takes as a kernel parameter (2 KB, under the 4 KB limit of older
// drivers); a longer list takes one launch per kTensorsPerLaunch tensors.
constexpr int kTensorsPerLaunch = 256;

struct TensorChunk {
  int32_t tensor;  // index in the list
  int32_t count;   // elements, at most kChunkElements
  int64_t begin;   // first element
};

// The device-resident part of a list (built once, while its tensors keep their storage).
struct AdamWSlot {
  float* param;
  float* m;
  float* v;
  int32_t decayed;  // weight decay applies (else 0)
};
struct EmaSlot {
  float* ema;
  const float* value;
};

// Blocks chunks[first_block .. first_block + blocks) of a launch; their tensors are first_tensor and the
// kTensorsPerLaunch - 1 after it, whose gradients the launch is given.
struct ChunkRange {
  const TensorChunk* chunks;
  int64_t first_block, blocks;
  int32_t first_tensor;
};
// Per launch, by value: the gradients change every step. nullptr: the tensor has no gradient.
struct GradPointers {
  const float* grad[kTensorsPerLaunch];
};

// partial[first_block + b] = sum of grad^2 over block b's chunk, in fp64 (0 for a tensor without gradient).
cudaError_t multi_tensor_sum_squares(ChunkRange range, const GradPointers& grads, double* partial, cudaStream_t stream);
// *norm = sqrt(sum of partial[0 .. count)), summed in a fixed order (bit-identical between runs).
cudaError_t multi_tensor_norm(const double* partial, int64_t count, float* norm, cudaStream_t stream);
// AdamW on every chunk whose tensor has a gradient, with gradient g * c: c = max_grad_norm / (*grad_norm + 1e-6)
// when *grad_norm > max_grad_norm, else 1 (grad_norm nullptr: no clipping). The step's constants are
// *step_on_device where that is not null (written before the launch runs), else `step`; the EMA's decay likewise.
cudaError_t multi_tensor_adamw(ChunkRange range, const AdamWSlot* slots, const GradPointers& grads, AdamWStep step,
                               const AdamWStep* step_on_device, const float* grad_norm, float max_grad_norm,
                               cudaStream_t stream);
cudaError_t multi_tensor_ema(ChunkRange range, const EmaSlot* slots, float decay, const float* decay_on_device,
                             cudaStream_t stream);

}  // namespace dsmil::kernels
