// The dual-stream head and model; each line of forward is one line of DESIGN section 3.
#include "mil/dual_stream.h"

#include <cmath>
#include <functional>

#include <fmt/format.h>

#include "base/counter_rng.h"

namespace dsmil::mil {

Pooling parse_pooling(const std::string& name) {
  if (name == "max") return Pooling::Max;
  if (name == "topk") return Pooling::TopK;
  if (name == "soft") return Pooling::Soft;
  throw Error(fmt::format("pooling '{}' is not one of max, topk, soft", name));
}
Attention parse_attention(const std::string& name) {
  if (name == "dsmil") return Attention::Dsmil;
  if (name == "gated") return Attention::Gated;
  throw Error(fmt::format("attention '{}' is not one of dsmil, gated", name));
}
const char* pooling_name(Pooling p) { return p == Pooling::Max ? "max" : p == Pooling::TopK ? "topk" : "soft"; }
const char* attention_name(Attention a) { return a == Attention::Dsmil ? "dsmil" : "gated"; }

DualStreamHead::DualStreamHead(int64_t features, const HeadConfig& config, nn::InitEngine& engine)
    : config_(config),
      instance_classifier_(features, 2, engine),
      value_(features, features, engine),
      bag_classifier_(features, 2, engine) {
  register_module("instance_classifier", instance_classifier_);
  register_module("v", value_);
  register_module("bag_classifier", bag_classifier_);
  if (config.zero_init_classifiers)
    for (nn::Linear* classifier : {&instance_classifier_, &bag_classifier_})
      for (Variable* p : {&classifier->weight, &classifier->bias}) p->value().copy_from(Tensor::zeros(p->shape()));
  // The critical query only serves DSMIL's attention; gated attention has its own parameters.
  if (config.attention == Attention::Dsmil) {
    query1_ = std::make_unique<nn::Linear>(features, config.query_size, engine);
    query2_ = std::make_unique<nn::Linear>(config.query_size, config.query_size, engine);
    register_module("q1", *query1_);
    register_module("q2", *query2_);
  } else {
    gate_v_ = std::make_unique<nn::Linear>(features, config.query_size, engine);
    gate_u_ = std::make_unique<nn::Linear>(features, config.query_size, engine);
    gate_w_ = std::make_unique<nn::Linear>(config.query_size, 1, engine);
    register_module("gate_V", *gate_v_);
    register_module("gate_U", *gate_u_);
    register_module("gate_w", *gate_w_);
  }
}

namespace {
// Instance dropout: instance i of bag b leaves the bag when uniform(seed, counter + b n + i) < p; a bag
// that would lose every instance keeps its first valid one.
Tensor drop_instances(const Tensor& mask, float p, uint64_t seed, uint64_t counter) {
  Tensor out = mask.clone();
  const int64_t bags = mask.size(0), n = mask.size(1);
  for (int64_t b = 0; b < bags; ++b) {
    int32_t* row = out.i32() + b * n;
    const int32_t* original = mask.i32() + b * n;
    int kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (row[i] && counter_uniform(seed, counter + b * n + i) < p) row[i] = 0;
      kept += row[i] != 0;
    }
    for (int64_t i = 0; i < n && kept == 0; ++i)
      if (original[i]) row[i] = 1, kept = 1;
  }
  return out;
}

}  // namespace

Tensor DualStreamHead::instance_mask(const Tensor& mask, nn::StepRandom& random) const {
  if (!training() || config_.instance_dropout <= 0.0f) return mask;
  return drop_instances(mask, config_.instance_dropout, random.seed, random.take(mask.numel()));
}

const Tensor& DualStreamHead::margin_weights(Device device) {
  if (!margin_weights_.defined() || margin_weights_.device() != device)
    margin_weights_ = Tensor::from_vector({1, 2}, {-1.0f, 1.0f}).to(device);
  return margin_weights_;
}

