// Binary metrics of HGG vs LGG from labels (n, 0/1) and p(HGG) (n): confusion-based rates, AUC with
// DeLong interval (O(n log n) through mid-ranks), Brier, ECE, ROC, threshold choice, spread of values.
#include "apps/report/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include <fmt/format.h>

#include "base/error.h"

namespace dsmil::report {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kZ95 = 1.959963984540054;  // standard normal quantile 0.975

double ratio(double num, double den) { return den == 0 ? kNaN : num / den; }

void check_inputs(std::span<const int> labels, std::span<const double> p_hgg, const char* what) {
  if (labels.size() != p_hgg.size())
    throw ShapeError(fmt::format("{}: {} labels but {} probabilities", what, labels.size(), p_hgg.size()));
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] != 0 && labels[i] != 1)
      throw Error(fmt::format("{}: label {} of case {} is not 0 (LGG) or 1 (HGG)", what, labels[i], i));
    if (!(p_hgg[i] >= 0.0 && p_hgg[i] <= 1.0))
      throw Error(fmt::format("{}: p_hgg {} of case {} is not a probability", what, p_hgg[i], i));
  }
}

// Mid-ranks (1-based, ties share the mean of their ranks) of `values`.
std::vector<double> mid_ranks(const std::vector<double>& values) {
  std::vector<size_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return values[a] < values[b]; });
  std::vector<double> ranks(values.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j < order.size() && values[order[j]] == values[order[i]]) ++j;
    const double mid = 0.5 * static_cast<double>(i + 1 + j);  // mean of ranks i+1 .. j
    for (size_t k = i; k < j; ++k) ranks[order[k]] = mid;
    i = j;
  }
  return ranks;
}

double sample_variance(const std::vector<double>& v) {
  if (v.size() < 2) return kNaN;
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  double ss = 0;
  for (double x : v) ss += (x - mean) * (x - mean);
  return ss / static_cast<double>(v.size() - 1);
}

// DeLong's structural components: v10[i] = mean over LGG cases of ψ(p_i, p_j) for HGG case i,
// v01[j] = mean over HGG cases of ψ(p_i, p_j) for LGG case j, ψ = 1 (>), 0.5 (=), 0 (<).
struct Components {
  std::vector<double> v10, v01;
};
Components structural_components(std::span<const int> labels, std::span<const double> p_hgg) {
  std::vector<double> hgg, lgg, all(p_hgg.begin(), p_hgg.end());
  for (size_t i = 0; i < labels.size(); ++i) (labels[i] == 1 ? hgg : lgg).push_back(p_hgg[i]);
  const auto m = static_cast<double>(hgg.size()), n = static_cast<double>(lgg.size());
  const std::vector<double> rank_all = mid_ranks(all), rank_hgg = mid_ranks(hgg), rank_lgg = mid_ranks(lgg);
  Components c;
  size_t ih = 0, il = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    // Within the pooled ranking, an HGG case's rank minus its rank among HGG cases counts the LGG
    // cases below it (ties half); symmetrically for LGG cases.
    if (labels[i] == 1)
      c.v10.push_back((rank_all[i] - rank_hgg[ih++]) / n);
    else
      c.v01.push_back(1.0 - (rank_all[i] - rank_lgg[il++]) / m);
  }
  return c;
}

AucInterval interval_of(const Components& c) {
  AucInterval r;
  r.auc = std::accumulate(c.v10.begin(), c.v10.end(), 0.0) / static_cast<double>(c.v10.size());
  r.se = std::sqrt(sample_variance(c.v10) / static_cast<double>(c.v10.size()) +
                   sample_variance(c.v01) / static_cast<double>(c.v01.size()));
  r.lo = std::clamp(r.auc - kZ95 * r.se, 0.0, 1.0);
  r.hi = std::clamp(r.auc + kZ95 * r.se, 0.0, 1.0);
  if (std::isnan(r.se)) r.lo = r.hi = kNaN;
  return r;
}

double closeness_to_half(double t) { return std::abs(t - 0.5); }

}  // namespace

