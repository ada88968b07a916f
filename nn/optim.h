// Training-state updates: AdamW over parameter groups, the EMA of weights and batch-norm statistics,
// global-norm gradient clipping, and the warm-up + cosine learning-rate schedule.
#pragma once

#include <vector>

#include "nn/module.h"
#include "tensor/ops.h"

namespace dsmil::nn {

struct AdamWConfig {
  float lr = 3e-4f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 1e-4f;
};

// AdamW with two groups: weights (decayed) and biases / batch-norm parameters (not decayed).
class AdamW {
 public:
  AdamW(std::vector<NamedParameter> params, const AdamWConfig& config);
  // One update with learning rate `lr` from the accumulated gradients; parameters without a
  // gradient are left alone. Gradients are not cleared (zero_grad does).
  void step(float lr);
  void zero_grad();
  int64_t steps() const { return step_; }
  // Moment tensors, named "m.<param>" / "v.<param>", for checkpoints.
  std::vector<NamedBuffer> state();
  void set_steps(int64_t steps) { step_ = steps; }

 private:
  std::vector<NamedParameter> params_;
  std::vector<Tensor> m_, v_;
  AdamWConfig config_;
  int64_t step_ = 0;
};

// theta_ema <- d theta_ema + (1 - d) theta with d_eff = min(d, (1 + k) / (10 + k)), k = updates so far;
// over parameters and batch-norm buffers alike.
class Ema {
 public:
  Ema(Module& model, float decay);
  void update(Module& model);
  // Writes the averaged values into `target` (a model of the same architecture).
  void copy_to(Module& target) const;
  float effective_decay() const;
  int64_t updates() const { return updates_; }
  void set_updates(int64_t k) { updates_ = k; }
  std::vector<NamedBuffer> state();  // named "ema.<name>", for checkpoints

 private:
  std::vector<std::string> names_;
  std::vector<Tensor> values_;
  float decay_;
  int64_t updates_ = 0;
};

// Scales all gradients so that their global L2 norm is at most max_norm; returns the norm before.
float clip_grad_norm(const std::vector<NamedParameter>& params, float max_norm);
float grad_norm(const std::vector<NamedParameter>& params);

// lr(step) for 0-based step: linear warm-up from lr/warmup to lr over `warmup` steps, then cosine
// decay to lr * min_factor at `total` steps.
float warmup_cosine_lr(float lr, int64_t step, int64_t warmup, int64_t total, float min_factor = 0.0f);

}  // namespace dsmil::nn
