// Schedules cross-validation folds over child processes: a queue of fold indices, a set of slots (GPUs or
// workers), one `dsmil cv --resume RUN_DIR --folds K` child per busy slot (apps/train/child_process.h).
#include "apps/train/fold_scheduler.h"

#include <fcntl.h>
#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "apps/train/child_process.h"
#include "logging/log.h"
#include "base/error.h"

namespace dsmil::app {

namespace fs = std::filesystem;

std::vector<FoldSlot> gpu_slots(const std::string& gpu_list) {
  std::vector<FoldSlot> slots;
  std::set<int> seen;
  std::stringstream in(gpu_list);
  for (std::string item; std::getline(in, item, ',');) {
    size_t used = 0;
    int id = -1;
    try {
      id = std::stoi(item, &used);
    } catch (const std::exception&) {
    }
    if (item.empty() || used != item.size() || id < 0)
      throw Error(fmt::format("--gpus '{}': expected GPU ids like 0,1,2,3", gpu_list));
    if (!seen.insert(id).second)
      throw Error(fmt::format("--gpus '{}': GPU {} is listed twice (--workers N shares one GPU)", gpu_list, id));
    slots.push_back({fmt::format("GPU {}", id), std::to_string(id)});
  }
  if (slots.empty()) throw Error("--gpus: expected GPU ids like 0,1,2,3");
  return slots;
}

std::vector<FoldSlot> worker_slots(int workers) {
  if (workers < 1) throw Error(fmt::format("--workers {}: expected a positive number of processes", workers));
  std::vector<FoldSlot> slots;
  for (int w = 0; w < workers; ++w) slots.push_back({fmt::format("worker {}", w), ""});
  return slots;
}

namespace {

// OMP_NUM_THREADS of each child: with run.threads = 0 ("all cores") the cores are shared among the slots;
// an explicit run.threads is part of the config (the results depend on it) and is kept.
int child_omp_threads(int run_threads, size_t slots) {
  if (run_threads > 0) {
    const unsigned cores = std::thread::hardware_concurrency();
    if (static_cast<size_t>(run_threads) * slots > cores)
      logging::line(fmt::format("note: {} children of run.threads = {} each oversubscribe the {} cores", slots,
                                run_threads, cores));
    return 0;
  }
  return std::max(1, omp_get_max_threads() / static_cast<int>(slots));  // OMP_NUM_THREADS, else the cores
}

struct RunningFold {
  int fold;
  size_t slot;
  std::chrono::steady_clock::time_point started;
};

// Forks the child of `fold` on `slot`, its stdout and stderr appended to RUN_DIR/fold_K.log.
pid_t start_fold(const ChildFoldRuns& runs, int fold, const FoldSlot& slot, int omp_threads) {
  const fs::path log = runs.run_dir / fmt::format("fold_{}.log", fold);
  std::vector<std::string> args = {runs.executable.string(),
                                   "cv",
                                   "--config",
                                   (runs.run_dir / "config.toml").string(),
                                   "--resume",
                                   runs.run_dir.string(),
                                   "--folds",
                                   std::to_string(fold),
                                   "--no-audit",
                                   "--fold-process"};
  std::vector<std::string> overrides;
  if (!slot.cuda_visible_devices.empty()) overrides.push_back("CUDA_VISIBLE_DEVICES=" + slot.cuda_visible_devices);
  if (omp_threads > 0) overrides.push_back(fmt::format("OMP_NUM_THREADS={}", omp_threads));
  const int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) throw Error(fmt::format("{}: cannot open the fold's log: {}", log.string(), std::strerror(errno)));
  const std::string header = fmt::format("=== fold {} on {}{} ===\n", fold, slot.name,
                                         omp_threads > 0 ? fmt::format(", OMP_NUM_THREADS={}", omp_threads) : "");
  if (write(log_fd, header.data(), header.size()) < 0)
    logging::line(fmt::format("note: {}: cannot write", log.string()));
  const pid_t pid = start_child(std::move(args), overrides, log_fd);
  logging::line(fmt::format("fold {}: started on {} (log {})", fold, slot.name, log.string()));
  return pid;
}

}  // namespace

void run_folds_in_children(const ChildFoldRuns& runs) {
  if (runs.slots.empty()) throw Error("no GPU or worker to run the folds on");
  const int omp_threads = child_omp_threads(runs.run_threads, runs.slots.size());
  std::deque<int> queued(runs.folds.begin(), runs.folds.end());
  std::deque<size_t> free_slots;
  for (size_t s = 0; s < runs.slots.size(); ++s) free_slots.push_back(s);
  std::map<pid_t, RunningFold> running;
  std::vector<std::string> failures;

  while (!running.empty() || (!queued.empty() && failures.empty())) {
    while (failures.empty() && !queued.empty() && !free_slots.empty()) {
      const int fold = queued.front();
      const size_t slot = free_slots.front();
      queued.pop_front();
      free_slots.pop_front();
      try {
        running[start_fold(runs, fold, runs.slots[slot], omp_threads)] = {fold, slot, std::chrono::steady_clock::now()};
      } catch (const Error& e) {
        failures.push_back(e.what());
        free_slots.push_back(slot);
      }
    }
    if (running.empty()) break;
    int status = 0;
    const pid_t pid = wait_for_child(status, "the fold processes");
    const auto it = running.find(pid);
    if (it == running.end()) continue;
    const RunningFold done = it->second;
    running.erase(it);
    free_slots.push_back(done.slot);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - done.started).count();
    const std::string log = (runs.run_dir / fmt::format("fold_{}.log", done.fold)).string();
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      logging::line(fmt::format("fold {}: done on {} in {:.1f} s", done.fold, runs.slots[done.slot].name, seconds));
    } else {
      failures.push_back(fmt::format("fold {} failed ({}): see {}", done.fold, describe_status(status), log));
      logging::line(fmt::format("fold {}: FAILED on {} ({}): see {}", done.fold, runs.slots[done.slot].name,
                                describe_status(status), log));
    }
  }
  if (!failures.empty()) {
    std::string message = failures.front();
    for (size_t i = 1; i < failures.size(); ++i) message += "; " + failures[i];
    throw Error(message);
  }
}

}  // namespace dsmil::app
