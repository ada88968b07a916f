// Dispatch of every op to its CPU or CUDA twin, by the device of the first tensor argument, after checking the
// op's contract (tensor/op_declarations.inc) here, once for both backends, so that they refuse a bad input alike.
#include "tensor/ops.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "tensor/cpu/ops_cpu.h"
#ifdef DSMIL_WITH_CUDA
#include "tensor/cuda/ops_cuda.h"
#endif

namespace dsmil {

namespace {

[[noreturn]] void no_cuda_backend(const char* op) {
  throw DeviceError(fmt::format("{}: a CUDA tensor was given, but this build has no CUDA backend", op));
}

// The device of the first tensor, after checking that every tensor is defined and on it; an `optional` one
// may be undefined (an absent residual, say).
Device common_device(const char* op, std::initializer_list<const Tensor*> tensors,
                     std::initializer_list<const Tensor*> optional = {}) {
  const Tensor& first = **tensors.begin();
  int position = 1;
  for (const Tensor* t : tensors) {
    if (!t->defined()) throw ShapeError(fmt::format("{}: tensor argument {} is undefined", op, position));
    ++position;
  }
  for (const auto* list : {&tensors, &optional})
    for (const Tensor* t : *list)
      if (t->defined() && t->device() != first.device())
        throw ShapeError(
            fmt::format("{}: tensors on different devices ({} and {})", op, first.describe(), t->describe()));
  return first.device();
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

std::array<float, 7> adamw_step_constants(const AdamWHyper& h) {
  return {h.lr,
          h.beta1,
          h.beta2,
          h.eps,
          h.weight_decay,
          static_cast<float>(1.0 - std::pow(static_cast<double>(h.beta1), h.step)),
          static_cast<float>(1.0 - std::pow(static_cast<double>(h.beta2), h.step))};
}

namespace ops {

namespace {

int64_t window_output(int64_t in, int kernel, int stride, int pad) { return (in + 2 * pad - kernel) / stride + 1; }

bool window_fits(const std::array<int, 3>& kernel, const std::array<int, 3>& stride, const std::array<int, 3>& pad) {
  for (int a = 0; a < 3; ++a)
    if (kernel[a] < 1 || stride[a] < 1 || pad[a] < 0) return false;
  return true;
}

Shape conv_output(const char* op, const Shape& x, const Shape& w, const Conv3dGeometry& g) {
  if (x.size() != 5 || w.size() != 5 || x[4] != w[4] || w[1] != g.kernel[0] || w[2] != g.kernel[1] ||
      w[3] != g.kernel[2] || !window_fits(g.kernel, g.stride, g.pad))
    throw ShapeError(fmt::format(
        "{}: input {} (NDHWC) and weight {} (KTRSC) with kernel ({},{},{}) stride ({},{},{}) pad ({},{},{}) do not fit",
        op, shape_str(x), shape_str(w), g.kernel[0], g.kernel[1], g.kernel[2], g.stride[0], g.stride[1], g.stride[2],
        g.pad[0], g.pad[1], g.pad[2]));
  Shape y{x[0], 0, 0, 0, w[0]};
  for (int a = 0; a < 3; ++a) {
    y[a + 1] = window_output(x[a + 1], g.kernel[a], g.stride[a], g.pad[a]);
    if (y[a + 1] <= 0)
      throw ShapeError(fmt::format("{}: input {} too small for weight {}", op, shape_str(x), shape_str(w)));
  }
  return y;
}

Shape pool_output(const char* op, const Shape& x, const Pool3dGeometry& g) {
  if (x.size() != 5) throw ShapeError(fmt::format("{}: input must be NDHWC, got {}", op, shape_str(x)));
  if (!window_fits(g.kernel, g.stride, g.pad))
    throw ShapeError(fmt::format("{}: window kernel ({},{},{}) stride ({},{},{}) pad ({},{},{})", op, g.kernel[0],
                                 g.kernel[1], g.kernel[2], g.stride[0], g.stride[1], g.stride[2], g.pad[0], g.pad[1],
                                 g.pad[2]));
  // The max pool's argmax is a byte naming the winner's place in its window.
  if (g.kernel[0] * g.kernel[1] * g.kernel[2] > 256)
    throw ShapeError(fmt::format("{}: kernel ({},{},{}) has more than 256 positions, which a u8 argmax cannot name", op,
                                 g.kernel[0], g.kernel[1], g.kernel[2]));
  Shape y = x;
  for (int a = 0; a < 3; ++a) {
    y[a + 1] = window_output(x[a + 1], g.kernel[a], g.stride[a], g.pad[a]);
    if (y[a + 1] <= 0 || 2 * g.pad[a] > g.kernel[a])
      throw ShapeError(
          fmt::format("{}: input {} does not fit kernel {} pad {}", op, shape_str(x), g.kernel[a], g.pad[a]));
  }
  return y;
}

// The contracts' checks, each throwing ShapeError naming the op, the argument and its description.

// F32 on both backends; BF16 too on CUDA, for the ops whose kernels take it ([bf16] in op_declarations.inc).
bool float_dtype_on(DType dtype, Device device) {
  return dtype == DType::F32 || (dtype == DType::BF16 && device == Device::CUDA);
}

void check_float(const char* op, const Tensor& t, const char* name) {
  if (!float_dtype_on(t.dtype(), t.device()))
    throw ShapeError(fmt::format("{}: {} must be f32, or bf16 on CUDA, got {}", op, name, t.describe()));
}

void check_f32(const char* op, const Tensor& t, int64_t ndim, const char* name) {
  check_ndim(op, t, ndim, name);
  check_dtype(op, t, DType::F32, name);
}

// t has like's shape and dtype.
void check_like(const char* op, const Tensor& t, const Tensor& like, const char* name) {
  check_same_shape(op, t, like);
  check_dtype(op, t, like.dtype(), name);
}

// F32 holding n values, whatever its shape (per-channel parameters and statistics, per-sample factors).
void check_f32_values(const char* op, const Tensor& t, int64_t n, const char* name) {
  check_dtype(op, t, DType::F32, name);
  if (t.numel() != n) throw ShapeError(fmt::format("{}: {} must hold {} values, got {}", op, name, n, t.describe()));
}

void check_shape(const char* op, const Tensor& t, const Shape& expected, const char* name) {
  if (t.shape() != expected)
    throw ShapeError(fmt::format("{}: {} must have shape {}, got {}", op, name, shape_str(expected), t.describe()));
}

void check_volume_shape(const char* op, const Shape& s, const char* name) {
  if (s.size() != 5) throw ShapeError(fmt::format("{}: {} must be N, D, H, W, C, got {}", op, name, shape_str(s)));
}

Device unary_float(const char* op, const Tensor& x) {
  const Device device = common_device(op, {&x});
  check_float(op, x, "x");
  return device;
}

Device binary_float(const char* op, const Tensor& a, const char* a_name, const Tensor& b, const char* b_name) {
  const Device device = common_device(op, {&a, &b});
  check_float(op, a, a_name);
  check_like(op, b, a, b_name);
  return device;
}

// Batch norm's x[..., C]: a float tensor with a channel axis and at least one more; returns C.
int64_t batchnorm_channels(const char* op, const Tensor& x) {
  check_float(op, x, "x");
  if (x.ndim() < 2 || x.size(-1) < 1)
    throw ShapeError(fmt::format("{}: x must have a batch and a channel axis, got {}", op, x.describe()));
  return x.size(-1);
}

// Every per-channel tensor F32 [C].
void check_channels(const char* op, int64_t channels, std::initializer_list<std::pair<const Tensor*, const char*>> ts) {
  for (const auto& [t, name] : ts) check_f32_values(op, *t, channels, name);
}

// eps is added to a variance under a square root.
void check_eps(const char* op, float eps) {
  if (!(eps >= 0.0f)) throw ShapeError(fmt::format("{}: eps must be >= 0, got {}", op, eps));
}

// The statistics of a training pass: an unbiased variance needs two values per channel.
void check_training(const char* op, const Tensor& x, float momentum, float eps) {
  if (x.numel() / x.size(-1) < 2)
    throw ShapeError(fmt::format("{}: needs at least 2 values per channel, got {}", op, x.describe()));
  if (!(momentum >= 0.0f && momentum <= 1.0f))
    throw ShapeError(fmt::format("{}: momentum must be in [0, 1], got {}", op, momentum));
  check_eps(op, eps);
}

// The fused ops' optional terms: residual of x's shape and dtype, sample_factor F32 [N].
void check_branch(const char* op, const Tensor& x, const Tensor& residual, const Tensor& sample_factor) {
  if (residual.defined()) check_like(op, residual, x, "residual");
  if (sample_factor.defined()) check_f32_values(op, sample_factor, x.size(0), "sample_factor");
}

// The fused backward's ReLU mask: y of x's shape and dtype, or, without y, x and beta (F32 [C]) to recompute
// it from, which holds only for a forward without residual: no residual gradient can be asked for then.
void check_relu_mask_source(const char* op, const Tensor& x, const Tensor& y, const Tensor& beta, bool residual_grad) {
  if (beta.defined()) check_f32_values(op, beta, x.size(-1), "beta");
  if (y.defined()) {
    check_like(op, y, x, "y");
    return;
  }
  if (residual_grad)
    throw ShapeError(fmt::format(
        "{}: y is undefined but the residual's gradient is requested: the mask of relu(BN(x) + residual) needs y", op));
  if (!beta.defined())
    throw ShapeError(
        fmt::format("{}: y and beta are both undefined: the ReLU mask needs y, or beta to recompute it", op));
}

// The forward passes' tensors: x, gamma, beta and the running statistics (F32 [C]), and the fused ops' optional
// residual and sample_factor; returns their device.
Device check_batchnorm_forward(const char* op, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                               const Tensor& running_mean, const Tensor& running_var, const Tensor& residual = Tensor(),
                               const Tensor& sample_factor = Tensor()) {
  const Device device =
      common_device(op, {&x, &gamma, &beta, &running_mean, &running_var}, {&residual, &sample_factor});
  const int64_t c = batchnorm_channels(op, x);
  check_channels(op, c,
                 {{&gamma, "gamma"}, {&beta, "beta"}, {&running_mean, "running_mean"}, {&running_var, "running_var"}});
  check_branch(op, x, residual, sample_factor);
  return device;
}

void check_probability(const char* op, float p) {
  if (!(p >= 0.0f && p < 1.0f)) throw ShapeError(fmt::format("{}: drop probability {} outside [0, 1)", op, p));
}

// The temperature divides every score.
void check_temperature(const char* op, float temperature) {
  if (!(temperature > 0.0f)) throw ShapeError(fmt::format("{}: temperature must be > 0, got {}", op, temperature));
}

// Scores e[B, n] F32 and their mask I32 of the same shape.
void check_bag_scores(const char* op, const Tensor& scores, const char* name, const Tensor& mask) {
  check_f32(op, scores, 2, name);
  check_dtype(op, mask, DType::I32, "mask");
  check_shape(op, mask, scores.shape(), "mask");
}

// idx I32 [B, K] for the B bags of `per_bag`.
void check_bag_indices(const char* op, const Tensor& idx, const Tensor& per_bag) {
  check_ndim(op, idx, 2, "idx");
  check_dtype(op, idx, DType::I32, "idx");
  if (idx.size(0) != per_bag.size(0))
    throw ShapeError(
        fmt::format("{}: idx {} and {} have different bag counts", op, idx.describe(), per_bag.describe()));
}

// AdamW divides by 1 - beta^step.
void check_adamw_step(const char* op, const AdamWHyper& h) {
  if (h.step < 1) throw ShapeError(fmt::format("{}: step must be >= 1 (1-based), got {}", op, h.step));
}

// An F32 tensor of a list, on the list's device, with like's shape.
void check_list_f32(const char* op, const Tensor& t, const Tensor& like, Device device, const char* name) {
  if (!t.defined() || t.device() != device)
    throw ShapeError(fmt::format("{}: {} must be a {} tensor, got {}", op, name, device_name(device),
                                 t.defined() ? t.describe() : "undefined"));
  check_dtype(op, t, DType::F32, name);
  check_same_shape(op, t, like);
}

// A list's optional device-resident step constants: undefined, or F32 [count] on the list's device.
void check_constants_on_device(const char* op, const Tensor& t, int64_t count, Device device, const char* name) {
  if (!t.defined()) return;
  if (t.device() != device || t.dtype() != DType::F32 || t.shape() != Shape{count})
    throw ShapeError(fmt::format("{}: {} must be F32 [{}] on the {} list's device, got {}", op, name, count,
                                 device_name(device), t.describe()));
}

}  // namespace

Shape conv3d_output_shape(const Shape& x, const Shape& w, const Conv3dGeometry& g) {
  return conv_output("conv3d", x, w, g);
}

Shape pool3d_output_shape(const Shape& x, const Pool3dGeometry& g) { return pool_output("maxpool3d", x, g); }

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
  const Device device = binary_float("add", a, "a", b, "b");
  DSMIL_DISPATCH(device, add, a, b);
}

Tensor mul(const Tensor& a, const Tensor& b) {
  const Device device = binary_float("mul", a, "a", b, "b");
  DSMIL_DISPATCH(device, mul, a, b);
}

Tensor scale(const Tensor& x, float s) {
  const Device device = unary_float("scale", x);
  DSMIL_DISPATCH(device, scale, x, s);
}

void axpy_(Tensor& y, float alpha, const Tensor& x) {
  const char* op = "axpy_";
  const Device device = common_device(op, {&y, &x});
  check_dtype(op, y, DType::F32, "y");
  check_dtype(op, x, DType::F32, "x");
  check_same_shape(op, y, x);
  DSMIL_DISPATCH(device, axpy_, y, alpha, x);
}

void scale_(Tensor& x, float s) {
  const Device device = common_device("scale_", {&x});
  check_dtype("scale_", x, DType::F32, "x");
  DSMIL_DISPATCH(device, scale_, x, s);
}

Tensor relu(const Tensor& x) {
  const Device device = unary_float("relu", x);
  DSMIL_DISPATCH(device, relu, x);
}

Tensor relu_backward(const Tensor& dy, const Tensor& y) {
  const Device device = binary_float("relu_backward", dy, "dy", y, "y");
  DSMIL_DISPATCH(device, relu_backward, dy, y);
}

Tensor tanh(const Tensor& x) {
  const Device device = unary_float("tanh", x);
  DSMIL_DISPATCH(device, tanh, x);
}

Tensor tanh_backward(const Tensor& dy, const Tensor& y) {
  const Device device = binary_float("tanh_backward", dy, "dy", y, "y");
  DSMIL_DISPATCH(device, tanh_backward, dy, y);
}

Tensor sigmoid(const Tensor& x) {
  const Device device = unary_float("sigmoid", x);
  DSMIL_DISPATCH(device, sigmoid, x);
}

Tensor sigmoid_backward(const Tensor& dy, const Tensor& y) {
  const Device device = binary_float("sigmoid_backward", dy, "dy", y, "y");
  DSMIL_DISPATCH(device, sigmoid_backward, dy, y);
}

float sum_squares(const Tensor& x) {
  const Device device = unary_float("sum_squares", x);
  DSMIL_DISPATCH(device, sum_squares, x);
}

bool all_finite(const Tensor& x) {
  const Device device = unary_float("all_finite", x);
  DSMIL_DISPATCH(device, all_finite, x);
}

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const MathMode& mode) {
  const char* op = "matmul";
  const Device device = common_device(op, {&a, &b});
  check_ndim(op, a, 2, "a");
  check_ndim(op, b, 2, "b");
  check_float(op, a, "a");
  check_dtype(op, b, a.dtype(), "b");
  const int64_t m = transpose_a ? a.size(1) : a.size(0), k = transpose_a ? a.size(0) : a.size(1);
  const int64_t kb = transpose_b ? b.size(1) : b.size(0), n = transpose_b ? b.size(0) : b.size(1);
  if (k != kb)
    throw ShapeError(fmt::format("{}: inner sizes differ: {}{} x {}{}", op, a.describe(), transpose_a ? "^T" : "",
                                 b.describe(), transpose_b ? "^T" : ""));
  // cuBLAS takes int sizes.
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (device == Device::CUDA && (m > kIntMax || n > kIntMax || k > kIntMax))
    throw ShapeError(fmt::format("{}: {} x {} exceeds cuBLAS's int range", op, a.describe(), b.describe()));
  DSMIL_DISPATCH(device, matmul, a, b, transpose_a, transpose_b, mode);
}

Tensor add_bias(const Tensor& x, const Tensor& bias) {
  const char* op = "add_bias";
  const Device device = common_device(op, {&x, &bias});
  check_ndim(op, x, 2, "x");
  check_float(op, x, "x");
  check_f32_values(op, bias, x.size(1), "bias");
  DSMIL_DISPATCH(device, add_bias, x, bias);
}

Tensor bias_backward(const Tensor& dy) {
  const char* op = "bias_backward";
  const Device device = common_device(op, {&dy});
  check_ndim(op, dy, 2, "dy");
  check_float(op, dy, "dy");
  DSMIL_DISPATCH(device, bias_backward, dy);
}

namespace {
// a and b: 5-D float tensors of one dtype.
void check_conv_tensors(const char* op, const Tensor& a, const char* a_name, const Tensor& b, const char* b_name) {
  check_ndim(op, a, 5, a_name);
  check_ndim(op, b, 5, b_name);
  check_float(op, a, a_name);
  check_dtype(op, b, a.dtype(), b_name);
}

void check_conv_dy(const char* op, const Tensor& dy, const Shape& x, const Shape& w, const Conv3dGeometry& g) {
  const Shape y = conv_output(op, x, w, g);
  if (dy.shape() != y)
    throw ShapeError(fmt::format("{}: dy {} is not the forward output {} of x {} and w {}", op, dy.describe(),
                                 shape_str(y), shape_str(x), shape_str(w)));
}
}  // namespace

Tensor conv3d_forward(const Tensor& x, const Tensor& w, const Conv3dGeometry& g, const MathMode& mode) {
  const char* op = "conv3d_forward";
  const Device device = common_device(op, {&x, &w});
  check_conv_tensors(op, x, "x", w, "w");
  conv_output(op, x.shape(), w.shape(), g);
  DSMIL_DISPATCH(device, conv3d_forward, x, w, g, mode);
}

Tensor conv3d_backward_data(const Tensor& dy, const Tensor& w, const Shape& x_shape, const Conv3dGeometry& g,
                            const MathMode& mode) {
  const char* op = "conv3d_backward_data";
  const Device device = common_device(op, {&dy, &w});
  check_conv_tensors(op, dy, "dy", w, "w");
  check_conv_dy(op, dy, x_shape, w.shape(), g);
  DSMIL_DISPATCH(device, conv3d_backward_data, dy, w, x_shape, g, mode);
}

Tensor conv3d_backward_filter(const Tensor& x, const Tensor& dy, const Shape& w_shape, const Conv3dGeometry& g,
                              const MathMode& mode) {
  const char* op = "conv3d_backward_filter";
  const Device device = common_device(op, {&x, &dy});
  check_conv_tensors(op, x, "x", dy, "dy");
  check_conv_dy(op, dy, x.shape(), w_shape, g);
  DSMIL_DISPATCH(device, conv3d_backward_filter, x, dy, w_shape, g, mode);
}

BatchNormTrainOut batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          Tensor& running_mean, Tensor& running_var, float momentum, float eps) {
  const char* op = "batchnorm_forward_train";
  const Device device = check_batchnorm_forward(op, x, gamma, beta, running_mean, running_var);
  check_training(op, x, momentum, eps);
  DSMIL_DISPATCH(device, batchnorm_forward_train, x, gamma, beta, running_mean, running_var, momentum, eps);
}

BatchNormTrainOut batchnorm_statistics(const Tensor& x, Tensor& running_mean, Tensor& running_var, float momentum,
                                       float eps) {
  const char* op = "batchnorm_statistics";
  const Device device = common_device(op, {&x, &running_mean, &running_var});
  const int64_t c = batchnorm_channels(op, x);
  check_channels(op, c, {{&running_mean, "running_mean"}, {&running_var, "running_var"}});
  check_training(op, x, momentum, eps);
  DSMIL_DISPATCH(device, batchnorm_statistics, x, running_mean, running_var, momentum, eps);
}

Tensor batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                              const Tensor& running_var, float eps) {
  const char* op = "batchnorm_forward_eval";
  const Device device = check_batchnorm_forward(op, x, gamma, beta, running_mean, running_var);
  check_eps(op, eps);
  DSMIL_DISPATCH(device, batchnorm_forward_eval, x, gamma, beta, running_mean, running_var, eps);
}

