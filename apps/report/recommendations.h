// Recommendations for the anomalies found, written against the run's own settings: advice the run already
// follows is left out (or replaced by what else to try), and a setting advised to change is named with its
// current value.
#pragma once

#include <string>
#include <vector>

#include "apps/report/anomalies.h"
#include "apps/report/evaluation.h"
#include "apps/report/run_settings.h"

namespace dsmil::report {

// What to do about one kind of anomaly; `actions` is never empty.
struct Recommendation {
  AnomalyKind kind;
  std::string title;
  std::vector<std::string> actions;
};

// How the folds flagged for miscalibration err: how many are over- and under-confident, and the mean shift of
// p(HGG) from the HGG share over them.
struct CalibrationFindings {
  int folds = 0, over_confident = 0, under_confident = 0;
  double mean_shift = 0;
};
CalibrationFindings calibration_findings(const std::vector<Anomaly>& anomalies, const CvEvaluation& cv);

// One recommendation per kind of anomaly found, most urgent first (an optimistic protocol, a collapse to one
// class and a model that never learned before threshold, calibration, regularisation and spread issues); each
// names the settings of DESIGN section 5 (configs/recommended-v2) that address it, and the calibration advice
// follows the way the flagged folds err.
std::vector<Recommendation> recommendations_for(const std::vector<Anomaly>& anomalies, const RunSettings& settings,
                                                const CalibrationFindings& calibration);

}  // namespace dsmil::report
