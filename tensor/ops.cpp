// Dispatch of every op to its CPU or CUDA twin, by the device of the first tensor argument,
// after checking that all tensor arguments share that device.
#include "tensor/ops.h"

#include <fmt/format.h>

#include "tensor/cpu/ops_cpu.h"
#ifdef DSMIL_WITH_CUDA
#include "tensor/cuda/ops_cuda.h"
#endif

namespace dsmil {

namespace {

[[noreturn]] void no_cuda_backend(const char* op) {
  throw DeviceError(fmt::format("{}: a CUDA tensor was given, but this build has no CUDA backend", op));
}

Device common_device(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Device device = (*tensors.begin())->device();
  for (const Tensor* t : tensors)
    if (t->defined() && t->device() != device)
      throw ShapeError(fmt::format("{}: tensors on different devices ({} and {})", op, (*tensors.begin())->describe(),
                                   t->describe()));
  return device;
}

void check_list_length(const char* op, const char* name, size_t length, size_t expected) {
  if (length != expected)
    throw ShapeError(fmt::format("{}: {} lists {} tensors, expected {}", op, name, length, expected));
}

}  // namespace

void AdamWTensors::check_lengths(const char* op, size_t grads) const {
  check_list_length(op, "m", m.size(), params.size());
  check_list_length(op, "v", v.size(), params.size());
  check_list_length(op, "decayed", decayed.size(), params.size());
  check_list_length(op, "grads", grads, params.size());
}

void EmaTensors::check_lengths(const char* op) const { check_list_length(op, "values", values.size(), ema.size()); }

#ifdef DSMIL_WITH_CUDA
#define DSMIL_DISPATCH(device, op, ...) return (device) == Device::CPU ? cpu::op(__VA_ARGS__) : cuda::op(__VA_ARGS__)
#else
#define DSMIL_DISPATCH(device, op, ...)              \
  if ((device) != Device::CPU) no_cuda_backend(#op); \
  return cpu::op(__VA_ARGS__)
#endif

namespace ops {

namespace {
int64_t window_output(int64_t in, int kernel, int stride, int pad) { return (in + 2 * pad - kernel) / stride + 1; }
}  // namespace

Shape conv3d_output_shape(const Shape& x, const Shape& w, const Conv3dGeometry& g) {
  if (x.size() != 5 || w.size() != 5 || x[4] != w[4] || w[1] != g.kernel[0] || w[2] != g.kernel[1] ||
      w[3] != g.kernel[2])
    throw ShapeError(fmt::format("conv3d: input {} (NDHWC) and weight {} (KTRSC) with kernel ({},{},{}) do not fit",
                                 shape_str(x), shape_str(w), g.kernel[0], g.kernel[1], g.kernel[2]));
  Shape y{x[0], 0, 0, 0, w[0]};
  for (int a = 0; a < 3; ++a) {
    y[a + 1] = window_output(x[a + 1], g.kernel[a], g.stride[a], g.pad[a]);
    if (y[a + 1] <= 0)
      throw ShapeError(fmt::format("conv3d: input {} too small for weight {}", shape_str(x), shape_str(w)));
  }
  return y;
}

Shape pool3d_output_shape(const Shape& x, const Pool3dGeometry& g) {
  if (x.size() != 5) throw ShapeError("maxpool3d: input must be NDHWC, got " + shape_str(x));
  Shape y = x;
  for (int a = 0; a < 3; ++a) {
    y[a + 1] = window_output(x[a + 1], g.kernel[a], g.stride[a], g.pad[a]);
    if (y[a + 1] <= 0 || 2 * g.pad[a] > g.kernel[a])
      throw ShapeError(
          fmt::format("maxpool3d: input {} does not fit kernel {} pad {}", shape_str(x), g.kernel[a], g.pad[a]));
  }
  return y;
}

Shape space_to_depth_shape(const char* op, const Shape& x, const SpaceToDepthGeometry& g) {
  if (x.size() != 5) throw ShapeError(fmt::format("{}: x must be NDHWC, got {}", op, shape_str(x)));
  if (g.block_h < 1 || g.block_w < 1 || g.pad_h < 0 || g.pad_w < 0 || g.folded_h < 0 || g.folded_w < 0 ||
      g.folded_c < g.block_h * g.block_w * x[4])
    throw ShapeError(fmt::format("{}: x {} does not fold into blocks {}x{} pad ({},{}) as [{},{},{}]", op, shape_str(x),
                                 g.block_h, g.block_w, g.pad_h, g.pad_w, g.folded_h, g.folded_w, g.folded_c));
  return {x[0], x[1], g.folded_h, g.folded_w, g.folded_c};
}

Conv3dFold conv3d_fold(const Shape& x, const Shape& w, const Conv3dGeometry& g, int64_t folded_c) {
  const Shape y = conv3d_output_shape(x, w, g);
  const int64_t block_h = g.stride[1], block_w = g.stride[2];
  const int64_t taps_h = (w[2] + block_h - 1) / block_h, taps_w = (w[3] + block_w - 1) / block_w;
  Conv3dFold f;
  f.x_fold = {block_h, block_w, g.pad[1], g.pad[2], y[2] + taps_h - 1, y[3] + taps_w - 1, folded_c};
  f.w_fold = {block_h, block_w, 0, 0, taps_h, taps_w, folded_c};
  f.geometry = {
      {g.kernel[0], static_cast<int>(taps_h), static_cast<int>(taps_w)}, {g.stride[0], 1, 1}, {g.pad[0], 0, 0}};
  space_to_depth_shape("conv3d_fold", x, f.x_fold);
  return f;
}

Tensor add(const Tensor& a, const Tensor& b) {
  const Device device = common_device("add", {&a, &b});
  DSMIL_DISPATCH(device, add, a, b);
}

Tensor mul(const Tensor& a, const Tensor& b) {
  const Device device = common_device("mul", {&a, &b});
  DSMIL_DISPATCH(device, mul, a, b);
}

Tensor scale(const Tensor& x, float s) {
  const Device device = common_device("scale", {&x});
  DSMIL_DISPATCH(device, scale, x, s);
}

void axpy_(Tensor& y, float alpha, const Tensor& x) {
  const Device device = common_device("axpy_", {&y, &x});
  DSMIL_DISPATCH(device, axpy_, y, alpha, x);
}

void scale_(Tensor& x, float s) {
  const Device device = common_device("scale_", {&x});
  DSMIL_DISPATCH(device, scale_, x, s);
}

Tensor relu(const Tensor& x) {
  const Device device = common_device("relu", {&x});
  DSMIL_DISPATCH(device, relu, x);
}

Tensor relu_backward(const Tensor& dy, const Tensor& y) {
  const Device device = common_device("relu_backward", {&dy, &y});
  DSMIL_DISPATCH(device, relu_backward, dy, y);
}

Tensor tanh(const Tensor& x) {
  const Device device = common_device("tanh", {&x});
  DSMIL_DISPATCH(device, tanh, x);
}

Tensor tanh_backward(const Tensor& dy, const Tensor& y) {
  const Device device = common_device("tanh_backward", {&dy, &y});
  DSMIL_DISPATCH(device, tanh_backward, dy, y);
}

Tensor sigmoid(const Tensor& x) {
  const Device device = common_device("sigmoid", {&x});
  DSMIL_DISPATCH(device, sigmoid, x);
}

Tensor sigmoid_backward(const Tensor& dy, const Tensor& y) {
  const Device device = common_device("sigmoid_backward", {&dy, &y});
  DSMIL_DISPATCH(device, sigmoid_backward, dy, y);
}

float sum_squares(const Tensor& x) {
  const Device device = common_device("sum_squares", {&x});
  DSMIL_DISPATCH(device, sum_squares, x);
}

bool all_finite(const Tensor& x) {
  const Device device = common_device("all_finite", {&x});
  DSMIL_DISPATCH(device, all_finite, x);
}

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const MathMode& mode) {
  const Device device = common_device("matmul", {&a, &b});
  DSMIL_DISPATCH(device, matmul, a, b, transpose_a, transpose_b, mode);
}

Tensor add_bias(const Tensor& x, const Tensor& bias) {
  const Device device = common_device("add_bias", {&x, &bias});
  DSMIL_DISPATCH(device, add_bias, x, bias);
}

Tensor bias_backward(const Tensor& dy) {
  const Device device = common_device("bias_backward", {&dy});
  DSMIL_DISPATCH(device, bias_backward, dy);
}

Tensor conv3d_forward(const Tensor& x, const Tensor& w, const Conv3dGeometry& g, const MathMode& mode) {
  const Device device = common_device("conv3d_forward", {&x, &w});
  DSMIL_DISPATCH(device, conv3d_forward, x, w, g, mode);
}

Tensor conv3d_backward_data(const Tensor& dy, const Tensor& w, const Shape& x_shape, const Conv3dGeometry& g,
                            const MathMode& mode) {
  const Device device = common_device("conv3d_backward_data", {&dy, &w});
  DSMIL_DISPATCH(device, conv3d_backward_data, dy, w, x_shape, g, mode);
}

Tensor conv3d_backward_filter(const Tensor& x, const Tensor& dy, const Shape& w_shape, const Conv3dGeometry& g,
                              const MathMode& mode) {
  const Device device = common_device("conv3d_backward_filter", {&x, &dy});
  DSMIL_DISPATCH(device, conv3d_backward_filter, x, dy, w_shape, g, mode);
}

BatchNormTrainOut batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          Tensor& running_mean, Tensor& running_var, float momentum, float eps) {
  const Device device = common_device("batchnorm_forward_train", {&x, &gamma, &beta, &running_mean, &running_var});
  DSMIL_DISPATCH(device, batchnorm_forward_train, x, gamma, beta, running_mean, running_var, momentum, eps);
}

BatchNormTrainOut batchnorm_statistics(const Tensor& x, Tensor& running_mean, Tensor& running_var, float momentum,
                                       float eps) {
  const Device device = common_device("batchnorm_statistics", {&x, &running_mean, &running_var});
  DSMIL_DISPATCH(device, batchnorm_statistics, x, running_mean, running_var, momentum, eps);
}

Tensor batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                              const Tensor& running_var, float eps) {
  const Device device = common_device("batchnorm_forward_eval", {&x, &gamma, &beta, &running_mean, &running_var});
  DSMIL_DISPATCH(device, batchnorm_forward_eval, x, gamma, beta, running_mean, running_var, eps);
}

