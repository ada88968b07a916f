// Per-fold and pooled out-of-fold metrics of a cross-validation from its fold files (test rows of
// predictions.csv, metrics.jsonl history), and their layout as the cv_summary.json object.
#include "apps/report/evaluation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include <fmt/format.h>

#include "base/error.h"

namespace dsmil::report {
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

Stability stability_of(const std::vector<EpochRecord>& history, const FoldInfo& info) {
  Stability s;
  s.epochs = static_cast<int>(history.size());
  s.best_epoch = info.best_epoch;
  const SplitRecord& first = chosen_val(history.front(), info);
  const SplitRecord& final = chosen_val(history.back(), info);
  s.val_loss_first = first.loss;
  s.val_auc_first = first.auc;
  s.val_loss_final = final.loss;
  s.val_auc_final = final.auc;
  s.train_loss_final = history.back().train.loss;
  s.loss_gap_final = s.val_loss_final - s.train_loss_final;
  s.val_loss_best = s.val_auc_best = s.train_auc_best = kNaN;
  if (info.best_epoch >= 1 && info.best_epoch <= s.epochs) {
    const EpochRecord& best_record = history[static_cast<size_t>(info.best_epoch - 1)];
    const SplitRecord& best = chosen_val(best_record, info);
    s.val_loss_best = best.loss;
    s.val_auc_best = best.auc;
    s.train_auc_best = best_record.train.auc;
  }
  for (const auto& e : history)
    if (!e.health_warning.empty()) {
      s.last_health_warning = e.health_warning;
      s.last_health_warning_epoch = e.epoch;
    }
  s.val_loss_min = std::numeric_limits<double>::infinity();
  for (const auto& e : history) {
    const double loss = chosen_val(e, info).loss;
    if (loss < s.val_loss_min) {
      s.val_loss_min = loss;
      s.min_val_loss_epoch = e.epoch;
    }
  }
  if (s.min_val_loss_epoch == 0) s.val_loss_min = kNaN;
  s.train_auc_max = kNaN;
  for (const auto& e : history)
    if (!std::isnan(e.train.auc) && (std::isnan(s.train_auc_max) || e.train.auc > s.train_auc_max)) {
      s.train_auc_max = e.train.auc;
      s.train_auc_max_epoch = e.epoch;
    }
  return s;
}

std::optional<AttentionTail> attention_tail_of(const std::vector<EpochRecord>& history) {
  AttentionTail t;
  double tumour_mass = 0, tumour_slab_share = 0;
  bool tumour_logged = true;
  for (auto e = history.rbegin(); e != history.rend() && t.epochs < kAttentionTailEpochs; ++e) {
    if (!e->attention) continue;
    const AttentionRecord& a = *e->attention;
    t.top1 += a.top1;
    t.neff += a.neff;
    t.entropy_norm += a.entropy_norm;
    tumour_logged = tumour_logged && a.attention_tumour_mass && a.tumour_slab_share;
    if (tumour_logged) {
      tumour_mass += *a.attention_tumour_mass;
      tumour_slab_share += *a.tumour_slab_share;
    }
    t.epochs++;
  }
  if (t.epochs == 0) return std::nullopt;
  t.top1 /= t.epochs;
  t.neff /= t.epochs;
  t.entropy_norm /= t.epochs;
  if (tumour_logged) {
    t.tumour_mass = tumour_mass / t.epochs;
    t.tumour_slab_share = tumour_slab_share / t.epochs;
  }
  return t;
}

FoldEvaluation evaluate_fold(const FoldData& fold) {
  FoldEvaluation f;
  f.info = fold.info;
  f.dir = fold.dir.string();
  const LabelledScores test = scores_of_split(fold.predictions, "test");
  f.n_hgg = std::count(test.labels.begin(), test.labels.end(), 1);
  f.n_lgg = static_cast<long>(test.labels.size()) - f.n_hgg;
  f.auc = auc_delong(test.labels, test.p_hgg);
  f.brier = brier(test.labels, test.p_hgg);
  f.ece = ece(test.labels, test.p_hgg);
  f.calibration = calibration_shape(test.labels, test.p_hgg);
  f.at_calibrated = threshold_metrics(test.labels, test.p_hgg, fold.info.threshold);
  f.at_half = threshold_metrics(test.labels, test.p_hgg, 0.5);
  if (!fold.history.empty()) f.stability = stability_of(fold.history, fold.info);
  f.attention = attention_tail_of(fold.history);
  return f;
}

ThresholdMetrics metrics_of_confusion(const Confusion& c, double threshold) {
  return {threshold, c, accuracy(c), balanced_accuracy(c), f1_hgg(c), macro_f1(c), sensitivity(c), specificity(c)};
}

PooledEvaluation evaluate_pooled(const RunData& run, const std::vector<FoldEvaluation>& folds, int repeat) {
  PooledEvaluation p;
  p.repeat = repeat;
  std::vector<int> labels;
  std::vector<double> p_hgg;
  Confusion calibrated;
  for (size_t i = 0; i < run.folds.size(); ++i) {
    if (run.folds[i].info.repeat != repeat) continue;
    const LabelledScores test = scores_of_split(run.folds[i].predictions, "test");
    labels.insert(labels.end(), test.labels.begin(), test.labels.end());
    p_hgg.insert(p_hgg.end(), test.p_hgg.begin(), test.p_hgg.end());
    const Confusion& c = folds[i].at_calibrated.confusion;
    calibrated = {calibrated.tn + c.tn, calibrated.fp + c.fp, calibrated.fn + c.fn, calibrated.tp + c.tp};
  }
  p.n = static_cast<long>(labels.size());
  p.n_hgg = std::count(labels.begin(), labels.end(), 1);
  p.n_lgg = p.n - p.n_hgg;
  p.auc = auc_delong(labels, p_hgg);
  p.brier = brier(labels, p_hgg);
  p.ece = ece(labels, p_hgg);
  p.calibration = calibration_shape(labels, p_hgg);
  p.at_calibrated = metrics_of_confusion(calibrated, kNaN);
  p.at_half = threshold_metrics(labels, p_hgg, 0.5);
  return p;
}

json confusion_json(const Confusion& c) { return json::array({{c.tn, c.fp}, {c.fn, c.tp}}); }

json threshold_metrics_json(const ThresholdMetrics& m) {
  json j{{"threshold", number_json(m.threshold)}, {"confusion", confusion_json(m.confusion)}};
  for (const auto& name : kThresholdMetrics) j[name] = number_json(threshold_metric(m, name));
  const Confusion& c = m.confusion;
  for (const auto& [name, interval] : {std::pair{"sensitivity_ci95", wilson_interval(c.tp, c.n_hgg())},
                                       std::pair{"specificity_ci95", wilson_interval(c.tn, c.n_lgg())}})
    j[name] = json::array({number_json(interval[0]), number_json(interval[1])});
  return j;
}

json auc_members(json j, const AucInterval& auc, double brier_score, double ece_score,
                 const CalibrationShape& calibration) {
  j["auc"] = number_json(auc.auc);
  j["auc_se"] = number_json(auc.se);
  j["auc_ci95"] = json::array({number_json(auc.lo), number_json(auc.hi)});
  j["brier"] = number_json(brier_score);
  j["ece"] = number_json(ece_score);
  j["calibration"] = {{"mean_p_hgg", number_json(calibration.mean_p_hgg)},
                      {"hgg_share", number_json(calibration.hgg_share)},
                      {"slope", number_json(calibration.slope)},
                      {"intercept", number_json(calibration.intercept)}};
  return j;
}

json at_threshold_json(const ThresholdMetrics& calibrated, const ThresholdMetrics& half) {
  return {{kThresholdKeys[0], threshold_metrics_json(calibrated)}, {kThresholdKeys[1], threshold_metrics_json(half)}};
}

// The metrics that the CV tables summarise, of one fold or one pooled repeat, by "name" for the
// threshold-free ones and "<threshold key>/<name>" for the others.
using MetricValues = std::map<std::string, double>;
MetricValues metric_values(const AucInterval& auc, double brier_score, double ece_score,
                           const ThresholdMetrics& calibrated, const ThresholdMetrics& half) {
  MetricValues v{{"auc", auc.auc}, {"brier", brier_score}, {"ece", ece_score}};
  for (const auto& name : kThresholdMetrics) {
    v[kThresholdKeys[0] + "/" + name] = threshold_metric(calibrated, name);
    v[kThresholdKeys[1] + "/" + name] = threshold_metric(half, name);
  }
  return v;
}

Spread spread_of(const std::vector<MetricValues>& rows, const std::string& key) {
  std::vector<double> values;
  for (const auto& r : rows) values.push_back(r.at(key));
  return spread(values);
}

// {"auc": spread, "brier": …, "ece": …, "at_threshold": {"calibrated": {name: spread}, "0.5": …}}.
json spread_block(const std::vector<MetricValues>& rows) {
  json j;
  for (const auto& name : kThresholdFreeMetrics) j[name] = spread_json(spread_of(rows, name));
  for (const auto& key : kThresholdKeys)
    for (const auto& name : kThresholdMetrics)
      j["at_threshold"][key][name] = spread_json(spread_of(rows, key + "/" + name));
  return j;
}

json stability_json(const std::optional<Stability>& s) {
  if (!s) return nullptr;
  return {{"epochs", s->epochs},
          {"best_epoch", s->best_epoch},
          {"val_loss_first", number_json(s->val_loss_first)},
          {"val_loss_best", number_json(s->val_loss_best)},
          {"val_loss_final", number_json(s->val_loss_final)},
          {"val_loss_min", number_json(s->val_loss_min)},
          {"min_val_loss_epoch", s->min_val_loss_epoch},
          {"val_auc_first", number_json(s->val_auc_first)},
          {"val_auc_best", number_json(s->val_auc_best)},
          {"val_auc_final", number_json(s->val_auc_final)},
          {"train_loss_final", number_json(s->train_loss_final)},
          {"train_auc_max", number_json(s->train_auc_max)},
          {"train_auc_max_epoch", s->train_auc_max_epoch},
          {"train_auc_best", number_json(s->train_auc_best)},
          {"last_health_warning", s->last_health_warning.empty() ? json(nullptr) : json(s->last_health_warning)},
          {"last_health_warning_epoch", s->last_health_warning_epoch},
          {"loss_gap_final", number_json(s->loss_gap_final)}};
}

json attention_json(const std::optional<AttentionTail>& t) {
  if (!t) return nullptr;
  return {{"epochs", t->epochs},
          {"top1", number_json(t->top1)},
          {"neff", number_json(t->neff)},
          {"entropy_norm", number_json(t->entropy_norm)},
          {"tumour_mass", t->tumour_mass ? number_json(*t->tumour_mass) : json(nullptr)},
          {"tumour_slab_share", t->tumour_slab_share ? number_json(*t->tumour_slab_share) : json(nullptr)}};
}

json fold_json(const FoldEvaluation& f) {
  const FoldInfo& i = f.info;
  json j{{"repeat", i.repeat},
         {"fold", i.fold},
         {"dir", f.dir},
         {"protocol", i.protocol},
         {"best_epoch", i.best_epoch},
         {"epochs_run", i.epochs_run},
         {"stopped_early", i.stopped_early},
         {"chosen_model", i.chosen_model},
         {"monitor", i.monitor},
         {"monitor_value", number_json(i.monitor_value)},
         {"threshold_method", i.threshold_method},
         {"threshold", number_json(i.threshold)},
         {"n_train", i.n_train},
         {"n_val", i.n_val},
         {"n_test", i.n_test},
         {"n_hgg", f.n_hgg},
         {"n_lgg", f.n_lgg}};
  j = auc_members(std::move(j), f.auc, f.brier, f.ece, f.calibration);
  j["at_threshold"] = at_threshold_json(f.at_calibrated, f.at_half);
  j["stability"] = stability_json(f.stability);
  j["attention_last_epochs"] = attention_json(f.attention);
  return j;
}

}  // namespace

