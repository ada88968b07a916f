// CUDA elementwise ops and whole-tensor reductions (y = f(x) or f(a, b) over equal shapes; f32 or bf16,
// computed in fp32) on the kernels of kernels/elementwise.cu and kernels/reductions.cu.
#include "kernels/elementwise.h"
#include "kernels/reductions.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

namespace {

Tensor map_unary(const char* op, kernels::UnaryOp kind, const Tensor& x, float s) {
  Tensor y = empty_device(x.shape(), x.dtype());
  with_float_type(op, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::unary(kind, ptr<T>(x), ptr<T>(y), s, x.numel(), stream()), op_context(op, {{"x", &x}}));
  });
  return y;
}

Tensor map_binary(const char* op, kernels::BinaryOp kind, const Tensor& a, const Tensor& b) {
  Tensor y = empty_device(a.shape(), a.dtype());
  with_float_type(op, a, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::binary(kind, ptr<T>(a), ptr<T>(b), ptr<T>(y), a.numel(), stream()),
                     op_context(op, {{"a", &a}, {"b", &b}}));
  });
  return y;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return map_binary("add", kernels::BinaryOp::Add, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return map_binary("mul", kernels::BinaryOp::Mul, a, b); }
Tensor scale(const Tensor& x, float s) { return map_unary("scale", kernels::UnaryOp::Scale, x, s); }

void axpy_(Tensor& y, float alpha, const Tensor& x) {
  DSMIL_CUDA_CHECK(kernels::axpy(y.f32(), alpha, x.f32(), y.numel(), stream()),
                   op_context("axpy_", {{"y", &y}, {"x", &x}}));
}

void scale_(Tensor& x, float s) {
  DSMIL_CUDA_CHECK(kernels::unary(kernels::UnaryOp::Scale, x.f32(), x.f32(), s, x.numel(), stream()),
                   op_context("scale_", {{"x", &x}}));
}

Tensor relu(const Tensor& x) { return map_unary("relu", kernels::UnaryOp::Relu, x, 0.0f); }
Tensor relu_backward(const Tensor& dy, const Tensor& y) {
  return map_binary("relu_backward", kernels::BinaryOp::ReluBackward, dy, y);
}
Tensor tanh(const Tensor& x) { return map_unary("tanh", kernels::UnaryOp::Tanh, x, 0.0f); }
Tensor tanh_backward(const Tensor& dy, const Tensor& y) {
  return map_binary("tanh_backward", kernels::BinaryOp::TanhBackward, dy, y);
}
Tensor sigmoid(const Tensor& x) { return map_unary("sigmoid", kernels::UnaryOp::Sigmoid, x, 0.0f); }
Tensor sigmoid_backward(const Tensor& dy, const Tensor& y) {
  return map_binary("sigmoid_backward", kernels::BinaryOp::SigmoidBackward, dy, y);
}

float sum_squares(const Tensor& x) {
  DeviceBuffer partial((kernels::kSumSquaresBlocks + 1) * sizeof(double));
  double* result_on_device = partial.as<double>() + kernels::kSumSquaresBlocks;
  const auto context = [&] { return op_context("sum_squares", {{"x", &x}}); };
  with_float_type("sum_squares", x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::sum_squares(ptr<T>(x), x.numel(), partial.as<double>(), result_on_device, stream()),
                     context());
  });
  double result = 0.0;
  DSMIL_CUDA_CHECK(cudaMemcpyAsync(&result, result_on_device, sizeof(double), cudaMemcpyDeviceToHost, stream()),
                   context());
  DSMIL_CUDA_CHECK(cudaStreamSynchronize(stream()), context());
  return static_cast<float>(result);
}

bool all_finite(const Tensor& x) {
  DeviceBuffer flag(sizeof(int32_t));
  const auto context = [&] { return op_context("all_finite", {{"x", &x}}); };
  with_float_type("all_finite", x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DSMIL_CUDA_CHECK(kernels::any_nonfinite(ptr<T>(x), x.numel(), flag.as<int32_t>(), stream()), context());
  });
  int32_t any_bad = 1;
  DSMIL_CUDA_CHECK(cudaMemcpyAsync(&any_bad, flag.data(), sizeof(int32_t), cudaMemcpyDeviceToHost, stream()),
                   context());
  DSMIL_CUDA_CHECK(cudaStreamSynchronize(stream()), context());
  return any_bad == 0;
}

}  // namespace dsmil::cuda
