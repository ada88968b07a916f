// Named points of the training loop where a test ends the process abruptly, to check that a run killed
// in any window resumes to the same files: with DSMIL_FAULT=name (or name:n, the n-th time the point is
// reached) the process exits at once with kFaultExitCode, writing nothing more. Unset, as in every normal
// run, a point costs one comparison.
#pragma once

namespace dsmil::app {

constexpr int kFaultExitCode = 86;

// The points of a fold (apps/train/trainer.cpp): "checkpoint_saved" (last.ckpt written), "stop_saved" (last.ckpt
// of the epoch that stops the fold early), "best_saved" (best.ckpt and best_ema.ckpt written at the end),
// "predictions_written" (predictions.csv and attention.csv written, fold.json not yet).
void fault_point(const char* name);

}  // namespace dsmil::app