BatchNormGrads batchnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& save_mean,
                                  const Tensor& save_invstd) {
  const Device device = common_device("batchnorm_backward", {&dy, &x, &gamma, &save_mean, &save_invstd});
  DSMIL_DISPATCH(device, batchnorm_backward, dy, x, gamma, save_mean, save_invstd);
}

BatchNormTrainOut batchnorm_relu_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                               Tensor& running_mean, Tensor& running_var, float momentum, float eps,
                                               const Tensor& residual, const Tensor& sample_factor) {
  const Device device = common_device("batchnorm_relu_forward_train",
                                      {&x, &gamma, &beta, &running_mean, &running_var, &residual, &sample_factor});
  DSMIL_DISPATCH(device, batchnorm_relu_forward_train, x, gamma, beta, running_mean, running_var, momentum, eps,
                 residual, sample_factor);
}

Tensor batchnorm_relu_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                                   const Tensor& running_var, float eps, const Tensor& residual,
                                   const Tensor& sample_factor) {
  const Device device = common_device("batchnorm_relu_forward_eval",
                                      {&x, &gamma, &beta, &running_mean, &running_var, &residual, &sample_factor});
  DSMIL_DISPATCH(device, batchnorm_relu_forward_eval, x, gamma, beta, running_mean, running_var, eps, residual,
                 sample_factor);
}