BatchNormGrads batchnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& save_mean,
                                  const Tensor& save_invstd) {
  const char* op = "batchnorm_backward";
  const Device device = common_device(op, {&dy, &x, &gamma, &save_mean, &save_invstd});
  const int64_t c = batchnorm_channels(op, x);
  check_like(op, dy, x, "dy");
  check_channels(op, c, {{&gamma, "gamma"}, {&save_mean, "save_mean"}, {&save_invstd, "save_invstd"}});
  DSMIL_DISPATCH(device, batchnorm_backward, dy, x, gamma, save_mean, save_invstd);
}

BatchNormTrainOut batchnorm_relu_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                               Tensor& running_mean, Tensor& running_var, float momentum, float eps,
                                               const Tensor& residual, const Tensor& sample_factor) {
  const char* op = "batchnorm_relu_forward_train";
  const Device device = check_batchnorm_forward(op, x, gamma, beta, running_mean, running_var, residual, sample_factor);
  check_training(op, x, momentum, eps);
  DSMIL_DISPATCH(device, batchnorm_relu_forward_train, x, gamma, beta, running_mean, running_var, momentum, eps,
                 residual, sample_factor);
}

Tensor batchnorm_relu_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                                   const Tensor& running_var, float eps, const Tensor& residual,
                                   const Tensor& sample_factor) {
  const char* op = "batchnorm_relu_forward_eval";
  const Device device = check_batchnorm_forward(op, x, gamma, beta, running_mean, running_var, residual, sample_factor);
  check_eps(op, eps);
  DSMIL_DISPATCH(device, batchnorm_relu_forward_eval, x, gamma, beta, running_mean, running_var, eps, residual,
                 sample_factor);
}

