// The autograd tape: graph recording, gradient accumulation and the reverse topological walk.
#include "tensor/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "tensor/ops.h"

namespace dsmil {

struct Variable::Impl {
  Tensor value;
  Tensor grad;
  bool grad_is_shared = false;  // grad aliases a tensor someone else holds: copy before adding into it
  bool requires_grad = false;
  std::vector<Variable> inputs;
  BackwardFn backward;
  std::function<void()> grad_ready;  // leaves only: see on_grad_ready
};

namespace {
thread_local bool grad_mode = true;
thread_local BackwardNodeObserver backward_observer;
}  // namespace

bool grad_enabled() { return grad_mode; }
NoGradGuard::NoGradGuard() : previous_(grad_mode) { grad_mode = false; }
NoGradGuard::~NoGradGuard() { grad_mode = previous_; }

Variable::Variable(Tensor value, bool requires_grad) : impl_(std::make_shared<Impl>()) {
  impl_->value = std::move(value);
  impl_->requires_grad = requires_grad;
}

const Tensor& Variable::value() const {
  if (!impl_) throw Error("use of an undefined Variable");
  return impl_->value;
}
Tensor& Variable::value() {
  if (!impl_) throw Error("use of an undefined Variable");
  return impl_->value;
}
bool Variable::requires_grad() const { return impl_ && impl_->requires_grad; }
const Tensor& Variable::grad() const { return impl_->grad; }
bool Variable::has_grad() const { return impl_ && impl_->grad.defined(); }

void Variable::zero_grad() const {
  impl_->grad = Tensor();
  impl_->grad_is_shared = false;
}

void Variable::accumulate_grad(const Tensor& g) const {
  if (!requires_grad()) return;
  if (g.shape() != impl_->value.shape())
    throw ShapeError("accumulate_grad: gradient " + g.describe() + " for value " + impl_->value.describe());
  auto as_f32 = [](const Tensor& t) { return t.dtype() == DType::F32 ? t : t.to_dtype(DType::F32); };
  // A parameter's gradient is fp32 for the optimizer; an activation's single gradient stays in the
  // dtype it came in (a bf16 activation's bf16 gradient is used as it is, with no fp32 round trip).
  const bool leaf = !impl_->backward;
  if (!impl_->grad.defined()) {
    impl_->grad = leaf ? as_f32(g) : g;
    impl_->grad_is_shared = true;
    return;
  }
  // Two bf16 gradients of a bf16 activation add in bf16, as mixed precision does (PyTorch's autocast
  // too): an fp32 sum would convert both and the result back, three passes over the activation.
  if (!leaf && impl_->value.dtype() == DType::BF16 && impl_->grad.dtype() == DType::BF16 && g.dtype() == DType::BF16) {
    impl_->grad = ops::add(impl_->grad, g);
    impl_->grad_is_shared = false;
    return;
  }
  // Other sums of several contributions are formed in fp32.
  if (impl_->grad_is_shared || impl_->grad.dtype() != DType::F32) {
    impl_->grad = impl_->grad.dtype() == DType::F32 ? impl_->grad.clone() : impl_->grad.to_dtype(DType::F32);
    impl_->grad_is_shared = false;
  }
  ops::axpy_(impl_->grad, 1.0f, as_f32(g));
}

void Variable::on_grad_ready(std::function<void()> hook) const {
  if (!impl_ || impl_->backward) throw Error("on_grad_ready: only a leaf (a parameter) takes a gradient hook");
  impl_->grad_ready = std::move(hook);
}

Variable Variable::from_op(Tensor value, std::vector<Variable> inputs, BackwardFn backward) {
  Variable out(std::move(value), false);
  if (!grad_mode) return out;
  bool needs = false;
  for (const Variable& v : inputs) needs = needs || v.requires_grad();
  if (!needs) return out;
  out.impl_->requires_grad = true;
  out.impl_->inputs = std::move(inputs);
  out.impl_->backward = std::move(backward);
  return out;
}

void set_backward_observer(BackwardNodeObserver observer) { backward_observer = std::move(observer); }

void Variable::backward(const Tensor& seed) {
  if (!seed.defined() && value().numel() != 1)
    throw ShapeError("backward() without a seed starts from a scalar, got " + value().describe());
  if (!requires_grad()) throw Error("backward(): the value does not depend on anything that requires a gradient");
  // Reverse topological order by an iterative depth-first post-order walk.
  // `order` owns its nodes: freeing a node's inputs below must not free a node still to run.
  std::vector<std::shared_ptr<Impl>> order;
  std::unordered_set<Impl*> seen;
  std::vector<std::pair<std::shared_ptr<Impl>, size_t>> stack{{impl_, 0}};
  seen.insert(impl_.get());
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    if (next < node->inputs.size()) {
      std::shared_ptr<Impl> child = node->inputs[next++].impl_;
      if (child && child->backward && seen.insert(child.get()).second) stack.push_back({std::move(child), 0});
    } else {
      order.push_back(std::move(node));
      stack.pop_back();
    }
  }
  // Uses of each hooked leaf by the nodes to run: its hook fires after the last of them.
  std::unordered_map<Impl*, int> pending_uses;
  for (const std::shared_ptr<Impl>& node : order)
    for (const Variable& input : node->inputs)
      if (input.impl_ && !input.impl_->backward && input.impl_->grad_ready) ++pending_uses[input.impl_.get()];
  accumulate_grad(seed.defined() ? seed : Tensor::full(value().shape(), 1.0f, value().device()));
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Impl* node = it->get();
    // A closure receives its output's gradient in the output's dtype (bf16 activations get bf16
    // gradients, as mixed precision wants).
    if (node->grad.defined())
      node->backward(node->grad.dtype() == node->value.dtype() ? node->grad : node->grad.to_dtype(node->value.dtype()));
    if (backward_observer) backward_observer(node->value);
    for (const Variable& input : node->inputs) {
      const auto pending = pending_uses.find(input.impl_.get());
      if (pending != pending_uses.end() && --pending->second == 0) input.impl_->grad_ready();
    }
    // Free the graph as we go: intermediate gradients and saved tensors are no longer needed, and neither
    // is the node itself unless someone else holds its Variable. Holding every node until the walk ended
    // kept every activation's value alive through the whole backward pass (`dsmil bench --memory-timeline`,
    // notes/PERF.md).
    node->backward = nullptr;
    node->inputs.clear();
    if (node != impl_.get()) {
      node->grad = Tensor();
      it->reset();
    }
  }
}

}  // namespace dsmil
