// CPU elementwise ops and whole-tensor reductions: y = f(x) or f(a, b) over equal shapes.
#include <algorithm>
#include <cmath>
#include <vector>

#include "tensor/cpu/common.h"

namespace dsmil::cpu {

namespace {

template <typename F>
Tensor map_unary(const Tensor& x, F f) {
  Tensor y = empty_like(x);
  const float* xp = x.f32();
  float* yp = y.f32();
  const int64_t n = x.numel();
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) yp[i] = f(xp[i]);
  return y;
}

template <typename F>
Tensor map_binary(const Tensor& a, const Tensor& b, F f) {
  Tensor y = empty_like(a);
  const float* ap = a.f32();
  const float* bp = b.f32();
  float* yp = y.f32();
  const int64_t n = a.numel();
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) yp[i] = f(ap[i], bp[i]);
  return y;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  return map_binary(a, b, [](float u, float v) { return u + v; });
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return map_binary(a, b, [](float u, float v) { return u * v; });
}
Tensor scale(const Tensor& x, float s) {
  return map_unary(x, [s](float u) { return s * u; });
}

void axpy_(Tensor& y, float alpha, const Tensor& x) {
  float* yp = y.f32();
  const float* xp = x.f32();
  const int64_t n = y.numel();
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) yp[i] += alpha * xp[i];
}

void scale_(Tensor& x, float s) {
  float* p = x.f32();
  const int64_t n = x.numel();
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) p[i] *= s;
}

Tensor relu(const Tensor& x) {
  return map_unary(x, [](float u) { return u > 0.0f ? u : 0.0f; });
}
Tensor relu_backward(const Tensor& dy, const Tensor& y) {
  return map_binary(dy, y, [](float g, float v) { return v > 0.0f ? g : 0.0f; });
}
Tensor tanh(const Tensor& x) {
  return map_unary(x, [](float u) { return std::tanh(u); });
}
Tensor tanh_backward(const Tensor& dy, const Tensor& y) {
  return map_binary(dy, y, [](float g, float v) { return g * (1.0f - v * v); });
}
Tensor sigmoid(const Tensor& x) {
  return map_unary(x, [](float u) { return 1.0f / (1.0f + std::exp(-u)); });
}
Tensor sigmoid_backward(const Tensor& dy, const Tensor& y) {
  return map_binary(dy, y, [](float g, float v) { return g * v * (1.0f - v); });
}

// Fixed blocks summed in block order, so that the result is independent of the thread count.
float sum_squares(const Tensor& x) {
  const float* p = x.f32();
  const int64_t n = x.numel(), blocks = (n + kParallelGrain - 1) / kParallelGrain;
  std::vector<double> partial(blocks, 0.0);
#pragma omp parallel for if (blocks > 1) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t i = blk * kParallelGrain; i < std::min(n, (blk + 1) * kParallelGrain); ++i)
      partial[blk] += static_cast<double>(p[i]) * p[i];
  double total = 0.0;
  for (double v : partial) total += v;
  return static_cast<float>(total);
}

bool all_finite(const Tensor& x) {
  const float* p = x.f32();
  const int64_t n = x.numel();
  int64_t bad = 0;
#pragma omp parallel for if (n > kParallelGrain) reduction(+ : bad) schedule(static)
  for (int64_t i = 0; i < n; ++i) bad += std::isfinite(p[i]) ? 0 : 1;
  return bad == 0;
}

}  // namespace dsmil::cpu
