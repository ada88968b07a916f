// A fold's checkpoint files. last.ckpt is the resume point: the model, AdamW's and the EMA's state, the best raw
// and EMA models so far and the model selection's state, in one file written whole (nn/checkpoint.h), so that a
// run killed anywhere resumes to the weights, best models and records of one epoch. best.ckpt and best_ema.ckpt
// are the selected models with the threshold calibrated for each, which `eval` and `predict` apply.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "apps/train/config.h"
#include "apps/train/learner.h"
#include "apps/train/model_selection.h"
#include "nn/checkpoint.h"

namespace dsmil::app {

struct FoldPlan;

// The best raw and EMA models, kept in host memory until last.ckpt takes them to disk.
struct BestModels {
  nn::Checkpoint raw, ema;
};

class FoldCheckpoints {
 public:
  FoldCheckpoints(const RunConfig& config, const FoldPlan& plan, std::filesystem::path dir);

  // A model's weights and statistics at `epoch`, on the host, in the format of best.ckpt.
  nn::Checkpoint snapshot(mil::DualStreamMIL& model, int epoch) const;

  // Whether run.checkpoint_seconds have passed since last.ckpt was last written (or the fold started).
  bool due() const;
  void save_last(int epochs_done, Learner& learner, const ModelSelection& selection, const BestModels& best);
  // Restores the state last.ckpt holds; returns the number of epochs it holds. A last.ckpt of another config is
  // refused.
  int restore_last(Learner& learner, ModelSelection& selection, BestModels& best);
  int saved_epochs() const { return saved_epochs_; }
  std::filesystem::path last_path() const { return dir_ / "last.ckpt"; }

  // `name` (best.ckpt, best_ema.ckpt): the weights with the threshold calibrated for them and the bags it was
  // calibrated on.
  void save_best(const std::string& name, nn::Checkpoint weights, double threshold, const std::string& method) const;

 private:
  nlohmann::json metadata(int epoch) const;

  const RunConfig& c_;
  const FoldPlan& plan_;
  std::filesystem::path dir_;
  // What writes the checkpoints: a snapshot of this process's build, device and command (the command-line and
  // device queries run once, not at every checkpoint).
  nlohmann::json provenance_;
  std::chrono::steady_clock::time_point last_save_;
  int saved_epochs_ = 0;  // the epochs last.ckpt holds
};

}  // namespace dsmil::app
