// CUDA pooling over channels-last volumes x[N, D, H, W, C] (f32 or bf16): max pooling with argmax and its
// backward (kernels/maxpool3d.cu), global average pooling y[N, C] (F32) and its backward.
#include "kernels/global_avg_pool.h"
#include "kernels/maxpool3d.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

namespace {

kernels::Volume volume_of(const Shape& s) { return {s[0], s[1], s[2], s[3], s[4]}; }

kernels::Window3 window_of(const Pool3dGeometry& g) {
  kernels::Window3 window;
  for (int a = 0; a < 3; ++a) {
    window.kernel[a] = g.kernel[a];
    window.stride[a] = g.stride[a];
    window.pad[a] = g.pad[a];
  }
  return window;
}

}  // namespace

MaxPoolOut maxpool3d_forward(const Tensor& x, const Pool3dGeometry& g) {
  const char* op = "maxpool3d_forward";
  const Shape y_shape = ops::pool3d_output_shape(x.shape(), g);
  MaxPoolOut out{empty_device(y_shape, x.dtype()), empty_device(y_shape, DType::U8)};
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::maxpool3d_forward(ptr<T>(x), volume_of(x.shape()), volume_of(y_shape), window_of(g),
                                                ptr<T>(out.y), out.argmax.u8(), stream()),
                     op_context(op, {{"x", &x}}));
  });
  return out;
}

Tensor maxpool3d_backward(const Tensor& dy, const Tensor& argmax, const Shape& x_shape, const Pool3dGeometry& g) {
  const char* op = "maxpool3d_backward";
  Tensor dx = empty_device(x_shape, dy.dtype());
  with_float_type(op, dy, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::maxpool3d_backward(ptr<T>(dy), argmax.u8(), volume_of(x_shape), volume_of(dy.shape()),
                                                 window_of(g), ptr<T>(dx), stream()),
                     op_context(op, {{"dy", &dy}, {"argmax", &argmax}}));
  });
  return dx;
}

Tensor global_avg_pool(const Tensor& x) {
  const char* op = "global_avg_pool";
  const int64_t n = x.size(0), c = x.size(4), rows = x.size(1) * x.size(2) * x.size(3);
  Tensor y = empty_device({n, c}, DType::F32);
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::global_avg_pool(ptr<T>(x), n, rows, c, y.f32(), stream()), op_context(op, {{"x", &x}}));
  });
  return y;
}

Tensor global_avg_pool_backward(const Tensor& dy, const Shape& x_shape, DType dx_dtype) {
  const char* op = "global_avg_pool_backward";
  Tensor dx = empty_device(x_shape, dx_dtype);
  const int64_t n = x_shape[0], c = x_shape[4], rows = x_shape[1] * x_shape[2] * x_shape[3];
  with_float_type(op, dx, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::global_avg_pool_backward(dy.f32(), n, rows, c, ptr<T>(dx), stream()),
                     op_context(op, {{"dy", &dy}}));
  });
  return dx;
}

}  // namespace dsmil::cuda
