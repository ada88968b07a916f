// Recommendations for the anomalies found, written against the run's own settings: advice the run already
// follows is left out (or replaced by what else to try), and a setting advised to change is named with its
// current value.
#pragma once

#include <string>
#include <vector>

#include "apps/report/anomalies.h"
#include "apps/report/run_settings.h"

namespace dsmil::report {

// What to do about one kind of anomaly; `actions` is never empty.
struct Recommendation {
  AnomalyKind kind;
  std::string title;
  std::vector<std::string> actions;
};

// One recommendation per kind of anomaly found, most urgent first (an optimistic protocol, a collapse to one
// class and a model that never learned before threshold, calibration, regularisation and spread issues); each
// names the settings of DESIGN section 5 (configs/recommended-v2) that address it.
std::vector<Recommendation> recommendations_for(const std::vector<Anomaly>& anomalies, const RunSettings& settings);

}  // namespace dsmil::report