Tensor batchnorm_relu_apply(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& save_mean,
                            const Tensor& save_invstd) {
  const char* op = "batchnorm_relu_apply";
  const Device device = common_device(op, {&x, &gamma, &beta, &save_mean, &save_invstd});
  const int64_t c = batchnorm_channels(op, x);
  check_channels(op, c, {{&gamma, "gamma"}, {&beta, "beta"}, {&save_mean, "save_mean"}, {&save_invstd, "save_invstd"}});
  DSMIL_DISPATCH(device, batchnorm_relu_apply, x, gamma, beta, save_mean, save_invstd);
}

BatchNormReluGrads batchnorm_relu_backward(const Tensor& dy, const Tensor& y, const Tensor& x, const Tensor& gamma,
                                           const Tensor& beta, const Tensor& save_mean, const Tensor& save_invstd,
                                           const Tensor& sample_factor, bool residual_grad) {
  const char* op = "batchnorm_relu_backward";
  const Device device = common_device(op, {&dy, &x, &gamma, &save_mean, &save_invstd}, {&y, &beta, &sample_factor});
  const int64_t c = batchnorm_channels(op, x);
  check_like(op, dy, x, "dy");
  check_channels(op, c, {{&gamma, "gamma"}, {&save_mean, "save_mean"}, {&save_invstd, "save_invstd"}});
  check_relu_mask_source(op, x, y, beta, residual_grad);
  check_branch(op, x, Tensor(), sample_factor);
  DSMIL_DISPATCH(device, batchnorm_relu_backward, dy, y, x, gamma, beta, save_mean, save_invstd, sample_factor,
                 residual_grad);
}

