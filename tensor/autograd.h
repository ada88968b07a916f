// Reverse-mode automatic differentiation over Tensors (first order only).
// A Variable holds a value, and, when it requires a gradient, the graph node that made it: the gradient
// accumulated into it, the nodes of its inputs and a closure that turns the output's gradient into the inputs'.
// The graph holds no values: a closure keeps the tensors its backward reads and sends gradients to its inputs
// through GradSinks, so an activation that no backward reads is freed once the forward pass has no handle to it.
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
struct GradNode;
using BackwardFn = std::function<void(const Tensor& grad_output)>;

// Where a backward closure sends the gradient of one of its inputs: the input's node, not its value.
// A sink of an undefined Variable, or of one that requires no gradient, drops what it is given.
class GradSink {
 public:
  bool requires_grad() const;
  void accumulate(const Tensor& g) const;

 private:
  friend class Variable;
  std::shared_ptr<GradNode> node_;
};

// A value that a backward closure reads: the value itself, or the recipe to remake it from tensors the graph keeps
// anyway, when the op that made it gave one (Variable::set_recompute). Remaking costs a pass in the backward; keeping
// costs the value's memory from the forward pass to that backward.
class SavedValue {
 public:
  SavedValue() = default;
  explicit SavedValue(Tensor value) : value_(std::move(value)) {}
  explicit SavedValue(std::function<Tensor()> recompute) : recompute_(std::move(recompute)) {}
  Tensor get() const { return value_.defined() || !recompute_ ? value_ : recompute_(); }

 private:
  Tensor value_;
  std::function<Tensor()> recompute_;
};

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
  GradSink grad_sink() const;                   // for backward closures; safe on an undefined Variable
  // What a backward closure keeps to read this value later: the recipe when one was set, else the value.
  SavedValue saved() const;
  // Lets the closures that read this value remake it instead of keeping it; `recompute` must give the value
  // bit for bit from tensors that other closures keep anyway. Set by the op that made the value.
  void set_recompute(std::function<Tensor()> recompute) const;

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
  const std::shared_ptr<GradNode>& node() const;
};

// Profiling hook of this thread's backward passes: while set, backward() calls it after each node's
// closure has run, with the shape and dtype of the node's value (they say which op made it), before that
// node's gradient and saved tensors are freed. `dsmil bench --memory-timeline` follows the device memory
// with it. An empty function turns it off.
using BackwardNodeObserver = std::function<void(const Shape& shape, DType dtype)>;
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