BatchNormReluGrads batchnorm_relu_backward(const Tensor& dy, const Tensor& y, const Tensor& x, const Tensor& gamma,
                                           const Tensor& save_mean, const Tensor& save_invstd,
                                           const Tensor& sample_factor, bool residual_grad) {
  const Device device =
      common_device("batchnorm_relu_backward", {&dy, &y, &x, &gamma, &save_mean, &save_invstd, &sample_factor});
  DSMIL_DISPATCH(device, batchnorm_relu_backward, dy, y, x, gamma, save_mean, save_invstd, sample_factor,
                 residual_grad);
}

Tensor space_to_depth(const Tensor& x, const SpaceToDepthGeometry& g) {
  const Device device = common_device("space_to_depth", {&x});
  DSMIL_DISPATCH(device, space_to_depth, x, g);
}

Tensor depth_to_space(const Tensor& xs, const SpaceToDepthGeometry& g, const Shape& x_shape) {
  const Device device = common_device("depth_to_space", {&xs});
  DSMIL_DISPATCH(device, depth_to_space, xs, g, x_shape);
}

MaxPoolOut maxpool3d_forward(const Tensor& x, const Pool3dGeometry& g) {
  const Device device = common_device("maxpool3d_forward", {&x});
  DSMIL_DISPATCH(device, maxpool3d_forward, x, g);
}

