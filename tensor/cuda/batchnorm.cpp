// CUDA batch norm over every axis but the last (C) of x[..., C] (f32 or bf16; parameters and statistics
// F32 [C]): training forward with batch statistics, eval forward, backward (kernels/batchnorm.cu).
#include "kernels/batchnorm.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

BatchNormTrainOut batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          Tensor& running_mean, Tensor& running_var, float momentum, float eps) {
  const char* op = "batchnorm_forward_train";
  const int64_t c = x.size(-1), rows = x.numel() / c;
  BatchNormTrainOut out{empty_device(x.shape(), x.dtype()), empty_device({c}, DType::F32),
                        empty_device({c}, DType::F32)};
  DeviceBuffer scratch(kernels::batchnorm_scratch_size(rows, c) * sizeof(double));
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::batchnorm_forward_train(
                         ptr<T>(x), gamma.f32(), beta.f32(), running_mean.f32(), running_var.f32(), momentum, eps, rows,
                         c, ptr<T>(out.y), out.save_mean.f32(), out.save_invstd.f32(), scratch.as<double>(), stream()),
                     op_context(op, {{"x", &x}, {"gamma", &gamma}}));
  });
  return out;
}

BatchNormTrainOut batchnorm_statistics(const Tensor& x, Tensor& running_mean, Tensor& running_var, float momentum,
                                       float eps) {
  const char* op = "batchnorm_statistics";
  const int64_t c = x.size(-1), rows = x.numel() / c;
  BatchNormTrainOut out{Tensor(), empty_device({c}, DType::F32), empty_device({c}, DType::F32)};
  DeviceBuffer scratch(kernels::batchnorm_scratch_size(rows, c) * sizeof(double));
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(
        kernels::batchnorm_statistics(ptr<T>(x), running_mean.f32(), running_var.f32(), momentum, eps, rows, c,
                                      out.save_mean.f32(), out.save_invstd.f32(), scratch.as<double>(), stream()),
        op_context(op, {{"x", &x}, {"running_mean", &running_mean}}));
  });
  return out;
}

Tensor batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                              const Tensor& running_var, float eps) {
  const char* op = "batchnorm_forward_eval";
  const int64_t c = x.size(-1);
  Tensor y = empty_device(x.shape(), x.dtype());
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::batchnorm_forward_eval(ptr<T>(x), gamma.f32(), beta.f32(), running_mean.f32(),
                                                     running_var.f32(), eps, x.numel() / c, c, ptr<T>(y), stream()),
                     op_context(op, {{"x", &x}, {"gamma", &gamma}}));
  });
  return y;
}

BatchNormGrads batchnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& save_mean,
                                  const Tensor& save_invstd) {
  const char* op = "batchnorm_backward";
  const int64_t c = x.size(-1), rows = x.numel() / c;
  BatchNormGrads grads{empty_device(x.shape(), x.dtype()), empty_device({c}, DType::F32),
                       empty_device({c}, DType::F32)};
  DeviceBuffer scratch(kernels::batchnorm_scratch_size(rows, c) * sizeof(double));
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::batchnorm_backward(ptr<T>(dy), ptr<T>(x), gamma.f32(), save_mean.f32(), save_invstd.f32(),
                                                 rows, c, ptr<T>(grads.dx), grads.dgamma.f32(), grads.dbeta.f32(),
                                                 scratch.as<double>(), stream()),
                     op_context(op, {{"dy", &dy}, {"x", &x}}));
  });
  return grads;
}

}  // namespace dsmil::cuda
