// AdamW and EMA updates on F32 tensors, in place: per tensor of n elements (one thread per element in a
// grid-stride loop), or over a list of tensors (one block per chunk of <= kChunkElements of one tensor).
#include "kernels/common.cuh"
#include "kernels/optimizer.h"

namespace dsmil::kernels {

namespace {

// One element's AdamW update; the per-tensor and the multi-tensor kernels share it, so they round alike.
__device__ __forceinline__ void adamw_element(float& p, float& m, float& v, float g, const AdamWStep& s,
                                              float weight_decay) {
  m = s.beta1 * m + (1.0f - s.beta1) * g;
  v = s.beta2 * v + (1.0f - s.beta2) * g * g;
  const float m_hat = m / s.bias_correction1;
  const float v_hat = v / s.bias_correction2;
  p = p - s.lr * (m_hat / (sqrtf(v_hat) + s.eps) + weight_decay * p);
}

__device__ __forceinline__ float ema_element(float ema, float value, float decay) {
  return decay * ema + (1.0f - decay) * value;
}

__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, AdamWStep s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float p = param[i], mi = m[i], vi = v[i];
    adamw_element(p, mi, vi, grad[i], s, s.weight_decay);
    m[i] = mi;
    v[i] = vi;
    param[i] = p;
  }
}

__global__ void ema_kernel(float* __restrict__ ema, const float* __restrict__ value, int64_t n, float decay) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    ema[i] = ema_element(ema[i], value[i], decay);
}

__global__ void multi_tensor_sum_squares_kernel(ChunkRange range, GradPointers grads, double* __restrict__ partial) {
  __shared__ double scratch[32];
  const int64_t block = range.first_block + blockIdx.x;
  const TensorChunk c = range.chunks[block];
  const float* grad = grads.grad[c.tensor - range.first_tensor];
  double acc = 0.0;
  if (grad != nullptr)
    for (int64_t i = c.begin + threadIdx.x; i < c.begin + c.count; i += blockDim.x) {
      const double g = grad[i];
      acc += g * g;
    }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[block] = acc;
}

__global__ void multi_tensor_norm_kernel(const double* __restrict__ partial, int64_t count, float* __restrict__ norm) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) *norm = static_cast<float>(sqrt(acc));
}

__global__ void multi_tensor_adamw_kernel(ChunkRange range, const AdamWSlot* __restrict__ slots, GradPointers grads,
                                          AdamWStep step, const AdamWStep* __restrict__ step_on_device,
                                          const float* __restrict__ grad_norm, float max_grad_norm) {
  const AdamWStep s = step_on_device ? *step_on_device : step;
  const TensorChunk c = range.chunks[range.first_block + blockIdx.x];
  const float* __restrict__ grad = grads.grad[c.tensor - range.first_tensor];
  if (grad == nullptr) return;
  const AdamWSlot slot = slots[c.tensor];
  // nn::clip_grad_norm's rule: scale only when the norm exceeds the limit.
  const float norm = grad_norm != nullptr ? *grad_norm : 0.0f;
  const float scale = grad_norm != nullptr && norm > max_grad_norm ? max_grad_norm / (norm + 1e-6f) : 1.0f;
  const float weight_decay = slot.decayed ? s.weight_decay : 0.0f;
  for (int64_t i = c.begin + threadIdx.x; i < c.begin + c.count; i += blockDim.x) {
    float p = slot.param[i], m = slot.m[i], v = slot.v[i];
    adamw_element(p, m, v, grad[i] * scale, s, weight_decay);
    slot.m[i] = m;
    slot.v[i] = v;
    slot.param[i] = p;
  }
}

__global__ void multi_tensor_ema_kernel(ChunkRange range, const EmaSlot* __restrict__ slots, float decay_value,
                                        const float* __restrict__ decay_on_device) {
  const float decay = decay_on_device ? *decay_on_device : decay_value;
  const TensorChunk c = range.chunks[range.first_block + blockIdx.x];
  const EmaSlot slot = slots[c.tensor];
  for (int64_t i = c.begin + threadIdx.x; i < c.begin + c.count; i += blockDim.x)
    slot.ema[i] = ema_element(slot.ema[i], slot.value[i], decay);
}

}  // namespace

cudaError_t adamw(float* param, const float* grad, float* m, float* v, int64_t n, AdamWStep step, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  adamw_kernel<<<grid_for(n), kThreads, 0, stream>>>(param, grad, m, v, n, step);
  return cudaGetLastError();
}

cudaError_t ema(float* ema_values, const float* value, int64_t n, float decay, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ema_kernel<<<grid_for(n), kThreads, 0, stream>>>(ema_values, value, n, decay);
  return cudaGetLastError();
}

cudaError_t multi_tensor_sum_squares(ChunkRange range, const GradPointers& grads, double* partial,
                                     cudaStream_t stream) {
  if (range.blocks == 0) return cudaSuccess;
  multi_tensor_sum_squares_kernel<<<static_cast<unsigned>(range.blocks), kThreads, 0, stream>>>(range, grads, partial);
  return cudaGetLastError();
}

cudaError_t multi_tensor_norm(const double* partial, int64_t count, float* norm, cudaStream_t stream) {
  multi_tensor_norm_kernel<<<1, 1024, 0, stream>>>(partial, count, norm);
  return cudaGetLastError();
}

cudaError_t multi_tensor_adamw(ChunkRange range, const AdamWSlot* slots, const GradPointers& grads, AdamWStep step,
                               const AdamWStep* step_on_device, const float* grad_norm, float max_grad_norm,
                               cudaStream_t stream) {
  if (range.blocks == 0) return cudaSuccess;
  multi_tensor_adamw_kernel<<<static_cast<unsigned>(range.blocks), kThreads, 0, stream>>>(
      range, slots, grads, step, step_on_device, grad_norm, max_grad_norm);
  return cudaGetLastError();
}

cudaError_t multi_tensor_ema(ChunkRange range, const EmaSlot* slots, float decay, const float* decay_on_device,
                             cudaStream_t stream) {
  if (range.blocks == 0) return cudaSuccess;
  multi_tensor_ema_kernel<<<static_cast<unsigned>(range.blocks), kThreads, 0, stream>>>(range, slots, decay,
                                                                                        decay_on_device);
  return cudaGetLastError();
}

}  // namespace dsmil::kernels