Tensor maxpool3d_backward(const Tensor& dy, const Tensor& argmax, const Shape& x_shape, const Pool3dGeometry& g) {
  const Device device = common_device("maxpool3d_backward", {&dy, &argmax});
  DSMIL_DISPATCH(device, maxpool3d_backward, dy, argmax, x_shape, g);
}

Tensor global_avg_pool(const Tensor& x) {
  const Device device = common_device("global_avg_pool", {&x});
  DSMIL_DISPATCH(device, global_avg_pool, x);
}

Tensor global_avg_pool_backward(const Tensor& dy, const Shape& x_shape, DType dx_dtype) {
  const Device device = common_device("global_avg_pool_backward", {&dy});
  DSMIL_DISPATCH(device, global_avg_pool_backward, dy, x_shape, dx_dtype);
}

Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset) {
  const Device device = common_device("dropout", {&x});
  DSMIL_DISPATCH(device, dropout, x, p, seed, offset);
}

Tensor drop_path(const Tensor& x, float p, uint64_t seed, uint64_t offset) {
  const Device device = common_device("drop_path", {&x});
  DSMIL_DISPATCH(device, drop_path, x, p, seed, offset);
}

// The temperature divides every score: both backends rely on this check (NaN included) instead of making it.
void check_temperature(const char* op, float temperature) {
  if (!(temperature > 0.0f)) throw ShapeError(fmt::format("{}: temperature must be > 0, got {}", op, temperature));
}

MaskedSoftmaxOut masked_softmax(const Tensor& e, const Tensor& mask, float temperature) {
  const Device device = common_device("masked_softmax", {&e, &mask});
  check_temperature("masked_softmax", temperature);
  DSMIL_DISPATCH(device, masked_softmax, e, mask, temperature);
}

Tensor masked_softmax_backward(const Tensor& da, const Tensor& a, float temperature) {
  const Device device = common_device("masked_softmax_backward", {&da, &a});
  check_temperature("masked_softmax_backward", temperature);
  DSMIL_DISPATCH(device, masked_softmax_backward, da, a, temperature);
}

Tensor topk_indices(const Tensor& score, const Tensor& mask, int k) {
  const Device device = common_device("topk_indices", {&score, &mask});
  DSMIL_DISPATCH(device, topk_indices, score, mask, k);
}

Tensor gather_mean(const Tensor& x, const Tensor& idx) {
  const Device device = common_device("gather_mean", {&x, &idx});
  DSMIL_DISPATCH(device, gather_mean, x, idx);
}

Tensor gather_mean_backward(const Tensor& dy, const Tensor& idx, int64_t n) {
  const Device device = common_device("gather_mean_backward", {&dy, &idx});
  DSMIL_DISPATCH(device, gather_mean_backward, dy, idx, n);
}

Tensor bag_weighted_sum(const Tensor& a, const Tensor& v) {
  const Device device = common_device("bag_weighted_sum", {&a, &v});
  DSMIL_DISPATCH(device, bag_weighted_sum, a, v);
}

Tensor bag_dot(const Tensor& q, const Tensor& m) {
  const Device device = common_device("bag_dot", {&q, &m});
  DSMIL_DISPATCH(device, bag_dot, q, m);
}

Tensor bag_outer(const Tensor& a, const Tensor& m) {
  const Device device = common_device("bag_outer", {&a, &m});
  DSMIL_DISPATCH(device, bag_outer, a, m);
}

