// Training health: the figures that tell why a model does not learn, gathered over an epoch (the
// global gradient norm of every step, the spread of the training bags' logits, and on one step the
// update-to-weight ratio per encoder stage and for the head and the share of zero ReLU outputs in the
// encoder's last stage), and the rule that warns while training is still at chance after warm-up.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/train/config.h"
#include "nn/module.h"

namespace dsmil::app {

// The group a parameter's update ratio is reported under: "stem", "layer1".."layer4" for the encoder
// ("encoder.layer2.0.conv1.weight" -> "layer2"), "head" for the MIL head.
std::string parameter_group(const std::string& name);

class EpochHealth {
 public:
  // clip_bound: train.clip_grad (0: no clipping), to count the clipped steps.
  explicit EpochHealth(double clip_bound) : clip_bound_(clip_bound) {}

  void add_step(double grad_norm) { grad_norms_.push_back(grad_norm); }
  // y1 - y0 of one training bag.
  void add_bag_margin(double margin) { margins_.push_back(margin); }

  // Around one optimizer step: the weights before it, then the ratio ||w_after - w_before|| / ||w_before||
  // of every group (from device copies of the fp32 master weights kept in between).
  void weights_before_step(const std::vector<nn::NamedParameter>& params);
  void weights_after_step(const std::vector<nn::NamedParameter>& params);
  // The encoder's last stage output of one step (any dtype, any device).
  void last_stage(const Tensor& activation);

  // {"grad_norm": {"mean", "max", "clipped_fraction"}, "logit_spread", "update_ratio": {group: ratio},
  //  "relu_zero_fraction"}; figures never measured are absent.
  nlohmann::json record() const;

 private:
  double clip_bound_;
  std::vector<double> grad_norms_, margins_;
  std::vector<Tensor> before_;
  std::map<std::string, double> update_ratio_;
  double relu_zero_fraction_ = -1.0;
};

// The median update ratio over the encoder's stages of a health record (NaN when not measured).
double encoder_update_ratio(const nlohmann::json& health);

// Standard deviation (n - 1) of the values; 0 for fewer than two.
double spread(const std::vector<double>& values);

// The warning printed at the end of an epoch (1-based `epoch`) when the training AUC is still below 0.6
// three epochs after warm-up; empty when there is nothing to warn about. Names what the epoch's training metrics
// and health record show (one class for nearly every bag, with the share of steps of a single class that the
// config's sampler gives; constant validation logits, updates too large or too small for the weights, clipping on
// most steps, a dead last stage) and what to try. `config`: the run's warm-up, learning rate, case sampler and bags
// a step; `train`: the epoch record's "train" (auc, recall_hgg, recall_lgg; auc null when one class was seen);
// `health` holds "val_logit_spread" when validated.
std::string flat_training_warning(int epoch, const RunConfig& config, const nlohmann::json& train,
                                  const nlohmann::json& health);

}  // namespace dsmil::app
