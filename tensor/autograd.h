// Reverse-mode automatic differentiation over Tensors (first order only).
// A Variable holds a value, and, when it requires a gradient, the gradient accumulated into it and the
// node that made it: the node's inputs and a closure that turns the output's gradient into the inputs'.
// Rule: gradients accumulate (+=) across uses, sums in fp32 except bf16 + bf16 for a bf16 activation; a
// parameter's (leaf's) gradient is fp32; an activation reached by one use keeps the gradient's dtype. Backward closures
// never write a gradient directly, they call accumulate_grad, and receive their output's gradient in the output's
// dtype.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "tensor/tensor.h"

namespace dsmil {

class Variable;
using BackwardFn = std::function<void(const Tensor& grad_output)>;

class Variable {
 public:
  Variable() = default;
  explicit Variable(Tensor value, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& value() const;
  Tensor& value();
  const Shape& shape() const { return value().shape(); }
  bool requires_grad() const;
  // The accumulated gradient; undefined until some backward pass reached this variable.
  const Tensor& grad() const;
  bool has_grad() const;
  void zero_grad() const;                       // forget the gradient (the next accumulation starts fresh)
  void accumulate_grad(const Tensor& g) const;  // a handle: const means the handle, not the node

  // A leaf's hook, called by backward() as soon as the pass has given the leaf every gradient it will
  // give it (data-parallel training starts summing a gradient bucket there). Replaces an earlier hook.
  void on_grad_ready(std::function<void()> hook) const;

  // Runs the backward pass from this variable and frees the graph behind it. The seed is the gradient
  // of the objective with respect to this value: 1 when omitted (then the value must be a scalar).
  void backward(const Tensor& seed = Tensor());

  // The result of a differentiable function: records `backward` with the inputs when grad mode is on
  // and some input requires a gradient; otherwise a plain constant.
  static Variable from_op(Tensor value, std::vector<Variable> inputs, BackwardFn backward);

  bool same_as(const Variable& other) const { return impl_ == other.impl_; }

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Profiling hook of this thread's backward passes: while set, backward() calls it after each node's
// closure has run, with the node's value (its shape and dtype say which op made it), before that node's
// gradient and saved inputs are freed. `dsmil bench --memory-timeline` follows the device memory with it.
// An empty function turns it off.
using BackwardNodeObserver = std::function<void(const Tensor& node_value)>;
void set_backward_observer(BackwardNodeObserver observer);

// Grad mode: off inside a NoGradGuard (evaluation), so nothing is recorded.
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace dsmil