MilOutput DualStreamHead::forward(const Variable& h_in, const Tensor& mask_in, const Tensor& mask, float tau,
                                  nn::StepRandom& random) {
  const int64_t bags = mask_in.size(0), n = mask_in.size(1), features = h_in.shape()[1];
  MilOutput out;
  out.embeddings = h_in.value();
  out.mask = mask_in;
  const Variable h =
      training() ? fn::dropout(h_in, config_.feature_dropout, random.mask_seed(), random.take(h_in.value().numel()))
                 : h_in;

  // Stream 1: instance classifier and pooling by the margin z_i = c_i1 - c_i0.
  const Variable c = instance_classifier_.forward(h);
  const Variable c_bags = fn::view(c, {bags, n, 2});
  const Variable z = fn::view(
      fn::linear(c, Variable(margin_weights(h_in.value().device()), false), Variable(), math_mode()), {bags, n});
  out.margins = z.value();
  // Stream-1 pooling; `pool` applies the same instance weighting to any per-instance tensor [B, n, F].
  std::function<Variable(const Variable&)> pool;
  if (config_.pooling == Pooling::Soft) {
    const Variable s = fn::masked_softmax(z, mask, tau, nullptr);
    pool = [s](const Variable& per_instance) { return fn::bag_weighted_sum(s, per_instance); };
    out.selection = s.value();
  } else {
    const int k = config_.pooling == Pooling::Max ? 1 : static_cast<int>(std::min<int64_t>(config_.topk, n));
    const Tensor idx = ops::topk_indices(z.value(), mask, k);
    pool = [idx](const Variable& per_instance) { return fn::gather_mean(per_instance, idx); };
    // 1/K on the selected instances: the gradient of the pooled mean of a constant 1, on the device.
    out.selection =
        ops::gather_mean_backward(Tensor::full({bags, 1}, 1.0f, z.value().device()), idx, n).view({bags, n});
  }
  out.y1 = pool(c_bags);

  // Stream 2: attention over the instances, then the bag embedding b = sum_i a_i v_i.
  Variable e;
  if (config_.attention == Attention::Dsmil) {
    const Variable q =
        fn::view(fn::tanh(query2_->forward(fn::relu(query1_->forward(h)))), {bags, n, config_.query_size});
    e = fn::scale(fn::bag_dot(q, pool(q)), 1.0f / std::sqrt(static_cast<float>(config_.query_size)));
  } else {
    const Variable gated = fn::mul(fn::tanh(gate_v_->forward(h)), fn::sigmoid(gate_u_->forward(h)));
    e = fn::view(gate_w_->forward(gated), {bags, n});
  }
  Tensor stats;
  const Variable a = fn::masked_softmax(e, mask, config_.attention_temperature, &stats);
  const Variable v = fn::view(fn::relu(value_.forward(h)), {bags, n, features});
  out.y2 = bag_classifier_.forward(fn::bag_weighted_sum(a, v));
  out.y = fn::scale(fn::add(out.y1, out.y2), 0.5f);
  out.attention_weights = a;
  out.attention = a.value();
  out.attention_stats = stats;
  return out;
}

DualStreamMIL::DualStreamMIL(const ModelConfig& config, uint64_t init_seed)
    : config_(config),
      engine_(init_seed),
      encoder_(config.encoder, engine_),
      head_(encoder_.embedding_size(), config.head, engine_) {
  register_module("encoder", encoder_);
  register_module("head", head_);
}

void DualStreamMIL::to(Device device) {
  nn::Module::to(device);
  device_ = device;
}

MilOutput DualStreamMIL::forward(const Variable& x, const Tensor& mask, float tau, nn::StepRandom& random) {
  // The head's mask goes to the device before the encoder is queued: its upload then waits for almost
  // nothing, where after the encoder it would wait for the whole forward pass.
  const Tensor head_mask = draw_head_mask(mask, random);
  return forward_drawn(x, head_mask, head_mask.to(x.value().device()), tau, random);
}

Tensor DualStreamMIL::draw_head_mask(const Tensor& mask, nn::StepRandom& random) const {
  return head_.instance_mask(mask, random);
}

