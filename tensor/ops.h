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
#include <span>
#include <vector>

#include "tensor/tensor.h"

namespace dsmil {

// How the CUDA backend runs a strided convolution with few input channels (the stem): on the input as it
// is, or as the stride-1 convolution of its space-to-depth fold (tensor/cuda/conv3d.cpp). `measured` times
// both once per shape and keeps the faster; in deterministic mode it folds without timing. The GPU
// tests force each way.
enum class ConvFolding { measured, always, never };

// Which implementation runs a bf16 stride-1 convolution forward with 16 input channels (the stem's fold):
// cuDNN or the hand-written implicit GEMM (kernels/conv16_forward.cu). `measured` times both once per shape
// and keeps the faster; deterministic mode takes cuDNN's deterministic algorithm. The GPU tests force each.
enum class ConvKernel { measured, cudnn, implicit_gemm };

// Numerics switches of the CUDA backend, passed to each op they concern (the CPU backend is always plain fp32).
// The model carries its own (nn::Module::set_math_mode); default-constructed: TF32 allowed, measured choices.
struct MathMode {
  bool allow_tf32 = true;      // TF32 tensor cores for fp32 convolutions and GEMMs
  bool deterministic = false;  // deterministic algorithms and fixed reduction orders
  ConvFolding conv_space_to_depth = ConvFolding::measured;
  ConvKernel conv16_forward = ConvKernel::measured;
};

struct Conv3dGeometry {
  std::array<int, 3> kernel{1, 1, 1};  // (T, R, S) = depth, height, width
  std::array<int, 3> stride{1, 1, 1};
  std::array<int, 3> pad{0, 0, 0};
};
// Space-to-depth over H and W of x[N, D, H, W, C] into xs[N, D, folded_h, folded_w, folded_c]:
// xs[n, d, g, j, (bh * block_w + bw) * C + c] = x[n, d, block_h g + bh - pad_h, block_w j + bw - pad_w, c],
// zero outside x and in the channels from block_h block_w C up to folded_c. A convolution with stride
// (s, block_h, block_w) and padding (p, pad_h, pad_w) is the stride-(s, 1, 1) convolution of this fold of x
// with the filter folded likewise (pad 0): the CUDA backend runs the stem that way (tensor/cuda/conv3d.cpp).
struct SpaceToDepthGeometry {
  int64_t block_h = 1, block_w = 1, pad_h = 0, pad_w = 0;
  int64_t folded_h = 0, folded_w = 0, folded_c = 0;
};
// The space-to-depth form of a convolution with stride (s, s_h, s_w): conv3d_forward(space_to_depth(x, x_fold),
// space_to_depth(w, w_fold), geometry) is conv3d_forward(x, w, g); dx and dw come back through depth_to_space.
struct Conv3dFold {
  SpaceToDepthGeometry x_fold, w_fold;
  Conv3dGeometry geometry;
};
struct Pool3dGeometry {
  std::array<int, 3> kernel{1, 1, 1};
  std::array<int, 3> stride{1, 1, 1};
  std::array<int, 3> pad{0, 0, 0};
};

// The seed of a counter-based random mask: its value, and optionally a u64 in device memory that the CUDA kernels read
// instead, written before the work that reads it runs (a training step captured once as a CUDA graph draws each
// replay's masks from the seed written for it). The CPU backend takes the value; so does CUDA where on_device is null.
struct MaskSeed {
  MaskSeed(uint64_t seed) : value(seed) {}  // NOLINT(google-explicit-constructor): a plain seed is a MaskSeed
  MaskSeed(uint64_t seed, const uint64_t* seed_on_device) : value(seed), on_device(seed_on_device) {}
  uint64_t value = 0;
  const uint64_t* on_device = nullptr;
};

struct AdamWHyper {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  int64_t step = 1;  // 1-based step count, for bias correction
};
// The constants one AdamW step's CUDA kernels read: lr, beta1, beta2, eps, weight decay and the bias corrections
// 1 - beta1^step, 1 - beta2^step (in double, then rounded).
std::array<float, 7> adamw_step_constants(const AdamWHyper& h);

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

// One bag of ops::gather_bags: its case's volume in the memory of the op's device and the augmentation of all
// its slabs (data::BagAugmentation): output (y, x) reads source row y - shift_y and column u, or W - 1 - u when
// flipped, with u = x - shift_x; a source outside the grid gives 0, a voxel outside the brain too.
struct BagGather {
  const uint16_t* image = nullptr;  // [4][D][H][W] IEEE half bits
  const uint8_t* mask = nullptr;    // [D][H][W], nonzero = brain
  int32_t instances = 0;            // rows [0, instances) of the bag hold slabs, the rest of its n are zero
  bool flip = false;
  int32_t shift_y = 0, shift_x = 0;
  std::array<float, 4> scale{1, 1, 1, 1}, offset{0, 0, 0, 0};
};
// The sizes every bag of a gather shares: the cases' grid, n instance rows a bag, S slices a slab.
struct BagGatherGeometry {
  int64_t depth = 0, height = 0, width = 0;
  int64_t instances_per_bag = 0, slab_depth = 0;
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
// xs[N, D, folded_h, folded_w, folded_c] of space_to_depth; throws ShapeError (naming `op`) when x is not
// 5-D or the geometry cannot hold x's blocks (block sizes < 1, padding < 0, folded_c < block_h block_w C).
Shape space_to_depth_shape(const char* op, const Shape& x, const SpaceToDepthGeometry& g);
// The fold of a convolution of x[N, D, H, W, C] with w[K, T, R, S, C]: s_h x s_w blocks of x become
// `folded_c` (>= s_h s_w C) channels, the R x S filter ceil(R / s_h) x ceil(S / s_w) taps over them (taps
// past R, S zero), stride (s, 1, 1), padding (p, 0, 0) (x's H / W padding is in its fold).
Conv3dFold conv3d_fold(const Shape& x, const Shape& w, const Conv3dGeometry& g, int64_t folded_c);

#include "tensor/op_declarations.inc"
}  // namespace ops
}  // namespace dsmil
