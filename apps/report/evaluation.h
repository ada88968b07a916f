// What the report says about a cross-validation: per fold, the test-set metrics recomputed from
// predictions.csv at the fold's calibrated threshold and at 0.5, training stability from metrics.jsonl,
// and pooled out-of-fold metrics per repeat; `summary_json` lays it out as cv_summary.json.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/report/metrics.h"
#include "apps/report/run_dir.h"

namespace dsmil::report {

// Losses and AUC of the chosen model's validation record over the epochs (FORMAT.md: `chosen_val`).
struct Stability {
  int epochs = 0, best_epoch = 0, min_val_loss_epoch = 0;
  double val_loss_first = 0, val_loss_best = 0, val_loss_final = 0, val_loss_min = 0;
  double val_auc_first = 0, val_auc_best = 0, val_auc_final = 0;
  double train_loss_final = 0;
  double train_auc_max = 0;           // the highest training AUC of any epoch (NaN when none was logged) …
  int train_auc_max_epoch = 0;        // … and its epoch
  double train_auc_best = 0;          // the training AUC of the best epoch (NaN when not logged)
  std::string last_health_warning;    // the last flat-training warning of the fold (empty: none) …
  int last_health_warning_epoch = 0;  // … and its epoch
  double loss_gap_final = 0;          // val_loss_final − train_loss_final
};

// Attention diagnostics averaged over the last `epochs` epochs that logged them.
struct AttentionTail {
  int epochs = 0;
  double top1 = 0, neff = 0, entropy_norm = 0;
  // Means over the same epochs where each of them logged them (tumour segmentations exist): the attention weight
  // on slabs holding tumour, and the share of slabs holding tumour.
  std::optional<double> tumour_mass, tumour_slab_share;
};

struct FoldEvaluation {
  FoldInfo info;  // as fold.json states it
  std::string dir;
  long n_hgg = 0, n_lgg = 0;  // test rows of each class
  AucInterval auc;
  double brier = 0, ece = 0;
  CalibrationShape calibration;
  ThresholdMetrics at_calibrated;          // at fold.json's threshold
  ThresholdMetrics at_half;                // at 0.5
  std::optional<Stability> stability;      // absent when metrics.jsonl is empty
  std::optional<AttentionTail> attention;  // absent when no epoch logged attention
};

// Out-of-fold predictions of one repeat pooled over its folds; each case keeps its own fold's threshold.
struct PooledEvaluation {
  int repeat = 0;
  long n = 0, n_hgg = 0, n_lgg = 0;
  AucInterval auc;
  double brier = 0, ece = 0;
  CalibrationShape calibration;
  ThresholdMetrics at_calibrated;  // threshold field NaN: each fold's own
  ThresholdMetrics at_half;
};

struct CvEvaluation {
  std::string protocol;
  int n_repeats = 1;
  std::vector<FoldEvaluation> folds;     // ordered by (repeat, fold)
  std::vector<PooledEvaluation> pooled;  // one per repeat
  bool optimistic() const { return protocol != "nested"; }
};

inline constexpr int kAttentionTailEpochs = 5;

// "; 0.920 of the weight on slabs holding tumour (0.400 under uniform attention)" where the tail has those means,
// else empty.
std::string tumour_attention_text(const AttentionTail& t);

// A calibration slope within [1 / this, this] counts as neither over- nor under-confident.
inline constexpr double kSlopeBand = 1.25;
// A mean p(HGG) further than this from the HGG share is a shift worth naming.
inline constexpr double kShiftBand = 0.05;
// Over-confident: slope below 1 / kSlopeBand; under-confident: above kSlopeBand; unknown: no slope estimate.
enum class Confidence { over, under, neither, unknown };
Confidence confidence_direction(const CalibrationShape& c);
// "over-confident", "under-confident", "neither over- nor under-confident", "slope not estimable".
std::string_view confidence_name(Confidence c);
// "mean p(HGG) 0.487 against an HGG share of 0.740; calibration slope 1.93, intercept 1.52: under-confident".
std::string calibration_shape_text(const CalibrationShape& c);

CvEvaluation evaluate(const RunData& run);

// The metric names of the CV tables, in print order: threshold-free first, then threshold metrics.
inline const std::vector<std::string> kThresholdFreeMetrics{"auc", "brier", "ece"};
inline const std::vector<std::string> kThresholdMetrics{"accuracy", "balanced_accuracy", "f1",
                                                        "macro_f1", "sensitivity",       "specificity"};
// Keys of the two thresholds in cv_summary.json ("at_threshold": {"calibrated": …, "0.5": …}).
inline const std::vector<std::string> kThresholdKeys{"calibrated", "0.5"};

// "fold k", or "repeat r fold k" when the CV has several repeats.
std::string fold_label(const FoldInfo& info, int n_repeats);

// The title of a metric of the CV tables ("f1" -> "F1 (HGG positive)").
std::string metric_title(const std::string& name);

// A value of ThresholdMetrics by its name in kThresholdMetrics.
double threshold_metric(const ThresholdMetrics& m, const std::string& name);

// Spread as {"mean","std","min","max","n"}; NaN becomes null.
nlohmann::json spread_json(const Spread& s);
// A double as JSON, NaN as null.
nlohmann::json number_json(double value);

// cv_summary.json (layout in FORMAT.md) without its "anomalies" and "consistency" members.
nlohmann::json summary_json(const CvEvaluation& cv, const std::vector<std::string>& inputs);

}  // namespace dsmil::report
