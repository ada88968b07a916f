// synchronised_batchnorm: the statistics exchange, the forward through the eval-forward ops and the
// backward through the local backward ops plus a per-channel affine correction to the global sums.
#include "nn/sync_batchnorm.h"

#include <cmath>

#include "tensor/ops.h"

namespace dsmil::nn {

namespace {

struct CombinedStatistics {
  double rows = 0;
  std::vector<double> mean, biased_var, invstd, unbiased_var;
};

std::vector<double> host_values(const Tensor& t) {
  const std::vector<float> v = t.to(Device::CPU).to_vector();
  return {v.begin(), v.end()};
}

Tensor device_vector(const std::vector<double>& values, Device device) {
  return Tensor::from_vector({static_cast<int64_t>(values.size())}, std::vector<float>(values.begin(), values.end()))
      .to(device);
}

// Every rank's (rows, mean, biased variance) gathered; the pooled statistics by Chan's pairwise formula
// (sum of the ranks' squared deviations plus their rows times the squared distance of their mean).
CombinedStatistics combine(const Tensor& x, const BatchNormTrainOut& local, float eps, dist::Communicator& ranks) {
  const int64_t channels = x.size(-1);
  const std::vector<double> mean = host_values(local.save_mean), invstd = host_values(local.save_invstd);
  std::vector<double> mine{static_cast<double>(x.numel() / channels)};
  mine.insert(mine.end(), mean.begin(), mean.end());
  for (double s : invstd) mine.push_back(1.0 / (s * s) - eps);
  const std::vector<double> all = ranks.gather(mine);
  const size_t stride = mine.size();
  CombinedStatistics out;
  out.mean.assign(channels, 0.0);
  out.biased_var.assign(channels, 0.0);
  for (int r = 0; r < ranks.world_size(); ++r) {
    const double rows = all[r * stride];
    out.rows += rows;
    for (int64_t c = 0; c < channels; ++c) out.mean[c] += rows * all[r * stride + 1 + c];
  }
  for (double& m : out.mean) m /= out.rows;
  for (int r = 0; r < ranks.world_size(); ++r) {
    const double rows = all[r * stride];
    for (int64_t c = 0; c < channels; ++c) {
      const double d = all[r * stride + 1 + c] - out.mean[c];
      out.biased_var[c] += rows * (all[r * stride + 1 + channels + c] + d * d);
    }
  }
  for (int64_t c = 0; c < channels; ++c) {
    const double squared_deviations = out.biased_var[c];
    out.biased_var[c] = squared_deviations / out.rows;
    out.unbiased_var.push_back(squared_deviations / (out.rows - 1));
    out.invstd.push_back(1.0 / std::sqrt(out.biased_var[c] + eps));
  }
  return out;
}

// y[..., c] = scale[c] x + shift[c]: batch norm's eval map with zero mean, unit variance and no epsilon.
Tensor channel_affine(const Tensor& x, const std::vector<double>& scale, const std::vector<double>& shift) {
  const Device d = x.device();
  const int64_t channels = x.size(-1);
  return ops::batchnorm_forward_eval(x, device_vector(scale, d), device_vector(shift, d),
                                     Tensor::zeros({channels}, DType::F32, d), Tensor::full({channels}, 1.0f, d), 0.0f);
}

}  // namespace

Variable synchronised_batchnorm(const Variable& x, const Variable& gamma, const Variable& beta, Tensor& running_mean,
                                Tensor& running_var, float momentum, float eps, const std::optional<ReluBranch>& relu,
                                dist::Communicator& ranks) {
  const Device device = x.value().device();
  // Momentum 0 leaves the running statistics alone: they are updated below with the combined ones.
  const BatchNormTrainOut local = ops::batchnorm_statistics(x.value(), running_mean, running_var, 0.0f, eps);
  const CombinedStatistics stats = combine(x.value(), local, eps, ranks);
  const Tensor mean = device_vector(stats.mean, device), var = device_vector(stats.biased_var, device),
               invstd = device_vector(stats.invstd, device);
  ops::scale_(running_mean, 1.0f - momentum);
  ops::axpy_(running_mean, momentum, mean);
  ops::scale_(running_var, 1.0f - momentum);
  ops::axpy_(running_var, momentum, device_vector(stats.unbiased_var, device));

  const Variable residual = relu ? relu->residual : Variable();
  const Tensor sample_factor = relu ? relu->sample_factor : Tensor();
  const Tensor y =
      relu ? ops::batchnorm_relu_forward_eval(x.value(), gamma.value(), beta.value(), mean, var, eps,
                                              residual.defined() ? residual.value() : Tensor(), sample_factor)
           : ops::batchnorm_forward_eval(x.value(), gamma.value(), beta.value(), mean, var, eps);
  const double local_rows = static_cast<double>(x.value().numel() / x.value().size(-1)), rows = stats.rows;
  const bool fused = relu.has_value();
  auto backward = [dx_sink = x.grad_sink(), dgamma_sink = gamma.grad_sink(), dbeta_sink = beta.grad_sink(),
                   d_residual_sink = residual.grad_sink(), x_value = x.value(), gamma_value = gamma.value(),
                   sample_factor, y, mean, invstd, fused, local_rows, rows, stats, &ranks](const Tensor& dy) {
    Tensor dx, dgamma, dbeta, d_residual;
    if (fused) {
      BatchNormReluGrads g = ops::batchnorm_relu_backward(dy, y, x_value, gamma_value, Tensor(), mean, invstd,
                                                          sample_factor, d_residual_sink.requires_grad());
      dx = g.dx, dgamma = g.dgamma, dbeta = g.dbeta, d_residual = g.d_residual;
    } else {
      BatchNormGrads g = ops::batchnorm_backward(dy, x_value, gamma_value, mean, invstd);
      dx = g.dx, dgamma = g.dgamma, dbeta = g.dbeta;
    }
    // dx above used this rank's sums of g and g xhat over its rows; the batch's are summed over ranks.
    // dx_global - dx_local = k (dbeta/n - Dbeta/N) + k xhat (dgamma/n - Dgamma/N), k = gamma invstd.
    const std::vector<double> local_dgamma = host_values(dgamma), local_dbeta = host_values(dbeta),
                              gamma_host = host_values(gamma_value);
    std::vector<double> mine = local_dgamma;
    mine.insert(mine.end(), local_dbeta.begin(), local_dbeta.end());
    const std::vector<double> total = ranks.sum(mine);
    const size_t channels = local_dgamma.size();
    std::vector<double> scale(channels), shift(channels);
    for (size_t c = 0; c < channels; ++c) {
      const double k = gamma_host[c] * stats.invstd[c];
      const double per_xhat = k * (local_dgamma[c] / local_rows - total[c] / rows);
      scale[c] = per_xhat * stats.invstd[c];
      shift[c] = k * (local_dbeta[c] / local_rows - total[channels + c] / rows) - scale[c] * stats.mean[c];
    }
    dx_sink.accumulate(ops::add(dx, channel_affine(x_value, scale, shift)));
    // The parameters' gradients stay this rank's: the gradient reducer sums them with all the others.
    dgamma_sink.accumulate(dgamma);
    dbeta_sink.accumulate(dbeta);
    if (d_residual.defined()) d_residual_sink.accumulate(d_residual);
  };
  return Variable::from_op(y, {x, gamma, beta, residual}, backward);
}

}  // namespace dsmil::nn
