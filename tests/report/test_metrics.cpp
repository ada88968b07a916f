// Tests of apps/report/metrics: hand-computed values (ties, one-class input, thresholds, ECE bins) and
// the mid-rank DeLong interval against the pairwise definition on random predictions.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "apps/report/metrics.h"
#include "base/error.h"

using namespace dsmil::report;

namespace {
constexpr double kEps = 1e-12;
}

TEST_CASE("confusion and rates at a threshold match a hand count") {
  // p >= 0.5 predicts HGG. LGG: 0.1 0.4 0.6 -> tn 2 fp 1; HGG: 0.3 0.5 0.8 0.9 -> fn 1 tp 3.
  const std::vector<int> y{0, 0, 0, 1, 1, 1, 1};
  const std::vector<double> p{0.1, 0.4, 0.6, 0.3, 0.5, 0.8, 0.9};
  const Confusion c = confusion_at(y, p, 0.5);
  CHECK(c == Confusion{2, 1, 1, 3});
  CHECK(accuracy(c) == doctest::Approx(5.0 / 7).epsilon(kEps));
  CHECK(sensitivity(c) == doctest::Approx(0.75).epsilon(kEps));
  CHECK(specificity(c) == doctest::Approx(2.0 / 3).epsilon(kEps));
  CHECK(balanced_accuracy(c) == doctest::Approx((0.75 + 2.0 / 3) / 2).epsilon(kEps));
  CHECK(f1_hgg(c) == doctest::Approx(6.0 / 8).epsilon(kEps));  // 2·3 / (2·3 + 1 + 1)
  CHECK(f1_lgg(c) == doctest::Approx(4.0 / 6).epsilon(kEps));  // 2·2 / (2·2 + 1 + 1)
  CHECK(macro_f1(c) == doctest::Approx((0.75 + 4.0 / 6) / 2).epsilon(kEps));
  const auto recall = per_class_recall(c);
  CHECK(recall[0] == doctest::Approx(2.0 / 3).epsilon(kEps));
  CHECK(recall[1] == doctest::Approx(0.75).epsilon(kEps));

  const ThresholdMetrics m = threshold_metrics(y, p, 0.7);  // LGG all right; HGG 0.8 0.9 found
  CHECK(m.confusion == Confusion{3, 0, 2, 2});
  CHECK(m.f1 == doctest::Approx(4.0 / 6).epsilon(kEps));
  CHECK(m.threshold == 0.7);
}

TEST_CASE("the seed's fold 4 pattern: every prediction LGG gives HGG recall 0 and the accuracy its counts imply") {
  std::vector<int> y(57, 1);
  std::fill(y.begin(), y.begin() + 15, 0);
  const std::vector<double> p(57, 0.2);
  const ThresholdMetrics m = threshold_metrics(y, p, 0.5);
  CHECK(m.confusion == Confusion{15, 0, 42, 0});
  CHECK(m.accuracy == doctest::Approx(15.0 / 57).epsilon(kEps));  // not 0.9123
  CHECK(m.sensitivity == 0.0);
  CHECK(m.f1 == 0.0);
  CHECK(m.balanced_accuracy == doctest::Approx(0.5).epsilon(kEps));
}

TEST_CASE("AUC counts ties as half") {
  // HGG {0.8, 0.5, 0.5}, LGG {0.5, 0.2}: pairs (0.8,0.5)=1 (0.8,0.2)=1 (0.5,0.5)=.5 (0.5,0.2)=1 twice.
  const std::vector<int> y{1, 1, 1, 0, 0};
  const std::vector<double> p{0.8, 0.5, 0.5, 0.5, 0.2};
  CHECK(auc(y, p) == doctest::Approx(5.0 / 6).epsilon(kEps));
  // All scores equal: every pair a tie.
  CHECK(auc(y, std::vector<double>(5, 0.3)) == doctest::Approx(0.5).epsilon(kEps));
  // Perfect and reversed ranking.
  CHECK(auc(std::vector<int>{0, 0, 1, 1}, std::vector<double>{0.1, 0.2, 0.3, 0.4}) == 1.0);
  CHECK(auc(std::vector<int>{1, 1, 0, 0}, std::vector<double>{0.1, 0.2, 0.3, 0.4}) == 0.0);
}