Tensor space_to_depth(const Tensor& x, const SpaceToDepthGeometry& g) {
  const char* op = "space_to_depth";
  const Device device = unary_float(op, x);
  space_to_depth_shape(op, x.shape(), g);
  DSMIL_DISPATCH(device, space_to_depth, x, g);
}

Tensor depth_to_space(const Tensor& xs, const SpaceToDepthGeometry& g, const Shape& x_shape) {
  const char* op = "depth_to_space";
  const Device device = common_device(op, {&xs});
  check_float(op, xs, "xs");
  check_shape(op, xs, space_to_depth_shape(op, x_shape, g), "xs");
  DSMIL_DISPATCH(device, depth_to_space, xs, g, x_shape);
}

MaxPoolOut maxpool3d_forward(const Tensor& x, const Pool3dGeometry& g) {
  const char* op = "maxpool3d_forward";
  const Device device = unary_float(op, x);
  pool_output(op, x.shape(), g);
  DSMIL_DISPATCH(device, maxpool3d_forward, x, g);
}

Tensor maxpool3d_backward(const Tensor& dy, const Tensor& argmax, const Shape& x_shape, const Pool3dGeometry& g) {
  const char* op = "maxpool3d_backward";
  const Device device = common_device(op, {&dy, &argmax});
  check_float(op, dy, "dy");
  check_dtype(op, argmax, DType::U8, "argmax");
  check_same_shape(op, dy, argmax);
  check_volume_shape(op, x_shape, "x_shape");
  check_shape(op, dy, pool_output(op, x_shape, g), "dy");
  DSMIL_DISPATCH(device, maxpool3d_backward, dy, argmax, x_shape, g);
}

