// CPU pooling, channels-last: max pool with argmax x[N, D, H, W, C] -> y[N, D', H', W', C], and global
// average pool x[N, D, H, W, C] -> y[N, C].
#include <limits>

#include "tensor/cpu/common.h"

namespace dsmil::cpu {

MaxPoolOut maxpool3d_forward(const Tensor& x, const Pool3dGeometry& g) {
  const Shape ys = ops::pool3d_output_shape(x.shape(), g);
  const int64_t n = x.size(0), d = x.size(1), h = x.size(2), w = x.size(3), c = x.size(4);
  MaxPoolOut out{Tensor::empty(ys), Tensor::empty(ys, DType::I32)};
  const float* xp = x.f32();
  float* yp = out.y.f32();
  int32_t* ap = out.argmax.i32();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t s = 0; s < n; ++s)
    for (int64_t od = 0; od < ys[1]; ++od)
      for (int64_t oh = 0; oh < ys[2]; ++oh)
        for (int64_t ow = 0; ow < ys[3]; ++ow)
          for (int64_t ch = 0; ch < c; ++ch) {
            float best = -std::numeric_limits<float>::infinity();
            int32_t best_at = -1;
            for (int64_t t = 0; t < g.kernel[0]; ++t) {
              const int64_t id = od * g.stride[0] - g.pad[0] + t;
              if (id < 0 || id >= d) continue;
              for (int64_t r = 0; r < g.kernel[1]; ++r) {
                const int64_t ih = oh * g.stride[1] - g.pad[1] + r;
                if (ih < 0 || ih >= h) continue;
                for (int64_t q = 0; q < g.kernel[2]; ++q) {
                  const int64_t iw = ow * g.stride[2] - g.pad[2] + q;
                  if (iw < 0 || iw >= w) continue;
                  const int64_t flat = (id * h + ih) * w + iw;
                  const float v = xp[(s * d * h * w + flat) * c + ch];
                  if (v > best || best_at < 0) {
                    best = v;
                    best_at = static_cast<int32_t>(flat);
                  }
                }
              }
            }
            const int64_t o = (((s * ys[1] + od) * ys[2] + oh) * ys[3] + ow) * c + ch;
            yp[o] = best;
            ap[o] = best_at;
          }
  return out;
}

// Scatters in ascending output order per (sample, channel); the window is not needed for that.
Tensor maxpool3d_backward(const Tensor& dy, const Tensor& argmax, const Shape& x_shape, const Pool3dGeometry&) {
  Tensor dx = Tensor::zeros(x_shape);
  const int64_t n = x_shape[0], volume = x_shape[1] * x_shape[2] * x_shape[3], c = x_shape[4];
  const int64_t out_volume = dy.size(1) * dy.size(2) * dy.size(3);
  const float* gp = dy.f32();
  const int32_t* ap = argmax.i32();
  float* dxp = dx.f32();
  // Windows overlap, so one thread owns each (sample, channel) volume.
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t s = 0; s < n; ++s)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t o = 0; o < out_volume; ++o) {
        const int64_t i = (s * out_volume + o) * c + ch;
        dxp[(s * volume + ap[i]) * c + ch] += gp[i];
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
