// Cross-validation end to end: data discovery and preprocessing (cached), seeded splits, one trained
// fold after another (or a chosen subset), and the audit of the run (cv_summary.json, AUDIT.md).
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "apps/train/config.h"
#include "data/preprocess.h"
#include "data/splits.h"
#include "dist/communicator.h"

namespace dsmil::app {

struct CvOptions {
  std::filesystem::path runs_root = "runs";
  std::string run_prefix;  // the run directory is runs_root/<run_prefix>_<YYYYMMDD_HHMMSS>; empty: the config's name
  std::filesystem::path resume_dir;  // continue this run directory instead of starting a new one
  std::vector<int> folds;            // empty: all folds
  bool audit = true;                 // write cv_summary.json and AUDIT.md at the end
  // Set: the folds are trained elsewhere (child processes, apps/train/fold_scheduler.h). run_cv prepares the
  // run directory, config.toml, splits.json and the preprocessing cache, calls this with the run directory
  // and the folds to train (every fold when `folds` is empty), then audits.
  std::function<void(const std::filesystem::path& run_dir, const std::vector<int>& folds)> train_folds;
  // Set: this process is one rank of a data-parallel job (apps/train/trainer.h). Rank 0 names the run
  // directory and writes every file; the others train their share of each step beside it.
  dist::Communicator* ranks = nullptr;
  // Set: this process is a fold process of a scheduled run (apps/train/fold_scheduler.h); its lines in the
  // run's run.log are marked with its folds.
  bool fold_process = false;
};

struct CvResult {
  std::filesystem::path run_dir, audit_md;
  bool consistent = true;
};

// The run's config.toml holds `config` with run.precision made concrete for the device (resolve_precision).
// The run's rank-0 process keeps RUN_DIR/run.log open (logging::open_run_log) from when the directory is known
// until it ends: every line it prints from then on is there, stamped, and each fold's lines are also in its
// fold.log.
CvResult run_cv(const RunConfig& config, const CvOptions& options);

// The dataset of `config`, discovered and preprocessed through its cache; skipped cases are printed and, by
// the `writer`, listed in run_dir/skipped_cases.txt, and every case's inputs hashed into run_dir/inputs.json
// unless it is there already (run_dir empty: neither).
data::PreprocessedCohort prepare_cohort(const RunConfig& config, const std::filesystem::path& run_dir, bool writer);

// The seeded outer folds and inner validation splits of repeat `repeat` over `cases` (grouped by patient).
data::Splits cohort_splits(const RunConfig& config, const std::vector<data::CaseVolume>& cases, int repeat);

// A repeat's folder: the run directory itself unless the CV is repeated (repeats > 1: run_dir/repeat_<r>).
std::filesystem::path repeat_dir(const std::filesystem::path& run_dir, int repeats, int repeat);

// "0,2,3" -> {0, 2, 3}
std::vector<int> parse_fold_list(const std::string& text);

}  // namespace dsmil::app
