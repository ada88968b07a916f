// CPU 3-D convolution, channels-last: x[N, D, H, W, C] * w[K, T, R, S, C] -> y[N, D', H', W', K].
// im2col (one row of T*R*S*C input values per output voxel) then GEMMs per chunk of samples (tensor/cpu/products.h).
#include <algorithm>
#include <cstring>
#include <vector>

#include "tensor/cpu/common.h"
#include "tensor/cpu/products.h"

namespace dsmil::cpu {

namespace {

struct ConvDims {
  int64_t n, d, h, w, c;  // input
  int64_t k, t, r, s;     // filter
  int64_t od, oh, ow;     // output
  Conv3dGeometry g;
  int64_t positions() const { return od * oh * ow; }  // output voxels per sample
  int64_t patch() const { return t * r * s * c; }     // one im2col row
};

ConvDims conv_dims(const Shape& x, const Shape& w, const Conv3dGeometry& g) {
  const Shape y = ops::conv3d_output_shape(x, w, g);
  return {x[0], x[1], x[2], x[3], x[4], w[0], w[1], w[2], w[3], y[1], y[2], y[3], g};
}

// Samples per GEMM so that the im2col buffer stays near 64 MiB.
int64_t samples_per_chunk(const ConvDims& cd) {
  const int64_t per_sample = cd.positions() * cd.patch();
  return std::clamp<int64_t>((int64_t{16} << 20) / std::max<int64_t>(per_sample, 1), 1, cd.n);
}

// The im2col buffer of the calling thread, kept between calls: a fresh buffer per call costs more
// in page faults and clearing than the convolution itself at small channel counts.
float* im2col_buffer(const ConvDims& cd) {
  static thread_local std::vector<float> buffer;
  const size_t needed = static_cast<size_t>(samples_per_chunk(cd) * cd.positions() * cd.patch());
  if (buffer.size() < needed) buffer.resize(needed);
  return buffer.data();
}

// cols[(sample - first) * P + p, :] = the input patch of output voxel p of `sample`, zero outside.
void im2col(const ConvDims& cd, const float* x, int64_t first, int64_t count, float* cols) {
  const int64_t c = cd.c;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    for (int64_t od = 0; od < cd.od; ++od) {
      const float* xs = x + (first + i) * cd.d * cd.h * cd.w * c;
      for (int64_t oh = 0; oh < cd.oh; ++oh) {
        for (int64_t ow = 0; ow < cd.ow; ++ow) {
          float* row = cols + ((i * cd.od + od) * cd.oh * cd.ow + oh * cd.ow + ow) * cd.patch();
          for (int64_t t = 0; t < cd.t; ++t) {
            const int64_t id = od * cd.g.stride[0] - cd.g.pad[0] + t;
            for (int64_t r = 0; r < cd.r; ++r) {
              const int64_t ih = oh * cd.g.stride[1] - cd.g.pad[1] + r;
              for (int64_t s = 0; s < cd.s; ++s, row += c) {
                const int64_t iw = ow * cd.g.stride[2] - cd.g.pad[2] + s;
                if (id < 0 || id >= cd.d || ih < 0 || ih >= cd.h || iw < 0 || iw >= cd.w) {
                  std::memset(row, 0, c * sizeof(float));
                } else {
                  std::memcpy(row, xs + ((id * cd.h + ih) * cd.w + iw) * c, c * sizeof(float));
                }
              }
            }
          }
        }
      }
    }
  }
}

// dx[sample] += the im2col rows scattered back, written as a gather over input voxels so that threads
// never write the same element.
void col2im(const ConvDims& cd, const float* cols, int64_t first, int64_t count, float* dx) {
  const int64_t c = cd.c;
  const auto& st = cd.g.stride;
  const auto& pd = cd.g.pad;
#pragma omp parallel for collapse(3) schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    for (int64_t id = 0; id < cd.d; ++id) {
      for (int64_t ih = 0; ih < cd.h; ++ih) {
        float* dxs = dx + (first + i) * cd.d * cd.h * cd.w * c;
        for (int64_t iw = 0; iw < cd.w; ++iw) {
          float* out = dxs + ((id * cd.h + ih) * cd.w + iw) * c;
          std::memset(out, 0, c * sizeof(float));
          for (int64_t t = 0; t < cd.t; ++t) {
            const int64_t od_num = id + pd[0] - t;
            if (od_num < 0 || od_num % st[0] != 0 || od_num / st[0] >= cd.od) continue;
            for (int64_t r = 0; r < cd.r; ++r) {
              const int64_t oh_num = ih + pd[1] - r;
              if (oh_num < 0 || oh_num % st[1] != 0 || oh_num / st[1] >= cd.oh) continue;
              for (int64_t s = 0; s < cd.s; ++s) {
                const int64_t ow_num = iw + pd[2] - s;
                if (ow_num < 0 || ow_num % st[2] != 0 || ow_num / st[2] >= cd.ow) continue;
                const int64_t p = ((i * cd.od + od_num / st[0]) * cd.oh + oh_num / st[1]) * cd.ow + ow_num / st[2];
                const float* src = cols + p * cd.patch() + ((t * cd.r + r) * cd.s + s) * c;
                for (int64_t ch = 0; ch < c; ++ch) out[ch] += src[ch];
              }
            }
          }
        }
      }
    }
  }
}

