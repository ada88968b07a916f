// `dsmil reproduce RUN_DIR`: runs a CV's recorded folds again from its own config.toml and checked inputs
// (inputs.json) and compares the new predictions with the recorded ones (README "Reproducing a run").
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsmil::app {

struct ReproduceOptions {
  std::filesystem::path run_dir;
  std::vector<int> folds;     // empty: every fold the run holds
  std::filesystem::path out;  // folder of the new run; empty: run_dir (as run_dir/reproduce_<timestamp>/)
  int threads = 0;            // for hashing the inputs; 0: the run's run.threads, or all cores
};

struct ReproduceResult {
  bool reproduced = false;
  std::filesystem::path new_run_dir, report_md;
  std::string summary;  // one line: each fold's comparison, then the verdict
};

// The build fields ("commit: run X, this binary Y") in which the first record of a run's provenance.jsonl
// (the run's start) differs from `current` (a Provenance::to_json); command line and config hash left out.
std::vector<std::string> build_differences(const nlohmann::json& recorded, const nlohmann::json& current);

// Refuses (Error) a run without config.toml or inputs.json, and (InputChanged) one whose source files differ
// from inputs.json, before anything is trained; otherwise trains the folds again in a new run directory,
// compares, and writes run_dir/REPRODUCE.md.
ReproduceResult reproduce_run(const ReproduceOptions& options);

}  // namespace dsmil::app
