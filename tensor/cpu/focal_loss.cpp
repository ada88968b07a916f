// CPU fused focal / label-smoothed cross entropy: logits[B, C], target[B], weight[B] -> loss [1] and
// d loss / d logits [B, C] in one pass (formula and contract: tensor/op_declarations.inc; checked by ops::).
#include <cmath>

#include "tensor/cpu/common.h"

namespace dsmil::cpu {

FocalLossOut focal_loss(const Tensor& logits, const Tensor& target, const Tensor& weight, float eps, float gamma) {
  const int64_t bags = logits.size(0), classes = logits.size(1);
  FocalLossOut out{Tensor::empty({1}), Tensor::empty(logits.shape()), Tensor::empty({bags})};
  double weight_sum = 0.0;
  for (int64_t b = 0; b < bags; ++b) weight_sum += weight.f32()[b];
  double total = 0.0;
  std::vector<double> p(classes), log_p(classes), g(classes);
  for (int64_t b = 0; b < bags; ++b) {
    const float* y = logits.f32() + b * classes;
    const int32_t t = target.i32()[b];
    if (t < 0 || t >= classes) {  // as the CUDA kernel: the sample, its gradient row and the loss are NaN
      out.per_sample.f32()[b] = NAN;
      for (int64_t c = 0; c < classes; ++c) out.grad.f32()[b * classes + c] = NAN;
      total = NAN;
      continue;
    }
    double peak = y[0];
    for (int64_t c = 1; c < classes; ++c) peak = std::max<double>(peak, y[c]);
    double z = 0.0;
    for (int64_t c = 0; c < classes; ++c) z += std::exp(y[c] - peak);
    for (int64_t c = 0; c < classes; ++c) {
      log_p[c] = y[c] - peak - std::log(z);
      p[c] = std::exp(log_p[c]);
    }
    double loss = 0.0, g_sum = 0.0;
    for (int64_t c = 0; c < classes; ++c) {
      const double q = (c == t ? 1.0 - eps : 0.0) + eps / classes;
      double rest = 0.0;  // 1 - p_c summed from the other classes, exact when p_c is near 1
      for (int64_t o = 0; o < classes; ++o) rest += o == c ? 0.0 : p[o];
      const double focus = gamma == 0.0f ? 1.0 : std::pow(rest, gamma);
      // d/dp of (1 - p)^gamma is -gamma (1 - p)^(gamma - 1); its product with p log p vanishes as p -> 1.
      const double focus_slope = gamma == 0.0f || rest == 0.0 ? 0.0 : gamma * std::pow(rest, gamma - 1.0);
      loss -= q * focus * log_p[c];
      g[c] = q * (focus - focus_slope * p[c] * log_p[c]);
      g_sum += g[c];
    }
    out.per_sample.f32()[b] = static_cast<float>(loss);
    const double w = weight.f32()[b] / weight_sum;
    total += w * loss;
    for (int64_t c = 0; c < classes; ++c)
      out.grad.f32()[b * classes + c] = static_cast<float>(w * (p[c] * g_sum - g[c]));
  }
  out.loss.f32()[0] = static_cast<float>(total);
  return out;
}

}  // namespace dsmil::cpu
