// Binary classification metrics of HGG (label 1, the positive class) vs LGG (label 0) computed from
// labels (n ints, 0/1) and probabilities p(HGG) (n doubles in [0, 1]); no dependency on the tensor layer.
#pragma once

#include <array>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dsmil::report {

// Conventions shared by every function here:
// - a case is predicted HGG when p_hgg >= threshold;
// - a value that is undefined for the input (AUC of a one-class set, recall of an absent class, F1 with
//   no positive prediction and no positive case) is NaN, never a silent 0 or 1; `has_both_classes`
//   tells the caller beforehand;
// - labels must be 0 or 1 and probabilities finite in [0, 1]; sizes must match (ShapeError otherwise,
//   dsmil::Error for bad values).

// Rows = true class (0 = LGG, 1 = HGG), columns = predicted class; JSON layout [[tn, fp], [fn, tp]].
struct Confusion {
  long tn = 0, fp = 0, fn = 0, tp = 0;
  long n() const { return tn + fp + fn + tp; }
  long n_hgg() const { return fn + tp; }
  long n_lgg() const { return tn + fp; }
  bool operator==(const Confusion&) const = default;
};

bool has_both_classes(std::span<const int> labels);
Confusion confusion_at(std::span<const int> labels, std::span<const double> p_hgg, double threshold);

// Rates from a confusion matrix (NaN where the denominator is 0).
double accuracy(const Confusion& c);
double sensitivity(const Confusion& c);        // recall of HGG = tp / (tp + fn)
double specificity(const Confusion& c);        // recall of LGG = tn / (tn + fp)
double balanced_accuracy(const Confusion& c);  // (sensitivity + specificity) / 2
double f1_hgg(const Confusion& c);             // F1 with HGG positive: 2tp / (2tp + fp + fn)
double f1_lgg(const Confusion& c);             // F1 with LGG positive: 2tn / (2tn + fn + fp)
double macro_f1(const Confusion& c);           // (f1_hgg + f1_lgg) / 2
// Recall per class, indexed by label: {recall LGG, recall HGG}.
std::array<double, 2> per_class_recall(const Confusion& c);

// Wilson's 95% score interval of a proportion successes / n (z = 1.959964): inside [0, 1] and not a point at 0 or n
// successes, which the normal approximation is on a fold's 15 LGG cases. Both NaN for n = 0.
std::array<double, 2> wilson_interval(long successes, long n);

// Every threshold-dependent metric of one prediction set at one threshold.
struct ThresholdMetrics {
  double threshold = 0.5;
  Confusion confusion;
  double accuracy = 0, balanced_accuracy = 0, f1 = 0, macro_f1 = 0, sensitivity = 0, specificity = 0;
};
ThresholdMetrics threshold_metrics(std::span<const int> labels, std::span<const double> p_hgg, double threshold);

// AUC = P(p of a random HGG > p of a random LGG) + 0.5 P(equal) (Mann–Whitney); NaN for one class.
double auc(std::span<const int> labels, std::span<const double> p_hgg);

// AUC with its DeLong (1988) standard error and 95% interval auc ± 1.959964·se, clipped to [0, 1].
// Structural components use the same half-credit for ties; variances use n−1. All NaN for one class;
// se, lo, hi NaN when a class has a single case; se is 0 (the interval a point) when every HGG–LGG
// pair is ordered the same way.
struct AucInterval {
  double auc = 0, se = 0, lo = 0, hi = 0;
};
AucInterval auc_delong(std::span<const int> labels, std::span<const double> p_hgg);

// The same interval computed directly from its definition over all m·n (HGG, LGG) pairs, O(m·n): the
// independent reference that tests and the report's consistency section check auc_delong against.
AucInterval auc_delong_by_pairs(std::span<const int> labels, std::span<const double> p_hgg);

// Mean squared error of p_hgg against the label.
double brier(std::span<const int> labels, std::span<const double> p_hgg);

// Calibration of p(HGG) against the HGG frequency (binary, not top-label) in `bins` equal-width bins
// [0, 1/bins), ..., [1 − 1/bins, 1] (p = 1 falls in the last bin). Empty bins have count 0 and NaN means.
struct ReliabilityBin {
  double lo = 0, hi = 0;
  long count = 0;
  double mean_p_hgg = 0, frac_hgg = 0;
};
inline constexpr int kEceBins = 10;
std::vector<ReliabilityBin> reliability_bins(std::span<const int> labels, std::span<const double> p_hgg,
                                             int bins = kEceBins);
// ECE = Σ_bins (count / n) |mean p − HGG frequency| over the reliability bins above.
double ece(std::span<const int> labels, std::span<const double> p_hgg, int bins = kEceBins);

// What kind of miscalibration, as clinical prediction models report it: calibration-in-the-large (the mean p(HGG)
// against the share of HGG cases: a shift of the whole scale, as class weights and a class-balancing sampler
// cause) and the calibration slope and intercept, the logistic regression of the label on logit(p) (Cox 1958): a
// slope below 1 means p(HGG) is too extreme (over-confident), above 1 too timid (under-confident). Slope and
// intercept are NaN where the fit has no finite optimum (p separates the classes) or there are no rows.
struct CalibrationShape {
  double mean_p_hgg = 0, hgg_share = 0, slope = 0, intercept = 0;
};
CalibrationShape calibration_shape(std::span<const int> labels, std::span<const double> p_hgg);

// ROC curve from (fpr, tpr) = (0, 0) to (1, 1), one point per distinct probability (tied cases move
// together, which gives the diagonal steps that the half-credit AUC integrates); `threshold` is the
// probability at which the point is reached (+inf for the origin).
struct RocPoint {
  double fpr = 0, tpr = 0, threshold = 0;
};
std::vector<RocPoint> roc_curve(std::span<const int> labels, std::span<const double> p_hgg);

// Threshold choice on given predictions. `fixed_0_5` returns 0.5; `youden` maximises
// sensitivity + specificity − 1; `max_f1` maximises F1 (HGG positive). Candidates are the midpoints
// between consecutive distinct probabilities plus half the smallest one (everything HGG), so the
// chosen threshold separates the given cases the same way as the best cut and lies between them.
// Ties in the objective go to the candidate closest to 0.5. Needs both classes (dsmil::Error otherwise).
enum class ThresholdMethod { fixed_0_5, youden, max_f1 };
ThresholdMethod parse_threshold_method(std::string_view name);  // "0.5", "youden", "max_f1"
std::string_view threshold_method_name(ThresholdMethod method);
double choose_threshold(std::span<const int> labels, std::span<const double> p_hgg, ThresholdMethod method);

// Spread of a set of values: mean, sample standard deviation (n−1), min, max. NaN values are left out
// and counted in n_missing; std is NaN for fewer than 2 values, everything NaN for none.
struct Spread {
  double mean = 0, std = 0, min = 0, max = 0;
  int n = 0, n_missing = 0;
};
Spread spread(std::span<const double> values);

}  // namespace dsmil::report
