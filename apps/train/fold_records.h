// What a fold reports as it trains: the validation figures of an epoch's record (metrics.jsonl), and its progress
// on the terminal and in the logs (the fold's tag, the epoch line, the ETA).
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/train/config.h"
#include "apps/train/trainer.h"

namespace dsmil::app {

// A split's record from the model's predictions: AUC, recalls, ... and the loss weighted by class like the
// training loss (`class_weights[label]`).
nlohmann::json validation_metrics(const std::vector<CasePrediction>& preds, const float* class_weights);

// The attention's entropy, top-1 weight, effective instance number, the critical instance's confidence, and over
// the cases with a segmentation how often the critical instance lies in tumour, the attention weight on slabs
// holding tumour and the share of such slabs in a bag: the record's "attention".
nlohmann::json attention_diagnostics(const std::vector<CasePrediction>& preds,
                                     const std::vector<data::CaseVolume>& cohort, int slab_depth);

// The spread of the bags' logit margins y1 - y0 = log(p / (1 - p)).
double logit_spread(const std::vector<CasePrediction>& preds);

class FoldProgress {
 public:
  FoldProgress(const RunConfig& config, const FoldPlan& plan);
  // The clock of the ETA starts now, at `first_epoch` (after a resume: the epochs saved).
  void start(int first_epoch);
  // "[fold_2, 3/5]" ("[repeat_1/fold_2, 8/10]" when repeated): the fold's folder and its place among the folds
  // this process trains.
  std::string tag() const;
  // The epoch's line: training and validation figures, the monitor's best, health and speed, the ETA.
  std::string epoch_line(const nlohmann::json& record, const std::string& monitor, double best_value, bool best_is_ema,
                         int best_epoch) const;

 private:
  // Upper bounds from the mean epoch time so far: early stopping can end a fold sooner.
  std::string eta(int epochs_done) const;

  const RunConfig& c_;
  const FoldPlan& plan_;
  std::chrono::steady_clock::time_point started_;
  int first_epoch_ = 0;
};

}  // namespace dsmil::app
