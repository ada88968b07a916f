// Training-health figures and the flat-training warning.
#include "apps/train/health.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "tensor/ops.h"

namespace dsmil::app {

namespace {

using json = nlohmann::json;

// The warning's thresholds. A model stuck at chance gives every validation bag nearly one output: an eval-mode
// logit spread of 0.00-0.02 at lr 3e-4 on the 285-case cohort, against 0.1 at 1e-4 before it learned and
// 0.7-1.0 after (notes/RESULTS-CV.md); training bags spread more (dropout and augmentation). The update
// ratios seen there were 1e-4 to 1e-3 per step at both rates: 1e-2 is far outside them.
constexpr double kFlatAuc = 0.6;
constexpr int kEpochsAfterWarmup = 3;
constexpr double kConstantValLogitSpread = 0.05;
constexpr double kLargeUpdateRatio = 1e-2;
constexpr double kSmallUpdateRatio = 1e-5;
constexpr double kMostlyClipped = 0.5;
constexpr double kDeadLastStage = 0.9;
// The folds that sat at chance in the judged CVs called all but 0-9% of the training bags of one class the other
// (notes/RESULTS-CV.md, round 4); the folds that learned had both recalls well above that by then.
constexpr double kOneClassRecall = 0.1;

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// What ends a plateau of one answer for every bag, given how the config fills its steps.
std::string one_class_plateau_remedy(const RunConfig& c) {
  if (c.case_sampling == data::CaseSampling::balanced)
    return "every step holds both classes (train.case_sampling = \"balanced\"), and such a plateau ends at a random "
           "epoch; another cv.seed starts from other weights";
  const std::string single_class =
      c.case_sampling == data::CaseSampling::weighted
          ? fmt::format(
                "the weighted sampler draws each bag's class at random, so {:.0f}% of the steps of {} bags hold "
                "a single class",
                100.0 * std::pow(0.5, c.bags_per_step - 1), c.bags_per_step)
          : std::string("the shuffle sampler leaves each step's mix of classes to chance");
  return single_class +
         ": train.case_sampling = \"balanced\" gives every step both classes, which left chance sooner in 15 of 15 "
         "paired tuning runs (notes/RESULTS-CV.md, round 5 of tuning)";
}

}  // namespace

std::string parameter_group(const std::string& name) {
  const size_t dot = name.find('.');
  const std::string first = name.substr(0, dot);
  if (first != "encoder" || dot == std::string::npos) return first;
  const size_t next = name.find('.', dot + 1);
  return name.substr(dot + 1, next == std::string::npos ? std::string::npos : next - dot - 1);
}

double encoder_update_ratio(const json& health) {
  std::vector<double> ratios;
  if (health.contains("update_ratio"))
    for (const auto& [group, ratio] : health["update_ratio"].items())
      if (group != "head" && ratio.is_number()) ratios.push_back(ratio.get<double>());
  return median(ratios);
}

double spread(const std::vector<double>& values) {
  if (values.size() < 2) return 0.0;
  const double mean = std::accumulate(values.begin(), values.end(), 0.0) / values.size();
  double s = 0.0;
  for (double v : values) s += (v - mean) * (v - mean);
  return std::sqrt(s / (values.size() - 1));
}

void EpochHealth::weights_before_step(const std::vector<nn::NamedParameter>& params) {
  before_.clear();
  for (const nn::NamedParameter& p : params) before_.push_back(p.variable->value().clone());
}

void EpochHealth::weights_after_step(const std::vector<nn::NamedParameter>& params) {
  if (before_.size() != params.size())
    throw Error(fmt::format("EpochHealth::weights_after_step: {} parameters, {} kept before the step", params.size(),
                            before_.size()));
  // Per group: the sums of squares of the change and of the weights before it, on the weights' device (a host copy
  // of every weight, twice, cost the fold's diagnostic step half a second at the CV's shape).
  std::map<std::string, std::pair<double, double>> sums;
  for (size_t i = 0; i < params.size(); ++i) {
    auto& [change_squares, before_squares] = sums[parameter_group(params[i].name)];
    before_squares += ops::sum_squares(before_[i]);
    ops::axpy_(before_[i], -1.0f, params[i].variable->value());
    change_squares += ops::sum_squares(before_[i]);
  }
  for (const auto& [group, squares] : sums)
    update_ratio_[group] = squares.second > 0.0 ? std::sqrt(squares.first / squares.second) : NAN;
  before_.clear();
}

void EpochHealth::last_stage(const Tensor& activation) {
  const std::vector<float> values = activation.to_vector();
  const auto zeros = std::count(values.begin(), values.end(), 0.0f);
  relu_zero_fraction_ = values.empty() ? NAN : static_cast<double>(zeros) / values.size();
}

json EpochHealth::record() const {
  json out = json::object();
  if (!grad_norms_.empty()) {
    const double mean = std::accumulate(grad_norms_.begin(), grad_norms_.end(), 0.0) / grad_norms_.size();
    const auto clipped = clip_bound_ > 0.0 ? std::count_if(grad_norms_.begin(), grad_norms_.end(),
                                                           [&](double g) { return g > clip_bound_; })
                                           : 0;
    out["grad_norm"] = {{"mean", mean},
                        {"median", median(grad_norms_)},
                        {"max", *std::max_element(grad_norms_.begin(), grad_norms_.end())},
                        {"clipped_fraction", static_cast<double>(clipped) / grad_norms_.size()}};
  }
  if (!margins_.empty()) out["logit_spread"] = spread(margins_);
  if (!update_ratio_.empty()) {
    out["update_ratio"] = json::object();
    for (const auto& [group, ratio] : update_ratio_) out["update_ratio"][group] = ratio;
  }
  if (relu_zero_fraction_ >= 0.0) out["relu_zero_fraction"] = relu_zero_fraction_;
  return out;
}

std::string flat_training_warning(int epoch, const RunConfig& config, const json& train, const json& health) {
  const int warmup_end = static_cast<int>(std::ceil(config.warmup_epochs));
  if (epoch < warmup_end + kEpochsAfterWarmup) return "";
  const double train_auc = train.contains("auc") && train["auc"].is_number() ? train["auc"].get<double>() : NAN;
  if (!(train_auc < kFlatAuc)) return "";  // NaN (one class seen) warns of nothing
  std::vector<std::string> seen;
  if (train.contains("recall_hgg") && train.contains("recall_lgg") && train["recall_hgg"].is_number() &&
      train["recall_lgg"].is_number()) {
    const double hgg = train["recall_hgg"].get<double>(), lgg = train["recall_lgg"].get<double>();
    if (std::min(hgg, lgg) < kOneClassRecall)
      seen.push_back(fmt::format(
          "the model answers nearly every training bag {} (HGG recall {:.2f}, LGG recall {:.2f}): it has found no "
          "feature of the grade yet; {}",
          hgg < lgg ? "LGG" : "HGG", hgg, lgg, one_class_plateau_remedy(config)));
  }
  if (health.contains("val_logit_spread") && health["val_logit_spread"].get<double>() < kConstantValLogitSpread)
    seen.push_back(
        fmt::format("the validation bags' logits barely differ (spread {:.3f}): the model gives every bag "
                    "nearly the same output, a collapse that a learning rate above the usable range "
                    "can cause (try a lower train.lr)",
                    health["val_logit_spread"].get<double>()));
  if (const double typical = encoder_update_ratio(health); !std::isnan(typical)) {
    if (typical > kLargeUpdateRatio)
      seen.push_back(
          fmt::format("each step moves the encoder's weights by {:.1e} of their size (median over its stages; "
                      "above {:.0e} the steps are too large for batch-normalised convolutions): try "
                      "train.lr = {:.1e}",
                      typical, kLargeUpdateRatio, config.lr / 3.0));
    else if (typical < kSmallUpdateRatio)
      seen.push_back(
          fmt::format("each step moves the encoder's weights by only {:.1e} of their size: the learning rate "
                      "({:.1e} now) or the clipping bound is too small",
                      typical, config.lr));
  }
  if (health.contains("grad_norm") && health["grad_norm"]["clipped_fraction"].get<double>() > kMostlyClipped)
    seen.push_back(fmt::format("the gradient was clipped in {:.0f}% of the steps (median norm {:.2f})",
                               100.0 * health["grad_norm"]["clipped_fraction"].get<double>(),
                               health["grad_norm"]["median"].get<double>()));
  if (health.contains("relu_zero_fraction") && health["relu_zero_fraction"].get<double>() > kDeadLastStage)
    seen.push_back(fmt::format("{:.0f}% of the encoder's last-stage ReLU outputs are zero (dead units)",
                               100.0 * health["relu_zero_fraction"].get<double>()));
  std::string text = fmt::format("training AUC {:.3f} at epoch {} is still near chance {} epochs after warm-up. ",
                                 train_auc, epoch, epoch - warmup_end);
  if (seen.empty()) {
    text += "The health figures show nothing abnormal (metrics.jsonl, \"health\")";
  } else {
    text += "What the epoch shows: ";
    for (size_t i = 0; i < seen.size(); ++i) text += (i ? "; " : "") + seen[i];
  }
  return text + ". `dsmil lr-find` measures the usable learning rates of this config.";
}

}  // namespace dsmil::app
