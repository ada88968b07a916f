// The op interface: every numerical primitive of the model and its training, forward and backward.
// Each op is declared once here, dispatched on the device of its first tensor argument to the twin of
// the same name and signature in `cpu::` (tensor/cpu/, the reference) or `cuda::` (tensor/cuda/).
//
// Conventions
// - Outputs are new tensors on the inputs' device; all tensor arguments must share one device.
// - Backward ops return gradients (they overwrite); accumulation into parameter gradients is the
//   autograd layer's job (tensor/autograd.h).
// - Activations are channels-last: x[N, D, H, W, C]; conv weights w[K, T, R, S, C].
// - dtype: F32 on the CPU. On CUDA, ops marked [bf16] also take BF16 tensors (fp32 accumulation);
//   the output has the input's dtype. Indices, labels and masks are I32.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "tensor/tensor.h"

namespace dsmil {

// Process-wide numerics switches of the CUDA backend (the CPU backend is always plain fp32).
struct MathMode {
  bool allow_tf32 = true;      // TF32 tensor cores for fp32 convolutions and GEMMs
  bool deterministic = false;  // deterministic algorithms and fixed reduction orders
};
MathMode& math_mode();

struct Conv3dGeometry {
  std::array<int, 3> kernel{1, 1, 1};  // (T, R, S) = depth, height, width
  std::array<int, 3> stride{1, 1, 1};
  std::array<int, 3> pad{0, 0, 0};
};
struct Pool3dGeometry {
  std::array<int, 3> kernel{1, 1, 1};
  std::array<int, 3> stride{1, 1, 1};
  std::array<int, 3> pad{0, 0, 0};
};

struct AdamWHyper {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  int64_t step = 1;  // 1-based step count, for bias correction
};

// The CUDA backend's device tables of a multi-tensor op (tensor/cuda/optimizer.cpp): built on the first call,
// rebuilt only when a tensor of the list got other storage.
struct MultiTensorTable;

// What nn::AdamW updates in one multi-tensor step: per parameter its value and moments m, v (F32, one shape)
// and whether it is weight-decayed. The gradients come with each step: they are new tensors every step.
struct AdamWTensors {
  std::vector<Tensor*> params, m, v;
  std::vector<bool> decayed;
  std::shared_ptr<MultiTensorTable> device_table;
  // Throws ShapeError unless m, v, decayed and a list of `grads` gradients have one entry per parameter.
  void check_lengths(const char* op, size_t grads) const;
};

// What nn::Ema averages in one multi-tensor update: ema[i] from values[i] (F32, same shapes).
struct EmaTensors {
  std::vector<Tensor*> ema;
  std::vector<const Tensor*> values;
  std::shared_ptr<MultiTensorTable> device_table;
  void check_lengths(const char* op) const;  // one value per ema, else ShapeError
};

// Results of ops with several outputs.
struct BatchNormTrainOut {
  Tensor y, save_mean, save_invstd;
};

struct BatchNormGrads {
  Tensor dx, dgamma, dbeta;
};

// Gradients of the fused batch norm + ReLU; d_residual is undefined unless it was asked for.
struct BatchNormReluGrads {
  Tensor dx, dgamma, dbeta, d_residual;
};

struct MaxPoolOut {
  Tensor y, argmax;
};

struct MaskedSoftmaxOut {
  Tensor a, stats;
};

struct FocalLossOut {
  Tensor loss, grad, per_sample;  // loss: F32 [1]
};

namespace ops {
// Output shapes: y[N, D', H', W', K] with D' = (D + 2 pd - T) / sd + 1 (likewise H', W').
Shape conv3d_output_shape(const Shape& x, const Shape& w, const Conv3dGeometry& g);
Shape pool3d_output_shape(const Shape& x, const Pool3dGeometry& g);

#include "tensor/op_declarations.inc"
}  // namespace ops
}  // namespace dsmil
