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
  const auto ones = [device](const Shape& shape) { return Tensor::full(shape, 1.0f).to(device); };
  const Conv3dGeometry conv{{3, 3, 3}, {1, 1, 1}, {1, 1, 1}};
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
  return {
      {"add",
       [=] {
         ops::add(f32({2, 3}), f32({3, 2}));
       },
       "shapes differ"},
      {"mul",
       [=] {
         ops::mul(i32({2, 3}), i32({2, 3}));
       },
       float_words},
      {"mul",
       [=] {
         ops::mul(f32({2, 3}), i32({2, 3}));
       },
       "b must be f32"},
      {"scale", [=] { ops::scale(i32({4}), 2.0f); }, float_words},
      {"axpy_",
       [=] {
         Tensor y = f32({2, 3});
         ops::axpy_(y, 1.0f, f32({3, 2}));
       },
       "shapes differ"},
      {"axpy_",
       [=] {
         Tensor y = i32({4});
         ops::axpy_(y, 1.0f, i32({4}));
       },
       "y must be f32"},
      {"scale_",
       [=] {
         Tensor x = i32({4});
         ops::scale_(x, 2.0f);
       },
       "x must be f32"},
      {"relu", [=] { ops::relu(i32({4})); }, float_words},
      {"relu_backward",
       [=] {
         ops::relu_backward(f32({2, 3}), i32({2, 3}));
       },
       "y must be f32"},
      {"tanh", [=] { ops::tanh(i32({4})); }, float_words},
      {"tanh_backward",
       [=] {
         ops::tanh_backward(f32({2, 3}), f32({2, 4}));
       },
       "shapes differ"},
      {"sigmoid", [=] { ops::sigmoid(i32({4})); }, float_words},
      {"sigmoid_backward", [=] { ops::sigmoid_backward(i32({4}), i32({4})); }, float_words},
      {"sum_squares", [=] { ops::sum_squares(i32({4})); }, float_words},
      {"all_finite", [=] { ops::all_finite(i32({4})); }, float_words},
      {"all_finite", [=] { ops::all_finite(Tensor()); }, "tensor argument 1 is undefined"},
      {"matmul",
       [=] {
         ops::matmul(f32({2, 3}), f32({2, 3}), false, false);
       },
       "inner sizes differ"},
      {"matmul",
       [=] {
         ops::matmul(f32({2, 3, 1}), f32({3, 2}), false, false);
       },
       "a must have 2 dimensions"},
      {"matmul",
       [=] {
         ops::matmul(i32({2, 3}), i32({3, 2}), false, false);
       },
       float_words},
      {"add_bias",
       [=] {
         ops::add_bias(f32({2, 3}), f32({4}));
       },
       "bias must hold 3 values"},
      {"add_bias",
       [=] {
         ops::add_bias(f32({2, 3}), i32({3}));
       },
       "bias must be f32"},
      {"bias_backward",
       [=] {
         ops::bias_backward(f32({2, 3, 1}));
       },
       "dy must have 2 dimensions"},
      {"conv3d_forward",
       [=] {
         ops::conv3d_forward(f32({1, 4, 4, 4}), f32({2, 3, 3, 3, 4}), conv);
       },
       "x must have 5 dimensions"},
      {"conv3d_forward",
       [=] {
         ops::conv3d_forward(f32({1, 4, 4, 4, 4}), f32({2, 3, 3, 3, 5}), conv);
       },
       "do not fit"},
      {"conv3d_forward",
       [=] {
         ops::conv3d_forward(f32({1, 4, 4, 4, 4}), f32({2, 3, 3, 3, 4}), {{3, 3, 3}, {1, 0, 1}, {1, 1, 1}});
       },
       "stride (1,0,1)"},
      {"conv3d_forward",
       [=] {
         ops::conv3d_forward(i32({1, 4, 4, 4, 4}), i32({2, 3, 3, 3, 4}), conv);
       },
       float_words},
      {"conv3d_backward_data",
       [=] {
         ops::conv3d_backward_data(f32({1, 4, 4, 4, 3}), f32({2, 3, 3, 3, 4}), {1, 4, 4, 4, 4}, conv);
       },
       "is not the forward output [1,4,4,4,2]"},
      {"conv3d_backward_filter",
       [=] {
         ops::conv3d_backward_filter(f32({1, 4, 4, 4, 4}), i32({1, 4, 4, 4, 2}), {2, 3, 3, 3, 4}, conv);
       },
       "dy must be f32"},
      {"space_to_depth",
       [=] {
         ops::space_to_depth(f32({1, 1, 4, 4, 2}), {0, 2, 0, 0, 2, 2, 8});
       },
       "does not fold"},
      {"space_to_depth",
       [=] {
         ops::space_to_depth(f32({1, 4, 4, 2}), fold);
       },
       "x must be NDHWC"},
      {"depth_to_space",
       [=] {
         ops::depth_to_space(f32({1, 1, 2, 2, 9}), fold, {1, 1, 4, 4, 2});
       },
       "xs must have shape [1,1,2,2,8]"},
      {"batchnorm_forward_train",
       [=] {
         Tensor mean = f32({3}), var = ones({3});
         ops::batchnorm_forward_train(f32({2, 3}), f32({3}), f32({3}), mean, var, 1.5f, 1e-5f);
       },
       "momentum must be in [0, 1], got 1.5"},
      {"batchnorm_forward_train",
       [=] {
         Tensor mean = f32({3}), var = ones({3});
         ops::batchnorm_forward_train(f32({2, 3}), f32({4}), f32({3}), mean, var, 0.1f, 1e-5f);
       },
       "gamma must hold 3 values"},
      {"batchnorm_statistics",
       [=] {
         Tensor mean = f32({3}), var = ones({3});
         ops::batchnorm_statistics(f32({1, 3}), mean, var, 0.1f, 1e-5f);
       },
       "needs at least 2 values per channel"},
      {"batchnorm_statistics",
       [=] {
         Tensor mean = i32({3}), var = ones({3});
         ops::batchnorm_statistics(f32({2, 3}), mean, var, 0.1f, 1e-5f);
       },
       "running_mean must be f32"},
      {"batchnorm_forward_eval",
       [=] {
         ops::batchnorm_forward_eval(f32({2, 3}), f32({3}), f32({3}), f32({3}), ones({3}), -1.0f);
       },
       "eps must be >= 0"},
      {"batchnorm_forward_eval",
       [=] { ops::batchnorm_forward_eval(f32({3}), f32({3}), f32({3}), f32({3}), ones({3}), 1e-5f); },
       "x must have a batch and a channel axis"},
      {"batchnorm_backward",
       [=] {
         ops::batchnorm_backward(f32({2, 4}), f32({2, 3}), f32({3}), f32({3}), ones({3}));
       },
       "shapes differ"},
      {"batchnorm_relu_forward_train",
       [=] {
         bn_train(f32({2, 3}), f32({3}), 0.1f, f32({3, 3}), Tensor());
       },
       "shapes differ"},
      {"batchnorm_relu_forward_train",
       [=] {
         bn_train(f32({2, 3}), f32({3}), NAN, Tensor(), Tensor());
       },
       "momentum must be in [0, 1], got nan"},
      {"batchnorm_relu_forward_eval",
       [=] {
         ops::batchnorm_relu_forward_eval(f32({2, 3}), f32({3}), f32({3}), f32({3}), ones({3}), 1e-5f, Tensor(),
                                          f32({3}));
       },
       "sample_factor must hold 2 values"},
      {"batchnorm_relu_backward",
       [=] {
         ops::batchnorm_relu_backward(f32({2, 3}), i32({2, 3}), f32({2, 3}), f32({3}), f32({3}), ones({3}), Tensor(),
                                      false);
       },
       "y must be f32"},
      {"maxpool3d_forward",
       [=] {
         ops::maxpool3d_forward(f32({1, 4, 4, 4}), pool);
       },
       "input must be NDHWC"},
      {"maxpool3d_forward",
       [=] {
         ops::maxpool3d_forward(f32({1, 4, 4, 4, 2}), {{2, 2, 2}, {2, 0, 2}, {0, 0, 0}});
       },
       "stride (2,0,2)"},
      {"maxpool3d_backward",
       [=] {
         ops::maxpool3d_backward(f32({1, 2, 2, 2, 2}), f32({1, 2, 2, 2, 2}), {1, 4, 4, 4, 2}, pool);
       },
       "argmax must be i32"},
      {"maxpool3d_backward",
       [=] {
         ops::maxpool3d_backward(f32({1, 2, 2, 3, 2}), i32({1, 2, 2, 3, 2}), {1, 4, 4, 4, 2}, pool);
       },
       "dy must have shape [1,2,2,2,2]"},
      {"global_avg_pool",
       [=] {
         ops::global_avg_pool(f32({1, 4, 4, 2}));
       },
       "x must have 5 dimensions"},
      {"global_avg_pool_backward",
       [=] {
         ops::global_avg_pool_backward(f32({1, 2}), {1, 4, 4, 4, 2}, DType::I32);
       },
       "dx dtype must be f32, or bf16 on CUDA, got i32"},
      {"global_avg_pool_backward",
       [=] {
         ops::global_avg_pool_backward(f32({1, 3}), {1, 4, 4, 4, 2}, DType::F32);
       },
       "dy must have shape [1,2]"},
      {"dropout", [=] { ops::dropout(f32({4}), 1.5f, 1, 0); }, "drop probability 1.5 outside [0, 1)"},
      {"dropout", [=] { ops::dropout(f32({4}), NAN, 1, 0); }, "drop probability nan outside [0, 1)"},
      {"drop_path",
       [=] {
         ops::drop_path(f32({2, 3}), 1.0f, 1, 0);
       },
       "drop probability 1 outside [0, 1)"},
      {"masked_softmax",
       [=] {
         ops::masked_softmax(f32({2, 3}), i32({2, 3}), 0.0f);
       },
       "temperature must be > 0, got 0"},
      {"masked_softmax",
       [=] {
         ops::masked_softmax(f32({2, 3}), f32({2, 3}), 1.0f);
       },
       "mask must be i32"},
      {"masked_softmax_backward",
       [=] {
         ops::masked_softmax_backward(f32({2, 3}), f32({2, 3}), NAN);
       },
       "temperature must be > 0, got nan"},
      {"masked_softmax_backward",
       [=] {
         ops::masked_softmax_backward(f32({2, 3}), f32({3, 2}), 1.0f);
       },
       "shapes differ"},
      {"topk_indices",
       [=] {
         ops::topk_indices(f32({2, 3}), i32({2, 3}), 0);
       },
       "k must be >= 1, got 0"},
      {"topk_indices",
       [=] {
         ops::topk_indices(f32({2, 3}), i32({2, 4}), 1);
       },
       "mask must have shape [2,3]"},
      {"gather_mean",
       [=] {
         ops::gather_mean(f32({2, 3, 4}), f32({2, 1}));
       },
       "idx must be i32"},
      {"gather_mean",
       [=] {
         ops::gather_mean(f32({2, 3, 4}), i32({3, 1}));
       },
       "different bag counts"},
      {"gather_mean_backward",
       [=] {
         ops::gather_mean_backward(f32({2, 4}), i32({2, 1}), -1);
       },
       "n must be >= 0, got -1"},
      {"bag_weighted_sum",
       [=] {
         ops::bag_weighted_sum(f32({2, 3}), f32({2, 4, 5}));
       },
       "v must have shape [2,3,5]"},
      {"bag_dot",
       [=] {
         ops::bag_dot(f32({2, 3, 4}), f32({2, 5}));
       },
       "m must have shape [2,4]"},
      {"bag_outer",
       [=] {
         ops::bag_outer(f32({2, 3}), f32({3, 4}));
       },
       "different bag counts"},
      {"gather_bags",
       [=] {
         ops::gather_bags(device, {}, {}, {0, 4, 4, 2, 3}, DType::F32);
       },
       "from a grid of 0x4x4"},
      {"gather_bags", [=] { ops::gather_bags(device, {}, {}, grid, DType::I32); }, "output dtype i32"},
      {"focal_loss",
       [=] {
         ops::focal_loss(f32({2, 2}), i32({2}), ones({2}), 0.1f, -1.0f);
       },
       "gamma -1 must be >= 0"},
      {"focal_loss",
       [=] {
         ops::focal_loss(f32({2, 2}), f32({2}), ones({2}), 0.1f, 2.0f);
       },
       "target must be i32"},
      {"adamw_step",
       [=] {
         Tensor param = f32({3}), m = f32({3}), v = f32({3});
         ops::adamw_step(param, f32({3}), m, v, AdamWHyper{.step = 0});
       },
       "step must be >= 1 (1-based), got 0"},
      {"adamw_step",
       [=] {
         Tensor param = f32({3}), m = f32({4}), v = f32({3});
         ops::adamw_step(param, f32({3}), m, v, AdamWHyper{});
       },
       "shapes differ"},
      {"ema_update",
       [=] {
         Tensor ema = f32({3});
         ops::ema_update(ema, i32({3}), 0.9f);
       },
       "value must be f32"},
      {"multi_tensor_adamw",
       [=] {
         Tensor param = f32({3}), m = f32({3}), v = f32({3}), norm = f32({1});
         AdamWTensors list{{&param}, {&m}, {&v}, {true}, nullptr};
         ops::multi_tensor_adamw(list, {f32({4})}, AdamWHyper{}, 1.0f, norm);
       },
       "shapes differ"},
      {"multi_tensor_adamw",
       [=] {
         Tensor param = f32({3}), m = f32({3}), v = f32({3}), norm = f32({2});
         AdamWTensors list{{&param}, {&m}, {&v}, {true}, nullptr};
         ops::multi_tensor_adamw(list, {f32({3})}, AdamWHyper{}, 1.0f, norm);
       },
       "grad_norm must hold 1 value"},
      {"multi_tensor_adamw",
       [=] {
         Tensor param = f32({3}), m = f32({3}), v = f32({3}), norm = f32({1});
         AdamWTensors list{{&param}, {&m}, {&v}, {true}, nullptr};
         ops::multi_tensor_adamw(list, {f32({3})}, AdamWHyper{.step = 0}, 1.0f, norm);
       },
       "step must be >= 1"},
      {"multi_tensor_ema",
       [=] {
         Tensor ema = f32({3});
         const Tensor value = f32({2});
         EmaTensors list{{&ema}, {&value}, nullptr};
         ops::multi_tensor_ema(list, 0.9f);
       },
       "shapes differ"},
  };
}

}  // namespace dsmil::test
