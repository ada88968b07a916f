// Recomputes every reported number of a CV from its fold files (direct counting, pairwise AUC/DeLong)
// and compares it with what AUDIT.md printed, cv_summary.json holds and the training loop wrote.
#include "apps/report/consistency.h"

#include <cmath>
#include <functional>
#include <limits>
#include <set>

#include <fmt/format.h>

#include "apps/report/evaluation.h"
#include "apps/report/metrics.h"

namespace dsmil::report {
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kJsonTolerance = 1e-9;      // cv_summary.json holds full doubles
constexpr double kTrainingTolerance = 1e-6;  // the training loop may write float32 values

// Rows of one split with their labels, probabilities and own threshold column.
std::vector<const PredictionRow*> rows_of(const FoldData& fold, const std::string& split) {
  std::vector<const PredictionRow*> rows;
  for (const auto& r : fold.predictions)
    if (r.split == split) rows.push_back(&r);
  return rows;
}

// Confusion matrix by counting rows, each at the threshold `threshold_of(row)`.
Confusion count_confusion(const std::vector<const PredictionRow*>& rows,
                          const std::function<double(const PredictionRow&)>& threshold_of) {
  Confusion c;
  for (const auto* r : rows) {
    const bool hgg = r->p_hgg >= threshold_of(*r);
    if (r->label == 1)
      hgg ? ++c.tp : ++c.fn;
    else
      hgg ? ++c.fp : ++c.tn;
  }
  return c;
}

double own_threshold(const PredictionRow& r) { return r.threshold; }
double half_threshold(const PredictionRow&) { return 0.5; }

struct Scores {
  std::vector<int> labels;
  std::vector<double> p_hgg;
};
Scores scores(const std::vector<const PredictionRow*>& rows) {
  Scores s;
  for (const auto* r : rows) {
    s.labels.push_back(r->label);
    s.p_hgg.push_back(r->p_hgg);
  }
  return s;
}

// The rates a cv_summary.json threshold block holds, by the names of kThresholdMetrics.
std::map<std::string, double> rates(const Confusion& c) {
  return {{"accuracy", accuracy(c)},
          {"balanced_accuracy", balanced_accuracy(c)},
          {"f1", f1_hgg(c)},
          {"macro_f1", macro_f1(c)},
          {"sensitivity", sensitivity(c)},
          {"specificity", specificity(c)}};
}

// The summarised metrics of one fold or pooled repeat, keyed like the "summary" block's pointers
// ("auc", "at_threshold/calibrated/f1", …); written into `out` under `prefix` as well.
using Flat = std::map<std::string, double>;
Flat put_metrics(RecomputedValues& out, const std::string& prefix, const std::vector<const PredictionRow*>& rows,
                 double calibrated_threshold) {
  const Scores s = scores(rows);
  const AucInterval a = auc_delong_by_pairs(s.labels, s.p_hgg);
  Flat flat{{"auc", a.auc}, {"brier", brier(s.labels, s.p_hgg)}, {"ece", ece(s.labels, s.p_hgg)}};
  for (const auto& [name, value] : flat) out[prefix + "/" + name] = value;
  out[prefix + "/auc_se"] = a.se;
  out[prefix + "/auc_ci95/0"] = a.lo;
  out[prefix + "/auc_ci95/1"] = a.hi;
  long n_hgg = 0;
  double sum_p = 0;
  for (const auto* r : rows) {
    n_hgg += r->label;
    sum_p += r->p_hgg;
  }
  const double n = static_cast<double>(rows.size());
  const CalibrationShape fit = calibration_shape(s.labels, s.p_hgg);
  out[prefix + "/calibration/mean_p_hgg"] = sum_p / n;
  out[prefix + "/calibration/hgg_share"] = static_cast<double>(n_hgg) / n;
  out[prefix + "/calibration/slope"] = fit.slope;
  out[prefix + "/calibration/intercept"] = fit.intercept;
  out[prefix + "/n_hgg"] = static_cast<double>(n_hgg);
  out[prefix + "/n_lgg"] = static_cast<double>(rows.size()) - static_cast<double>(n_hgg);

  using ThresholdOf = double (*)(const PredictionRow&);
  for (const auto& [key, threshold_of, threshold] :
       {std::tuple<std::string, ThresholdOf, double>{kThresholdKeys[0], own_threshold, calibrated_threshold},
        std::tuple<std::string, ThresholdOf, double>{kThresholdKeys[1], half_threshold, 0.5}}) {
    const std::string block = prefix + "/at_threshold/" + key;
    const Confusion c = count_confusion(rows, threshold_of);
    out[block + "/threshold"] = threshold;
    out[block + "/confusion/0/0"] = static_cast<double>(c.tn);
    out[block + "/confusion/0/1"] = static_cast<double>(c.fp);
    out[block + "/confusion/1/0"] = static_cast<double>(c.fn);
    out[block + "/confusion/1/1"] = static_cast<double>(c.tp);
    for (const auto& [name, value] : rates(c)) {
      out[block + "/" + name] = value;
      flat["at_threshold/" + key + "/" + name] = value;
    }
    for (const auto& [name, interval] : {std::pair{"sensitivity_ci95", wilson_interval(c.tp, c.n_hgg())},
                                         std::pair{"specificity_ci95", wilson_interval(c.tn, c.n_lgg())}}) {
      out[block + "/" + name + "/0"] = interval[0];
      out[block + "/" + name + "/1"] = interval[1];
    }
  }
  return flat;
}

void put_spread(RecomputedValues& out, const std::string& prefix, const std::vector<double>& values) {
  const Spread s = spread(values);
  out[prefix + "/mean"] = s.mean;
  out[prefix + "/std"] = s.std;
  out[prefix + "/min"] = s.min;
  out[prefix + "/max"] = s.max;
  out[prefix + "/n"] = s.n;
}

// Spread of every key of `rows` under `prefix`.
void put_spreads(RecomputedValues& out, const std::string& prefix, const std::vector<Flat>& rows) {
  for (const auto& [key, unused] : rows.front()) {
    std::vector<double> values;
    for (const auto& r : rows) values.push_back(r.at(key));
    put_spread(out, prefix + "/" + key, values);
  }
}

bool best_epoch_logged(const FoldData& f) {
  return f.info.best_epoch >= 1 && f.info.best_epoch <= static_cast<int>(f.history.size());
}

// The split whose predictions chose checkpoint and threshold: the inner validation split (nested) or
// the test fold itself (select_on_test).
std::string calibration_split(const FoldInfo& info) { return info.protocol == "nested" ? "val" : "test"; }

void check_fold_files(const FoldData& f, const std::string& scope, std::vector<Check>& out) {
  const std::string group = "fold.json / predictions.csv";
  const FoldInfo& info = f.info;
  const auto test = rows_of(f, "test"), val = rows_of(f, "val");
  out.push_back(
      make_check(group, scope, "fold.json n_test = test rows", info.n_test, static_cast<double>(test.size()), 0));
  out.push_back(make_check(group, scope, "fold.json n_val = val rows", info.n_val, static_cast<double>(val.size()), 0));
  out.push_back(make_check(group, scope, "fold.json epochs_run = metrics.jsonl lines", info.epochs_run,
                           static_cast<double>(f.history.size()), 0));
  out.push_back(make_check(group, scope, "fold.json best_epoch is a logged epoch", info.best_epoch,
                           best_epoch_logged(f) ? info.best_epoch : kNaN, 0));
  if (best_epoch_logged(f)) {
    const SplitRecord& best = chosen_val(f.history[static_cast<size_t>(info.best_epoch - 1)], info);
    out.push_back(make_check(group, scope,
                             fmt::format("fold.json monitor_value = metrics.jsonl epoch {} {} {}", info.best_epoch,
                                         info.chosen_model == "ema" ? "val_ema" : "val", info.monitor),
                             info.monitor_value, monitor_value(best, info.monitor), kTrainingTolerance));
  }

  const Scores calibration = scores(rows_of(f, calibration_split(info)));
  const ThresholdMethod method = parse_threshold_method(info.threshold_method);
  const double recomputed_threshold = method == ThresholdMethod::fixed_0_5 || has_both_classes(calibration.labels)
                                          ? choose_threshold(calibration.labels, calibration.p_hgg, method)
                                          : kNaN;
  out.push_back(
      make_check(group, scope,
                 fmt::format("fold.json threshold = {} on the {} rows", info.threshold_method, calibration_split(info)),
                 info.threshold, recomputed_threshold, kTrainingTolerance));

  long other_threshold = 0, other_model = 0, wrong_pred_05 = 0, wrong_pred_thr = 0;
  for (const auto& r : f.predictions) {
    other_threshold += std::abs(r.threshold - info.threshold) > kTrainingTolerance;
    other_model += r.model != info.chosen_model;
    wrong_pred_05 += r.pred_05 != (r.p_hgg >= 0.5);
    wrong_pred_thr += r.pred_thr != (r.p_hgg >= r.threshold);
  }
  const auto count_check = [&](const std::string& what, long count) {
    out.push_back(make_check(group, scope, what, static_cast<double>(count), 0, 0));
  };
  count_check("rows whose threshold column differs from fold.json threshold", other_threshold);
  count_check("rows whose model column differs from fold.json chosen_model", other_model);
  count_check("rows whose pred_05 differs from p_hgg >= 0.5", wrong_pred_05);
  count_check("rows whose pred_thr differs from p_hgg >= threshold", wrong_pred_thr);
}

// The record's rates against its own confusion matrix; `what` names the record.
void check_record_rates(const SplitRecord& r, const std::string& group, const std::string& scope,
                        const std::string& what, std::vector<Check>& out) {
  const Confusion& c = r.confusion;
  const std::pair<const char*, std::pair<double, double>> rows[] = {
      {"accuracy", {r.accuracy, accuracy(c)}},
      {"balanced_accuracy", {r.balanced_accuracy, balanced_accuracy(c)}},
      {"f1", {r.f1, f1_hgg(c)}},
      {"recall_lgg", {r.recall_lgg, specificity(c)}},
      {"recall_hgg", {r.recall_hgg, sensitivity(c)}},
  };
  for (const auto& [name, values] : rows)
    out.push_back(make_check(group, scope, what + " " + name, values.first, values.second, kTrainingTolerance));
}

void check_best_epoch_against_rows(const FoldData& f, const std::string& scope, std::vector<Check>& out) {
  if (!best_epoch_logged(f)) return;
  const FoldInfo& info = f.info;
  const SplitRecord& logged = chosen_val(f.history[static_cast<size_t>(info.best_epoch - 1)], info);
  const auto rows = rows_of(f, calibration_split(info));
  if (rows.empty()) return;
  const std::string group = "metrics.jsonl best epoch / predictions.csv";
  const std::string what = fmt::format("epoch {} {} vs {} rows at 0.5:", info.best_epoch,
                                       info.chosen_model == "ema" ? "val_ema" : "val", calibration_split(info));
  const Scores s = scores(rows);
  const Confusion c = count_confusion(rows, half_threshold);
  out.push_back(make_check(group, scope, what + " auc", logged.auc, auc_delong_by_pairs(s.labels, s.p_hgg).auc,
                           kTrainingTolerance));
  const std::pair<const char*, std::pair<long, long>> counts[] = {{"tn", {logged.confusion.tn, c.tn}},
                                                                  {"fp", {logged.confusion.fp, c.fp}},
                                                                  {"fn", {logged.confusion.fn, c.fn}},
                                                                  {"tp", {logged.confusion.tp, c.tp}}};
  for (const auto& [name, values] : counts)
    out.push_back(make_check(group, scope, what + " " + name, static_cast<double>(values.first),
                             static_cast<double>(values.second), 0));
}

void check_history(const FoldData& f, const std::string& scope, std::vector<Check>& out) {
  const std::string group = "metrics.jsonl lines";
  for (const auto& e : f.history) {
    check_record_rates(e.train, group, scope, fmt::format("epoch {} train", e.epoch), out);
    check_record_rates(e.val, group, scope, fmt::format("epoch {} val", e.epoch), out);
    if (e.val_ema) check_record_rates(*e.val_ema, group, scope, fmt::format("epoch {} val_ema", e.epoch), out);
  }
}

double json_number(const json& j) { return j.is_null() ? kNaN : j.get<double>(); }

}  // namespace

