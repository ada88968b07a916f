// The fold's learner: the model, AdamW, the EMA copy and, in a data-parallel job, the gradient reducer, driven
// one training epoch at a time (forward, loss, backward, optimizer step, EMA update per step). Every random choice
// derives from (seed, repeat, fold, epoch, purpose, index), so an epoch is a pure function of the state at its
// start: restored from last.ckpt, a fold continues bit-exactly.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/train/batches.h"
#include "apps/train/config.h"
#include "apps/train/graph_step.h"
#include "dist/communicator.h"
#include "nn/checkpoint.h"
#include "nn/data_parallel.h"
#include "nn/optim.h"

namespace dsmil::app {

struct FoldPlan;

// p(HGG) of a bag from its two logits: the softmax's second component.
double hgg_probability(float y0, float y1);

class Learner {
 public:
  // `ranks`: the data-parallel job this process is one rank of (null: it trains alone); each step's bags are
  // split over the ranks and their gradients summed. `tag` begins the in-place progress line of each step, shown
  // by the process that writes the fold's files (`writer`).
  Learner(const RunConfig& config, const std::vector<data::CaseVolume>& cohort, Device device,
          const GatherTarget& gather, dist::Communicator* ranks, const FoldPlan& plan, bool writer, std::string tag);

  // One epoch (0-based) over the fold's training cases in a fresh order: its record for metrics.jsonl (epoch,
  // lr, tau, the training split's metrics from the bags' logits as they were trained on, training health, the
  // data-parallel figures). A non-finite loss throws before its update reaches a checkpoint.
  nlohmann::json train_epoch(int epoch);

  mil::DualStreamMIL& model() { return model_; }
  // The EMA model (has_ema() only): refreshed with the current averages, or as it was last refreshed or restored.
  mil::DualStreamMIL& refreshed_ema_model();
  mil::DualStreamMIL& ema_model() { return ema_model_; }
  bool has_ema() const { return ema_ != nullptr; }
  const float* class_weights() const { return class_weights_.data(); }

  // The optimizer's and the EMA's state, into a checkpoint (with the model's) and back.
  void save_state(nn::Checkpoint& ckpt, nlohmann::json& metadata);
  void restore_state(const nn::Checkpoint& ckpt, const nlohmann::json& metadata);

 private:
  uint64_t stream_seed(uint64_t purpose, uint64_t a, uint64_t b) const;

  const RunConfig& c_;
  const std::vector<data::CaseVolume>& cohort_;
  Device device_;
  GatherTarget gather_;
  dist::Communicator* ranks_;
  const FoldPlan& plan_;
  bool writer_;
  std::string tag_;
  mil::DualStreamMIL model_, ema_model_;
  std::unique_ptr<nn::AdamW> optimizer_;
  std::unique_ptr<nn::Ema> ema_;
  std::unique_ptr<nn::GradientReducer> reducer_;  // data-parallel runs only
  std::unique_ptr<GraphStep> graph_step_;          // run.cuda_graph on one GPU: the step recorded and replayed
  std::array<float, 2> class_weights_{1.0f, 1.0f};
  int64_t steps_per_epoch_ = 0;
};

}  // namespace dsmil::app
