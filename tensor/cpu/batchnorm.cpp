// CPU batch norm over every axis but the last: x[M..., C] with per-channel gamma, beta and statistics.
// Sums are accumulated in double so that the reference stays accurate at large M.
#include <algorithm>
#include <cmath>

#include "tensor/cpu/common.h"

namespace dsmil::cpu {

namespace {

struct Rows {
  int64_t m, c;
};

Rows rows_of(const Tensor& x) {
  const int64_t c = x.size(-1);
  return {x.numel() / c, c};
}

// Per-channel sums of f(row, channel) over the rows, in double. Fixed row blocks summed in block
// order: the result does not depend on the thread count or scheduling (runs repeat bit for bit).
template <typename F>
std::vector<double> channel_sums(const Rows& rc, F f) {
  constexpr int64_t kBlockRows = 4096;
  const int64_t blocks = (rc.m + kBlockRows - 1) / kBlockRows;
  std::vector<double> partial(blocks * rc.c, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t i = blk * kBlockRows; i < std::min(rc.m, (blk + 1) * kBlockRows); ++i)
      for (int64_t ch = 0; ch < rc.c; ++ch) partial[blk * rc.c + ch] += f(i, ch);
  std::vector<double> total(rc.c, 0.0);
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t ch = 0; ch < rc.c; ++ch) total[ch] += partial[blk * rc.c + ch];
  return total;
}

// y = x * a[c] + b[c]
Tensor affine_per_channel(const Tensor& x, const Rows& rc, const std::vector<float>& a, const std::vector<float>& b) {
  Tensor y = empty_like(x);
  const float* xp = x.f32();
  float* yp = y.f32();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rc.m; ++i)
    for (int64_t ch = 0; ch < rc.c; ++ch) yp[i * rc.c + ch] = xp[i * rc.c + ch] * a[ch] + b[ch];
  return y;
}

}  // namespace

BatchNormTrainOut batchnorm_statistics(const Tensor& x, Tensor& running_mean, Tensor& running_var, float momentum,
                                       float eps) {
  const Rows rc = rows_of(x);
  const float* xp = x.f32();
  const std::vector<double> sum = channel_sums(rc, [&](int64_t i, int64_t ch) { return xp[i * rc.c + ch]; });
  std::vector<double> mean(rc.c);
  for (int64_t ch = 0; ch < rc.c; ++ch) mean[ch] = sum[ch] / rc.m;
  const std::vector<double> sq = channel_sums(rc, [&](int64_t i, int64_t ch) {
    const double d = xp[i * rc.c + ch] - mean[ch];
    return d * d;
  });
  BatchNormTrainOut out{Tensor(), Tensor::empty({rc.c}), Tensor::empty({rc.c})};
  for (int64_t ch = 0; ch < rc.c; ++ch) {
    out.save_mean.f32()[ch] = static_cast<float>(mean[ch]);
    out.save_invstd.f32()[ch] = static_cast<float>(1.0 / std::sqrt(sq[ch] / rc.m + eps));
    running_mean.f32()[ch] = (1.0f - momentum) * running_mean.f32()[ch] + momentum * static_cast<float>(mean[ch]);
    running_var.f32()[ch] =
        (1.0f - momentum) * running_var.f32()[ch] + momentum * static_cast<float>(sq[ch] / (rc.m - 1));
  }
  return out;
}

Tensor batchnorm_normalise(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& save_mean,
                           const Tensor& save_invstd) {
  const Rows rc = rows_of(x);
  std::vector<float> a(rc.c), b(rc.c);
  for (int64_t ch = 0; ch < rc.c; ++ch) {
    const double mean = save_mean.f32()[ch], invstd = save_invstd.f32()[ch];
    a[ch] = static_cast<float>(gamma.f32()[ch] * invstd);
    b[ch] = static_cast<float>(beta.f32()[ch] - mean * gamma.f32()[ch] * invstd);
  }
  return affine_per_channel(x, rc, a, b);
}

BatchNormTrainOut batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          Tensor& running_mean, Tensor& running_var, float momentum, float eps) {
  BatchNormTrainOut out = batchnorm_statistics(x, running_mean, running_var, momentum, eps);
  out.y = batchnorm_normalise(x, gamma, beta, out.save_mean, out.save_invstd);
  return out;
}

Tensor batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                              const Tensor& running_var, float eps) {
  const Rows rc = rows_of(x);
  std::vector<float> a(rc.c), b(rc.c);
  for (int64_t ch = 0; ch < rc.c; ++ch) {
    const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var.f32()[ch]) + eps);
    a[ch] = static_cast<float>(gamma.f32()[ch] * invstd);
    b[ch] = static_cast<float>(beta.f32()[ch] - running_mean.f32()[ch] * gamma.f32()[ch] * invstd);
  }
  return affine_per_channel(x, rc, a, b);
}

BatchNormGrads batchnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& save_mean,
                                  const Tensor& save_invstd) {
  const Rows rc = rows_of(x);
  const float* xp = x.f32();
  const float* gp = dy.f32();
  const float* mean = save_mean.f32();
  const float* invstd = save_invstd.f32();
  auto xhat = [&](int64_t i, int64_t ch) { return (xp[i * rc.c + ch] - mean[ch]) * invstd[ch]; };
  const std::vector<double> dbeta = channel_sums(rc, [&](int64_t i, int64_t ch) { return gp[i * rc.c + ch]; });
  const std::vector<double> dgamma =
      channel_sums(rc, [&](int64_t i, int64_t ch) { return static_cast<double>(gp[i * rc.c + ch]) * xhat(i, ch); });
  BatchNormGrads grads{empty_like(x), Tensor::empty({rc.c}), Tensor::empty({rc.c})};
  for (int64_t ch = 0; ch < rc.c; ++ch) {
    grads.dgamma.f32()[ch] = static_cast<float>(dgamma[ch]);
    grads.dbeta.f32()[ch] = static_cast<float>(dbeta[ch]);
  }
  // dx = gamma invstd / M (M dy - sum dy - xhat sum(dy xhat))
  float* dx = grads.dx.f32();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rc.m; ++i)
    for (int64_t ch = 0; ch < rc.c; ++ch) {
      const double k = gamma.f32()[ch] * invstd[ch] / static_cast<double>(rc.m);
      dx[i * rc.c + ch] = static_cast<float>(
          k * (rc.m * static_cast<double>(gp[i * rc.c + ch]) - dbeta[ch] - xhat(i, ch) * dgamma[ch]));
    }
  return grads;
}

}  // namespace dsmil::cpu
