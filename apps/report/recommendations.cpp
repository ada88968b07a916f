// The recommendation catalogue: for each kind of anomaly, the remedies of DESIGN section 5, each given only
// where the run's settings do not already apply it, with the setting's current value where it is known.
#include "apps/report/recommendations.h"

#include <set>

#include <fmt/format.h>

namespace dsmil::report {
namespace {

using Actions = std::vector<std::string>;

// What the advice is written against: the run's settings, and how its miscalibrated folds err.
struct Context {
  const RunSettings& settings;
  const CalibrationFindings& calibration;
};

// The learning rate that trains the default model on the synthetic cohort, where 3e-4 does not
// (notes/RESULTS-CV.md, round 1 of tuning).
constexpr double kTrainingLr = 1e-4;

bool is(const std::optional<std::string>& setting, std::string_view value) { return setting && *setting == value; }
bool at_least(const std::optional<double>& setting, double value) { return setting && *setting >= value; }
bool calibrated(const RunSettings& s) { return s.threshold_method && *s.threshold_method != "0.5"; }

std::string toml_value(const std::string& v) { return fmt::format("\"{}\"", v); }
std::string toml_value(double v) { return fmt::format("{}", v); }

// "now `key = value`" where the setting is known, else "`key`": advice names the setting it would change
// and, where it can, what it is.
template <typename T>
std::string current(std::string_view key, const std::optional<T>& setting) {
  return setting ? fmt::format("now `{} = {}`", key, toml_value(*setting)) : fmt::format("`{}`", key);
}

// "a", "a and b", "a, b and c".
std::string joined(const std::vector<std::string>& parts) {
  std::string s;
  for (size_t i = 0; i < parts.size(); ++i) s += (i == 0 ? "" : i + 1 == parts.size() ? " and " : ", ") + parts[i];
  return s;
}

// recommended-v2's loss shaping (focal γ = 2, label smoothing ε = 0.05) where the run lacks it.
std::vector<std::string> missing_loss_shaping(const RunSettings& s) {
  std::vector<std::string> parts;
  if (!at_least(s.focal_gamma, 2.0))
    parts.push_back(fmt::format("focal loss with γ = 2 ({})", current("loss.focal_gamma", s.focal_gamma)));
  if (!at_least(s.label_smoothing, 0.05))
    parts.push_back(fmt::format("label smoothing ε = 0.05 ({})", current("loss.label_smoothing", s.label_smoothing)));
  return parts;
}

// The head settings that both over-fitting and attention collapse call for, where the run lacks them.
std::vector<std::string> missing_head_regularisers(const RunSettings& s) {
  std::vector<std::string> parts;
  if (!is(s.pooling, "topk"))
    parts.push_back(fmt::format("`topk` pooling instead of `max` or annealed `soft` selection ({})",
                                current("model.pooling", s.pooling)));
  if (!at_least(s.instance_dropout, 0.1))
    parts.push_back(fmt::format("instance dropout 0.1 ({})", current("model.instance_dropout", s.instance_dropout)));
  return parts;
}

void add_use(Actions& actions, const std::vector<std::string>& parts) {
  if (!parts.empty()) actions.push_back("Use " + joined(parts) + ".");
}

// Balancing once is the remedy; a run that balances twice (recommended-v2 does, chosen by measurement) is
// told how to test that choice instead, and one that balances once is told nothing.
void add_class_balance(Actions& actions, const RunSettings& s) {
  if (!s.case_sampling || !s.class_weights) {
    actions.push_back(
        "Balance the classes once: the `weighted` sampler or `balanced` class weights (α_c = N / (2 N_c)). "
        "Both together correct twice and push p(HGG) below 0.5 for most cases, the collapse toward LGG.");
    return;
  }
  // The `balanced` sampler draws as `weighted` does, in pairs of one case of each class.
  const bool sampler = *s.case_sampling != "shuffle", weights = *s.class_weights == "balanced";
  if (sampler && weights)
    actions.push_back(
        "The run corrects the class balance twice (a class-balancing sampler and `balanced` class weights), "
        "which pushes the scores toward the smaller class: measure `loss.class_weights = \"none\"` "
        "against it on the inner validation split.");
  else if (!sampler && !weights)
    actions.push_back(fmt::format("Balance the classes: the `weighted` sampler ({}) or `balanced` class weights ({}).",
                                  current("train.case_sampling", s.case_sampling),
                                  current("loss.class_weights", s.class_weights)));
}

Actions optimistic_actions(const Context&) {
  return {
      "Rerun with the nested protocol (default; drop `--select-on-test`): the inner validation split chooses "
      "checkpoint and threshold, the outer fold is predicted once."};
}

Actions class_collapse_actions(const Context& c) {
  const RunSettings& s = c.settings;
  Actions a;
  add_class_balance(a, s);
  add_use(a, missing_loss_shaping(s));
  if (!is(s.monitor, "min_class_recall"))
    a.push_back(fmt::format("Early stopping and checkpoint choice on `min_class_recall` ({}).",
                            current("train.monitor", s.monitor)));
  if (!calibrated(s))
    a.push_back(fmt::format("Threshold calibration (`youden` or `max_f1`; {}) on the inner validation predictions.",
                            current("train.threshold", s.threshold_method)));
  a.push_back(
      fmt::format("Compare the collapsed fold's class recalls at 0.5 and at its calibrated threshold (section 1): "
                  "a collapse at both lies in the scores; one at the calibrated threshold only comes from a "
                  "threshold placed on too few inner-validation cases, which a larger split gives more ({}).",
                  current("cv.inner_val", s.inner_val)));
  return a;
}

std::string learning_rate_action(const RunSettings& s) {
  if (!s.lr)
    return "Measure the usable learning rates with `dsmil lr-find` and set `train.lr` at or below its suggestion "
           "(3e-4 does not train the default model on the synthetic cohort; 1e-4 does).";
  if (*s.lr > kTrainingLr)
    return fmt::format(
        "Lower the learning rate ({}): on the synthetic cohort the default model learns at 1e-4 and not at "
        "3e-4; `dsmil lr-find` measures the usable range, and `train.lr` belongs at or below its suggestion.",
        current("train.lr", s.lr));
  return fmt::format(
      "The learning rate is already at or below the 1e-4 that trains the default model ({}), so a "
      "lower one is not the first thing to try: `dsmil lr-find` shows whether this model and data "
      "need another.",
      current("train.lr", s.lr));
}

Actions no_learning_actions(const Context& c) {
  const RunSettings& s = c.settings;
  Actions a{
      "Read the fold's training-health warning (above, and `health` in metrics.jsonl): a validation logit spread "
      "near 0 is a model that gives every bag one output, which a learning rate above the usable range causes.",
      learning_rate_action(s)};
  if (!is(s.case_sampling, "balanced"))
    a.push_back(fmt::format(
        "Give every step both classes: `train.case_sampling = \"balanced\"` ({}) draws a step's bags in pairs of "
        "one case of each class. A sampler that draws each bag's class at random gives a step of b bags a single "
        "class in one step of 2^(b-1), half the steps at two bags; on the synthetic cohort such steps held the "
        "training AUC at chance for a random number of epochs (notes/RESULTS-CV.md, round 5 of tuning).",
        current("train.case_sampling", s.case_sampling)));
  a.push_back(
      fmt::format("Give training the epochs to take off ({}): model selection and early stopping wait for the "
                  "training AUC to reach a set level ({}); the curves in plots/curves_fold_k.svg show where it "
                  "takes off.",
                  current("train.epochs", s.epochs), current("train.selection_train_auc", s.selection_train_auc)));
  a.push_back("Check the data path on a few cases (`dsmil predict` montages): the grade must be visible in the slabs.");
  return a;
}

Actions threshold_actions(const Context& c) {
  const RunSettings& s = c.settings;
  Actions a;
  if (!calibrated(s))
    a.push_back(
        fmt::format("The ranking is good but the cut is not: choose the threshold with `youden` or `max_f1` on "
                    "the inner validation split ({}) and report threshold metrics at that one stated threshold.",
                    current("train.threshold", s.threshold_method)));
  else
    a.push_back(
        fmt::format("The threshold is already calibrated (`{}`) yet the cut misses: it is placed on the inner "
                    "validation cases alone, so a larger split ({}) or the other method (`{}`) may place it "
                    "better.",
                    *s.threshold_method, current("cv.inner_val", s.inner_val),
                    *s.threshold_method == "youden" ? "max_f1" : "youden"));
  if (!is(s.monitor, "balanced_accuracy") && !is(s.monitor, "min_class_recall"))
    a.push_back(
        fmt::format("Monitor `balanced_accuracy` or `min_class_recall` ({}) so that the chosen epoch "
                    "separates both classes.",
                    current("train.monitor", s.monitor)));
  return a;
}

Actions miscalibration_actions(const Context& c) {
  const RunSettings& s = c.settings;
  const CalibrationFindings& k = c.calibration;
  Actions a;
  if (!calibrated(s))
    a.push_back(fmt::format("Calibrate the threshold on the inner validation split ({}).",
                            current("train.threshold", s.threshold_method)));
  if (k.under_confident > 0)
    a.push_back(fmt::format(
        "In {} of the {} miscalibrated folds p(HGG) is under-confident (calibration slope above {}): label smoothing "
        "and focal loss pull p(HGG) further toward 0.5, so they are not the remedy.",
        k.under_confident, k.folds, kSlopeBand));
  if (k.over_confident > 0) {
    const std::vector<std::string> loss = missing_loss_shaping(s);
    a.push_back(loss.empty() ? fmt::format("In {} of the {} miscalibrated folds p(HGG) is over-confident (calibration "
                                           "slope below {}) although the run's label smoothing and focal loss pull it "
                                           "toward 0.5.",
                                           k.over_confident, k.folds, 1.0 / kSlopeBand)
                             : fmt::format("In {} of the {} miscalibrated folds p(HGG) is over-confident (calibration "
                                           "slope below {}): consider {}, which temper over-confident outputs.",
                                           k.over_confident, k.folds, 1.0 / kSlopeBand, joined(loss)));
  }
  if (std::abs(k.mean_shift) > kShiftBand) {
    std::vector<std::string> balancing;
    if (is(s.class_weights, "balanced")) balancing.push_back("balanced class weights");
    if (is(s.case_sampling, "weighted") || is(s.case_sampling, "balanced"))
      balancing.push_back(fmt::format("the {} case sampler", *s.case_sampling));
    a.push_back(fmt::format(
        "Mean p(HGG) lies {:.2f} {} the HGG share over these folds: a shift of the whole scale{}. A threshold "
        "calibrated on the inner validation split absorbs it; recalibrate p(HGG) there (Platt scaling) before "
        "reading it as a probability.",
        std::abs(k.mean_shift), k.mean_shift < 0 ? "below" : "above",
        balancing.empty() ? std::string()
                          : fmt::format(", as training with {} gives (they weigh the classes equally, so p(HGG) "
                                        "fits equal classes rather than this cohort's share)",
                                        joined(balancing))));
  }
  a.push_back("Inspect the reliability diagram (plots/reliability.svg) before using the scores clinically.");
  return a;
}

Actions overfitting_actions(const Context& c) {
  const RunSettings& s = c.settings;
  std::vector<std::string> remedies = missing_head_regularisers(s);
  if (!(s.instances && *s.instances <= 16))
    remedies.push_back(s.instances ? fmt::format("smaller bags (`train.instances` {} → 16)", *s.instances)
                                   : "smaller bags (`train.instances = 16`)");
  if (!is(s.instance_sampling, "stratified"))
    remedies.push_back(
        fmt::format("`stratified` instance sampling ({})", current("train.instance_sampling", s.instance_sampling)));
  if (!at_least(s.feature_dropout, 0.6))
    remedies.push_back(fmt::format("feature dropout 0.6 ({})", current("model.feature_dropout", s.feature_dropout)));
  if (!at_least(s.drop_path, 0.1))
    remedies.push_back(fmt::format("stochastic depth 0.1 ({})", current("model.drop_path", s.drop_path)));
  Actions a;
  add_use(a, remedies);
  a.push_back(fmt::format("Stop earlier on the inner validation monitor: a smaller patience ({}).",
                          current("train.patience", s.patience)));
  return a;
}

Actions attention_actions(const Context& c) {
  const RunSettings& s = c.settings;
  std::vector<std::string> head = missing_head_regularisers(s);
  if (!is(s.attention, "gated"))
    head.push_back(fmt::format("`gated` attention ({})", current("model.attention", s.attention)));
  Actions a;
  add_use(a, head);
  a.push_back(s.entropy_weight && *s.entropy_weight > 0
                  ? fmt::format("A larger weight of the attention-entropy regulariser ({}).",
                                current("loss.entropy_weight", s.entropy_weight))
                  : fmt::format("The attention-entropy regulariser (β > 0; {}) for collapse experiments.",
                                current("loss.entropy_weight", s.entropy_weight)));
  a.push_back("Check the attention plots (plots/attention_fold_k.svg) for the epoch where top-1 weight jumps.");
  return a;
}

Actions fold_spread_actions(const Context& c) {
  const RunSettings& s = c.settings;
  Actions a;
  if (s.repeats == 1)
    a.push_back("Repeated CV (`--repeats R`) to see the spread between seeds next to the spread between folds.");
  if (!is(s.instance_sampling, "stratified"))
    a.push_back(
        fmt::format("`stratified` bag sampling ({}).", current("train.instance_sampling", s.instance_sampling)));
  a.push_back(
      "Where a patient has several scans, give the manifest a `patient_id` column: the folds are then grouped "
      "by patient.");
  return a;
}

struct CatalogueEntry {
  AnomalyKind kind;
  const char* title;
  Actions (*actions)(const Context&);
};

// Most urgent first: results that cannot be trusted as measured, then a model that decides nothing.
constexpr CatalogueEntry kCatalogue[] = {
    {AnomalyKind::optimistic_protocol, "Measure without test-set selection", optimistic_actions},
    {AnomalyKind::class_collapse, "Fix the class collapse", class_collapse_actions},
    {AnomalyKind::no_learning, "Let the model learn before judging it", no_learning_actions},
    {AnomalyKind::high_auc_low_f1, "Fix the decision threshold", threshold_actions},
    {AnomalyKind::miscalibration, "Do not read p(HGG) as a probability", miscalibration_actions},
    {AnomalyKind::overfitting, "Regularise", overfitting_actions},
    {AnomalyKind::attention_collapse, "Keep attention spread over instances", attention_actions},
    {AnomalyKind::fold_spread, "Measure and reduce the spread", fold_spread_actions},
};

}  // namespace

CalibrationFindings calibration_findings(const std::vector<Anomaly>& anomalies, const CvEvaluation& cv) {
  CalibrationFindings k;
  for (const FoldEvaluation& f : cv.folds) {
    const std::string scope = fold_label(f.info, cv.n_repeats);
    if (std::none_of(anomalies.begin(), anomalies.end(),
                     [&](const Anomaly& a) { return a.kind == AnomalyKind::miscalibration && a.scope == scope; }))
      continue;
    ++k.folds;
    const Confidence direction = confidence_direction(f.calibration);
    k.over_confident += direction == Confidence::over;
    k.under_confident += direction == Confidence::under;
    k.mean_shift += f.calibration.mean_p_hgg - f.calibration.hgg_share;
  }
  if (k.folds > 0) k.mean_shift /= k.folds;
  return k;
}

std::vector<Recommendation> recommendations_for(const std::vector<Anomaly>& anomalies, const RunSettings& settings,
                                                const CalibrationFindings& calibration) {
  std::set<AnomalyKind> found;
  for (const auto& a : anomalies) found.insert(a.kind);
  const Context context{settings, calibration};
  std::vector<Recommendation> out;
  for (const auto& entry : kCatalogue)
    if (found.contains(entry.kind)) out.push_back({entry.kind, entry.title, entry.actions(context)});
  return out;
}

}  // namespace dsmil::report