std::string tumour_attention_text(const AttentionTail& t) {
  if (!t.tumour_mass || !t.tumour_slab_share) return "";
  return fmt::format("; {:.3f} of the weight on slabs holding tumour ({:.3f} under uniform attention)", *t.tumour_mass,
                     *t.tumour_slab_share);
}

Confidence confidence_direction(const CalibrationShape& c) {
  if (std::isnan(c.slope)) return Confidence::unknown;
  if (c.slope < 1.0 / kSlopeBand) return Confidence::over;
  if (c.slope > kSlopeBand) return Confidence::under;
  return Confidence::neither;
}

std::string_view confidence_name(Confidence c) {
  switch (c) {
    case Confidence::over:
      return "over-confident";
    case Confidence::under:
      return "under-confident";
    case Confidence::neither:
      return "neither over- nor under-confident";
    case Confidence::unknown:
      break;
  }
  return "slope not estimable";
}

std::string calibration_shape_text(const CalibrationShape& c) {
  return fmt::format(
      "mean p(HGG) {:.3f} against an HGG share of {:.3f}; calibration slope {:.2f}, intercept {:.2f}: {}", c.mean_p_hgg,
      c.hgg_share, c.slope, c.intercept, confidence_name(confidence_direction(c)));
}

std::string fold_label(const FoldInfo& info, int n_repeats) {
  return n_repeats > 1 ? fmt::format("repeat {} fold {}", info.repeat, info.fold) : fmt::format("fold {}", info.fold);
}

