// The bad inputs of every op of tensor/op_declarations.inc, one table for both backends: each case calls one
// ops:: function on the given device with one input that breaks the op's contract, and names words its
// ShapeError must hold. tests/tensor/test_op_contracts.cpp runs it on the CPU; tests/gpu/test_gpu_op_contracts.cpp
// runs it on CUDA and requires the CPU's words.
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "tensor/ops.h"

namespace dsmil::test {

struct OpContractCase {
  std::string op;  // the ops:: function, as op_declarations.inc names it
  std::function<void()> call;
  std::string fragment;  // part of the refusal's message
};

// Tensors are made on the CPU and moved to `device`.
inline std::vector<OpContractCase> op_contract_cases(Device device) {
  const auto f32 = [device](const Shape& shape) { return Tensor::zeros(shape).to(device); };
  const auto i32 = [device](const Shape& shape) {
    return Tensor::from_ints(shape, std::vector<int32_t>(shape_numel(shape), 0)).to(device);
  };
  const auto u8 = [device](const Shape& shape) { return Tensor::zeros(shape, DType::U8).to(device); };
  const auto ones = [device](const Shape& shape) { return Tensor::full(shape, 1.0f).to(device); };
  const Conv3dGeometry conv{{3, 3, 3}, {1, 1, 1}, {1, 1, 1}};
  const MathMode mode;
  const Pool3dGeometry pool{{2, 2, 2}, {2, 2, 2}, {0, 0, 0}};
  const SpaceToDepthGeometry fold{2, 2, 0, 0, 2, 2, 8};
  const BagGatherGeometry grid{8, 4, 4, 2, 3};
  const char* float_words = "must be f32, or bf16 on CUDA";
  // Batch norm over x[2, 3] with per-channel tensors of 3 values.
  const auto bn_train = [=](const Tensor& x, const Tensor& gamma, float momentum, const Tensor& residual,
                            const Tensor& factor) {
    Tensor mean = f32({3}), var = ones({3});
    ops::batchnorm_relu_forward_train(x, gamma, f32({3}), mean, var, momentum, 1e-5f, residual, factor);
  };
  // multi_tensor_adamw on one F32 [3] parameter, clipping; `constants`: the step's constants on the device.
  const auto adamw_list = [=](const Shape& grad, const Shape& norm_shape, int64_t step,
                              const Tensor& constants = Tensor()) {
    Tensor param = f32({3}), m = f32({3}), v = f32({3}), norm = f32(norm_shape);
    AdamWTensors list{{&param}, {&m}, {&v}, {true}, nullptr};
    ops::multi_tensor_adamw(list, {f32(grad)}, AdamWHyper{.step = step}, 1.0f, norm, constants);
  };
  std::vector<OpContractCase> cases;
  const auto refuse = [&cases](const char* op, const char* fragment, std::function<void()> call) {
    cases.push_back({op, std::move(call), fragment});
  };
  refuse("add", "shapes differ", [=] { ops::add(f32({2, 3}), f32({3, 2})); });
  refuse("mul", float_words, [=] { ops::mul(i32({2, 3}), i32({2, 3})); });
  refuse("mul", "b must be f32", [=] { ops::mul(f32({2, 3}), i32({2, 3})); });
  refuse("scale", float_words, [=] { ops::scale(i32({4}), 2.0f); });
  refuse("axpy_", "shapes differ", [=] {
    Tensor y = f32({2, 3});
    ops::axpy_(y, 1.0f, f32({3, 2}));
  });
  refuse("axpy_", "y must be f32", [=] {
    Tensor y = i32({4});
    ops::axpy_(y, 1.0f, i32({4}));
  });
  refuse("scale_", "x must be f32", [=] {
    Tensor x = i32({4});
    ops::scale_(x, 2.0f);
  });
  refuse("relu", float_words, [=] { ops::relu(i32({4})); });
  refuse("relu_backward", "y must be f32", [=] { ops::relu_backward(f32({2, 3}), i32({2, 3})); });
  refuse("tanh", float_words, [=] { ops::tanh(i32({4})); });
  refuse("tanh_backward", "shapes differ", [=] { ops::tanh_backward(f32({2, 3}), f32({2, 4})); });
  refuse("sigmoid", float_words, [=] { ops::sigmoid(i32({4})); });
  refuse("sigmoid_backward", float_words, [=] { ops::sigmoid_backward(i32({4}), i32({4})); });
  refuse("sum_squares", float_words, [=] { ops::sum_squares(i32({4})); });
  refuse("all_finite", float_words, [=] { ops::all_finite(i32({4})); });
  refuse("all_finite", "tensor argument 1 is undefined", [=] { ops::all_finite(Tensor()); });
  refuse("matmul", "inner sizes differ", [=] { ops::matmul(f32({2, 3}), f32({2, 3}), false, false, mode); });
  refuse("matmul", "a must have 2 dimensions", [=] { ops::matmul(f32({2, 3, 1}), f32({3, 2}), false, false, mode); });
  refuse("matmul", float_words, [=] { ops::matmul(i32({2, 3}), i32({3, 2}), false, false, mode); });
  refuse("add_bias", "bias must hold 3 values", [=] { ops::add_bias(f32({2, 3}), f32({4})); });
  refuse("add_bias", "bias must be f32", [=] { ops::add_bias(f32({2, 3}), i32({3})); });
  refuse("bias_backward", "dy must have 2 dimensions", [=] { ops::bias_backward(f32({2, 3, 1})); });
  refuse("conv3d_forward", "x must have 5 dimensions", [=] {
    ops::conv3d_forward(f32({1, 4, 4, 4}), f32({2, 3, 3, 3, 4}), conv, mode);
  });
  refuse("conv3d_forward", "do not fit", [=] {
    ops::conv3d_forward(f32({1, 4, 4, 4, 4}), f32({2, 3, 3, 3, 5}), conv, mode);
  });
  refuse("conv3d_forward", "stride (1,0,1)", [=] {
    ops::conv3d_forward(f32({1, 4, 4, 4, 4}), f32({2, 3, 3, 3, 4}), {{3, 3, 3}, {1, 0, 1}, {1, 1, 1}}, mode);
  });
  refuse("conv3d_forward", float_words, [=] {
    ops::conv3d_forward(i32({1, 4, 4, 4, 4}), i32({2, 3, 3, 3, 4}), conv, mode);
  });
  refuse("conv3d_backward_data", "is not the forward output [1,4,4,4,2]", [=] {
    ops::conv3d_backward_data(f32({1, 4, 4, 4, 3}), f32({2, 3, 3, 3, 4}), {1, 4, 4, 4, 4}, conv, mode);
  });
  refuse("conv3d_backward_filter", "dy must be f32", [=] {
    ops::conv3d_backward_filter(f32({1, 4, 4, 4, 4}), i32({1, 4, 4, 4, 2}), {2, 3, 3, 3, 4}, conv, mode);
  });
  refuse("space_to_depth", "does not fold", [=] { ops::space_to_depth(f32({1, 1, 4, 4, 2}), {0, 2, 0, 0, 2, 2, 8}); });
  refuse("space_to_depth", "x must be NDHWC", [=] { ops::space_to_depth(f32({1, 4, 4, 2}), fold); });
  refuse("depth_to_space", "xs must have shape [1,1,2,2,8]", [=] {
    ops::depth_to_space(f32({1, 1, 2, 2, 9}), fold, {1, 1, 4, 4, 2});
  });
  refuse("batchnorm_forward_train", "momentum must be in [0, 1], got 1.5", [=] {
    Tensor mean = f32({3}), var = ones({3});
    ops::batchnorm_forward_train(f32({2, 3}), f32({3}), f32({3}), mean, var, 1.5f, 1e-5f);
  });
  refuse("batchnorm_forward_train", "gamma must hold 3 values", [=] {
    Tensor mean = f32({3}), var = ones({3});
    ops::batchnorm_forward_train(f32({2, 3}), f32({4}), f32({3}), mean, var, 0.1f, 1e-5f);
  });
  refuse("batchnorm_statistics", "needs at least 2 values per channel", [=] {
    Tensor mean = f32({3}), var = ones({3});
    ops::batchnorm_statistics(f32({1, 3}), mean, var, 0.1f, 1e-5f);
  });
  refuse("batchnorm_statistics", "running_mean must be f32", [=] {
    Tensor mean = i32({3}), var = ones({3});
    ops::batchnorm_statistics(f32({2, 3}), mean, var, 0.1f, 1e-5f);
  });
  refuse("batchnorm_forward_eval", "eps must be >= 0", [=] {
    ops::batchnorm_forward_eval(f32({2, 3}), f32({3}), f32({3}), f32({3}), ones({3}), -1.0f);
  });
  refuse("batchnorm_forward_eval", "x must have a batch and a channel axis",
         [=] { ops::batchnorm_forward_eval(f32({3}), f32({3}), f32({3}), f32({3}), ones({3}), 1e-5f); });
  refuse("batchnorm_backward", "shapes differ", [=] {
    ops::batchnorm_backward(f32({2, 4}), f32({2, 3}), f32({3}), f32({3}), ones({3}));
  });
  refuse("batchnorm_relu_forward_train", "shapes differ", [=] {
    bn_train(f32({2, 3}), f32({3}), 0.1f, f32({3, 3}), Tensor());
  });
  refuse("batchnorm_relu_forward_train", "momentum must be in [0, 1], got nan", [=] {
    bn_train(f32({2, 3}), f32({3}), NAN, Tensor(), Tensor());
  });
  refuse("batchnorm_relu_forward_eval", "sample_factor must hold 2 values", [=] {
    ops::batchnorm_relu_forward_eval(f32({2, 3}), f32({3}), f32({3}), f32({3}), ones({3}), 1e-5f, Tensor(), f32({3}));
  });
  refuse("batchnorm_relu_backward", "y must be f32", [=] {
    ops::batchnorm_relu_backward(f32({2, 3}), i32({2, 3}), f32({2, 3}), f32({3}), Tensor(), f32({3}), ones({3}),
                                 Tensor(), false);
  });
  refuse("batchnorm_relu_backward", "y is undefined but the residual's gradient is requested", [=] {
    ops::batchnorm_relu_backward(f32({2, 3}), Tensor(), f32({2, 3}), f32({3}), f32({3}), f32({3}), ones({3}), Tensor(),
                                 true);
  });
  refuse("batchnorm_relu_backward", "y and beta are both undefined", [=] {
    ops::batchnorm_relu_backward(f32({2, 3}), Tensor(), f32({2, 3}), f32({3}), Tensor(), f32({3}), ones({3}), Tensor(),
                                 false);
  });
  refuse("batchnorm_relu_backward", "beta must hold 3 values", [=] {
    ops::batchnorm_relu_backward(f32({2, 3}), Tensor(), f32({2, 3}), f32({3}), f32({4}), f32({3}), ones({3}), Tensor(),
                                 false);
  });
  refuse("batchnorm_relu_apply", float_words, [=] {
    ops::batchnorm_relu_apply(i32({2, 3}), f32({3}), f32({3}), f32({3}), ones({3}));
  });
  refuse("batchnorm_relu_apply", "x must have a batch and a channel axis",
         [=] { ops::batchnorm_relu_apply(f32({3}), f32({3}), f32({3}), f32({3}), ones({3})); });
  refuse("batchnorm_relu_apply", "gamma must hold 3 values", [=] {
    ops::batchnorm_relu_apply(f32({2, 3}), f32({4}), f32({3}), f32({3}), ones({3}));
  });
  refuse("batchnorm_relu_apply", "save_invstd must be f32", [=] {
    ops::batchnorm_relu_apply(f32({2, 3}), f32({3}), f32({3}), f32({3}), i32({3}));
  });
  refuse("maxpool3d_forward", "input must be NDHWC", [=] { ops::maxpool3d_forward(f32({1, 4, 4, 4}), pool); });
  refuse("maxpool3d_forward", "stride (2,0,2)", [=] {
    ops::maxpool3d_forward(f32({1, 4, 4, 4, 2}), {{2, 2, 2}, {2, 0, 2}, {0, 0, 0}});
  });
  refuse("maxpool3d_forward", "more than 256 positions", [=] {
    ops::maxpool3d_forward(f32({1, 8, 8, 8, 2}), {{7, 7, 7}, {1, 1, 1}, {0, 0, 0}});
  });
  refuse("maxpool3d_backward", "argmax must be u8", [=] {
    ops::maxpool3d_backward(f32({1, 2, 2, 2, 2}), i32({1, 2, 2, 2, 2}), {1, 4, 4, 4, 2}, pool);
  });
  refuse("maxpool3d_backward", "dy must have shape [1,2,2,2,2]", [=] {
    ops::maxpool3d_backward(f32({1, 2, 2, 3, 2}), u8({1, 2, 2, 3, 2}), {1, 4, 4, 4, 2}, pool);
  });
  refuse("global_avg_pool", "x must have 5 dimensions", [=] { ops::global_avg_pool(f32({1, 4, 4, 2})); });
  refuse("global_avg_pool_backward", "dx dtype must be f32, or bf16 on CUDA, got i32", [=] {
    ops::global_avg_pool_backward(f32({1, 2}), {1, 4, 4, 4, 2}, DType::I32);
  });
  refuse("global_avg_pool_backward", "dy must have shape [1,2]", [=] {
    ops::global_avg_pool_backward(f32({1, 3}), {1, 4, 4, 4, 2}, DType::F32);
  });
  refuse("dropout", "drop probability 1.5 outside [0, 1)", [=] { ops::dropout(f32({4}), 1.5f, 1, 0); });
  refuse("dropout", "drop probability nan outside [0, 1)", [=] { ops::dropout(f32({4}), NAN, 1, 0); });
  refuse("drop_path", "drop probability 1 outside [0, 1)", [=] { ops::drop_path(f32({2, 3}), 1.0f, 1, 0); });
  refuse("masked_softmax", "temperature must be > 0, got 0", [=] {
    ops::masked_softmax(f32({2, 3}), i32({2, 3}), 0.0f);
  });
  refuse("masked_softmax", "mask must be i32", [=] { ops::masked_softmax(f32({2, 3}), f32({2, 3}), 1.0f); });
  refuse("masked_softmax_backward", "temperature must be > 0, got nan", [=] {
    ops::masked_softmax_backward(f32({2, 3}), f32({2, 3}), NAN);
  });
  refuse("masked_softmax_backward", "shapes differ", [=] {
    ops::masked_softmax_backward(f32({2, 3}), f32({3, 2}), 1.0f);
  });
  refuse("topk_indices", "k must be >= 1, got 0", [=] { ops::topk_indices(f32({2, 3}), i32({2, 3}), 0); });
  refuse("topk_indices", "mask must have shape [2,3]", [=] { ops::topk_indices(f32({2, 3}), i32({2, 4}), 1); });
  refuse("gather_mean", "idx must be i32", [=] { ops::gather_mean(f32({2, 3, 4}), f32({2, 1})); });
  refuse("gather_mean", "different bag counts", [=] { ops::gather_mean(f32({2, 3, 4}), i32({3, 1})); });
  refuse("gather_mean_backward", "n must be >= 0, got -1", [=] {
    ops::gather_mean_backward(f32({2, 4}), i32({2, 1}), -1);
  });
  refuse("bag_weighted_sum", "v must have shape [2,3,5]", [=] { ops::bag_weighted_sum(f32({2, 3}), f32({2, 4, 5})); });
  refuse("bag_dot", "m must have shape [2,4]", [=] { ops::bag_dot(f32({2, 3, 4}), f32({2, 5})); });
  refuse("bag_outer", "different bag counts", [=] { ops::bag_outer(f32({2, 3}), f32({3, 4})); });
  refuse("gather_bags", "from a grid of 0x4x4", [=] { ops::gather_bags(device, {}, {}, {0, 4, 4, 2, 3}, DType::F32); });
  refuse("gather_bags", "output dtype i32", [=] { ops::gather_bags(device, {}, {}, grid, DType::I32); });
  refuse("focal_loss", "gamma -1 must be >= 0", [=] {
    ops::focal_loss(f32({2, 2}), i32({2}), ones({2}), 0.1f, -1.0f);
  });
  refuse("focal_loss", "target must be i32", [=] { ops::focal_loss(f32({2, 2}), f32({2}), ones({2}), 0.1f, 2.0f); });
  refuse("adamw_step", "step must be >= 1 (1-based), got 0", [=] {
    Tensor param = f32({3}), m = f32({3}), v = f32({3});
    ops::adamw_step(param, f32({3}), m, v, AdamWHyper{.step = 0});
  });
  refuse("adamw_step", "shapes differ", [=] {
    Tensor param = f32({3}), m = f32({4}), v = f32({3});
    ops::adamw_step(param, f32({3}), m, v, AdamWHyper{});
  });
  refuse("ema_update", "value must be f32", [=] {
    Tensor ema = f32({3});
    ops::ema_update(ema, i32({3}), 0.9f);
  });
  refuse("multi_tensor_adamw", "shapes differ", [=] { adamw_list({4}, {1}, 1); });
  refuse("multi_tensor_adamw", "grad_norm must hold 1 value", [=] { adamw_list({3}, {2}, 1); });
  refuse("multi_tensor_adamw", "step must be >= 1", [=] { adamw_list({3}, {1}, 0); });
  refuse("multi_tensor_adamw", "constants_on_device must be F32 [7]", [=] { adamw_list({3}, {1}, 1, f32({6})); });
  refuse("multi_tensor_ema", "shapes differ", [=] {
    Tensor ema = f32({3});
    const Tensor value = f32({2});
    EmaTensors list{{&ema}, {&value}, nullptr};
    ops::multi_tensor_ema(list, 0.9f);
  });
  refuse("multi_tensor_ema", "decay_on_device must be F32 [1]", [=] {
    Tensor ema = f32({3});
    const Tensor value = f32({3});
    EmaTensors list{{&ema}, {&value}, nullptr};
    ops::multi_tensor_ema(list, 0.9f, f32({2}));
  });
  return cases;
}

}  // namespace dsmil::test