TEST_CASE("DeLong interval matches a hand computation") {
  // HGG {0.9, 0.6, 0.4}, LGG {0.5, 0.3}. V10 (per HGG) = {1, 1, 0.5}; V01 (per LGG) = {2/3, 1}.
  // AUC = 5/6; S10 = var{1,1,.5} = 1/12; S01 = var{2/3,1} = 1/18; Var = (1/12)/3 + (1/18)/2 = 1/18.
  const std::vector<int> y{1, 1, 1, 0, 0};
  const std::vector<double> p{0.9, 0.6, 0.4, 0.5, 0.3};
  const AucInterval a = auc_delong(y, p);
  CHECK(a.auc == doctest::Approx(5.0 / 6).epsilon(kEps));
  CHECK(a.se == doctest::Approx(std::sqrt(1.0 / 18)).epsilon(1e-12));
  CHECK(a.lo == doctest::Approx(5.0 / 6 - 1.959963984540054 * std::sqrt(1.0 / 18)).epsilon(1e-12));
  CHECK(a.hi == 1.0);  // clipped
}

TEST_CASE("DeLong by mid-ranks equals the pairwise definition on random predictions with ties") {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 20; ++trial) {
    const int n = std::uniform_int_distribution<int>(6, 120)(rng);
    std::vector<int> y(static_cast<size_t>(n));
    std::vector<double> p(static_cast<size_t>(n));
    std::bernoulli_distribution hgg(0.6);
    std::uniform_int_distribution<int> level(0, 20);  // coarse levels give many ties
    for (int i = 0; i < n; ++i) {
      y[i] = i < 2 ? i : hgg(rng);  // both classes, at least one each
      p[i] = std::min(1.0, 0.05 * level(rng) + 0.1 * y[i]);
    }
    const AucInterval fast = auc_delong(y, p), pairs = auc_delong_by_pairs(y, p);
    INFO("n = " << n);
    CHECK(fast.auc == doctest::Approx(pairs.auc).epsilon(1e-12));
    if (std::isnan(pairs.se)) {
      CHECK(std::isnan(fast.se));
    } else {
      CHECK(fast.se == doctest::Approx(pairs.se).epsilon(1e-10));
      CHECK(fast.lo == doctest::Approx(pairs.lo).epsilon(1e-10));
      CHECK(fast.hi == doctest::Approx(pairs.hi).epsilon(1e-10));
    }
  }
}

TEST_CASE("one-class input gives NaN, not a number that looks valid") {
  const std::vector<int> y{1, 1, 1};
  const std::vector<double> p{0.2, 0.7, 0.9};
  CHECK_FALSE(has_both_classes(y));
  CHECK(std::isnan(auc(y, p)));
  const AucInterval a = auc_delong(y, p);
  CHECK(std::isnan(a.se));
  CHECK(std::isnan(a.lo));
  const ThresholdMetrics m = threshold_metrics(y, p, 0.5);
  CHECK(std::isnan(m.specificity));
  CHECK(std::isnan(m.balanced_accuracy));
  CHECK(m.sensitivity == doctest::Approx(2.0 / 3));
  CHECK_THROWS_AS(choose_threshold(y, p, ThresholdMethod::youden), dsmil::Error);
  CHECK(choose_threshold(y, p, ThresholdMethod::fixed_0_5) == 0.5);
  // No HGG case and nothing predicted HGG: F1 (HGG positive) is undefined.
  CHECK(std::isnan(f1_hgg(Confusion{3, 0, 0, 0})));
}

TEST_CASE("Wilson intervals of a proportion match Newcombe's published values") {
  // Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (score interval without continuity
  // correction), to its four decimals.
  struct Case {
    long successes, n;
    double lo, hi;
  };
  for (const Case& c : {Case{81, 263, 0.2553, 0.3662}, Case{15, 148, 0.0624, 0.1605}, Case{0, 20, 0.0, 0.1611},
                        Case{1, 29, 0.0061, 0.1718}}) {
    const std::array<double, 2> interval = wilson_interval(c.successes, c.n);
    CAPTURE(c.successes);
    CAPTURE(c.n);
    CHECK(std::abs(interval[0] - c.lo) <= 5e-5);  // half a unit of the table's last digit
    CHECK(std::abs(interval[1] - c.hi) <= 5e-5);
  }
  const std::array<double, 2> all = wilson_interval(15, 15);
  CHECK(all[1] == 1.0);
  CHECK(all[0] < 0.80);
  CHECK(std::isnan(wilson_interval(0, 0)[0]));
}

