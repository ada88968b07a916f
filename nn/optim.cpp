// AdamW and the EMA over all their tensors at once (multi-tensor ops), gradient clipping and the
// learning-rate schedule.
#include "nn/optim.h"

#include <array>
#include <cmath>
#include <numbers>

namespace dsmil::nn {

AdamW::AdamW(std::vector<NamedParameter> params, const AdamWConfig& config)
    : params_(std::move(params)), config_(config) {
  for (const NamedParameter& p : params_) {
    const Tensor& value = p.variable->value();
    m_.push_back(Tensor::zeros(value.shape(), DType::F32, value.device()));
    v_.push_back(Tensor::zeros(value.shape(), DType::F32, value.device()));
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    tensors_.params.push_back(&params_[i].variable->value());
    tensors_.m.push_back(&m_[i]);
    tensors_.v.push_back(&v_[i]);
    tensors_.decayed.push_back(params_[i].weight_decay);
  }
  grad_norm_ =
      Tensor::zeros({1}, DType::F32, params_.empty() ? Device::CPU : params_.front().variable->value().device());
}

void AdamW::step(float lr) {
  ++step_;
  queue_update(hyper(lr), Tensor());
}

void AdamW::prepare_step(float lr) {
  ++step_;
  prepared_ = hyper(lr);
  const std::array<float, 7> constants = adamw_step_constants(prepared_);
  const Tensor host = Tensor::from_vector({7}, std::vector<float>(constants.begin(), constants.end()));
  if (!constants_on_device_.defined()) constants_on_device_ = Tensor::empty({7}, DType::F32, grad_norm_.device());
  constants_on_device_.copy_from(host);
}

void AdamW::queue_step() {
  if (!constants_on_device_.defined()) throw Error("AdamW::queue_step: no step was prepared (prepare_step)");
  queue_update(prepared_, constants_on_device_);
}

AdamWHyper AdamW::hyper(float lr) const {
  return {lr, config_.beta1, config_.beta2, config_.eps, config_.weight_decay, step_};
}

void AdamW::queue_update(const AdamWHyper& h, const Tensor& constants_on_device) {
  std::vector<Tensor> grads;
  for (const NamedParameter& p : params_) grads.push_back(p.variable->has_grad() ? p.variable->grad() : Tensor());
  // An infinite bound measures the norm without ever clipping: the norm is a training-health figure
  // whether or not clipping is on.
  const float bound = config_.max_grad_norm > 0.0f ? config_.max_grad_norm : INFINITY;
  ops::multi_tensor_adamw(tensors_, grads, h, bound, grad_norm_, constants_on_device);
  grad_norm_written_ = !params_.empty();
}

float AdamW::last_grad_norm() const {
  if (!grad_norm_written_)
    throw Error("AdamW::last_grad_norm: no gradient norm was computed (no parameters, or no step yet)");
  return grad_norm_.item();
}

void AdamW::zero_grad() {
  for (NamedParameter& p : params_) p.variable->zero_grad();
}

std::vector<NamedBuffer> AdamW::state() {
  std::vector<NamedBuffer> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.push_back({"m." + params_[i].name, &m_[i]});
    out.push_back({"v." + params_[i].name, &v_[i]});
  }
  return out;
}

Ema::Ema(Module& model, float decay) : decay_(decay) {
  for (const NamedParameter& p : model.parameters()) {
    names_.push_back(p.name);
    values_.push_back(p.variable->value().clone());
  }
  for (const NamedBuffer& b : model.buffers()) {
    names_.push_back(b.name);
    values_.push_back(b.tensor->clone());
  }
  for (Tensor& v : values_) tensors_.ema.push_back(&v);
}

float Ema::effective_decay() const { return std::min(decay_, (1.0f + updates_) / (10.0f + updates_)); }

void Ema::update(Module& model) {
  queue_average(model, effective_decay(), Tensor());
  ++updates_;
}

void Ema::prepare_update() {
  prepared_decay_ = effective_decay();
  ++updates_;
  if (!decay_on_device_.defined()) decay_on_device_ = Tensor::empty({1}, DType::F32, values_.front().device());
  decay_on_device_.copy_from(Tensor::full({1}, prepared_decay_));
}

void Ema::queue_update(Module& model) {
  if (!decay_on_device_.defined()) throw Error("Ema::queue_update: no update was prepared (prepare_update)");
  queue_average(model, prepared_decay_, decay_on_device_);
}

void Ema::queue_average(Module& model, float decay, const Tensor& decay_on_device) {
  tensors_.values.clear();
  for (const NamedParameter& p : model.parameters()) tensors_.values.push_back(&p.variable->value());
  for (const NamedBuffer& b : model.buffers()) tensors_.values.push_back(b.tensor);
  ops::multi_tensor_ema(tensors_, decay, decay_on_device);
}

void Ema::copy_to(Module& target) const {
  size_t i = 0;
  for (const NamedParameter& p : target.parameters()) p.variable->value().copy_from(values_[i++]);
  for (const NamedBuffer& b : target.buffers()) b.tensor->copy_from(values_[i++]);
}

std::vector<NamedBuffer> Ema::state() {
  std::vector<NamedBuffer> out;
  for (size_t i = 0; i < names_.size(); ++i) out.push_back({"ema." + names_[i], &values_[i]});
  return out;
}

float grad_norm(const std::vector<NamedParameter>& params) {
  double total = 0.0;
  for (const NamedParameter& p : params)
    if (p.variable->has_grad()) total += ops::sum_squares(p.variable->grad());
  return static_cast<float>(std::sqrt(total));
}

float clip_grad_norm(const std::vector<NamedParameter>& params, float max_norm) {
  const float norm = grad_norm(params);
  if (norm > max_norm && norm > 0.0f) {
    const float factor = max_norm / (norm + 1e-6f);
    for (const NamedParameter& p : params)
      if (p.variable->has_grad()) {
        Tensor g = p.variable->grad().clone();
        ops::scale_(g, factor);
        p.variable->zero_grad();
        p.variable->accumulate_grad(g);
      }
  }
  return norm;
}

float warmup_cosine_lr(float lr, int64_t step, int64_t warmup, int64_t total, float min_factor) {
  if (warmup > 0 && step < warmup) return lr * static_cast<float>(step + 1) / static_cast<float>(warmup);
  const double span = std::max<int64_t>(total - warmup, 1);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return static_cast<float>(lr * (min_factor + (1.0 - min_factor) * cosine));
}

}  // namespace dsmil::nn
