// Model selection and early stopping of one fold: the best raw and the best EMA model by the monitored
// validation metric (AUC breaking ties), opened once training has started to learn, and the rule that ends the
// fold when the best model is `patience` epochs old.
#pragma once

#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "apps/train/config.h"

namespace dsmil::app {

// The monitor's value in a validation record (NaN when undefined), as fold.json states it.
double monitor_value(Monitor monitor, const nlohmann::json& metrics);

// One epoch's model as a contender: the monitor decides (higher is better, loss negated, undefined last);
// AUC breaks ties (min_class_recall moves in steps of 1/n).
struct Candidate {
  double value = NAN, score = -INFINITY, auc = -INFINITY;
  int epoch = 0;  // 1-based; 0: no candidate yet
  bool beaten_by(const Candidate& other) const;
};

// What one epoch's validation changed.
struct SelectionUpdate {
  bool raw_improved = false, ema_improved = false;
  bool stop = false;  // early stopping ends the fold after this epoch
};

class ModelSelection {
 public:
  explicit ModelSelection(const RunConfig& config) : config_(config) {}

  // Epoch `epoch` (1-based) trained to `train_auc` and validated as its record says: "val", and "val_ema" when the
  // fold keeps an EMA model. Selection and early stopping start at the first epoch whose training AUC reaches
  // train.selection_train_auc: before that, the validation peaks of a model at chance are noise (one case of a
  // 34-case split moves a recall by 0.03 to 0.2), and the epochs before no longer compete. A model that never
  // learns is selected over all its epochs and runs them all.
  SelectionUpdate add_epoch(int epoch, double train_auc, const nlohmann::json& record);

  bool open() const { return learning_since_ > 0; }
  bool stopped_early() const { return stopped_early_; }
  const Candidate& best_raw() const { return best_raw_; }
  const Candidate& best_ema() const { return best_ema_; }
  bool best_is_ema() const { return has_ema() && best_raw_.beaten_by(best_ema_); }
  const Candidate& best_overall() const { return best_is_ema() ? best_ema_ : best_raw_; }

  // The state last.ckpt keeps, and its restoration (a run resumed continues the same selection).
  void save(nlohmann::json& checkpoint_metadata) const;
  void restore(const nlohmann::json& checkpoint_metadata);

 private:
  Candidate candidate_of(const nlohmann::json& val, int epoch) const;
  bool has_ema() const { return config_.ema_decay > 0; }  // as the learner keeps one

  const RunConfig& config_;
  Candidate best_raw_, best_ema_;
  int learning_since_ = 0;  // the first epoch whose training AUC reached train.selection_train_auc (0: none yet)
  bool stopped_early_ = false;
};

}  // namespace dsmil::app
