// CUDA fused batch norm + ReLU over x[N, ..., C] (f32 or bf16, with an optional residual of x's shape and
// dtype and per-sample factor F32 [N]; parameters and statistics F32 [C]) on kernels/batchnorm_relu.cu.
#include "kernels/batchnorm.h"
#include "kernels/batchnorm_relu.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

namespace {

struct FusedShape {
  int64_t rows, channels, rows_per_sample;
};

FusedShape fused_shape(const Tensor& x) {
  const int64_t channels = x.size(-1), samples = x.size(0), rows = x.numel() / channels;
  return {rows, channels, samples > 0 ? rows / samples : 1};
}

kernels::SampleFactor factor_of(const Tensor& sample_factor, const FusedShape& s) {
  return {sample_factor.defined() ? sample_factor.f32() : nullptr, s.rows_per_sample};
}

template <typename T>
const T* optional_ptr(const Tensor& t) {
  return t.defined() ? ptr<T>(t) : nullptr;
}

}  // namespace

BatchNormTrainOut batchnorm_relu_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                               Tensor& running_mean, Tensor& running_var, float momentum, float eps,
                                               const Tensor& residual, const Tensor& sample_factor) {
  const char* op = "batchnorm_relu_forward_train";
  const FusedShape s = fused_shape(x);
  BatchNormTrainOut out{empty_device(x.shape(), x.dtype()), empty_device({s.channels}, DType::F32),
                        empty_device({s.channels}, DType::F32)};
  DeviceBuffer scratch(kernels::batchnorm_scratch_size(s.rows, s.channels) * sizeof(double));
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::batchnorm_relu_forward_train(
                         ptr<T>(x), gamma.f32(), beta.f32(), running_mean.f32(), running_var.f32(), momentum, eps,
                         optional_ptr<T>(residual), factor_of(sample_factor, s), s.rows, s.channels, ptr<T>(out.y),
                         out.save_mean.f32(), out.save_invstd.f32(), scratch.as<double>(), stream()),
                     op_context(op, {{"x", &x}, {"gamma", &gamma}, {"residual", &residual}}));
  });
  return out;
}

Tensor batchnorm_relu_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                                   const Tensor& running_var, float eps, const Tensor& residual,
                                   const Tensor& sample_factor) {
  const char* op = "batchnorm_relu_forward_eval";
  const FusedShape s = fused_shape(x);
  Tensor y = empty_device(x.shape(), x.dtype());
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(
        kernels::batchnorm_relu_forward_eval(ptr<T>(x), gamma.f32(), beta.f32(), running_mean.f32(), running_var.f32(),
                                             eps, optional_ptr<T>(residual), factor_of(sample_factor, s), s.rows,
                                             s.channels, ptr<T>(y), stream()),
        op_context(op, {{"x", &x}, {"gamma", &gamma}, {"residual", &residual}}));
  });
  return y;
}

Tensor batchnorm_relu_apply(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& save_mean,
                            const Tensor& save_invstd) {
  const char* op = "batchnorm_relu_apply";
  const FusedShape s = fused_shape(x);
  Tensor y = empty_device(x.shape(), x.dtype());
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::batchnorm_relu_apply(ptr<T>(x), gamma.f32(), beta.f32(), save_mean.f32(),
                                                   save_invstd.f32(), s.rows, s.channels, ptr<T>(y), stream()),
                     op_context(op, {{"x", &x}, {"gamma", &gamma}, {"save_mean", &save_mean}}));
  });
  return y;
}

BatchNormReluGrads batchnorm_relu_backward(const Tensor& dy, const Tensor& y, const Tensor& x, const Tensor& gamma,
                                           const Tensor& beta, const Tensor& save_mean, const Tensor& save_invstd,
                                           const Tensor& sample_factor, bool residual_grad) {
  const char* op = "batchnorm_relu_backward";
  const FusedShape s = fused_shape(x);
  BatchNormReluGrads grads{empty_device(x.shape(), x.dtype()), empty_device({s.channels}, DType::F32),
                           empty_device({s.channels}, DType::F32),
                           residual_grad ? empty_device(x.shape(), x.dtype()) : Tensor()};
  DeviceBuffer scratch(kernels::batchnorm_relu_backward_scratch_bytes(s.rows, s.channels));
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::batchnorm_relu_backward(
                         ptr<T>(dy), optional_ptr<T>(y), ptr<T>(x), gamma.f32(), beta.defined() ? beta.f32() : nullptr,
                         save_mean.f32(), save_invstd.f32(), factor_of(sample_factor, s), s.rows, s.channels,
                         ptr<T>(grads.dx), grads.dgamma.f32(), grads.dbeta.f32(),
                         residual_grad ? ptr<T>(grads.d_residual) : nullptr, scratch.data(), stream()),
                     op_context(op, {{"dy", &dy}, {"y", &y}, {"x", &x}}));
  });
  return grads;
}

}  // namespace dsmil::cuda
