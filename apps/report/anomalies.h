// Anomaly rules over a CV evaluation (class collapse, high AUC with low F1, no learning, overfitting, attention
// collapse, miscalibration, fold spread, optimistic protocol); recommendations.h maps them to advice.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/report/evaluation.h"

namespace dsmil::report {

// Limits of the rules; AUDIT.md prints them with the findings (`rules_text`).
struct AnomalyRules {
  double min_class_recall = 0.2;           // class collapse: a class recall below this
  double high_auc = 0.85;                  // high AUC with low F1: AUC at least this …
  double low_f1 = 0.7;                     // … and F1 below this
  double low_balanced_accuracy = 0.7;      // … or balanced accuracy below this
  double min_train_auc = 0.7;              // no learning: no epoch's training AUC reached this
  double max_final_loss_gap = 0.15;        // overfitting: val − train loss at the final epoch above this
  double max_val_loss_rise = 0.20;         // overfitting: final val loss above (1 + this) × its minimum
  double max_attention_top1 = 0.9;         // attention collapse: mean top-1 weight above this …
  double min_attention_neff = 1.5;         // … or mean effective number of instances below this, unless …
  double min_attention_tumour_mass = 0.8;  // … this much of the weight lies on slabs holding tumour
  double max_ece = 0.15;                   // miscalibration: test ECE above this
  double max_fold_std = 0.10;              // fold spread: sample std over folds of F1 or bal. acc. above this
};

enum class AnomalyKind {
  class_collapse,
  high_auc_low_f1,
  no_learning,
  overfitting,
  attention_collapse,
  miscalibration,
  fold_spread,
  optimistic_protocol,
};
std::string_view anomaly_name(AnomalyKind kind);

struct Anomaly {
  AnomalyKind kind;
  std::string scope;    // "repeat 0 fold 3", or "CV" for rules over all folds
  std::string message;  // the numbers that fired the rule
};

std::vector<Anomaly> find_anomalies(const CvEvaluation& cv, const AnomalyRules& rules = {});

// The findings as cv_summary.json's "anomalies": [{"rule", "scope", "message"}].
nlohmann::json anomalies_json(const std::vector<Anomaly>& anomalies);

// The rules as markdown bullet lines, with their limits.
std::string rules_text(const AnomalyRules& rules);

// The folds each rule fired in, by kind; rules over the whole CV have the scope "CV".
std::map<AnomalyKind, std::set<std::string>> scopes_by_kind(const std::vector<Anomaly>& anomalies);

// cv_summary.json's "anomaly_folds": {rule: number of folds it fired in}, for the rules judged per fold.
nlohmann::json anomaly_folds_json(const std::vector<Anomaly>& anomalies);

}  // namespace dsmil::report
