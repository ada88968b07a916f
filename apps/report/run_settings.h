// What a run was set up to do, as far as its files tell: the few settings of the resolved config.toml that
// the recommendations depend on, so that the audit never advises what the run already does.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "apps/report/run_dir.h"

namespace dsmil::report {

// Each setting is empty where unknown: no config.toml (folds merged from several runs, hand-made fold
// directories), an unreadable one, or a key it lacks. Keys are those of configs/*.toml.
struct RunSettings {
  std::string source;  // where the settings come from, or why there are none, in words for AUDIT.md
  bool config_read = false;

  std::optional<std::string> case_sampling, class_weights, instance_sampling, pooling, attention;
  std::optional<double> label_smoothing, focal_gamma, entropy_weight;
  std::optional<double> feature_dropout, drop_path, instance_dropout;
  std::optional<double> lr, selection_train_auc, inner_val;
  std::optional<int> instances, epochs, patience;

  // From fold.json where every fold agrees (the config's value otherwise): what the run did, not only
  // what it was told.
  std::optional<std::string> monitor, threshold_method;
  int repeats = 1;  // repeats audited
};

// The settings of the audited folds: config.toml of the one input run directory, when there is one input
// holding it; a config.toml that cannot be parsed counts as unknown and `source` says why.
RunSettings read_run_settings(const std::vector<std::filesystem::path>& inputs, const RunData& run);

}  // namespace dsmil::report