bool has_both_classes(std::span<const int> labels) {
  bool lgg = false, hgg = false;
  for (int y : labels) (y == 1 ? hgg : lgg) = true;
  return lgg && hgg;
}

Confusion confusion_at(std::span<const int> labels, std::span<const double> p_hgg, double threshold) {
  check_inputs(labels, p_hgg, "confusion matrix");
  Confusion c;
  for (size_t i = 0; i < labels.size(); ++i) {
    const bool predicted_hgg = p_hgg[i] >= threshold;
    if (labels[i] == 1)
      (predicted_hgg ? c.tp : c.fn)++;
    else
      (predicted_hgg ? c.fp : c.tn)++;
  }
  return c;
}

double accuracy(const Confusion& c) { return ratio(c.tp + c.tn, c.n()); }
double sensitivity(const Confusion& c) { return ratio(c.tp, c.tp + c.fn); }
double specificity(const Confusion& c) { return ratio(c.tn, c.tn + c.fp); }
double balanced_accuracy(const Confusion& c) { return 0.5 * (sensitivity(c) + specificity(c)); }
double f1_hgg(const Confusion& c) { return ratio(2.0 * c.tp, 2.0 * c.tp + c.fp + c.fn); }
double f1_lgg(const Confusion& c) { return ratio(2.0 * c.tn, 2.0 * c.tn + c.fn + c.fp); }
double macro_f1(const Confusion& c) { return 0.5 * (f1_hgg(c) + f1_lgg(c)); }
std::array<double, 2> per_class_recall(const Confusion& c) { return {specificity(c), sensitivity(c)}; }

