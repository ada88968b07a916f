// The learning-rate range test (Smith 2015, "Cyclical learning rates"; fastai's and Lightning's lr_find):
// training steps of the config's recipe with the learning rate growing geometrically from lr_min to
// lr_max, the loss smoothed and recorded, stopped once it diverges; the loss against the learning rate
// shows where learning starts and where it breaks down.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "apps/train/batches.h"
#include "apps/train/config.h"
#include "data/preprocess.h"

namespace dsmil::app {

struct LrFindOptions {
  double lr_min = 1e-7, lr_max = 1.0;
  int steps = 300;
  double divergence = 4.0;  // stop when the smoothed loss exceeds this times its minimum
  double smoothing = 0.98;  // beta of the exponential moving average (bias-corrected)
};

struct LrFindPoint {
  double lr = 0, loss = 0, smoothed = 0;
};

// The suggestion is the rate where the smoothed loss is lowest: the largest rate at which the loss still
// falls (Smith's upper bound of the usable range). With this model's noisy two-bag steps, the rules that
// look for the steepest descent pick noise at the start of the range.
struct LrFindResult {
  std::vector<LrFindPoint> points;
  bool diverged = false;
  double suggested_lr = 0;
};

// Runs the test from the config's initialisation on `train` (indices into cohort), with the config's
// bag sampling, augmentation, dropouts, loss and AdamW (no warm-up, no schedule, no EMA).
LrFindResult lr_find(const RunConfig& config, const std::vector<data::CaseVolume>& cohort,
                     const std::vector<int>& train, Device device, const LrFindOptions& options,
                     const GatherTarget& gather = {});

// The suggestion from a recorded curve (also for tests): the lowest smoothed loss among the points between
// the first and the last tenth of the range.
void suggest_lr(LrFindResult& result);

// lr_find.csv (step, lr, loss, smoothed) and lr_find.svg (smoothed and raw loss against log10 lr, the
// suggestion marked) in `dir`; returns the SVG's path.
std::filesystem::path write_lr_find(const LrFindResult& result, const std::filesystem::path& dir);

}  // namespace dsmil::app
