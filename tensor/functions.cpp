// Differentiable functions: forward through tensor/ops.h, backward closures beside them. A closure
// keeps only what its backward reads (values of inputs or outputs, saved statistics, indices) and sends the
// inputs' gradients to their GradSinks, so a value that no backward reads is not kept alive by the graph.
// A value needed only for one input's gradient is kept only when that input requires one.
#include "tensor/functions.h"

namespace dsmil::fn {

namespace {
// The value of `value_of` when a backward reads it for the gradient of `gradient_of`, else nothing to keep.
Tensor value_for_gradient(const Variable& value_of, const Variable& gradient_of) {
  return gradient_of.requires_grad() ? value_of.value() : Tensor();
}
}  // namespace

Variable add(const Variable& a, const Variable& b) {
  return Variable::from_op(ops::add(a.value(), b.value()), {a, b},
                           [da = a.grad_sink(), db = b.grad_sink()](const Tensor& g) {
                             da.accumulate(g);
                             db.accumulate(g);
                           });
}

Variable mul(const Variable& a, const Variable& b) {
  const Tensor a_value = value_for_gradient(a, b), b_value = value_for_gradient(b, a);
  return Variable::from_op(ops::mul(a.value(), b.value()), {a, b},
                           [da = a.grad_sink(), db = b.grad_sink(), a_value, b_value](const Tensor& g) {
                             if (da.requires_grad()) da.accumulate(ops::mul(g, b_value));
                             if (db.requires_grad()) db.accumulate(ops::mul(g, a_value));
                           });
}

Variable scale(const Variable& x, float s) {
  return Variable::from_op(ops::scale(x.value(), s), {x},
                           [dx = x.grad_sink(), s](const Tensor& g) { dx.accumulate(ops::scale(g, s)); });
}

namespace {
// y = f(x) whose derivative is a function of y: backward(dy, y).
template <typename Forward, typename Backward>
Variable pointwise(const Variable& x, Forward forward, Backward backward) {
  Tensor y = forward(x.value());
  return Variable::from_op(y, {x},
                           [dx = x.grad_sink(), y, backward](const Tensor& g) { dx.accumulate(backward(g, y)); });
}
}  // namespace

Variable relu(const Variable& x) { return pointwise(x, ops::relu, ops::relu_backward); }
Variable tanh(const Variable& x) { return pointwise(x, ops::tanh, ops::tanh_backward); }
Variable sigmoid(const Variable& x) { return pointwise(x, ops::sigmoid, ops::sigmoid_backward); }

Variable to_dtype(const Variable& x, DType dtype) {
  if (x.value().dtype() == dtype) return x;
  const DType from = x.value().dtype();
  return Variable::from_op(x.value().to_dtype(dtype), {x},
                           [dx = x.grad_sink(), from](const Tensor& g) { dx.accumulate(g.to_dtype(from)); });
}

Variable view(const Variable& x, const Shape& shape) {
  const Shape from = x.shape();
  return Variable::from_op(x.value().view(shape), {x},
                           [dx = x.grad_sink(), from](const Tensor& g) { dx.accumulate(g.view(from)); });
}

Variable linear(const Variable& x, const Variable& w, const Variable& bias, const MathMode& mode) {
  Tensor y = ops::matmul(x.value(), w.value(), false, true, mode);
  if (bias.defined()) y = ops::add_bias(y, bias.value());
  const Tensor x_value = value_for_gradient(x, w), w_value = value_for_gradient(w, x);
  return Variable::from_op(
      y, {x, w, bias},
      [dx = x.grad_sink(), dw = w.grad_sink(), dbias = bias.grad_sink(), x_value, w_value, mode](const Tensor& g) {
        if (dx.requires_grad()) dx.accumulate(ops::matmul(g, w_value, false, false, mode));
        if (dw.requires_grad()) dw.accumulate(ops::matmul(g, x_value, true, false, mode));
        if (dbias.requires_grad()) dbias.accumulate(ops::bias_backward(g));
      });
}

Variable conv3d(const Variable& x, const Variable& w, const Conv3dGeometry& g, const MathMode& mode) {
  const Tensor y = ops::conv3d_forward(x.value(), w.value(), g, mode);
  // The input is read by the weight gradient alone: kept, or remade there when its op gave a recipe (a block's
  // first batch norm + ReLU output, remade from the convolution output that batch norm keeps anyway).
  const SavedValue x_saved = w.requires_grad() ? x.saved() : SavedValue();
  const Tensor w_value = value_for_gradient(w, x);
  return Variable::from_op(y, {x, w},
                           [dx = x.grad_sink(), dw = w.grad_sink(), x_saved, w_value, x_shape = x.shape(),
                            w_shape = w.shape(), g, mode](const Tensor& dy) {
                             if (dx.requires_grad())
                               dx.accumulate(ops::conv3d_backward_data(dy, w_value, x_shape, g, mode));
                             if (dw.requires_grad())
                               dw.accumulate(ops::conv3d_backward_filter(x_saved.get(), dy, w_shape, g, mode));
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
  return Variable::from_op(
      out.y, {x, gamma, beta},
      [dx = x.grad_sink(), dgamma = gamma.grad_sink(), dbeta = beta.grad_sink(), x_value = x.value(),
       gamma_value = gamma.value(), mean = out.save_mean, invstd = out.save_invstd](const Tensor& dy) {
        BatchNormGrads grads = ops::batchnorm_backward(dy, x_value, gamma_value, mean, invstd);
        dx.accumulate(grads.dx);
        dgamma.accumulate(grads.dgamma);
        dbeta.accumulate(grads.dbeta);
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
  // Without a residual the backward recomputes the ReLU mask from x, which it keeps anyway, and beta, so y is
  // kept only by the ops that read it (the stem's max pool does not: its backward reads its argmax).
  const bool keep_y = residual.defined();
  auto backward = [dx = x.grad_sink(), dgamma = gamma.grad_sink(), dbeta = beta.grad_sink(),
                   d_residual = residual.grad_sink(), x_value = x.value(), gamma_value = gamma.value(),
                   beta_value = keep_y ? Tensor() : beta.value(), y = keep_y ? out.y : Tensor(), mean = out.save_mean,
                   invstd = out.save_invstd, sample_factor](const Tensor& dy) {
    BatchNormReluGrads grads = ops::batchnorm_relu_backward(dy, y, x_value, gamma_value, beta_value, mean, invstd,
                                                            sample_factor, d_residual.requires_grad());
    dx.accumulate(grads.dx);
    dgamma.accumulate(grads.dgamma);
    dbeta.accumulate(grads.dbeta);
    if (grads.d_residual.defined()) d_residual.accumulate(grads.d_residual);
  };
  const Variable y = Variable::from_op(out.y, {x, gamma, beta, residual}, backward);
  // Without residual and factor, y is remade from what this op's backward keeps anyway (x, gamma, beta and the
  // statistics) by the forward's own arithmetic: a later op that reads y in its backward (the next convolution's
  // weight gradient) need not keep it.
  if (!residual.defined() && !sample_factor.defined())
    y.set_recompute([x_value = x.value(), gamma_value = gamma.value(), beta_value = beta.value(), mean = out.save_mean,
                     invstd = out.save_invstd] {
      return ops::batchnorm_relu_apply(x_value, gamma_value, beta_value, mean, invstd);
    });
  return y;
}

Variable maxpool3d(const Variable& x, const Pool3dGeometry& g) {
  MaxPoolOut out = ops::maxpool3d_forward(x.value(), g);
  return Variable::from_op(out.y, {x},
                           [dx = x.grad_sink(), argmax = out.argmax, x_shape = x.shape(), g](const Tensor& dy) {
                             dx.accumulate(ops::maxpool3d_backward(dy, argmax, x_shape, g));
                           });
}

Variable global_avg_pool(const Variable& x) {
  return Variable::from_op(ops::global_avg_pool(x.value()), {x},
                           [dx = x.grad_sink(), x_shape = x.shape(), x_dtype = x.value().dtype()](const Tensor& dy) {
                             dx.accumulate(ops::global_avg_pool_backward(dy, x_shape, x_dtype));
                           });
}

Variable dropout(const Variable& x, float p, MaskSeed seed, uint64_t offset) {
  if (p == 0.0f) return x;
  return Variable::from_op(
      ops::dropout(x.value(), p, seed, offset), {x},
      [dx = x.grad_sink(), p, seed, offset](const Tensor& dy) { dx.accumulate(ops::dropout(dy, p, seed, offset)); });
}

Variable drop_path(const Variable& x, float p, MaskSeed seed, uint64_t offset) {
  if (p == 0.0f) return x;
  return Variable::from_op(
      ops::drop_path(x.value(), p, seed, offset), {x},
      [dx = x.grad_sink(), p, seed, offset](const Tensor& dy) { dx.accumulate(ops::drop_path(dy, p, seed, offset)); });
}

Variable masked_softmax(const Variable& e, const Tensor& mask, float temperature, Tensor* stats) {
  MaskedSoftmaxOut out = ops::masked_softmax(e.value(), mask, temperature);
  if (stats) *stats = out.stats;
  Tensor a = out.a;
  return Variable::from_op(a, {e}, [de = e.grad_sink(), a, temperature](const Tensor& da) {
    de.accumulate(ops::masked_softmax_backward(da, a, temperature));
  });
}

Variable gather_mean(const Variable& x, const Tensor& idx) {
  return Variable::from_op(ops::gather_mean(x.value(), idx), {x},
                           [dx = x.grad_sink(), idx, instances = x.shape()[1]](const Tensor& dy) {
                             dx.accumulate(ops::gather_mean_backward(dy, idx, instances));
                           });
}

Variable bag_weighted_sum(const Variable& a, const Variable& v) {
  const Tensor a_value = value_for_gradient(a, v), v_value = value_for_gradient(v, a);
  return Variable::from_op(ops::bag_weighted_sum(a.value(), v.value()), {a, v},
                           [da = a.grad_sink(), dv = v.grad_sink(), a_value, v_value](const Tensor& dy) {
                             if (da.requires_grad()) da.accumulate(ops::bag_dot(v_value, dy));
                             if (dv.requires_grad()) dv.accumulate(ops::bag_outer(a_value, dy));
                           });
}

Variable bag_dot(const Variable& q, const Variable& m) {
  const Tensor q_value = value_for_gradient(q, m), m_value = value_for_gradient(m, q);
  return Variable::from_op(ops::bag_dot(q.value(), m.value()), {q, m},
                           [dq = q.grad_sink(), dm = m.grad_sink(), q_value, m_value](const Tensor& dy) {
                             if (dq.requires_grad()) dq.accumulate(ops::bag_outer(dy, m_value));
                             if (dm.requires_grad()) dm.accumulate(ops::bag_weighted_sum(dy, q_value));
                           });
}

Variable focal_loss(const Variable& logits, const Tensor& target, const Tensor& weight, float eps, float gamma,
                    Tensor* per_sample) {
  FocalLossOut out = ops::focal_loss(logits.value(), target, weight, eps, gamma);
  if (per_sample) *per_sample = out.per_sample;
  return Variable::from_op(out.loss, {logits}, [dlogits = logits.grad_sink(), grad = out.grad](const Tensor& g) {
    // g is the [1] gradient of the final objective with respect to this loss. Reading it on the host would
    // make the host wait for the whole forward pass at the start of the backward pass; g times grad is
    // formed on g's device instead, as the outer product of g (one bag, one instance) with grad as one row.
    dlogits.accumulate(ops::bag_outer(g.view({1, 1}), grad.view({1, grad.numel()})).view(grad.shape()));
  });
}

}  // namespace dsmil::fn