Tensor global_avg_pool(const Tensor& x) {
  const char* op = "global_avg_pool";
  const Device device = unary_float(op, x);
  check_ndim(op, x, 5, "x");
  DSMIL_DISPATCH(device, global_avg_pool, x);
}

Tensor global_avg_pool_backward(const Tensor& dy, const Shape& x_shape, DType dx_dtype) {
  const char* op = "global_avg_pool_backward";
  const Device device = common_device(op, {&dy});
  check_volume_shape(op, x_shape, "x_shape");
  check_dtype(op, dy, DType::F32, "dy");
  check_shape(op, dy, {x_shape[0], x_shape[4]}, "dy");
  if (!float_dtype_on(dx_dtype, device))
    throw ShapeError(fmt::format("{}: dx dtype must be f32, or bf16 on CUDA, got {} for dy {}", op,
                                 dtype_name(dx_dtype), dy.describe()));
  DSMIL_DISPATCH(device, global_avg_pool_backward, dy, x_shape, dx_dtype);
}

Tensor dropout(const Tensor& x, float p, MaskSeed seed, uint64_t offset) {
  const Device device = unary_float("dropout", x);
  check_probability("dropout", p);
  DSMIL_DISPATCH(device, dropout, x, p, seed, offset);
}

Tensor drop_path(const Tensor& x, float p, MaskSeed seed, uint64_t offset) {
  const char* op = "drop_path";
  const Device device = unary_float(op, x);
  if (x.ndim() < 1) throw ShapeError(fmt::format("{}: x needs a sample axis, got {}", op, x.describe()));
  check_probability(op, p);
  DSMIL_DISPATCH(device, drop_path, x, p, seed, offset);
}