std::array<double, 2> wilson_interval(long successes, long n) {
  if (n <= 0) return {NAN, NAN};
  constexpr double z = 1.959964;
  const double p = static_cast<double>(successes) / static_cast<double>(n), z2n = z * z / static_cast<double>(n);
  const double centre = (p + 0.5 * z2n) / (1.0 + z2n);
  const double half = z * std::sqrt(p * (1.0 - p) / static_cast<double>(n) + 0.25 * z2n / static_cast<double>(n)) /
                      (1.0 + z2n);
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

ThresholdMetrics threshold_metrics(std::span<const int> labels, std::span<const double> p_hgg, double threshold) {
  ThresholdMetrics m;
  m.threshold = threshold;
  m.confusion = confusion_at(labels, p_hgg, threshold);
  m.accuracy = accuracy(m.confusion);
  m.balanced_accuracy = balanced_accuracy(m.confusion);
  m.f1 = f1_hgg(m.confusion);
  m.macro_f1 = macro_f1(m.confusion);
  m.sensitivity = sensitivity(m.confusion);
  m.specificity = specificity(m.confusion);
  return m;
}

double auc(std::span<const int> labels, std::span<const double> p_hgg) { return auc_delong(labels, p_hgg).auc; }

AucInterval auc_delong(std::span<const int> labels, std::span<const double> p_hgg) {
  check_inputs(labels, p_hgg, "AUC");
  if (!has_both_classes(labels)) return {kNaN, kNaN, kNaN, kNaN};
  return interval_of(structural_components(labels, p_hgg));
}

AucInterval auc_delong_by_pairs(std::span<const int> labels, std::span<const double> p_hgg) {
  check_inputs(labels, p_hgg, "AUC (pairwise)");
  if (!has_both_classes(labels)) return {kNaN, kNaN, kNaN, kNaN};
  std::vector<double> hgg, lgg;
  for (size_t i = 0; i < labels.size(); ++i) (labels[i] == 1 ? hgg : lgg).push_back(p_hgg[i]);
  const auto psi = [](double x, double y) { return x > y ? 1.0 : (x == y ? 0.5 : 0.0); };
  Components c;
  for (double x : hgg) {
    double sum = 0;
    for (double y : lgg) sum += psi(x, y);
    c.v10.push_back(sum / static_cast<double>(lgg.size()));
  }
  for (double y : lgg) {
    double sum = 0;
    for (double x : hgg) sum += psi(x, y);
    c.v01.push_back(sum / static_cast<double>(hgg.size()));
  }
  return interval_of(c);
}

double brier(std::span<const int> labels, std::span<const double> p_hgg) {
  check_inputs(labels, p_hgg, "Brier score");
  double sum = 0;
  for (size_t i = 0; i < labels.size(); ++i) sum += (p_hgg[i] - labels[i]) * (p_hgg[i] - labels[i]);
  return ratio(sum, static_cast<double>(labels.size()));
}

std::vector<ReliabilityBin> reliability_bins(std::span<const int> labels, std::span<const double> p_hgg, int bins) {
  check_inputs(labels, p_hgg, "reliability bins");
  if (bins < 1) throw Error(fmt::format("reliability bins: {} bins requested", bins));
  std::vector<ReliabilityBin> out(static_cast<size_t>(bins));
  std::vector<double> sum_p(out.size(), 0.0), sum_y(out.size(), 0.0);
  for (size_t i = 0; i < labels.size(); ++i) {
    const auto b = std::min(static_cast<size_t>(p_hgg[i] * bins), out.size() - 1);
    out[b].count++;
    sum_p[b] += p_hgg[i];
    sum_y[b] += labels[i];
  }
  for (size_t b = 0; b < out.size(); ++b) {
    out[b].lo = static_cast<double>(b) / bins;
    out[b].hi = static_cast<double>(b + 1) / bins;
    out[b].mean_p_hgg = ratio(sum_p[b], static_cast<double>(out[b].count));
    out[b].frac_hgg = ratio(sum_y[b], static_cast<double>(out[b].count));
  }
  return out;
}

CalibrationShape calibration_shape(std::span<const int> labels, std::span<const double> p_hgg) {
  if (labels.empty()) return {kNaN, kNaN, kNaN, kNaN};
  CalibrationShape s;
  std::vector<double> logits(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) {
    s.mean_p_hgg += p_hgg[i];
    s.hgg_share += labels[i];
    const double p = std::clamp(p_hgg[i], 1e-9, 1.0 - 1e-9);
    logits[i] = std::log(p / (1.0 - p));
  }
  const double n = static_cast<double>(labels.size());
  s.mean_p_hgg /= n;
  s.hgg_share /= n;
  // Newton's method on the log-likelihood of y ~ sigmoid(intercept + slope * logit(p)) from (0, 0), the usual
  // start of logistic regression, with the step halved while it lowers the likelihood.
  const auto log_likelihood = [&](double a, double b) {
    double sum = 0;
    for (size_t i = 0; i < labels.size(); ++i) {
      const double eta = a + b * logits[i];
      sum += (labels[i] == 1 ? eta : 0.0) - (eta > 0 ? eta + std::log1p(std::exp(-eta)) : std::log1p(std::exp(eta)));
    }
    return sum;
  };
  double a = 0, b = 0, current = log_likelihood(a, b);
  s.intercept = s.slope = kNaN;
  for (int iteration = 0; iteration < 100; ++iteration) {
    double ga = 0, gb = 0, haa = 0, hab = 0, hbb = 0;
    for (size_t i = 0; i < labels.size(); ++i) {
      const double q = 1.0 / (1.0 + std::exp(-(a + b * logits[i]))), w = q * (1.0 - q), r = labels[i] - q;
      ga += r;
      gb += r * logits[i];
      haa += w;
      hab += w * logits[i];
      hbb += w * logits[i] * logits[i];
    }
    const double det = haa * hbb - hab * hab;
    if (!(det > 1e-12 * haa * hbb)) return s;
    double da = (hbb * ga - hab * gb) / det, db = (haa * gb - hab * ga) / det;
    double next = log_likelihood(a + da, b + db);
    for (int halving = 0; halving < 30 && !(next >= current); ++halving) {
      da /= 2;
      db /= 2;
      next = log_likelihood(a + da, b + db);
    }
    a += da;
    b += db;
    current = next;
    if (!std::isfinite(a) || !std::isfinite(b) || std::abs(b) > 1e3) return s;
    if (std::abs(da) + std::abs(db) < 1e-10) {
      s.intercept = a;
      s.slope = b;
      return s;
    }
  }
  return s;
}

double ece(std::span<const int> labels, std::span<const double> p_hgg, int bins) {
  if (labels.empty()) return kNaN;
  double sum = 0;
  for (const auto& b : reliability_bins(labels, p_hgg, bins))
    if (b.count > 0) sum += static_cast<double>(b.count) * std::abs(b.mean_p_hgg - b.frac_hgg);
  return sum / static_cast<double>(labels.size());
}

std::vector<RocPoint> roc_curve(std::span<const int> labels, std::span<const double> p_hgg) {
  check_inputs(labels, p_hgg, "ROC curve");
  std::vector<size_t> order(labels.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p_hgg[a] > p_hgg[b]; });
  const auto n_hgg = static_cast<double>(std::count(labels.begin(), labels.end(), 1));
  const auto n_lgg = static_cast<double>(labels.size()) - n_hgg;
  std::vector<RocPoint> curve{{0.0, 0.0, std::numeric_limits<double>::infinity()}};
  double tp = 0, fp = 0;
  for (size_t i = 0; i < order.size();) {
    const double p = p_hgg[order[i]];
    for (; i < order.size() && p_hgg[order[i]] == p; ++i) (labels[order[i]] == 1 ? tp : fp) += 1;
    curve.push_back({ratio(fp, n_lgg), ratio(tp, n_hgg), p});
  }
  return curve;
}

