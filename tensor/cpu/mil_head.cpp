// CPU ops of the MIL head over bags: masked softmax e[B, n] -> a[B, n] with attention statistics, top-k
// selection and gather-mean over x[B, n, F], and the bag contractions weighted_sum, dot and outer.
#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "tensor/cpu/common.h"

namespace dsmil::cpu {

MaskedSoftmaxOut masked_softmax(const Tensor& e, const Tensor& mask, float temperature) {
  const int64_t bags = e.size(0), n = e.size(1);
  MaskedSoftmaxOut out{Tensor::empty(e.shape()), Tensor::empty({bags, 3})};
  for (int64_t b = 0; b < bags; ++b) {
    const float* eb = e.f32() + b * n;
    const int32_t* mb = mask.i32() + b * n;
    float* ab = out.a.f32() + b * n;
    double peak = -INFINITY;
    for (int64_t i = 0; i < n; ++i)
      if (mb[i]) peak = std::max<double>(peak, eb[i] / temperature);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += mb[i] ? std::exp(eb[i] / temperature - peak) : 0.0;
    double entropy = 0.0, top1 = 0.0, sum_sq = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double a = mb[i] ? std::exp(eb[i] / temperature - peak) / total : 0.0;
      ab[i] = static_cast<float>(a);
      if (a > 0.0) entropy -= a * std::log(a);
      top1 = std::max(top1, a);
      sum_sq += a * a;
    }
    float* stats = out.stats.f32() + b * 3;
    stats[0] = static_cast<float>(entropy);
    stats[1] = static_cast<float>(top1);
    stats[2] = sum_sq > 0.0 ? static_cast<float>(1.0 / sum_sq) : 0.0f;
  }
  return out;
}

Tensor masked_softmax_backward(const Tensor& da, const Tensor& a, float temperature) {
  const int64_t bags = a.size(0), n = a.size(1);
  Tensor de = Tensor::empty(a.shape());
  for (int64_t b = 0; b < bags; ++b) {
    const float* ab = a.f32() + b * n;
    const float* gb = da.f32() + b * n;
    double dot = 0.0;
    for (int64_t i = 0; i < n; ++i) dot += static_cast<double>(ab[i]) * gb[i];
    for (int64_t i = 0; i < n; ++i) de.f32()[b * n + i] = static_cast<float>(ab[i] * (gb[i] - dot) / temperature);
  }
  return de;
}

Tensor topk_indices(const Tensor& score, const Tensor& mask, int k) {
  const int64_t bags = score.size(0), n = score.size(1);
  Tensor idx = Tensor::empty({bags, k}, DType::I32);
  std::vector<int32_t> order(n);
  for (int64_t b = 0; b < bags; ++b) {
    const float* sb = score.f32() + b * n;
    const int32_t* mb = mask.i32() + b * n;
    order.clear();
    for (int32_t i = 0; i < n; ++i)
      if (mb[i]) order.push_back(i);
    std::stable_sort(order.begin(), order.end(), [sb](int32_t u, int32_t v) { return sb[u] > sb[v]; });
    for (int j = 0; j < k; ++j) idx.i32()[b * k + j] = j < static_cast<int>(order.size()) ? order[j] : -1;
  }
  return idx;
}

Tensor gather_mean(const Tensor& x, const Tensor& idx) {
  const int64_t bags = x.size(0), n = x.size(1), f = x.size(2), k = idx.size(1);
  Tensor y = Tensor::zeros({bags, f});
  for (int64_t b = 0; b < bags; ++b) {
    const int32_t* ib = idx.i32() + b * k;
    const int64_t valid = std::count_if(ib, ib + k, [](int32_t i) { return i >= 0; });
    for (int64_t j = 0; j < k; ++j) {
      if (ib[j] < 0) continue;
      // The indices are on the host here, so the CPU checks what the dispatch cannot without synchronising.
      if (ib[j] >= n) throw ShapeError(fmt::format("gather_mean: index {} outside bag of {}", ib[j], n));
      VectorMap(y.f32() + b * f, f) += ConstVectorMap(x.f32() + (b * n + ib[j]) * f, f) / static_cast<float>(valid);
    }
  }
  return y;
}

Tensor gather_mean_backward(const Tensor& dy, const Tensor& idx, int64_t n) {
  const int64_t bags = dy.size(0), f = dy.size(1), k = idx.size(1);
  Tensor dx = Tensor::zeros({bags, n, f});
  for (int64_t b = 0; b < bags; ++b) {
    const int32_t* ib = idx.i32() + b * k;
    const int64_t valid = std::count_if(ib, ib + k, [](int32_t i) { return i >= 0; });
    for (int64_t j = 0; j < k; ++j)
      if (ib[j] >= 0)
        VectorMap(dx.f32() + (b * n + ib[j]) * f, f) += ConstVectorMap(dy.f32() + b * f, f) / static_cast<float>(valid);
  }
  return dx;
}

Tensor bag_weighted_sum(const Tensor& a, const Tensor& v) {
  const int64_t bags = v.size(0), n = v.size(1), f = v.size(2);
  Tensor y = Tensor::empty({bags, f});
  for (int64_t b = 0; b < bags; ++b)
    VectorMap(y.f32() + b * f, f) =
        ConstMatrixMap(v.f32() + b * n * f, n, f).transpose() * ConstVectorMap(a.f32() + b * n, n);
  return y;
}

Tensor bag_dot(const Tensor& q, const Tensor& m) {
  const int64_t bags = q.size(0), n = q.size(1), f = q.size(2);
  Tensor y = Tensor::empty({bags, n});
  for (int64_t b = 0; b < bags; ++b)
    VectorMap(y.f32() + b * n, n) = ConstMatrixMap(q.f32() + b * n * f, n, f) * ConstVectorMap(m.f32() + b * f, f);
  return y;
}

Tensor bag_outer(const Tensor& a, const Tensor& m) {
  const int64_t bags = a.size(0), n = a.size(1), f = m.size(1);
  Tensor y = Tensor::empty({bags, n, f});
  for (int64_t b = 0; b < bags; ++b)
    MatrixMap(y.f32() + b * n * f, n, f).noalias() =
        ConstVectorMap(a.f32() + b * n, n) * ConstVectorMap(m.f32() + b * f, f).transpose();
  return y;
}

}  // namespace dsmil::cpu