TEST_CASE("bad inputs are refused with typed errors") {
  CHECK_THROWS_AS(auc(std::vector<int>{0, 1}, std::vector<double>{0.5}), dsmil::ShapeError);
  CHECK_THROWS_AS(auc(std::vector<int>{0, 2}, std::vector<double>{0.5, 0.5}), dsmil::Error);
  CHECK_THROWS_AS(brier(std::vector<int>{0, 1}, std::vector<double>{0.5, 1.5}), dsmil::Error);
  CHECK_THROWS_AS(brier(std::vector<int>{0, 1}, std::vector<double>{0.5, std::nan("")}), dsmil::Error);
  CHECK_THROWS_AS(parse_threshold_method("median"), dsmil::Error);
}

TEST_CASE("Brier, reliability bins and ECE match a hand computation") {
  const std::vector<int> y{0, 1, 1, 0, 1};
  const std::vector<double> p{0.05, 0.15, 0.95, 0.92, 1.0};
  CHECK(brier(y, p) == doctest::Approx((0.0025 + 0.7225 + 0.0025 + 0.8464 + 0.0) / 5).epsilon(kEps));
  const auto bins = reliability_bins(y, p);
  REQUIRE(bins.size() == 10);
  CHECK(bins[0].count == 1);
  CHECK(bins[1].count == 1);
  CHECK(bins[9].count == 3);  // 0.95, 0.92 and 1.0 (p = 1 goes to the last bin)
  CHECK(bins[9].mean_p_hgg == doctest::Approx((0.95 + 0.92 + 1.0) / 3).epsilon(kEps));
  CHECK(bins[9].frac_hgg == doctest::Approx(2.0 / 3).epsilon(kEps));
  CHECK(bins[4].count == 0);
  CHECK(std::isnan(bins[4].mean_p_hgg));
  // ECE = (1·|0.05−0| + 1·|0.15−1| + 3·|2.87/3 − 2/3|) / 5
  CHECK(ece(y, p) == doctest::Approx((0.05 + 0.85 + 3 * std::abs(2.87 / 3 - 2.0 / 3)) / 5).epsilon(kEps));
}

TEST_CASE("the calibration slope and intercept recover the recalibration that made the labels") {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> logit(-3.0, 3.0), uniform(0.0, 1.0);
  // p(HGG) whose truth is sigmoid(intercept + slope * logit(p)): slope 0.5 makes p twice as extreme as the truth
  // (over-confident), slope 2 half as extreme (under-confident).
  for (const auto [intercept, slope] : {std::pair{0.0, 1.0}, std::pair{0.8, 0.5}, std::pair{-0.5, 2.0}}) {
    CAPTURE(intercept);
    CAPTURE(slope);
    std::vector<int> labels;
    std::vector<double> p;
    for (int i = 0; i < 40000; ++i) {
      const double z = logit(rng);
      p.push_back(1.0 / (1.0 + std::exp(-z)));
      labels.push_back(uniform(rng) < 1.0 / (1.0 + std::exp(-(intercept + slope * z))) ? 1 : 0);
    }
    const CalibrationShape c = calibration_shape(labels, p);
    CHECK(c.slope == doctest::Approx(slope).epsilon(0.08));
    CHECK(c.intercept == doctest::Approx(intercept).epsilon(0.1).scale(1.0));
    double share = 0, mean_p = 0;
    for (size_t i = 0; i < p.size(); ++i) share += labels[i], mean_p += p[i];
    CHECK(c.hgg_share == doctest::Approx(share / p.size()));
    CHECK(c.mean_p_hgg == doctest::Approx(mean_p / p.size()));
  }
  // p separates the classes: the likelihood grows without bound in the slope, so there is no estimate.
  const CalibrationShape separated =
      calibration_shape(std::vector<int>{0, 0, 1, 1}, std::vector<double>{0.1, 0.2, 0.3, 0.4});
  CHECK(std::isnan(separated.slope));
  CHECK(std::isnan(separated.intercept));
  CHECK(separated.hgg_share == 0.5);
  CHECK(std::isnan(calibration_shape(std::vector<int>{}, std::vector<double>{}).mean_p_hgg));
}

