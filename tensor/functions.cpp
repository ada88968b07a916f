// Differentiable functions: forward through tensor/ops.h, backward closures beside them. A closure
// keeps only what its backward needs (values of inputs or outputs, saved statistics, indices).
#include "tensor/functions.h"

namespace dsmil::fn {

Variable add(const Variable& a, const Variable& b) {
  return Variable::from_op(ops::add(a.value(), b.value()), {a, b}, [a, b](const Tensor& g) {
    a.accumulate_grad(g);
    b.accumulate_grad(g);
  });
}

Variable mul(const Variable& a, const Variable& b) {
  return Variable::from_op(ops::mul(a.value(), b.value()), {a, b}, [a, b](const Tensor& g) {
    if (a.requires_grad()) a.accumulate_grad(ops::mul(g, b.value()));
    if (b.requires_grad()) b.accumulate_grad(ops::mul(g, a.value()));
  });
}

Variable scale(const Variable& x, float s) {
  return Variable::from_op(ops::scale(x.value(), s), {x},
                           [x, s](const Tensor& g) { x.accumulate_grad(ops::scale(g, s)); });
}

namespace {
// y = f(x) whose derivative is a function of y: backward(dy, y).
template <typename Forward, typename Backward>
Variable pointwise(const Variable& x, Forward forward, Backward backward) {
  Tensor y = forward(x.value());
  return Variable::from_op(y, {x}, [x, y, backward](const Tensor& g) { x.accumulate_grad(backward(g, y)); });
}
}  // namespace

Variable relu(const Variable& x) { return pointwise(x, ops::relu, ops::relu_backward); }
Variable tanh(const Variable& x) { return pointwise(x, ops::tanh, ops::tanh_backward); }
Variable sigmoid(const Variable& x) { return pointwise(x, ops::sigmoid, ops::sigmoid_backward); }

Variable to_dtype(const Variable& x, DType dtype) {
  if (x.value().dtype() == dtype) return x;
  const DType from = x.value().dtype();
  return Variable::from_op(x.value().to_dtype(dtype), {x},
                           [x, from](const Tensor& g) { x.accumulate_grad(g.to_dtype(from)); });
}

Variable view(const Variable& x, const Shape& shape) {
  const Shape from = x.shape();
  return Variable::from_op(x.value().view(shape), {x}, [x, from](const Tensor& g) { x.accumulate_grad(g.view(from)); });
}

Variable linear(const Variable& x, const Variable& w, const Variable& bias, const MathMode& mode) {
  Tensor y = ops::matmul(x.value(), w.value(), false, true, mode);
  if (bias.defined()) y = ops::add_bias(y, bias.value());
  return Variable::from_op(y, {x, w, bias}, [x, w, bias, mode](const Tensor& g) {
    if (x.requires_grad()) x.accumulate_grad(ops::matmul(g, w.value(), false, false, mode));
    if (w.requires_grad()) w.accumulate_grad(ops::matmul(g, x.value(), true, false, mode));
    if (bias.defined() && bias.requires_grad()) bias.accumulate_grad(ops::bias_backward(g));
  });
}

Variable conv3d(const Variable& x, const Variable& w, const Conv3dGeometry& g, const MathMode& mode) {
  const Tensor y = ops::conv3d_forward(x.value(), w.value(), g, mode);
  return Variable::from_op(y, {x, w}, [x, w, g, mode](const Tensor& dy) {
    if (x.requires_grad()) x.accumulate_grad(ops::conv3d_backward_data(dy, w.value(), x.shape(), g, mode));
    if (w.requires_grad()) w.accumulate_grad(ops::conv3d_backward_filter(x.value(), dy, w.shape(), g, mode));
  });
}

Variable batchnorm(const Variable& x, const Variable& gamma, const Variable& beta, Tensor& running_mean,
                   Tensor& running_var, bool training, float momentum, float eps) {
  if (!training)
    return Variable::from_op(
        ops::batchnorm_forward_eval(x.value(), gamma.value(), beta.value(), running_mean, running_var, eps),
        {x, gamma, beta},
        [](const Tensor&) { throw Error("batchnorm: backward through evaluation mode is not supported"); });
  BatchNormTrainOut out =
      ops::batchnorm_forward_train(x.value(), gamma.value(), beta.value(), running_mean, running_var, momentum, eps);
  Tensor mean = out.save_mean, invstd = out.save_invstd;
  return Variable::from_op(out.y, {x, gamma, beta}, [x, gamma, beta, mean, invstd](const Tensor& dy) {
    BatchNormGrads grads = ops::batchnorm_backward(dy, x.value(), gamma.value(), mean, invstd);
    x.accumulate_grad(grads.dx);
    gamma.accumulate_grad(grads.dgamma);
    beta.accumulate_grad(grads.dbeta);
  });
}

Variable batchnorm_relu(const Variable& x, const Variable& gamma, const Variable& beta, Tensor& running_mean,
                        Tensor& running_var, bool training, float momentum, float eps, const Variable& residual,
                        const Tensor& sample_factor) {
  const Tensor residual_value = residual.defined() ? residual.value() : Tensor();
  if (!training)
    return Variable::from_op(ops::batchnorm_relu_forward_eval(x.value(), gamma.value(), beta.value(), running_mean,
                                                              running_var, eps, residual_value, sample_factor),
                             {x, gamma, beta, residual}, [](const Tensor&) {
                               throw Error("batchnorm_relu: backward through evaluation mode is not supported");
                             });
  BatchNormTrainOut out = ops::batchnorm_relu_forward_train(x.value(), gamma.value(), beta.value(), running_mean,
                                                            running_var, momentum, eps, residual_value, sample_factor);
  Tensor y = out.y, mean = out.save_mean, invstd = out.save_invstd;
  auto backward = [x, gamma, beta, residual, y, mean, invstd, sample_factor](const Tensor& dy) {
    BatchNormReluGrads grads = ops::batchnorm_relu_backward(dy, y, x.value(), gamma.value(), beta.value(), mean, invstd,
                                                            sample_factor, residual.requires_grad());
    x.accumulate_grad(grads.dx);
    gamma.accumulate_grad(grads.dgamma);
    beta.accumulate_grad(grads.dbeta);
    if (grads.d_residual.defined()) residual.accumulate_grad(grads.d_residual);
  };
  return Variable::from_op(y, {x, gamma, beta, residual}, backward);
}

Variable maxpool3d(const Variable& x, const Pool3dGeometry& g) {
  MaxPoolOut out = ops::maxpool3d_forward(x.value(), g);
  Tensor argmax = out.argmax;
  return Variable::from_op(out.y, {x}, [x, argmax, g](const Tensor& dy) {
    x.accumulate_grad(ops::maxpool3d_backward(dy, argmax, x.shape(), g));
  });
}

Variable global_avg_pool(const Variable& x) {
  return Variable::from_op(ops::global_avg_pool(x.value()), {x}, [x](const Tensor& dy) {
    x.accumulate_grad(ops::global_avg_pool_backward(dy, x.shape(), x.value().dtype()));
  });
}

Variable dropout(const Variable& x, float p, uint64_t seed, uint64_t offset) {
  if (p == 0.0f) return x;
  return Variable::from_op(ops::dropout(x.value(), p, seed, offset), {x}, [x, p, seed, offset](const Tensor& dy) {
    x.accumulate_grad(ops::dropout(dy, p, seed, offset));
  });
}

Variable drop_path(const Variable& x, float p, uint64_t seed, uint64_t offset) {
  if (p == 0.0f) return x;
  return Variable::from_op(ops::drop_path(x.value(), p, seed, offset), {x}, [x, p, seed, offset](const Tensor& dy) {
    x.accumulate_grad(ops::drop_path(dy, p, seed, offset));
  });
}

Variable masked_softmax(const Variable& e, const Tensor& mask, float temperature, Tensor* stats) {
  MaskedSoftmaxOut out = ops::masked_softmax(e.value(), mask, temperature);
  if (stats) *stats = out.stats;
  Tensor a = out.a;
  return Variable::from_op(a, {e}, [e, a, temperature](const Tensor& da) {
    e.accumulate_grad(ops::masked_softmax_backward(da, a, temperature));
  });
}

Variable gather_mean(const Variable& x, const Tensor& idx) {
  return Variable::from_op(ops::gather_mean(x.value(), idx), {x}, [x, idx](const Tensor& dy) {
    x.accumulate_grad(ops::gather_mean_backward(dy, idx, x.shape()[1]));
  });
}

Variable bag_weighted_sum(const Variable& a, const Variable& v) {
  return Variable::from_op(ops::bag_weighted_sum(a.value(), v.value()), {a, v}, [a, v](const Tensor& dy) {
    if (a.requires_grad()) a.accumulate_grad(ops::bag_dot(v.value(), dy));
    if (v.requires_grad()) v.accumulate_grad(ops::bag_outer(a.value(), dy));
  });
}

Variable bag_dot(const Variable& q, const Variable& m) {
  return Variable::from_op(ops::bag_dot(q.value(), m.value()), {q, m}, [q, m](const Tensor& dy) {
    if (q.requires_grad()) q.accumulate_grad(ops::bag_outer(dy, m.value()));
    if (m.requires_grad()) m.accumulate_grad(ops::bag_weighted_sum(dy, q.value()));
  });
}

Variable focal_loss(const Variable& logits, const Tensor& target, const Tensor& weight, float eps, float gamma,
                    Tensor* per_sample) {
  FocalLossOut out = ops::focal_loss(logits.value(), target, weight, eps, gamma);
  if (per_sample) *per_sample = out.per_sample;
  Tensor grad = out.grad;
  return Variable::from_op(out.loss, {logits}, [logits, grad](const Tensor& g) {
    // g is the [1] gradient of the final objective with respect to this loss. Reading it on the host would
    // make the host wait for the whole forward pass at the start of the backward pass; g times grad is
    // formed on g's device instead, as the outer product of g (one bag, one instance) with grad as one row.
    logits.accumulate_grad(ops::bag_outer(g.view({1, 1}), grad.view({1, grad.numel()})).view(grad.shape()));
  });
}

}  // namespace dsmil::fn
