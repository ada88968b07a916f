// Training-state updates: AdamW over parameter groups, the EMA of weights and batch-norm statistics,
// global-norm gradient clipping, and the warm-up + cosine learning-rate schedule.
#pragma once

#include <vector>

#include "nn/module.h"
#include "tensor/ops.h"

namespace dsmil::nn {

struct AdamWConfig {
  float lr = 3e-4f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 1e-4f;
  // > 0: step() first scales the gradients to this global L2 norm at most (clip_grad_norm's rule); 0: no clip.
  float max_grad_norm = 0.0f;
};

// AdamW with two groups: weights (decayed) and biases / batch-norm parameters (not decayed). Every
// parameter is updated by one multi-tensor op (a few launches on CUDA, no host synchronisation).
// Not copyable: the op's lists point at the moment tensors.
class AdamW {
 public:
  AdamW(std::vector<NamedParameter> params, const AdamWConfig& config);
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;
  // One update with learning rate `lr` from the accumulated gradients, clipped to config.max_grad_norm;
  // parameters without a gradient are left alone. Gradients are not cleared (zero_grad does).
  void step(float lr);
  // step() in two parts, for a step captured once as a CUDA graph and replayed: prepare_step(lr) is the host's part
  // (the step count; the step's constants written to the device, waiting for the copy), queue_step() queues the
  // update reading the constants there, so that a replay of it uses those of the last prepare_step.
  void prepare_step(float lr);
  void queue_step();
  void zero_grad();
  int64_t steps() const { return step_; }
  // The global gradient norm before clipping of the last step (NaN or infinite: a non-finite gradient),
  // measured whether or not clipping is on. Kept on the device: reading it synchronises. Throws before
  // the first step.
  float last_grad_norm() const;
  // Moment tensors, named "m.<param>" / "v.<param>", for checkpoints.
  std::vector<NamedBuffer> state();
  void set_steps(int64_t steps) { step_ = steps; }

 private:
  AdamWHyper hyper(float lr) const;  // of step step_
  void queue_update(const AdamWHyper& h, const Tensor& constants_on_device);

  std::vector<NamedParameter> params_;
  std::vector<Tensor> m_, v_;
  AdamWTensors tensors_;  // params_, m_, v_ as the multi-tensor op takes them
  Tensor grad_norm_;      // F32 [1] on the parameters' device
  AdamWConfig config_;
  int64_t step_ = 0;
  bool grad_norm_written_ = false;
  AdamWHyper prepared_;         // of the last prepare_step
  Tensor constants_on_device_;  // F32 [7]: adamw_step_constants(prepared_)
};

// theta_ema <- d theta_ema + (1 - d) theta with d_eff = min(d, (1 + k) / (10 + k)), k = updates so far;
// over parameters and batch-norm buffers alike.
// Not copyable: the op's list points at the averaged tensors.
class Ema {
 public:
  Ema(Module& model, float decay);
  Ema(const Ema&) = delete;
  Ema& operator=(const Ema&) = delete;
  void update(Module& model);
  // update() in two parts, as AdamW's prepare_step / queue_step: the decay of this update written to the device and
  // the count advanced, then the average queued reading that decay there.
  void prepare_update();
  void queue_update(Module& model);
  // Writes the averaged values into `target` (a model of the same architecture).
  void copy_to(Module& target) const;
  float effective_decay() const;
  int64_t updates() const { return updates_; }
  void set_updates(int64_t k) { updates_ = k; }
  std::vector<NamedBuffer> state();  // named "ema.<name>", for checkpoints

 private:
  std::vector<std::string> names_;
  std::vector<Tensor> values_;
  void queue_average(Module& model, float decay, const Tensor& decay_on_device);

  EmaTensors tensors_;  // values_ and the model's tensors of the last update
  float decay_;
  int64_t updates_ = 0;
  float prepared_decay_ = 0.0f;  // of the last prepare_update
  Tensor decay_on_device_;       // F32 [1]: prepared_decay_
};

// Scales all gradients so that their global L2 norm is at most max_norm; returns the norm before.
float clip_grad_norm(const std::vector<NamedParameter>& params, float max_norm);
float grad_norm(const std::vector<NamedParameter>& params);

// lr(step) for 0-based step: linear warm-up from lr/warmup to lr over `warmup` steps, then cosine
// decay to lr * min_factor at `total` steps.
float warmup_cosine_lr(float lr, int64_t step, int64_t warmup, int64_t total, float min_factor = 0.0f);

}  // namespace dsmil::nn
