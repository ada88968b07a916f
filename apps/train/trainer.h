// Training and evaluation of one fold: the epoch loop (its parts: learner.h the steps with AdamW, the warm-up +
// cosine schedule and EMA; model_selection.h early stopping on the monitor over the raw and the EMA model;
// fold_checkpoints.h checkpoints with bit-exact resume at epoch boundaries; fold_records.h the epoch records and
// progress), threshold calibration on the inner validation split, and the fold's output files
// (apps/report/FORMAT.md).
#pragma once

#include <array>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/train/batches.h"
#include "apps/train/config.h"
#include "data/preprocess.h"
#include "dist/communicator.h"

namespace dsmil::app {

struct FoldPlan {
  int repeat = 0, fold = 0;
  std::vector<int> train, val, test;  // indices into the cohort; val is empty under select_on_test
  // This fold's place among the folds this process trains (1-based) and their number, for progress and ETA.
  int position = 1, count = 1;
};

// Predictions of one model on a set of cases (fixed instance sampling, no augmentation).
struct CasePrediction {
  int case_index = 0;
  int label = 0;
  double p_hgg = 0;
  double loss = 0;               // the training loss of this bag alone
  std::vector<int> starts;       // slab starts of the bag's instances
  std::vector<float> attention;  // a_i
  std::vector<float> selection;  // stream-1 weight of each instance
  std::vector<float> margins;    // z_i
  float entropy = 0, top1 = 0, neff = 0;
};

Device resolve_device(const std::string& name);

// The threshold calibrated for a saved model: best.ckpt and best_ema.ckpt each carry their own (chosen on the
// inner validation split with bags of config.eval_instances fixed slabs); last.ckpt carries none.
struct CheckpointThreshold {
  double value = 0.5;
  std::string method;  // 0.5 | youden | max_f1
  std::string source;  // a line saying what the value is and where it came from
};

// A fold's saved model (best.ckpt, best_ema.ckpt, last.ckpt): its resolved config, the epoch it was saved at,
// its calibrated threshold when it has one, and the model on `device` in evaluation mode, in the config's math
// mode (nn::Module::set_math_mode), as the run had it.
struct TrainedModel {
  RunConfig config;
  int epoch = 0;
  std::optional<CheckpointThreshold> threshold;
  std::unique_ptr<mil::DualStreamMIL> model;
  nlohmann::json metadata;  // the checkpoint's metadata as written (config text, provenance, threshold bags...)
};
TrainedModel load_trained_model(const std::filesystem::path& checkpoint, Device device);

// How training bags are drawn: config.instances slabs by config.instance_sampling, augmented when
// config.augment, shifts up to 1/16 of the grid's width.
BagSpec training_bag_spec(const RunConfig& config, const data::GridShape& grid);

// The loss's class weights alpha[label] for a training set: N / (2 N_c) under `balanced`, else 1.
std::array<float, 2> class_weights(const RunConfig& config, const std::vector<data::CaseVolume>& cohort,
                                   const std::vector<int>& train);

// The soft-pooling temperature of epoch `epoch` (0-based): tau_start annealed geometrically to tau_end.
float soft_pooling_tau(const RunConfig& config, int epoch);

// The model (put in evaluation mode for the call) on bags of `cases` drawn with `fixed` sampling of
// config.eval_instances slabs, config.bags_per_step bags at a time.
std::vector<CasePrediction> predict_cases(mil::DualStreamMIL& model, const std::vector<data::CaseVolume>& cohort,
                                          const std::vector<int>& cases, const RunConfig& config, Device device,
                                          float tau, const GatherTarget& gather = {});

// A labelled dataset (any layout `cv` reads) prepared for a trained model, as `eval` and `predict` read it:
// discovered, checked and preprocessed on the model's grid through `cache` (empty: the config's cache), with
// a progress line. Under BadCasePolicy::skip the cases that fail a check are left out and listed with their
// reasons (discovery's first, then preprocessing's); a dataset left without a case throws FormatError.
struct PreparedDataset {
  std::vector<data::CaseVolume> cases;
  std::vector<data::CaseFiles> files;  // the source files of each of `cases`, in the same order
  std::vector<data::SkippedCase> skipped;
};
PreparedDataset prepare_dataset(const std::filesystem::path& dataset, const std::filesystem::path& cache,
                                const RunConfig& config, data::BadCasePolicy policy);

class Trainer {
 public:
  // `gather`: where bags are assembled (a resident cohort holds the same cases as `cohort`).
  // `ranks`: the data-parallel job this process is one rank of (null: it trains alone). Each step's bags
  // are split over the ranks and their gradients summed (nn/data_parallel.h); rank 0 alone validates,
  // decides when to stop and writes the fold's files.
  Trainer(const RunConfig& config, const std::vector<data::CaseVolume>& cohort, Device device,
          const GatherTarget& gather = {}, dist::Communicator* ranks = nullptr);
  // Trains and evaluates the fold into `dir` (created); with `resume`, continues from dir/last.ckpt
  // when present and returns at once when the fold is already complete (fold.json exists).
  void run_fold(const FoldPlan& plan, const std::filesystem::path& dir, bool resume);

 private:
  const RunConfig& config_;
  const std::vector<data::CaseVolume>& cohort_;
  Device device_;
  GatherTarget gather_;
  dist::Communicator* ranks_;
};

}  // namespace dsmil::app
