// Conv3d, BatchNorm3d and Linear: parameters, initialisation, forward.
#include "nn/layers.h"

#include <cmath>

#include "nn/sync_batchnorm.h"

namespace dsmil::nn {

namespace {
Tensor draw(const Shape& shape, InitEngine& engine, auto distribution) {
  std::vector<float> values(shape_numel(shape));
  for (float& v : values) v = distribution(engine);
  return Tensor::from_vector(shape, values);
}
}  // namespace

Conv3d::Conv3d(int64_t in, int64_t out, const Conv3dGeometry& g, InitEngine& engine) : geometry(g) {
  const int64_t fan_out = out * g.kernel[0] * g.kernel[1] * g.kernel[2];
  weight = Variable(draw({out, g.kernel[0], g.kernel[1], g.kernel[2], in}, engine,
                         std::normal_distribution<float>(0.0f, std::sqrt(2.0f / fan_out))),
                    true);
  register_parameter("weight", weight, true);
}

// Mixed precision: a bf16 input convolves with a bf16 copy of the fp32 master weight.
Variable Conv3d::forward(const Variable& x) const {
  return fn::conv3d(x, fn::to_dtype(weight, x.value().dtype()), geometry, math_mode());
}

BatchNorm3d::BatchNorm3d(int64_t channels)
    : gamma(Tensor::full({channels}, 1.0f), true),
      beta(Tensor::zeros({channels}), true),
      running_mean(Tensor::zeros({channels})),
      running_var(Tensor::full({channels}, 1.0f)) {
  register_parameter("weight", gamma, false);
  register_parameter("bias", beta, false);
  register_buffer("running_mean", running_mean);
  register_buffer("running_var", running_var);
}

Variable BatchNorm3d::forward(const Variable& x) {
  if (training() && statistics_ranks)
    return synchronised_batchnorm(x, gamma, beta, running_mean, running_var, momentum, eps, {}, *statistics_ranks);
  return fn::batchnorm(x, gamma, beta, running_mean, running_var, training(), momentum, eps);
}

Variable BatchNorm3d::forward_relu(const Variable& x, const Variable& residual, const Tensor& sample_factor) {
  if (training() && statistics_ranks)
    return synchronised_batchnorm(x, gamma, beta, running_mean, running_var, momentum, eps,
                                  ReluBranch{residual, sample_factor}, *statistics_ranks);
  return fn::batchnorm_relu(x, gamma, beta, running_mean, running_var, training(), momentum, eps, residual,
                            sample_factor);
}

void synchronise_batchnorm(Module& model, dist::Communicator* ranks) {
  model.visit([ranks](Module& m) {
    if (auto* bn = dynamic_cast<BatchNorm3d*>(&m)) bn->statistics_ranks = ranks;
  });
}

Linear::Linear(int64_t in, int64_t out, InitEngine& engine, bool with_bias) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  weight = Variable(draw({out, in}, engine, std::uniform_real_distribution<float>(-bound, bound)), true);
  register_parameter("weight", weight, true);
  if (with_bias) {
    bias = Variable(draw({out}, engine, std::uniform_real_distribution<float>(-bound, bound)), true);
    register_parameter("bias", bias, false);
  }
}

Variable Linear::forward(const Variable& x) const { return fn::linear(x, weight, bias, math_mode()); }

}  // namespace dsmil::nn