Tensor gather_bags(Device device, std::span<const BagGather> bags, std::span<const int32_t> starts,
                   const BagGatherGeometry& g, DType out) {
  const char* op = "gather_bags";
  if (g.depth < 1 || g.height < 1 || g.width < 1 || g.instances_per_bag < 1 || g.slab_depth < 1 ||
      g.slab_depth > g.depth)
    throw ShapeError(fmt::format("{}: {} instances of {} slices a bag from a grid of {}x{}x{}", op, g.instances_per_bag,
                                 g.slab_depth, g.depth, g.height, g.width));
  if (out != DType::F32 && !(out == DType::BF16 && device == Device::CUDA))
    throw ShapeError(
        fmt::format("{}: output dtype {} on {} (f32, or bf16 on cuda)", op, dtype_name(out), device_name(device)));
  const auto n = static_cast<size_t>(g.instances_per_bag);
  if (starts.size() != bags.size() * n)
    throw ShapeError(fmt::format("{}: {} starts for {} bags of {} instances", op, starts.size(), bags.size(), n));
  for (size_t b = 0; b < bags.size(); ++b) {
    const BagGather& bag = bags[b];
    if (bag.instances < 0 || static_cast<size_t>(bag.instances) > n)
      throw ShapeError(fmt::format("{}: bag {} has {} slabs for {} instance rows", op, b, bag.instances, n));
    if (bag.instances > 0 && (bag.image == nullptr || bag.mask == nullptr))
      throw ShapeError(fmt::format("{}: bag {} has slabs but no volume", op, b));
    for (size_t i = 0; i < static_cast<size_t>(bag.instances); ++i) {
      const int32_t start = starts[b * n + i];
      if (start < 0 || start + g.slab_depth > g.depth)
        throw ShapeError(fmt::format("{}: bag {} slab {}: slices [{}, {}) outside depth {}", op, b, i, start,
                                     start + g.slab_depth, g.depth));
    }
  }
  DSMIL_DISPATCH(device, gather_bags, device, bags, starts, g, out);
}

FocalLossOut focal_loss(const Tensor& logits, const Tensor& target, const Tensor& weight, float eps, float gamma) {
  const char* op = "focal_loss";
  const Device device = common_device(op, {&logits, &target, &weight});
  check_ndim(op, logits, 2, "logits [B, C]");
  check_dtype(op, logits, DType::F32, "logits");
  check_dtype(op, target, DType::I32, "target");
  check_dtype(op, weight, DType::F32, "weight");
  const int64_t bags = logits.size(0);
  if (logits.size(1) < 1 || target.shape() != Shape{bags} || weight.shape() != Shape{bags})
    throw ShapeError(fmt::format("{}: logits {}, target {} and weight {} do not fit (expected [B, C >= 1], [B], [B])",
                                 op, logits.describe(), target.describe(), weight.describe()));
  if (!(gamma >= 0.0f)) throw ShapeError(fmt::format("{}: gamma {} must be >= 0", op, gamma));
  DSMIL_DISPATCH(device, focal_loss, logits, target, weight, eps, gamma);
}

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h) {
  const Device device = common_device("adamw_step", {&param, &grad, &m, &v});
  DSMIL_DISPATCH(device, adamw_step, param, grad, m, v, h);
}

void ema_update(Tensor& ema, const Tensor& value, float decay) {
  const Device device = common_device("ema_update", {&ema, &value});
  DSMIL_DISPATCH(device, ema_update, ema, value, decay);
}

// The lists' tensors are checked against the first one's device by the backends.
void multi_tensor_adamw(AdamWTensors& tensors, const std::vector<Tensor>& grads, const AdamWHyper& h,
                        float max_grad_norm, Tensor& grad_norm) {
  if (tensors.params.empty()) return;
  const Device device = common_device("multi_tensor_adamw", {tensors.params.front(), &grad_norm});
  DSMIL_DISPATCH(device, multi_tensor_adamw, tensors, grads, h, max_grad_norm, grad_norm);
}

void multi_tensor_ema(EmaTensors& tensors, float decay) {
  if (tensors.ema.empty()) return;
  const Device device = tensors.ema.front()->device();
  DSMIL_DISPATCH(device, multi_tensor_ema, tensors, decay);
}

}  // namespace ops
}  // namespace dsmil
