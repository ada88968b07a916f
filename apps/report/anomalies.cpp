// Applies the stated anomaly rules to each fold's test metrics (at both thresholds), training history
// and attention diagnostics, and to the spread over folds.
#include "apps/report/anomalies.h"

#include <cmath>

#include <fmt/format.h>

namespace dsmil::report {
namespace {

// The thresholds a fold is judged at: its calibrated one, and 0.5 unless that is the same cut.
std::vector<std::pair<std::string, const ThresholdMetrics*>> judged_thresholds(const FoldEvaluation& f) {
  std::vector<std::pair<std::string, const ThresholdMetrics*>> out;
  if (f.info.threshold != 0.5)
    out.emplace_back(fmt::format("calibrated threshold {:.4f} ({})", f.info.threshold, f.info.threshold_method),
                     &f.at_calibrated);
  out.emplace_back("threshold 0.5", &f.at_half);
  return out;
}

void class_collapse(const FoldEvaluation& f, const std::string& scope, const AnomalyRules& rules,
                    std::vector<Anomaly>& out) {
  for (const auto& [label, m] : judged_thresholds(f)) {
    const Confusion& c = m->confusion;
    const bool all_lgg = c.tp + c.fp == 0, all_hgg = c.tn + c.fn == 0;
    const bool low_hgg = m->sensitivity < rules.min_class_recall, low_lgg = m->specificity < rules.min_class_recall;
    if (!(all_lgg || all_hgg || low_hgg || low_lgg)) continue;
    std::string what = fmt::format("at {}: HGG recall {:.3f} ({}/{} correct), LGG recall {:.3f} ({}/{} correct)", label,
                                   m->sensitivity, c.tp, c.n_hgg(), m->specificity, c.tn, c.n_lgg());
    if (all_lgg) what += fmt::format("; all {} predictions are LGG", c.n());
    if (all_hgg) what += fmt::format("; all {} predictions are HGG", c.n());
    out.push_back({AnomalyKind::class_collapse, scope, what});
  }
}

void high_auc_low_f1(const FoldEvaluation& f, const std::string& scope, const AnomalyRules& rules,
                     std::vector<Anomaly>& out) {
  if (!(f.auc.auc >= rules.high_auc)) return;
  for (const auto& [label, m] : judged_thresholds(f)) {
    // A NaN F1 (nothing predicted HGG and no HGG case) cannot occur with both classes present.
    if (m->f1 < rules.low_f1 || m->balanced_accuracy < rules.low_balanced_accuracy)
      out.push_back({AnomalyKind::high_auc_low_f1, scope,
                     fmt::format("AUC {:.4f} but at {}: F1 {:.4f}, balanced accuracy {:.4f}", f.auc.auc, label, m->f1,
                                 m->balanced_accuracy)});
  }
}

// A fold whose model never ranked its own training bags well learned nothing its test metrics could show.
void no_learning(const FoldEvaluation& f, const std::string& scope, const AnomalyRules& rules,
                 std::vector<Anomaly>& out) {
  if (!f.stability || std::isnan(f.stability->train_auc_max)) return;
  const Stability& s = *f.stability;
  if (s.train_auc_max < rules.min_train_auc)
    out.push_back(
        {AnomalyKind::no_learning, scope,
         fmt::format("the training AUC never reached {:.2f}: at most {:.4f} (epoch {}) over {} epochs{}{}",
                     rules.min_train_auc, s.train_auc_max, s.train_auc_max_epoch, s.epochs,
                     f.info.stopped_early ? ", stopped early" : "",
                     s.last_health_warning.empty() ? std::string()
                                                   : fmt::format(". Training health at epoch {}: {}",
                                                                 s.last_health_warning_epoch, s.last_health_warning))});
}

void overfitting(const FoldEvaluation& f, const std::string& scope, const AnomalyRules& rules,
                 std::vector<Anomaly>& out) {
  if (!f.stability) return;
  const Stability& s = *f.stability;
  if (s.loss_gap_final > rules.max_final_loss_gap)
    out.push_back({AnomalyKind::overfitting, scope,
                   fmt::format("final epoch {}: val loss {:.4f} − train loss {:.4f} = {:.4f} > {:.2f}", s.epochs,
                               s.val_loss_final, s.train_loss_final, s.loss_gap_final, rules.max_final_loss_gap)});
  if (s.val_loss_final > (1.0 + rules.max_val_loss_rise) * s.val_loss_min)
    out.push_back({AnomalyKind::overfitting, scope,
                   fmt::format("val loss rose {:.1f}% from its minimum {:.4f} (epoch {}) to {:.4f} (epoch {})",
                               100.0 * (s.val_loss_final / s.val_loss_min - 1.0), s.val_loss_min, s.min_val_loss_epoch,
                               s.val_loss_final, s.epochs)});
}

void attention_collapse(const FoldEvaluation& f, const std::string& scope, const AnomalyRules& rules,
                        std::vector<Anomaly>& out) {
  if (!f.attention) return;
  const AttentionTail& t = *f.attention;
  const bool concentrated = t.top1 > rules.max_attention_top1 || t.neff < rules.min_attention_neff;
  // Attention concentrated on the lesion is what a MIL head is for; concentrated elsewhere, or where no
  // segmentation tells, it is the seed's collapse onto arbitrary slabs.
  if (!concentrated || (t.tumour_mass && *t.tumour_mass >= rules.min_attention_tumour_mass)) return;
  out.push_back({AnomalyKind::attention_collapse, scope,
                 fmt::format("over the last {} epochs: mean top-1 weight {:.3f}, mean effective instances {:.2f}, "
                             "normalised entropy {:.3f}{}",
                             t.epochs, t.top1, t.neff, t.entropy_norm, tumour_attention_text(t))});
}

void miscalibration(const FoldEvaluation& f, const std::string& scope, const AnomalyRules& rules,
                    std::vector<Anomaly>& out) {
  if (f.ece > rules.max_ece)
    out.push_back({AnomalyKind::miscalibration, scope,
                   fmt::format("test ECE {:.4f} > {:.2f} (Brier {:.4f}); {}", f.ece, rules.max_ece, f.brier,
                               calibration_shape_text(f.calibration))});
}

void fold_spread(const CvEvaluation& cv, const AnomalyRules& rules, std::vector<Anomaly>& out) {
  if (cv.folds.size() < 2) return;
  for (const auto& [name, pick] : {std::pair<std::string, double ThresholdMetrics::*>{"F1", &ThresholdMetrics::f1},
                                   std::pair<std::string, double ThresholdMetrics::*>{
                                       "balanced accuracy", &ThresholdMetrics::balanced_accuracy}}) {
    std::vector<double> values;
    for (const auto& f : cv.folds) values.push_back(f.at_calibrated.*pick);
    const Spread s = spread(values);
    if (s.std > rules.max_fold_std)
      out.push_back({AnomalyKind::fold_spread, "CV",
                     fmt::format("{} at the calibrated thresholds varies over {} folds: {:.4f} ± {:.4f} "
                                 "(min {:.4f}, max {:.4f})",
                                 name, s.n, s.mean, s.std, s.min, s.max)});
  }
}

}  // namespace

std::string_view anomaly_name(AnomalyKind kind) {
  switch (kind) {
    case AnomalyKind::class_collapse:
      return "class collapse";
    case AnomalyKind::high_auc_low_f1:
      return "high AUC with low F1";
    case AnomalyKind::no_learning:
      return "no learning";
    case AnomalyKind::overfitting:
      return "overfitting";
    case AnomalyKind::attention_collapse:
      return "attention collapse";
    case AnomalyKind::miscalibration:
      return "miscalibration";
    case AnomalyKind::fold_spread:
      return "fold spread";
    case AnomalyKind::optimistic_protocol:
      return "optimistic protocol";
  }
  return "?";
}

std::vector<Anomaly> find_anomalies(const CvEvaluation& cv, const AnomalyRules& rules) {
  std::vector<Anomaly> out;
  if (cv.optimistic())
    out.push_back({AnomalyKind::optimistic_protocol, "CV",
                   fmt::format("protocol '{}': checkpoint and threshold were chosen on the test folds, so every "
                               "test metric is optimistic",
                               cv.protocol)});
  for (const auto& f : cv.folds) {
    const std::string scope = fold_label(f.info, cv.n_repeats);
    class_collapse(f, scope, rules, out);
    high_auc_low_f1(f, scope, rules, out);
    no_learning(f, scope, rules, out);
    overfitting(f, scope, rules, out);
    attention_collapse(f, scope, rules, out);
    miscalibration(f, scope, rules, out);
  }
  fold_spread(cv, rules, out);
  return out;
}

nlohmann::json anomalies_json(const std::vector<Anomaly>& anomalies) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& a : anomalies)
    list.push_back({{"rule", std::string(anomaly_name(a.kind))}, {"scope", a.scope}, {"message", a.message}});
  return list;
}