TEST_CASE("ROC points step over tied groups and their trapezoid area is the AUC") {
  const std::vector<int> y{1, 1, 1, 0, 0};
  const std::vector<double> p{0.8, 0.5, 0.5, 0.5, 0.2};
  const auto roc = roc_curve(y, p);
  REQUIRE(roc.size() == 4);  // origin, 0.8, 0.5 (three tied cases), 0.2
  CHECK(roc[1].tpr == doctest::Approx(1.0 / 3));
  CHECK(roc[1].fpr == 0.0);
  CHECK(roc[2].tpr == 1.0);
  CHECK(roc[2].fpr == 0.5);
  CHECK(roc[2].threshold == 0.5);
  CHECK(roc[3].fpr == 1.0);
  double area = 0;
  for (size_t i = 1; i < roc.size(); ++i) area += (roc[i].fpr - roc[i - 1].fpr) * (roc[i].tpr + roc[i - 1].tpr) / 2;
  CHECK(area == doctest::Approx(auc(y, p)).epsilon(kEps));
}

TEST_CASE("Youden and max-F1 thresholds are chosen on the given predictions") {
  // LGG {0.1, 0.3, 0.45}, HGG {0.35, 0.6, 0.7}. Cut between 0.45 and 0.6 (t = 0.525): sens 2/3 spec 1,
  // J = 2/3. Cut between 0.3 and 0.35 (t = 0.325): sens 1, spec 2/3, J = 2/3 too: the tie goes to the one
  // closer to 0.5 -> 0.525. F1: t=0.325 -> tp3 fp1 -> 6/7; t=0.525 -> tp2 fn1 -> 4/5. Max F1 at 0.325.
  const std::vector<int> y{0, 0, 0, 1, 1, 1};
  const std::vector<double> p{0.1, 0.3, 0.45, 0.35, 0.6, 0.7};
  CHECK(choose_threshold(y, p, ThresholdMethod::youden) == doctest::Approx(0.525).epsilon(kEps));
  CHECK(choose_threshold(y, p, ThresholdMethod::max_f1) == doctest::Approx(0.325).epsilon(kEps));
  CHECK(choose_threshold(y, p, parse_threshold_method("0.5")) == 0.5);
  CHECK(threshold_method_name(parse_threshold_method("max_f1")) == "max_f1");
  // Separable scores: Youden cuts between the classes.
  const double t = choose_threshold(std::vector<int>{0, 0, 1, 1}, std::vector<double>{0.02, 0.04, 0.08, 0.09},
                                    ThresholdMethod::youden);
  CHECK(t == doctest::Approx(0.06).epsilon(kEps));
}

TEST_CASE("spread uses the sample standard deviation and skips NaN") {
  // The seed's AUC column: 0.9095 0.9746 0.9730 0.9730 0.9746 -> mean 0.96094, sample std 0.028767,
  // not the 0.9609 ± 0.0273 it printed.
  const std::vector<double> auc_values{0.9095, 0.9746, 0.9730, 0.9730, 0.9746};
  const Spread s = spread(auc_values);
  CHECK(s.mean == doctest::Approx(0.96094).epsilon(1e-12));
  double ss = 0;
  for (double v : auc_values) ss += (v - 0.96094) * (v - 0.96094);
  CHECK(s.std == doctest::Approx(std::sqrt(ss / 4)).epsilon(1e-12));
  CHECK(s.std == doctest::Approx(0.028767).epsilon(1e-4));
  CHECK(s.min == 0.9095);
  CHECK(s.max == 0.9746);
  const Spread with_nan = spread(std::vector<double>{1.0, std::nan(""), 3.0});
  CHECK(with_nan.n == 2);
  CHECK(with_nan.n_missing == 1);
  CHECK(with_nan.mean == 2.0);
  CHECK(with_nan.std == doctest::Approx(std::sqrt(2.0)));
  CHECK(std::isnan(spread(std::vector<double>{4.0}).std));
  CHECK(std::isnan(spread(std::vector<double>{}).mean));
}
