// Runs the folds of a prepared cross-validation run in child processes of the `dsmil` binary, one fold per
// child and at most one child per slot (a GPU of `cv --gpus`, or one of the N processes of `cv --workers`).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace dsmil::app {

struct FoldSlot {
  std::string name;                  // "GPU 2", "worker 1": names the slot in progress messages
  std::string cuda_visible_devices;  // CUDA_VISIBLE_DEVICES of its children; empty: inherited
};

// One slot per GPU id of "0,1,3"; throws dsmil::Error on an empty, non-numeric or repeated id.
std::vector<FoldSlot> gpu_slots(const std::string& gpu_list);
// `workers` slots sharing this process's device; throws dsmil::Error unless workers >= 1.
std::vector<FoldSlot> worker_slots(int workers);

struct ChildFoldRuns {
  std::filesystem::path executable = "/proc/self/exe";  // the dsmil binary
  std::filesystem::path run_dir;  // holds config.toml and splits.json; the preprocessing cache is warm
  std::vector<int> folds;         // started in this order, each as soon as a slot is free
  std::vector<FoldSlot> slots;
  int run_threads = 0;  // the config's run.threads; 0 (all cores) shares the cores among the slots
};

// Runs `dsmil cv --config RUN_DIR/config.toml --resume RUN_DIR --folds K --no-audit --fold-process` for every
// fold K, its output appended to RUN_DIR/fold_K.log; the child also appends its lines, stamped and marked
// "fold K: ", to RUN_DIR/run.log, and its fold's to RUN_DIR/fold_K/fold.log. After a child fails no new fold
// starts; once the running ones end, throws dsmil::Error naming each failed fold and its log.
void run_folds_in_children(const ChildFoldRuns& runs);

}  // namespace dsmil::app