// Rows of dy and cols per partial product of the filter gradient.
constexpr int64_t kFilterGradientRows = 1024;

// dw[K, patch] += dy^T cols, a sum over the rows: partial products of fixed row chunks, each on one thread, then
// added to dw in chunk order, so that the rounding does not depend on the thread count.
void add_filter_gradient(MatrixMap dw, ConstMatrixMap dy, ConstMatrixMap cols) {
  fix_eigen_products();
  const int64_t rows = dy.rows(), chunks = (rows + kFilterGradientRows - 1) / kFilterGradientRows;
  const int64_t size = dw.rows() * dw.cols();
  std::vector<float> partials(static_cast<size_t>(chunks * size));
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t first = chunk * kFilterGradientRows, count = std::min(kFilterGradientRows, rows - first);
    MatrixMap(partials.data() + chunk * size, dw.rows(), dw.cols()).noalias() =
        dy.middleRows(first, count).transpose() * cols.middleRows(first, count);
  }
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    dw += ConstMatrixMap(partials.data() + chunk * size, dw.rows(), dw.cols());
}

}  // namespace

Tensor conv3d_forward(const Tensor& x, const Tensor& w, const Conv3dGeometry& g, const MathMode&) {
  const ConvDims cd = conv_dims(x.shape(), w.shape(), g);
  Tensor y = Tensor::empty({cd.n, cd.od, cd.oh, cd.ow, cd.k});
  const int64_t chunk = samples_per_chunk(cd);
  float* cols = im2col_buffer(cd);
  auto W = as_const_matrix(w, cd.k, cd.patch());
  for (int64_t first = 0; first < cd.n; first += chunk) {
    const int64_t count = std::min(chunk, cd.n - first);
    const int64_t rows = count * cd.positions();
    im2col(cd, x.f32(), first, count, cols);
    multiply_in_row_tiles(MatrixMap(y.f32() + first * cd.positions() * cd.k, rows, cd.k),
                          ConstMatrixMap(cols, rows, cd.patch()), W.transpose());
  }
  return y;
}

Tensor conv3d_backward_data(const Tensor& dy, const Tensor& w, const Shape& x_shape, const Conv3dGeometry& g,
                            const MathMode&) {
  const ConvDims cd = conv_dims(x_shape, w.shape(), g);
  Tensor dx = Tensor::empty(x_shape);
  const int64_t chunk = samples_per_chunk(cd);
  float* cols = im2col_buffer(cd);
  auto W = as_const_matrix(w, cd.k, cd.patch());
  for (int64_t first = 0; first < cd.n; first += chunk) {
    const int64_t count = std::min(chunk, cd.n - first);
    const int64_t rows = count * cd.positions();
    multiply_in_row_tiles(MatrixMap(cols, rows, cd.patch()),
                          ConstMatrixMap(dy.f32() + first * cd.positions() * cd.k, rows, cd.k), W);
    col2im(cd, cols, first, count, dx.f32());
  }
  return dx;
}

Tensor conv3d_backward_filter(const Tensor& x, const Tensor& dy, const Shape& w_shape, const Conv3dGeometry& g,
                              const MathMode&) {
  const ConvDims cd = conv_dims(x.shape(), w_shape, g);
  Tensor dw = Tensor::zeros(w_shape);
  auto DW = as_matrix(dw, cd.k, cd.patch());
  const int64_t chunk = samples_per_chunk(cd);
  float* cols = im2col_buffer(cd);
  for (int64_t first = 0; first < cd.n; first += chunk) {
    const int64_t count = std::min(chunk, cd.n - first);
    const int64_t rows = count * cd.positions();
    im2col(cd, x.f32(), first, count, cols);
    add_filter_gradient(DW, ConstMatrixMap(dy.f32() + first * cd.positions() * cd.k, rows, cd.k),
                        ConstMatrixMap(cols, rows, cd.patch()));
  }
  return dw;
}

}  // namespace dsmil::cpu