MaskedSoftmaxOut masked_softmax(const Tensor& e, const Tensor& mask, float temperature) {
  const char* op = "masked_softmax";
  const Device device = common_device(op, {&e, &mask});
  check_bag_scores(op, e, "e", mask);
  check_temperature(op, temperature);
  DSMIL_DISPATCH(device, masked_softmax, e, mask, temperature);
}

Tensor masked_softmax_backward(const Tensor& da, const Tensor& a, float temperature) {
  const char* op = "masked_softmax_backward";
  const Device device = common_device(op, {&da, &a});
  check_f32(op, da, 2, "da");
  check_f32(op, a, 2, "a");
  check_same_shape(op, da, a);
  check_temperature(op, temperature);
  DSMIL_DISPATCH(device, masked_softmax_backward, da, a, temperature);
}

Tensor topk_indices(const Tensor& score, const Tensor& mask, int k) {
  const char* op = "topk_indices";
  const Device device = common_device(op, {&score, &mask});
  check_bag_scores(op, score, "score", mask);
  if (k < 1) throw ShapeError(fmt::format("{}: k must be >= 1, got {}", op, k));
  DSMIL_DISPATCH(device, topk_indices, score, mask, k);
}

Tensor gather_mean(const Tensor& x, const Tensor& idx) {
  const char* op = "gather_mean";
  const Device device = common_device(op, {&x, &idx});
  check_f32(op, x, 3, "x");
  check_bag_indices(op, idx, x);
  DSMIL_DISPATCH(device, gather_mean, x, idx);
}