std::string metric_title(const std::string& name) {
  static const std::map<std::string, std::string> titles{
      {"auc", "AUC"},
      {"brier", "Brier score"},
      {"ece", "ECE (10 bins)"},
      {"accuracy", "Accuracy"},
      {"balanced_accuracy", "Balanced accuracy"},
      {"f1", "F1 (HGG positive)"},
      {"macro_f1", "Macro F1"},
      {"sensitivity", "Sensitivity (HGG recall)"},
      {"specificity", "Specificity (LGG recall)"},
  };
  const auto it = titles.find(name);
  return it == titles.end() ? name : it->second;
}

double threshold_metric(const ThresholdMetrics& m, const std::string& name) {
  if (name == "accuracy") return m.accuracy;
  if (name == "balanced_accuracy") return m.balanced_accuracy;
  if (name == "f1") return m.f1;
  if (name == "macro_f1") return m.macro_f1;
  if (name == "sensitivity") return m.sensitivity;
  if (name == "specificity") return m.specificity;
  throw Error("threshold metric '" + name + "' is unknown");
}

json number_json(double value) { return std::isnan(value) ? json(nullptr) : json(value); }

json spread_json(const Spread& s) {
  return {{"mean", number_json(s.mean)},
          {"std", number_json(s.std)},
          {"min", number_json(s.min)},
          {"max", number_json(s.max)},
          {"n", s.n}};
}

