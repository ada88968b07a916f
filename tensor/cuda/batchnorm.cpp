// CUDA batch norm over every axis but the last (C) of x[..., C] (f32 or bf16; parameters and statistics
// F32 [C]): training forward with batch statistics, eval forward, backward (kernels/batchnorm.cu).
#include "kernels/batchnorm.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

namespace {

int64_t channels_of(const char* op, const Tensor& x) {
  check_on_device(op, x, "x");
  if (x.ndim() < 2 || x.size(-1) < 1)
    throw ShapeError(fmt::format("{}: x must have a batch and a channel axis, got {}", op, x.describe()));
  return x.size(-1);
}

// Checks x and the running statistics of a training forward; returns the rows per channel.
int64_t check_training_rows(const char* op, const Tensor& x, const Tensor& running_mean, const Tensor& running_var) {
  const int64_t c = channels_of(op, x);
  check_f32_vector(op, running_mean, c, "running_mean");
  check_f32_vector(op, running_var, c, "running_var");
  const int64_t rows = x.numel() / c;
  if (rows < 2) throw ShapeError(fmt::format("{}: needs at least 2 values per channel, got {}", op, x.describe()));
  return rows;
}

}  // namespace

BatchNormTrainOut batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          Tensor& running_mean, Tensor& running_var, float momentum, float eps) {
  const char* op = "batchnorm_forward_train";
  const int64_t rows = check_training_rows(op, x, running_mean, running_var), c = x.size(-1);
  check_f32_vector(op, gamma, c, "gamma");
  check_f32_vector(op, beta, c, "beta");
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
  const int64_t rows = check_training_rows(op, x, running_mean, running_var), c = x.size(-1);
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
  const int64_t c = channels_of(op, x);
  check_f32_vector(op, gamma, c, "gamma");
  check_f32_vector(op, beta, c, "beta");
  check_f32_vector(op, running_mean, c, "running_mean");
  check_f32_vector(op, running_var, c, "running_var");
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
  const int64_t c = channels_of(op, x);
  check_on_device(op, dy, "dy");
  check_same_shape(op, dy, x);
  check_dtype(op, dy, x.dtype(), "dy");
  check_f32_vector(op, gamma, c, "gamma");
  check_f32_vector(op, save_mean, c, "save_mean");
  check_f32_vector(op, save_invstd, c, "save_invstd");
  const int64_t rows = x.numel() / c;
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