Check make_check(std::string group, std::string scope, std::string what, double reported, double recomputed,
                 double tolerance) {
  const bool both_nan = std::isnan(reported) && std::isnan(recomputed);
  const bool pass = both_nan || std::abs(reported - recomputed) <= tolerance;
  return {std::move(group), std::move(scope), std::move(what), reported, recomputed, tolerance, pass, ""};
}

RecomputedValues recompute_values(const RunData& fresh) {
  RecomputedValues out;
  std::vector<Flat> fold_rows;
  std::vector<double> thresholds;
  std::map<int, std::vector<Flat>> fold_rows_of_repeat;
  for (size_t i = 0; i < fresh.folds.size(); ++i) {
    const FoldData& f = fresh.folds[i];
    const std::string prefix = fmt::format("/folds/{}", i);
    const auto test = rows_of(f, "test");
    const double threshold = test.empty() ? kNaN : test.front()->threshold;
    out[prefix + "/n_test"] = static_cast<double>(test.size());
    out[prefix + "/n_val"] = static_cast<double>(rows_of(f, "val").size());
    out[prefix + "/threshold"] = threshold;
    out[prefix + "/epochs_run"] = static_cast<double>(f.history.size());
    out[prefix + "/monitor_value"] =
        best_epoch_logged(f)
            ? monitor_value(chosen_val(f.history[static_cast<size_t>(f.info.best_epoch - 1)], f.info), f.info.monitor)
            : kNaN;
    fold_rows.push_back(put_metrics(out, prefix, test, threshold));
    fold_rows_of_repeat[f.info.repeat].push_back(fold_rows.back());
    thresholds.push_back(threshold);
  }
  out["/n_folds"] = static_cast<double>(fresh.folds.size());
  if (fold_rows.empty()) return out;
  put_spreads(out, "/summary", fold_rows);
  put_spread(out, "/summary/threshold", thresholds);

  std::vector<Flat> pooled_rows, fold_mean_rows;
  size_t j = 0;
  for (const auto& [repeat, rows_of_repeat] : fold_rows_of_repeat) {
    std::vector<const PredictionRow*> pooled;
    for (const auto& f : fresh.folds)
      if (f.info.repeat == repeat)
        for (const auto* r : rows_of(f, "test")) pooled.push_back(r);
    const std::string prefix = fmt::format("/pooled/{}", j++);
    out[prefix + "/n"] = static_cast<double>(pooled.size());
    pooled_rows.push_back(put_metrics(out, prefix, pooled, kNaN));
    Flat means;
    for (const auto& [key, unused] : rows_of_repeat.front()) {
      std::vector<double> values;
      for (const auto& r : rows_of_repeat) values.push_back(r.at(key));
      means[key] = spread(values).mean;
    }
    fold_mean_rows.push_back(means);
  }
  if (pooled_rows.size() > 1) {
    put_spreads(out, "/repeat_spread/pooled", pooled_rows);
    put_spreads(out, "/repeat_spread/fold_mean", fold_mean_rows);
  }
  return out;
}