CvEvaluation evaluate(const RunData& run) {
  CvEvaluation cv;
  cv.protocol = run.protocol();
  cv.n_repeats = run.n_repeats();
  for (const auto& fold : run.folds) cv.folds.push_back(evaluate_fold(fold));
  std::vector<int> repeats;
  for (const auto& fold : run.folds)
    if (repeats.empty() || repeats.back() != fold.info.repeat) repeats.push_back(fold.info.repeat);
  for (int r : repeats) cv.pooled.push_back(evaluate_pooled(run, cv.folds, r));
  return cv;
}

json summary_json(const CvEvaluation& cv, const std::vector<std::string>& inputs) {
  json j{{"format_version", 1},
         {"generated_by", "dsmil audit"},
         {"inputs", inputs},
         {"protocol", cv.protocol},
         {"optimistic", cv.optimistic()},
         {"conventions",
          {{"positive_class", "HGG (label 1); predicted HGG when p_hgg >= threshold"},
           {"threshold_calibrated", "per fold: fold.json threshold, chosen by its threshold_method"},
           {"threshold_0.5", "fixed 0.5"},
           {"auc", "Mann-Whitney, ties count half; auc_ci95 DeLong, clipped to [0,1]"},
           {"ece", "10 equal-width bins of p_hgg vs HGG frequency"},
           {"std", "sample standard deviation (n-1) over folds"},
           {"pooled", "out-of-fold test predictions of one repeat; calibrated: each case at its fold's threshold"}}},
         {"n_repeats", cv.n_repeats},
         {"n_folds", cv.folds.size()}};

  std::vector<MetricValues> fold_values;
  for (const auto& f : cv.folds) {
    j["folds"].push_back(fold_json(f));
    fold_values.push_back(metric_values(f.auc, f.brier, f.ece, f.at_calibrated, f.at_half));
  }
  j["summary"] = spread_block(fold_values);
  std::vector<double> thresholds;
  for (const auto& f : cv.folds) thresholds.push_back(f.info.threshold);
  j["summary"]["threshold"] = spread_json(spread(thresholds));

  std::vector<MetricValues> pooled_values, repeat_fold_means;
  for (const auto& p : cv.pooled) {
    json entry{{"repeat", p.repeat}, {"n", p.n}, {"n_hgg", p.n_hgg}, {"n_lgg", p.n_lgg}};
    entry = auc_members(std::move(entry), p.auc, p.brier, p.ece, p.calibration);
    entry["at_threshold"] = at_threshold_json(p.at_calibrated, p.at_half);
    j["pooled"].push_back(entry);
    pooled_values.push_back(metric_values(p.auc, p.brier, p.ece, p.at_calibrated, p.at_half));

    std::vector<MetricValues> of_repeat;
    for (size_t i = 0; i < cv.folds.size(); ++i)
      if (cv.folds[i].info.repeat == p.repeat) of_repeat.push_back(fold_values[i]);
    MetricValues means;
    for (const auto& [key, value] : of_repeat.front()) means[key] = spread_of(of_repeat, key).mean;
    repeat_fold_means.push_back(means);
  }
  if (cv.n_repeats > 1)
    j["repeat_spread"] = {{"pooled", spread_block(pooled_values)}, {"fold_mean", spread_block(repeat_fold_means)}};
  return j;
}

}  // namespace dsmil::report
