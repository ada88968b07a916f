// Model selection and early stopping of one fold.
#include "apps/train/model_selection.h"

#include <algorithm>

namespace dsmil::app {

using json = nlohmann::json;

namespace {

// Ranking of monitor values: higher is better (loss negated), undefined ranks last.
double monitor_score(Monitor monitor, double value) {
  if (std::isnan(value)) return -INFINITY;
  return monitor == Monitor::loss ? -value : value;
}

}  // namespace

double monitor_value(Monitor monitor, const json& metrics) {
  auto get = [&](const char* key) { return metrics[key].is_null() ? NAN : metrics[key].get<double>(); };
  if (monitor == Monitor::min_class_recall) {
    const double lgg = get("recall_lgg"), hgg = get("recall_hgg");
    return std::isnan(lgg) || std::isnan(hgg) ? NAN : std::min(lgg, hgg);
  }
  return get(choice_name(monitor).c_str());  // the record's key is the monitor's name
}

bool Candidate::beaten_by(const Candidate& other) const {
  return other.score > score || (other.score == score && other.auc > auc);
}

Candidate ModelSelection::candidate_of(const json& val, int epoch) const {
  const double value = monitor_value(config_.monitor, val);
  return {value, monitor_score(config_.monitor, value), val["auc"].is_null() ? -INFINITY : val["auc"].get<double>(),
          epoch};
}

// With no candidate yet, any epoch is best (a monitor undefined on every epoch still selects a model).
SelectionUpdate ModelSelection::add_epoch(int epoch, double train_auc, const json& record) {
  if (learning_since_ == 0 && !(train_auc < config_.selection_train_auc)) {
    learning_since_ = epoch;
    best_raw_ = best_ema_ = Candidate{};
  }
  SelectionUpdate update;
  const Candidate raw = candidate_of(record.at("val"), epoch);
  if (best_raw_.epoch == 0 || best_raw_.beaten_by(raw)) {
    best_raw_ = raw;
    update.raw_improved = true;
  }
  if (has_ema()) {
    const Candidate ema = candidate_of(record.at("val_ema"), epoch);
    if (best_ema_.epoch == 0 || best_ema_.beaten_by(ema)) {
      best_ema_ = ema;
      update.ema_improved = true;
    }
  }
  const bool last_epoch = epoch == config_.epochs;
  stopped_early_ = learning_since_ > 0 && !last_epoch && epoch >= config_.min_epochs &&
                   epoch - best_overall().epoch >= config_.patience;
  update.stop = stopped_early_;
  return update;
}

void ModelSelection::save(json& meta) const {
  auto number = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
  meta["best_raw"] = {number(best_raw_.value), number(best_raw_.auc), best_raw_.epoch};
  meta["best_ema"] = {number(best_ema_.value), number(best_ema_.auc), best_ema_.epoch};
  meta["learning_since"] = learning_since_;
  meta["stopped_early"] = stopped_early_;
}

void ModelSelection::restore(const json& meta) {
  auto candidate = [this](const json& j) {
    const double value = j[0].is_null() ? NAN : j[0].get<double>();
    return Candidate{value, monitor_score(config_.monitor, value), j[1].is_null() ? -INFINITY : j[1].get<double>(),
                     j[2].get<int>()};
  };
  best_raw_ = candidate(meta.at("best_raw"));
  best_ema_ = candidate(meta.at("best_ema"));
  learning_since_ = meta.value("learning_since", 0);
  stopped_early_ = meta.value("stopped_early", false);
}

}  // namespace dsmil::app