RecomputedValues recount_anomaly_folds(const json& written) {
  std::map<std::string, std::set<std::string>> folds_of_rule;
  for (const auto& a : written.at("anomalies"))
    if (a.at("scope") != "CV") folds_of_rule[a.at("rule").get<std::string>()].insert(a.at("scope").get<std::string>());
  RecomputedValues out;
  for (const auto& [rule, folds] : folds_of_rule) out["/anomaly_folds/" + rule] = static_cast<double>(folds.size());
  return out;
}

std::vector<Check> check_printed(const std::vector<PrintedNumber>& printed, const RecomputedValues& truth) {
  std::vector<Check> out;
  for (const auto& p : printed) {
    const auto it = truth.find(p.pointer);
    const double recomputed = it == truth.end() ? kNaN : it->second * p.scale;
    const double tolerance = 0.5 * std::pow(10.0, -p.decimals) + 1e-9;
    Check c = make_check("AUDIT.md", "", p.pointer, p.printed, recomputed, tolerance);
    c.reported_text = p.text;
    if (it == truth.end()) {
      c.pass = false;
      c.what += " (no recomputation exists for this number)";
    }
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<Check> check_summary_json(const json& written, const RecomputedValues& truth) {
  std::vector<Check> out;
  for (const auto& [pointer, value] : truth) {
    const json::json_pointer at(pointer);
    if (!written.contains(at)) {
      Check c = make_check("cv_summary.json", "", pointer + " (missing)", kNaN, value, 0);
      c.pass = false;
      out.push_back(std::move(c));
      continue;
    }
    const double reported = json_number(written.at(at));
    out.push_back(
        make_check("cv_summary.json", "", pointer, reported, value, kJsonTolerance * std::max(1.0, std::abs(value))));
  }
  return out;
}

std::vector<Check> check_training_files(const RunData& fresh) {
  std::vector<Check> out;
  const int n_repeats = fresh.n_repeats();
  for (const auto& f : fresh.folds) {
    const std::string scope = fold_label(f.info, n_repeats);
    check_fold_files(f, scope, out);
    check_best_epoch_against_rows(f, scope, out);
    check_history(f, scope, out);
  }
  return out;
}

}  // namespace dsmil::report
