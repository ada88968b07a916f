// CPU space-to-depth over H and W, x[N, D, H, W, C] -> xs[N, D, Hs, Ws, Cs], and its adjoint xs -> x
// (SpaceToDepthGeometry, tensor/ops.h): the reference of kernels/space_to_depth.cu.
#include "tensor/cpu/common.h"

namespace dsmil::cpu {

namespace {

// Calls visit(x_offset, xs_offset) for every element of x that xs holds (each at most once).
template <typename Visit>
void for_each_folded(const Shape& x, const SpaceToDepthGeometry& g, Visit&& visit) {
  const int64_t planes = x[0] * x[1], h = x[2], w = x[3], c = x[4];
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < planes; ++plane)
    for (int64_t fh = 0; fh < g.folded_h; ++fh)
      for (int64_t fw = 0; fw < g.folded_w; ++fw)
        for (int64_t bh = 0; bh < g.block_h; ++bh)
          for (int64_t bw = 0; bw < g.block_w; ++bw) {
            const int64_t ih = g.block_h * fh + bh - g.pad_h, iw = g.block_w * fw + bw - g.pad_w;
            if (ih < 0 || ih >= h || iw < 0 || iw >= w) continue;
            const int64_t channel0 = (bh * g.block_w + bw) * c;
            for (int64_t ch = 0; ch < c; ++ch)
              visit(((plane * h + ih) * w + iw) * c + ch,
                    ((plane * g.folded_h + fh) * g.folded_w + fw) * g.folded_c + channel0 + ch);
          }
}

}  // namespace

Tensor space_to_depth(const Tensor& x, const SpaceToDepthGeometry& g) {
  Tensor xs = Tensor::zeros(ops::space_to_depth_shape("space_to_depth", x.shape(), g));
  const float* in = x.f32();
  float* out = xs.f32();
  for_each_folded(x.shape(), g, [&](int64_t x_at, int64_t xs_at) { out[xs_at] = in[x_at]; });
  return xs;
}

Tensor depth_to_space(const Tensor& xs, const SpaceToDepthGeometry& g, const Shape& x_shape) {
  Tensor x = Tensor::zeros(x_shape);
  const float* in = xs.f32();
  float* out = x.f32();
  for_each_folded(x_shape, g, [&](int64_t x_at, int64_t xs_at) { out[x_at] = in[xs_at]; });
  return x;
}

}  // namespace dsmil::cpu
