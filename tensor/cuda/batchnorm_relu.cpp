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

// Checks x, gamma and the optional branch terms; an undefined residual or factor is absent.
FusedShape check_fused(const char* op, const Tensor& x, const Tensor& gamma, const Tensor& residual,
                       const Tensor& sample_factor) {
  check_on_device(op, x, "x");
  if (x.ndim() < 2 || x.size(-1) < 1)
    throw ShapeError(fmt::format("{}: x must have a sample and a channel axis, got {}", op, x.describe()));
  const int64_t channels = x.size(-1), samples = x.size(0), rows = x.numel() / channels;
  check_f32_vector(op, gamma, channels, "gamma");
  if (residual.defined()) {
    check_on_device(op, residual, "residual");
    check_same_shape(op, residual, x);
    check_dtype(op, residual, x.dtype(), "residual");
  }
  if (sample_factor.defined()) check_f32_vector(op, sample_factor, samples, "sample_factor");
  return {rows, channels, samples > 0 ? rows / samples : 1};
}

// The forward passes' checks: check_fused's, then beta and the running statistics (F32 [C]).
FusedShape check_forward(const char* op, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                         const Tensor& running_mean, const Tensor& running_var, const Tensor& residual,
                         const Tensor& sample_factor) {
  const FusedShape s = check_fused(op, x, gamma, residual, sample_factor);
  check_f32_vector(op, beta, s.channels, "beta");
  check_f32_vector(op, running_mean, s.channels, "running_mean");
  check_f32_vector(op, running_var, s.channels, "running_var");
  return s;
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
  const FusedShape s = check_forward(op, x, gamma, beta, running_mean, running_var, residual, sample_factor);
  if (s.rows < 2) throw ShapeError(fmt::format("{}: needs at least 2 values per channel, got {}", op, x.describe()));
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
  const FusedShape s = check_forward(op, x, gamma, beta, running_mean, running_var, residual, sample_factor);
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

BatchNormReluGrads batchnorm_relu_backward(const Tensor& dy, const Tensor& y, const Tensor& x, const Tensor& gamma,
                                           const Tensor& save_mean, const Tensor& save_invstd,
                                           const Tensor& sample_factor, bool residual_grad) {
  const char* op = "batchnorm_relu_backward";
  const FusedShape s = check_fused(op, x, gamma, Tensor(), sample_factor);
  for (const auto& [t, name] : {std::pair{&dy, "dy"}, std::pair{&y, "y"}}) {
    check_on_device(op, *t, name);
    check_same_shape(op, *t, x);
    check_dtype(op, *t, x.dtype(), name);
  }
  check_f32_vector(op, save_mean, s.channels, "save_mean");
  check_f32_vector(op, save_invstd, s.channels, "save_invstd");
  BatchNormReluGrads grads{empty_device(x.shape(), x.dtype()), empty_device({s.channels}, DType::F32),
                           empty_device({s.channels}, DType::F32),
                           residual_grad ? empty_device(x.shape(), x.dtype()) : Tensor()};
  DeviceBuffer scratch(kernels::batchnorm_relu_backward_scratch_bytes(s.rows, s.channels));
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(
        kernels::batchnorm_relu_backward(ptr<T>(dy), ptr<T>(y), ptr<T>(x), gamma.f32(), save_mean.f32(),
                                         save_invstd.f32(), factor_of(sample_factor, s), s.rows, s.channels,
                                         ptr<T>(grads.dx), grads.dgamma.f32(), grads.dbeta.f32(),
                                         residual_grad ? ptr<T>(grads.d_residual) : nullptr, scratch.data(), stream()),
        op_context(op, {{"dy", &dy}, {"y", &y}, {"x", &x}}));
  });
  return grads;
}

}  // namespace dsmil::cuda