Tensor gather_mean_backward(const Tensor& dy, const Tensor& idx, int64_t n) {
  const char* op = "gather_mean_backward";
  const Device device = common_device(op, {&dy, &idx});
  check_f32(op, dy, 2, "dy");
  check_bag_indices(op, idx, dy);
  if (n < 0) throw ShapeError(fmt::format("{}: n must be >= 0, got {}", op, n));
  DSMIL_DISPATCH(device, gather_mean_backward, dy, idx, n);
}

Tensor bag_weighted_sum(const Tensor& a, const Tensor& v) {
  const char* op = "bag_weighted_sum";
  const Device device = common_device(op, {&a, &v});
  check_f32(op, a, 2, "a");
  check_f32(op, v, 3, "v");
  check_shape(op, v, {a.size(0), a.size(1), v.size(2)}, "v");
  DSMIL_DISPATCH(device, bag_weighted_sum, a, v);
}

Tensor bag_dot(const Tensor& q, const Tensor& m) {
  const char* op = "bag_dot";
  const Device device = common_device(op, {&q, &m});
  check_f32(op, q, 3, "q");
  check_f32(op, m, 2, "m");
  check_shape(op, m, {q.size(0), q.size(2)}, "m");
  DSMIL_DISPATCH(device, bag_dot, q, m);
}