MilOutput DualStreamMIL::forward_drawn(const Variable& x, const Tensor& head_mask, const Tensor& device_mask, float tau,
                                       nn::StepRandom& random) {
  if (x.shape().size() != 5 || x.shape()[0] != head_mask.numel())
    throw ShapeError(fmt::format("DualStreamMIL: x {} must hold B*n = {} slabs [S, H, W, C]", shape_str(x.shape()),
                                 head_mask.numel()));
  return head_.forward(encoder_.forward(x, random), head_mask, device_mask, tau, random);
}

namespace {

// Mean over bags of H_b = -sum_i a_bi log a_bi (0 log 0 = 0; masked instances have a = 0), with
// dH_b/da_bi = -(log a_bi + 1). On the host: a holds a few dozen numbers.
Variable mean_attention_entropy(const Variable& a) {
  const Tensor host = a.value().to(Device::CPU);
  const int64_t bags = host.shape()[0];
  std::vector<float> grad(host.numel(), 0.0f);
  double total = 0.0;
  for (int64_t i = 0; i < host.numel(); ++i) {
    const double p = host.f32()[i];
    if (p <= 0.0) continue;
    total -= p * std::log(p);
    grad[i] = static_cast<float>(-(std::log(p) + 1.0) / bags);
  }
  const Device device = a.value().device();
  const Tensor value = Tensor::full({1}, static_cast<float>(total / bags)).to(device);
  const Shape shape = host.shape();
  return Variable::from_op(value, {a}, [da = a.grad_sink(), grad, shape, device](const Tensor& g) {
    const float factor = g.to(Device::CPU).f32()[0];
    std::vector<float> scaled(grad.size());
    for (size_t i = 0; i < grad.size(); ++i) scaled[i] = factor * grad[i];
    da.accumulate(Tensor::from_vector(shape, scaled).to(device));
  });
}

}  // namespace

LossTargets loss_targets(const Tensor& target, const float class_weight[2], Device device) {
  const int64_t bags = target.numel();
  Tensor weight = Tensor::empty({bags});
  LossTargets out;
  for (int64_t b = 0; b < bags; ++b) {
    const int32_t label = target.i32()[b];
    if (label != 0 && label != 1)
      throw ShapeError(fmt::format("loss_targets: bag {} has label {} (0 is LGG, 1 HGG)", b, label));
    out.weight_sum += weight.f32()[b] = class_weight[label];
  }
  out.target = target.to(device);
  out.weight = weight.to(device);
  return out;
}

Variable mil_loss(const MilOutput& out, const LossTargets& targets, const LossConfig& config, const StepShare& share) {
  // focal_loss divides by this batch's weight sum; the step's share rescales that to the whole step's.
  const float weight_share = share.weight_sum > 0 ? static_cast<float>(targets.weight_sum / share.weight_sum) : 1.0f;
  const int64_t bags = targets.target.numel();
  const float bag_share = share.bags > 0 ? static_cast<float>(bags) / static_cast<float>(share.bags) : 1.0f;
  const Variable l1 =
      fn::focal_loss(out.y1, targets.target, targets.weight, config.label_smoothing, config.focal_gamma);
  const Variable l2 =
      fn::focal_loss(out.y2, targets.target, targets.weight, config.label_smoothing, config.focal_gamma);
  const Variable loss = fn::add(fn::scale(l1, config.stream_weight * weight_share),
                                fn::scale(l2, (1.0f - config.stream_weight) * weight_share));
  if (config.entropy_weight <= 0.0f) return loss;
  return fn::add(loss, fn::scale(mean_attention_entropy(out.attention_weights), -config.entropy_weight * bag_share));
}

Variable mil_loss(const MilOutput& out, const Tensor& target, const float class_weight[2], const LossConfig& config,
                  const StepShare& share) {
  return mil_loss(out, loss_targets(target, class_weight, out.y.value().device()), config, share);
}

}  // namespace dsmil::mil