std::string rules_text(const AnomalyRules& r) {
  return fmt::format(
      "- **class collapse**: on the test fold, at the calibrated threshold or at 0.5, the recall of a class "
      "is below {:.2f}, or every prediction is one class.\n"
      "- **high AUC with low F1**: test AUC ≥ {:.2f} and, at a threshold, F1 (HGG positive) < {:.2f} or balanced "
      "accuracy < {:.2f} (a threshold problem, not a ranking problem).\n"
      "- **no learning**: no epoch's training AUC (training bags as drawn, at that epoch) reached {:.2f}.\n"
      "- **overfitting**: at the final epoch val loss − train loss > {:.2f}, or the final val loss is more than "
      "{:.0f}% above its minimum (val = the chosen model's validation record).\n"
      "- **attention collapse**: over the last {} epochs with attention diagnostics, mean top-1 attention weight "
      "> {:.2f} or mean effective number of instances 1/Σa² < {:.2f}, unless tumour segmentations show at least "
      "{:.2f} of the attention weight on slabs holding tumour (attention on the lesion is localisation).\n"
      "- **miscalibration**: test ECE ({} equal-width bins) > {:.2f}.\n"
      "- **fold spread**: sample std over folds of F1 or balanced accuracy (calibrated threshold) > {:.2f}.\n"
      "- **optimistic protocol**: the run selected checkpoints/thresholds on the test folds (`select_on_test`).\n",
      r.min_class_recall, r.high_auc, r.low_f1, r.low_balanced_accuracy, r.min_train_auc, r.max_final_loss_gap,
      100.0 * r.max_val_loss_rise, kAttentionTailEpochs, r.max_attention_top1, r.min_attention_neff,
      r.min_attention_tumour_mass, kEceBins, r.max_ece, r.max_fold_std);
}

std::map<AnomalyKind, std::set<std::string>> scopes_by_kind(const std::vector<Anomaly>& anomalies) {
  std::map<AnomalyKind, std::set<std::string>> scopes;
  for (const auto& a : anomalies) scopes[a.kind].insert(a.scope);
  return scopes;
}

nlohmann::json anomaly_folds_json(const std::vector<Anomaly>& anomalies) {
  nlohmann::json counts = nlohmann::json::object();
  for (const auto& [kind, scopes] : scopes_by_kind(anomalies))
    if (!scopes.contains("CV")) counts[std::string(anomaly_name(kind))] = scopes.size();
  return counts;
}

}  // namespace dsmil::report
