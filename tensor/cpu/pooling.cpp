// CPU pooling, channels-last: max pool with argmax x[N, D, H, W, C] -> y[N, D', H', W', C], and global
// average pool x[N, D, H, W, C] -> y[N, C].
#include <limits>

#include "tensor/cpu/common.h"

namespace dsmil::cpu {

MaxPoolOut maxpool3d_forward(const Tensor& x, const Pool3dGeometry& g) {
  const Shape ys = ops::pool3d_output_shape(x.shape(), g);
  const int64_t n = x.size(0), d = x.size(1), h = x.size(2), w = x.size(3), c = x.size(4);
  MaxPoolOut out{Tensor::empty(ys), Tensor::empty(ys, DType::U8)};
  const float* xp = x.f32();
  float* yp = out.y.f32();
  uint8_t* ap = out.argmax.u8();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t s = 0; s < n; ++s)
    for (int64_t od = 0; od < ys[1]; ++od)
      for (int64_t oh = 0; oh < ys[2]; ++oh)
        for (int64_t ow = 0; ow < ys[3]; ++ow)
          for (int64_t ch = 0; ch < c; ++ch) {
            float best = -std::numeric_limits<float>::infinity();
            int best_at = -1;
            for (int64_t t = 0; t < g.kernel[0]; ++t) {
              const int64_t id = od * g.stride[0] - g.pad[0] + t;
              if (id < 0 || id >= d) continue;
              for (int64_t r = 0; r < g.kernel[1]; ++r) {
                const int64_t ih = oh * g.stride[1] - g.pad[1] + r;
                if (ih < 0 || ih >= h) continue;
                for (int64_t q = 0; q < g.kernel[2]; ++q) {
                  const int64_t iw = ow * g.stride[2] - g.pad[2] + q;
                  if (iw < 0 || iw >= w) continue;
                  const float v = xp[(s * d * h * w + (id * h + ih) * w + iw) * c + ch];
                  if (v > best || best_at < 0) {
                    best = v;
                    best_at = static_cast<int>((t * g.kernel[1] + r) * g.kernel[2] + q);
                  }
                }
              }
            }
            const int64_t o = (((s * ys[1] + od) * ys[2] + oh) * ys[3] + ow) * c + ch;
            yp[o] = best;
            ap[o] = static_cast<uint8_t>(best_at);
          }
  return out;
}

// Scatters in ascending output order per (sample, channel).
Tensor maxpool3d_backward(const Tensor& dy, const Tensor& argmax, const Shape& x_shape, const Pool3dGeometry& g) {
  Tensor dx = Tensor::zeros(x_shape);
  const int64_t n = x_shape[0], d = x_shape[1], h = x_shape[2], w = x_shape[3], c = x_shape[4];
  const int64_t out_d = dy.size(1), out_h = dy.size(2), out_w = dy.size(3);
  const int64_t window_hw = int64_t{g.kernel[1]} * g.kernel[2];
  const float* gp = dy.f32();
  const uint8_t* ap = argmax.u8();
  float* dxp = dx.f32();
  // Windows overlap, so one thread owns each (sample, channel) volume.
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t s = 0; s < n; ++s)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t od = 0; od < out_d; ++od)
        for (int64_t oh = 0; oh < out_h; ++oh)
          for (int64_t ow = 0; ow < out_w; ++ow) {
            const int64_t i = (((s * out_d + od) * out_h + oh) * out_w + ow) * c + ch, at = ap[i];
            const int64_t id = od * g.stride[0] - g.pad[0] + at / window_hw;
            const int64_t ih = oh * g.stride[1] - g.pad[1] + at / g.kernel[2] % g.kernel[1];
            const int64_t iw = ow * g.stride[2] - g.pad[2] + at % g.kernel[2];
            dxp[(s * d * h * w + (id * h + ih) * w + iw) * c + ch] += gp[i];
          }
  return dx;
}

Tensor global_avg_pool(const Tensor& x) {
  const int64_t n = x.size(0), c = x.size(4), volume = x.numel() / (n * c);
  Tensor y = Tensor::empty({n, c});
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < n; ++s)
    VectorMap(y.f32() + s * c, c) =
        ConstMatrixMap(x.f32() + s * volume * c, volume, c).colwise().sum().transpose() / static_cast<float>(volume);
  return y;
}

// dx_dtype is F32 here: the dispatch lets BF16 through on CUDA only.
Tensor global_avg_pool_backward(const Tensor& dy, const Shape& x_shape, DType) {
  const int64_t n = x_shape[0], c = x_shape[4], volume = shape_numel(x_shape) / (n * c);
  Tensor dx = Tensor::empty(x_shape);
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < n; ++s)
    as_matrix(dx, n * volume, c).middleRows(s * volume, volume).rowwise() =
        ConstVectorMap(dy.f32() + s * c, c).transpose() / static_cast<float>(volume);
  return dx;
}

}  // namespace dsmil::cpu
