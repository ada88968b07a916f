// The consistency checks of the audit: every number the report prints or writes to cv_summary.json is
// recomputed from the fold files read again, and the numbers the training loop wrote (fold.json,
// metrics.jsonl, the prediction columns) are checked against the predictions they claim to describe.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/report/run_dir.h"

namespace dsmil::report {

struct Check {
  std::string group;      // what is checked, e.g. "AUDIT.md", "cv_summary.json", "metrics.jsonl lines"
  std::string scope;      // "fold 3", "CV", …
  std::string what;       // the number, e.g. a cv_summary.json pointer or "metrics.jsonl epoch 7 val accuracy"
  double reported = 0;    // the number as written
  double recomputed = 0;  // the number recomputed from the predictions (NaN: undefined)
  double tolerance = 0;   // largest accepted |reported − recomputed|; NaN matches only NaN
  bool pass = false;
  std::string reported_text;  // the number as printed, where it was printed
};

// Builds a check: pass when both are NaN or |reported − recomputed| <= tolerance.
Check make_check(std::string group, std::string scope, std::string what, double reported, double recomputed,
                 double tolerance);

// A number printed in AUDIT.md: the cv_summary.json pointer it shows, as printed (× scale, rounded to
// `decimals`; NaN when printed as "n/a").
struct PrintedNumber {
  std::string pointer;
  std::string text;  // as it appears in AUDIT.md
  double printed = 0;
  int decimals = 0;
  double scale = 1;  // 100 for percentages
};

// Values of the cv_summary.json pointers that the predictions determine (per-fold test metrics at both
// thresholds, AUC intervals, counts, the thresholds, summary spreads, pooled and per-repeat metrics),
// plus monitor_value and epochs_run recomputed from metrics.jsonl, and the number of folds. Recomputed from `fresh`,
// which the caller reads from disk again, by direct counting and the pairwise AUC/DeLong reference; the fold order is
// that of RunData (repeat, fold).
using RecomputedValues = std::map<std::string, double>;
RecomputedValues recompute_values(const RunData& fresh);

// The number of folds each rule fired in ("/anomaly_folds/<rule>"), counted from a cv_summary.json's
// "anomalies" list as read back from disk: the counts the report prints must match the findings it lists.
RecomputedValues recount_anomaly_folds(const nlohmann::json& written);

// Each printed number against its recomputation (within half a unit of its last printed digit).
std::vector<Check> check_printed(const std::vector<PrintedNumber>& printed, const RecomputedValues& truth);
// Each recomputable pointer of a cv_summary.json as read back from disk.
std::vector<Check> check_summary_json(const nlohmann::json& written, const RecomputedValues& truth);
// What the training loop wrote, against the predictions: fold.json threshold (recomputed by its method on
// the calibration rows), the threshold/model/pred_05/pred_thr columns, the best epoch's validation record
// against the validation rows at 0.5, and every metrics.jsonl rate against that line's confusion matrix.
std::vector<Check> check_training_files(const RunData& fresh);

}  // namespace dsmil::report
