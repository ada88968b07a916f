// The autograd tape: graph recording, gradient accumulation and the reverse topological walk.
#include "tensor/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "tensor/ops.h"

namespace dsmil {

// A variable's place in the graph. It keeps its value's shape and dtype (the gradient's checks and dtype
// follow them), never the value itself.
struct GradNode {
  Shape shape;
  DType dtype = DType::F32;
  Tensor grad;
  bool grad_is_shared = false;  // grad aliases a tensor someone else holds: copy before adding into it
  bool requires_grad = false;
  std::vector<std::shared_ptr<GradNode>> inputs;  // the nodes of the inputs that require a gradient
  BackwardFn backward;
  std::function<void()> grad_ready;  // leaves only: see on_grad_ready

  void accumulate(const Tensor& g);
};

struct Variable::Impl {
  Tensor value;
  std::shared_ptr<GradNode> node;
  std::function<Tensor()> recompute;  // see set_recompute
};

namespace {
thread_local bool grad_mode = true;
thread_local BackwardNodeObserver backward_observer;
}  // namespace

bool grad_enabled() { return grad_mode; }
NoGradGuard::NoGradGuard() : previous_(grad_mode) { grad_mode = false; }
NoGradGuard::~NoGradGuard() { grad_mode = previous_; }

Variable::Variable(Tensor value, bool requires_grad) : impl_(std::make_shared<Impl>()) {
  impl_->node = std::make_shared<GradNode>();
  impl_->node->shape = value.shape();
  impl_->node->dtype = value.dtype();
  impl_->node->requires_grad = requires_grad;
  impl_->value = std::move(value);
}

const std::shared_ptr<GradNode>& Variable::node() const {
  if (!impl_) throw Error("use of an undefined Variable");
  return impl_->node;
}

const Tensor& Variable::value() const {
  if (!impl_) throw Error("use of an undefined Variable");
  return impl_->value;
}
Tensor& Variable::value() {
  if (!impl_) throw Error("use of an undefined Variable");
  return impl_->value;
}
bool Variable::requires_grad() const { return impl_ && impl_->node->requires_grad; }
const Tensor& Variable::grad() const { return node()->grad; }
bool Variable::has_grad() const { return impl_ && impl_->node->grad.defined(); }

void Variable::zero_grad() const {
  node()->grad = Tensor();
  node()->grad_is_shared = false;
}

void Variable::accumulate_grad(const Tensor& g) const {
  if (requires_grad()) impl_->node->accumulate(g);
}

GradSink Variable::grad_sink() const {
  GradSink sink;
  if (requires_grad()) sink.node_ = impl_->node;
  return sink;
}

SavedValue Variable::saved() const {
  if (!impl_) return SavedValue();
  return impl_->recompute ? SavedValue(impl_->recompute) : SavedValue(impl_->value);
}

void Variable::set_recompute(std::function<Tensor()> recompute) const {
  if (!impl_) throw Error("set_recompute on an undefined Variable");
  impl_->recompute = std::move(recompute);
}

bool GradSink::requires_grad() const { return node_ != nullptr; }
void GradSink::accumulate(const Tensor& g) const {
  if (node_) node_->accumulate(g);
}

void GradNode::accumulate(const Tensor& g) {
  if (g.shape() != shape)
    throw ShapeError("accumulate_grad: gradient " + g.describe() + " for a value of shape " + shape_str(shape));
  auto as_f32 = [](const Tensor& t) { return t.dtype() == DType::F32 ? t : t.to_dtype(DType::F32); };
  // A parameter's gradient is fp32 for the optimizer; an activation's single gradient stays in the
  // dtype it came in (a bf16 activation's bf16 gradient is used as it is, with no fp32 round trip).
  const bool leaf = !backward;
  if (!grad.defined()) {
    grad = leaf ? as_f32(g) : g;
    grad_is_shared = true;
    return;
  }
  // Two bf16 gradients of a bf16 activation add in bf16, as mixed precision does (PyTorch's autocast
  // too): an fp32 sum would convert both and the result back, three passes over the activation.
  if (!leaf && dtype == DType::BF16 && grad.dtype() == DType::BF16 && g.dtype() == DType::BF16) {
    grad = ops::add(grad, g);
    grad_is_shared = false;
    return;
  }
  // Other sums of several contributions are formed in fp32.
  if (grad_is_shared || grad.dtype() != DType::F32) {
    grad = grad.dtype() == DType::F32 ? grad.clone() : grad.to_dtype(DType::F32);
    grad_is_shared = false;
  }
  ops::axpy_(grad, 1.0f, as_f32(g));
}

void Variable::on_grad_ready(std::function<void()> hook) const {
  if (!impl_ || impl_->node->backward) throw Error("on_grad_ready: only a leaf (a parameter) takes a gradient hook");
  impl_->node->grad_ready = std::move(hook);
}

Variable Variable::from_op(Tensor value, std::vector<Variable> inputs, BackwardFn backward) {
  Variable out(std::move(value), false);
  if (!grad_mode) return out;
  GradNode& node = *out.impl_->node;
  for (const Variable& v : inputs)
    if (v.requires_grad()) node.inputs.push_back(v.impl_->node);
  if (node.inputs.empty()) return out;
  node.requires_grad = true;
  node.backward = std::move(backward);
  return out;
}

void set_backward_observer(BackwardNodeObserver observer) { backward_observer = std::move(observer); }

void Variable::backward(const Tensor& seed) {
  if (!seed.defined() && value().numel() != 1)
    throw ShapeError("backward() without a seed starts from a scalar, got " + value().describe());
  if (!requires_grad()) throw Error("backward(): the value does not depend on anything that requires a gradient");
  const std::shared_ptr<GradNode>& root = impl_->node;
  // Reverse topological order by an iterative depth-first post-order walk.
  // `order` owns its nodes: freeing a node's inputs below must not free a node still to run.
  std::vector<std::shared_ptr<GradNode>> order;
  std::unordered_set<GradNode*> seen;
  std::vector<std::pair<std::shared_ptr<GradNode>, size_t>> stack{{root, 0}};
  seen.insert(root.get());
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    if (next < node->inputs.size()) {
      std::shared_ptr<GradNode> child = node->inputs[next++];
      if (child->backward && seen.insert(child.get()).second) stack.push_back({std::move(child), 0});
    } else {
      order.push_back(std::move(node));
      stack.pop_back();
    }
  }
  // Uses of each hooked leaf by the nodes to run: its hook fires after the last of them.
  std::unordered_map<GradNode*, int> pending_uses;
  for (const std::shared_ptr<GradNode>& node : order)
    for (const std::shared_ptr<GradNode>& input : node->inputs)
      if (!input->backward && input->grad_ready) ++pending_uses[input.get()];
  accumulate_grad(seed.defined() ? seed : Tensor::full(value().shape(), 1.0f, value().device()));
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    GradNode* node = it->get();
    // A closure receives its output's gradient in the output's dtype (bf16 activations get bf16
    // gradients, as mixed precision wants).
    if (node->grad.defined())
      node->backward(node->grad.dtype() == node->dtype ? node->grad : node->grad.to_dtype(node->dtype));
    if (backward_observer) backward_observer(node->shape, node->dtype);
    for (const std::shared_ptr<GradNode>& input : node->inputs) {
      const auto pending = pending_uses.find(input.get());
      if (pending != pending_uses.end() && --pending->second == 0) input->grad_ready();
    }
    // Free the graph as we go: the closure's saved tensors and the intermediate gradients are no longer
    // needed, and neither is the node itself.
    node->backward = nullptr;
    node->inputs.clear();
    if (node != root.get()) {
      node->grad = Tensor();
      it->reset();
    }
  }
}

}  // namespace dsmil
