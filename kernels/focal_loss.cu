// Fused focal / label-smoothed CE over logits[B, C] in one block: l_b = -sum_c q_c (1 - p_c)^gamma log p_c
// with q_c = (1 - eps)[c = t_b] + eps / C; writes loss[1], per_sample[B] and grad[B, C] in the same pass.
#include <cfloat>

#include "kernels/common.cuh"
#include "kernels/focal_loss.h"

namespace dsmil::kernels {

namespace {

constexpr int kLossThreads = 256;

// One sample's softmax terms. 1 - p_c is computed as sum_{j != c} p_j, exact where p_c rounds to 1.
struct SampleSoftmax {
  const float* y;
  int64_t classes;
  float y_max, log_total;
  __device__ SampleSoftmax(const float* logits, int64_t c_count) : y(logits), classes(c_count) {
    y_max = -FLT_MAX;
    for (int64_t c = 0; c < classes; ++c) y_max = fmaxf(y_max, y[c]);
    float total = 0.0f;
    for (int64_t c = 0; c < classes; ++c) total += expf(y[c] - y_max);
    log_total = logf(total);
  }
  __device__ float log_p(int64_t c) const { return y[c] - y_max - log_total; }
  __device__ float one_minus_p(int64_t c) const {
    float rest = 0.0f;
    for (int64_t j = 0; j < classes; ++j)
      if (j != c) rest += expf(log_p(j));
    return rest;
  }
};

// focal_c = (1 - p_c)^gamma and g_c = (1 - p_c)^gamma - gamma p_c (1 - p_c)^(gamma - 1) log p_c: the
// chain rule through the softmax gives d l / d y_j = -q_j g_j + p_j sum_c q_c g_c (gamma = 0: p_j - q_j).
__device__ __forceinline__ void focal_terms(float log_p, float one_minus_p, float gamma, float& focal, float& g) {
  if (gamma == 0.0f) {
    focal = 1.0f;
    g = 1.0f;
    return;
  }
  focal = powf(one_minus_p, gamma);
  const float slope = one_minus_p > 0.0f ? gamma * expf(log_p) * powf(one_minus_p, gamma - 1.0f) * log_p : 0.0f;
  g = focal - slope;
}

__global__ void focal_loss_kernel(const float* __restrict__ logits, const int32_t* __restrict__ target,
                                  const float* __restrict__ weight, int64_t batch, int64_t classes, float eps,
                                  float gamma, float* __restrict__ loss, float* __restrict__ grad,
                                  float* __restrict__ per_sample) {
  __shared__ float scratch[32];
  float local_weight = 0.0f;
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) local_weight += weight[b];
  const float weight_total = block_sum(local_weight, scratch);

  const float off_target = eps / static_cast<float>(classes);
  float local_loss = 0.0f;
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) {
    const int32_t t = target[b];
    const SampleSoftmax sm(logits + b * classes, classes);
    float* gb = grad + b * classes;
    if (t < 0 || t >= classes) {
      per_sample[b] = NAN;
      for (int64_t c = 0; c < classes; ++c) gb[c] = NAN;
      local_loss = NAN;
      continue;
    }
    float sample_loss = 0.0f, q_g_sum = 0.0f;
    for (int64_t c = 0; c < classes; ++c) {
      const float q = (c == t ? 1.0f - eps : 0.0f) + off_target;
      float focal, g;
      focal_terms(sm.log_p(c), sm.one_minus_p(c), gamma, focal, g);
      sample_loss -= q * focal * sm.log_p(c);
      q_g_sum += q * g;
    }
    const float scale = weight[b] / weight_total;
    for (int64_t c = 0; c < classes; ++c) {
      const float q = (c == t ? 1.0f - eps : 0.0f) + off_target;
      float focal, g;
      focal_terms(sm.log_p(c), sm.one_minus_p(c), gamma, focal, g);
      gb[c] = scale * (-q * g + expf(sm.log_p(c)) * q_g_sum);
    }
    per_sample[b] = sample_loss;
    local_loss += weight[b] * sample_loss;
  }
  const float weighted_loss = block_sum(local_loss, scratch);
  if (threadIdx.x == 0) *loss = weighted_loss / weight_total;
}

}  // namespace

cudaError_t focal_loss(const float* logits, const int32_t* target, const float* weight, int64_t batch, int64_t classes,
                       float eps, float gamma, float* loss, float* grad, float* per_sample, cudaStream_t stream) {
  focal_loss_kernel<<<1, kLossThreads, 0, stream>>>(logits, target, weight, batch, classes, eps, gamma, loss, grad,
                                                    per_sample);
  return cudaGetLastError();
}

}  // namespace dsmil::kernels