ThresholdMethod parse_threshold_method(std::string_view name) {
  if (name == "0.5") return ThresholdMethod::fixed_0_5;
  if (name == "youden") return ThresholdMethod::youden;
  if (name == "max_f1") return ThresholdMethod::max_f1;
  throw Error(fmt::format("threshold method '{}' is not one of 0.5, youden, max_f1", name));
}

std::string_view threshold_method_name(ThresholdMethod method) {
  switch (method) {
    case ThresholdMethod::fixed_0_5:
      return "0.5";
    case ThresholdMethod::youden:
      return "youden";
    case ThresholdMethod::max_f1:
      return "max_f1";
  }
  return "?";
}

double choose_threshold(std::span<const int> labels, std::span<const double> p_hgg, ThresholdMethod method) {
  if (method == ThresholdMethod::fixed_0_5) return 0.5;
  check_inputs(labels, p_hgg, "threshold choice");
  if (!has_both_classes(labels))
    throw Error(
        fmt::format("threshold choice '{}': the predictions hold only one class", threshold_method_name(method)));
  std::vector<double> distinct(p_hgg.begin(), p_hgg.end());
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  std::vector<double> candidates{0.5 * distinct.front()};
  for (size_t i = 0; i + 1 < distinct.size(); ++i) candidates.push_back(0.5 * (distinct[i] + distinct[i + 1]));

  double best_threshold = candidates.front();
  double best_score = -std::numeric_limits<double>::infinity();
  for (double t : candidates) {
    const Confusion c = confusion_at(labels, p_hgg, t);
    const double score = method == ThresholdMethod::youden ? sensitivity(c) + specificity(c) - 1.0 : f1_hgg(c);
    const bool better =
        score > best_score || (score == best_score && closeness_to_half(t) < closeness_to_half(best_threshold));
    if (better) {
      best_score = score;
      best_threshold = t;
    }
  }
  return best_threshold;
}

Spread spread(std::span<const double> values) {
  std::vector<double> finite;
  for (double v : values)
    if (!std::isnan(v)) finite.push_back(v);
  Spread s;
  s.n = static_cast<int>(finite.size());
  s.n_missing = static_cast<int>(values.size() - finite.size());
  if (finite.empty()) {
    s.mean = s.std = s.min = s.max = kNaN;
    return s;
  }
  s.mean = std::accumulate(finite.begin(), finite.end(), 0.0) / static_cast<double>(finite.size());
  s.std = std::sqrt(sample_variance(finite));
  s.min = *std::min_element(finite.begin(), finite.end());
  s.max = *std::max_element(finite.begin(), finite.end());
  return s;
}

}  // namespace dsmil::report