Tensor bag_outer(const Tensor& a, const Tensor& m) {
  const char* op = "bag_outer";
  const Device device = common_device(op, {&a, &m});
  check_f32(op, a, 2, "a");
  check_f32(op, m, 2, "m");
  if (m.size(0) != a.size(0))
    throw ShapeError(fmt::format("{}: a {} and m {} have different bag counts", op, a.describe(), m.describe()));
  DSMIL_DISPATCH(device, bag_outer, a, m);
}

Tensor gather_bags(Device device, std::span<const BagGather> bags, std::span<const int32_t> starts,
                   const BagGatherGeometry& g, DType out) {
  const char* op = "gather_bags";
  if (g.depth < 1 || g.height < 1 || g.width < 1 || g.instances_per_bag < 1 || g.slab_depth < 1 ||
      g.slab_depth > g.depth)
    throw ShapeError(fmt::format("{}: {} instances of {} slices a bag from a grid of {}x{}x{}", op, g.instances_per_bag,
                                 g.slab_depth, g.depth, g.height, g.width));
  if (!float_dtype_on(out, device))
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
  const char* op = "adamw_step";
  const Device device = common_device(op, {&param, &grad, &m, &v});
  check_dtype(op, param, DType::F32, "param");
  check_like(op, grad, param, "grad");
  check_like(op, m, param, "m");
  check_like(op, v, param, "v");
  check_adamw_step(op, h);
  DSMIL_DISPATCH(device, adamw_step, param, grad, m, v, h);
}

void ema_update(Tensor& ema, const Tensor& value, float decay) {
  const char* op = "ema_update";
  const Device device = common_device(op, {&ema, &value});
  check_dtype(op, ema, DType::F32, "ema");
  check_like(op, value, ema, "value");
  DSMIL_DISPATCH(device, ema_update, ema, value, decay);
}

void multi_tensor_adamw(AdamWTensors& tensors, const std::vector<Tensor>& grads, const AdamWHyper& h,
                        float max_grad_norm, Tensor& grad_norm, const Tensor& constants_on_device) {
  if (tensors.params.empty()) return;
  const char* op = "multi_tensor_adamw";
  const Device device = common_device(op, {tensors.params.front()}, {&grad_norm});
  tensors.check_lengths(op, grads.size());
  for (size_t i = 0; i < tensors.params.size(); ++i) {
    const Tensor& param = *tensors.params[i];
    check_list_f32(op, param, param, device, "param");
    check_list_f32(op, *tensors.m[i], param, device, "m");
    check_list_f32(op, *tensors.v[i], param, device, "v");
    if (grads[i].defined()) check_list_f32(op, grads[i], param, device, "grad");
  }
  if (max_grad_norm > 0.0f) {
    check_list_f32(op, grad_norm, grad_norm, device, "grad_norm");
    if (grad_norm.numel() != 1)
      throw ShapeError(fmt::format("{}: grad_norm must hold 1 value, got {}", op, grad_norm.describe()));
  }
  check_adamw_step(op, h);
  check_constants_on_device(op, constants_on_device, 7, device, "constants_on_device");
  DSMIL_DISPATCH(device, multi_tensor_adamw, tensors, grads, h, max_grad_norm, grad_norm, constants_on_device);
}

void multi_tensor_ema(EmaTensors& tensors, float decay, const Tensor& decay_on_device) {
  if (tensors.ema.empty()) return;
  const char* op = "multi_tensor_ema";
  const Device device = common_device(op, {tensors.ema.front()});
  tensors.check_lengths(op);
  for (size_t i = 0; i < tensors.ema.size(); ++i) {
    check_list_f32(op, *tensors.ema[i], *tensors.ema[i], device, "ema");
    check_list_f32(op, *tensors.values[i], *tensors.ema[i], device, "value");
  }
  check_constants_on_device(op, decay_on_device, 1, device, "decay_on_device");
  DSMIL_DISPATCH(device, multi_tensor_ema, tensors, decay, decay_on_device);
}

}  // namespace ops
}  // namespace dsmil
