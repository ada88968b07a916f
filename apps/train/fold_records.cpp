// What a fold reports as it trains.
#include "apps/train/fold_records.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "apps/report/run_dir.h"
#include "apps/train/health.h"
#include "data/sampling.h"

namespace dsmil::app {

using json = nlohmann::json;

namespace {

double number_or_nan(const json& value) { return value.is_number() ? value.get<double>() : NAN; }

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string duration_text(double seconds) {
  const auto s = static_cast<long>(std::lround(seconds));
  return s >= 3600 ? fmt::format("{}h{:02}m", s / 3600, s % 3600 / 60)
         : s >= 60 ? fmt::format("{}m{:02}s", s / 60, s % 60)
                   : fmt::format("{}s", s);
}

}  // namespace

json validation_metrics(const std::vector<CasePrediction>& preds, const float* class_weights) {
  std::vector<int> labels;
  std::vector<double> p;
  double weighted = 0.0, weights = 0.0;
  for (const CasePrediction& q : preds) {
    labels.push_back(q.label);
    p.push_back(q.p_hgg);
    weighted += class_weights[q.label] * q.loss;
    weights += class_weights[q.label];
  }
  return report::split_record_json(labels, p, weights > 0 ? weighted / weights : NAN);
}

json attention_diagnostics(const std::vector<CasePrediction>& preds, const std::vector<data::CaseVolume>& cohort,
                           int slab_depth) {
  if (preds.empty()) return nullptr;
  double entropy = 0, entropy_norm = 0, top1 = 0, neff = 0;
  std::vector<double> confidence;
  int tumour_bags = 0, bags_with_seg = 0;
  double tumour_mass = 0, tumour_slab_share = 0;
  for (const CasePrediction& p : preds) {
    entropy += p.entropy;
    entropy_norm += p.attention.size() > 1 ? p.entropy / std::log(static_cast<double>(p.attention.size())) : 0.0;
    top1 += p.top1;
    neff += p.neff;
    const size_t critical = std::max_element(p.selection.begin(), p.selection.end()) - p.selection.begin();
    confidence.push_back(1.0 / (1.0 + std::exp(-std::fabs(p.margins[critical]))));
    const data::CaseVolume& c = cohort[p.case_index];
    if (c.has_seg()) {
      ++bags_with_seg;
      int tumour_slabs = 0;
      for (size_t i = 0; i < p.starts.size(); ++i)
        if (data::slab_holds_tumour(c, p.starts[i], slab_depth)) {
          ++tumour_slabs;
          tumour_mass += p.attention[i];
          tumour_bags += i == critical;
        }
      tumour_slab_share += static_cast<double>(tumour_slabs) / static_cast<double>(p.starts.size());
    }
  }
  const double n = static_cast<double>(preds.size());
  std::sort(confidence.begin(), confidence.end());
  auto quantile = [&](double q) { return confidence[static_cast<size_t>(q * (confidence.size() - 1) + 0.5)]; };
  double mean_conf = 0;
  for (double v : confidence) mean_conf += v / n;
  return {
      {"entropy", entropy / n},
      {"entropy_norm", entropy_norm / n},
      {"top1", top1 / n},
      {"neff", neff / n},
      {"selection_confidence",
       {{"mean", mean_conf}, {"p10", quantile(0.1)}, {"p50", quantile(0.5)}, {"p90", quantile(0.9)}}},
      {"critical_tumour_share", bags_with_seg ? json(static_cast<double>(tumour_bags) / bags_with_seg) : json(nullptr)},
      {"attention_tumour_mass", bags_with_seg ? json(tumour_mass / bags_with_seg) : json(nullptr)},
      {"tumour_slab_share", bags_with_seg ? json(tumour_slab_share / bags_with_seg) : json(nullptr)}};
}

double logit_spread(const std::vector<CasePrediction>& preds) {
  std::vector<double> margins;
  for (const CasePrediction& q : preds) {
    const double p = std::clamp(q.p_hgg, 1e-12, 1.0 - 1e-12);
    margins.push_back(std::log(p / (1.0 - p)));
  }
  return spread(margins);
}

FoldProgress::FoldProgress(const RunConfig& config, const FoldPlan& plan)
    : c_(config), plan_(plan), started_(std::chrono::steady_clock::now()) {}

void FoldProgress::start(int first_epoch) {
  started_ = std::chrono::steady_clock::now();
  first_epoch_ = first_epoch;
}

std::string FoldProgress::tag() const {
  const std::string where =
      c_.repeats > 1 ? fmt::format("repeat_{}/fold_{}", plan_.repeat, plan_.fold) : fmt::format("fold_{}", plan_.fold);
  return fmt::format("[{}, {}/{}]", where, plan_.position, plan_.count);
}

std::string FoldProgress::eta(int epochs_done) const {
  const double per_epoch = seconds_since(started_) / std::max(1, epochs_done - first_epoch_);
  const double fold = per_epoch * (c_.epochs - epochs_done);
  const double run = fold + per_epoch * c_.epochs * (plan_.count - plan_.position);
  return fmt::format("ETA fold <= {}, run <= {}", duration_text(fold), duration_text(run));
}

std::string FoldProgress::epoch_line(const json& record, const std::string& monitor, double best_value,
                                     bool best_is_ema, int best_epoch) const {
  const json& health = record["health"];
  const int epoch = record["epoch"].get<int>();
  return fmt::format(
      "{} epoch {:>3}/{} loss {:.4f} auc {:.3f} | val loss {:.4f} auc {:.3f} bacc {:.3f} | {} {:.3f} (best {} @{}) | "
      "gnorm {:.2f} upd {:.1e} spread {:.2f} | {:.1f} bags/s | {}",
      tag(), epoch, c_.epochs, record["train"]["loss"].get<double>(), number_or_nan(record["train"]["auc"]),
      number_or_nan(record["val"]["loss"]), number_or_nan(record["val"]["auc"]),
      number_or_nan(record["val"]["balanced_accuracy"]), monitor, best_value, best_is_ema ? "ema" : "raw", best_epoch,
      number_or_nan(health.value("grad_norm", json())["mean"]), encoder_update_ratio(health),
      health.value("logit_spread", NAN), record["throughput_bags_per_s"].get<double>(), eta(epoch));
}

}  // namespace dsmil::app
