// `dsmil cv --workers N` on the CPU: folds run in child processes give the predictions of a sequential `cv`
// (each fold is a function of its seeds), the audit of the run directory is consistent, a whole scheduled
// run resumes (a failing fold is named with its log), and bad --workers / --gpus values fail with one line.
// `--gpus` differs from `--workers` only by the children's CUDA_VISIBLE_DEVICES (apps/train/fold_scheduler.cpp).
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tests/apps/small_runs.h"
#include "tests/test_util.h"

using namespace dsmil;
namespace fs = std::filesystem;
using test::scratch;

namespace {

std::string text_of(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs the dsmil binary with its stderr in `stderr_file`; returns the exit status.
int run_dsmil(const std::vector<std::string>& args, const fs::path& stderr_file) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(stderr_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDERR_FILENO);
    std::vector<char*> argv{const_cast<char*>(DSMIL_BINARY)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(DSMIL_BINARY, argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// `dsmil cv` of three one-epoch folds with one thread per process (the thread count changes the float
// summation order, so the sequential run and the children must use the same).
std::vector<std::string> cv_args(std::vector<std::string> extra) {
  std::vector<std::string> args = {"cv",
                                   "--config",
                                   "tiny",
                                   "--data",
                                   test::small_cohort().string(),
                                   "--set",
                                   "data.cache=" + scratch("cache").string(),
                                   "--set",
                                   "train.epochs=1",
                                   "--set",
                                   "train.min_epochs=1",
                                   "--set",
                                   "cv.folds=3",
                                   "--set",
                                   "run.threads=1"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

}  // namespace

TEST_CASE("cv --workers 2 predicts as a sequential cv, audits consistently, and a scheduled run resumes") {
  const fs::path out = scratch("runs"), log = scratch("logs");
  REQUIRE(run_dsmil(cv_args({"--out", (out / "sequential").string()}), log / "sequential.txt") == 0);
  REQUIRE(run_dsmil(cv_args({"--workers", "2", "--out", (out / "workers").string()}), log / "workers.txt") == 0);
  const fs::path sequential = test::only_run_dir(out / "sequential"), workers = test::only_run_dir(out / "workers");

  auto same_predictions = [&](const fs::path& run) {
    for (int fold = 0; fold < 3; ++fold) {
      const std::string fold_dir = "fold_" + std::to_string(fold);
      const std::string expected = text_of(sequential / fold_dir / "predictions.csv");
      CHECK(expected.size() > 100);
      CHECK(text_of(run / fold_dir / "predictions.csv") == expected);
    }
  };
  same_predictions(workers);
  for (int fold = 0; fold < 3; ++fold)
    CHECK(text_of(workers / ("fold_" + std::to_string(fold) + ".log")).find("done: best epoch") != std::string::npos);
  CHECK(text_of(workers / "config.toml") == text_of(sequential / "config.toml"));
  CHECK(text_of(workers / "splits.json") == text_of(sequential / "splits.json"));
  const nlohmann::json a = nlohmann::json::parse(text_of(sequential / "cv_summary.json"));
  const nlohmann::json b = nlohmann::json::parse(text_of(workers / "cv_summary.json"));
  CHECK(b["consistency"]["failed"].get<int>() == 0);
  CHECK(b["consistency"]["checks"].get<int>() > 20);
  CHECK(b["pooled"] == a["pooled"]);
  CHECK(fs::exists(workers / "AUDIT.md"));

  // Resume the whole run with fold 2 lost and fold 1 unwritable: fold 1 fails and is named with its log.
  fs::remove_all(workers / "fold_2");
  fs::remove_all(workers / "fold_1");
  std::ofstream(workers / "fold_1") << "not a folder";
  CHECK(run_dsmil(cv_args({"--workers", "2", "--resume", workers.string()}), log / "failed.txt") != 0);
  const std::string failed = text_of(log / "failed.txt");
  const size_t error_line = failed.rfind("dsmil: error");
  REQUIRE(error_line != std::string::npos);
  std::printf("[workers] failing resume ended with: %s", failed.substr(error_line).c_str());
  CHECK(failed.find("fold 1 failed") != std::string::npos);
  CHECK(failed.find((workers / "fold_1.log").string()) != std::string::npos);
  CHECK(failed.find("fold 2 failed") == std::string::npos);

  fs::remove(workers / "fold_1");
  REQUIRE(run_dsmil(cv_args({"--workers", "3", "--resume", workers.string()}), log / "resumed.txt") == 0);
  same_predictions(workers);
  CHECK(nlohmann::json::parse(text_of(workers / "cv_summary.json"))["pooled"] == a["pooled"]);
}

TEST_CASE("bad --workers and --gpus values: one error line, non-zero exit, no run directory") {
  const fs::path out = scratch("bad"), log = scratch("logs") / "bad.txt";
  for (const std::vector<std::string>& bad : {std::vector<std::string>{"--workers", "0"},
                                              {"--workers", "-3"},
                                              {"--workers", "2", "--gpus", "0,1"},
                                              {"--gpus", "0,x"},
                                              {"--gpus", "1,1"},
                                              {"--gpus", ""},
                                              {"--gpus", "0", "--device", "cpu"},
                                              {"--workers", "2", "--folds", "0,3"}}) {
    std::vector<std::string> extra = bad;
    extra.insert(extra.end(), {"--out", out.string()});
    CHECK(run_dsmil(cv_args(extra), log) != 0);
    const std::string message = text_of(log);
    INFO(message);
    const bool explained = message.find("dsmil: error: ") != std::string::npos ||
                           message.find("--gpus excludes --workers") != std::string::npos;
    CHECK(explained);
    CHECK(fs::is_empty(out));
  }
}

TEST_CASE("cv --nproc 2 of a CPU run: both ranks start, refuse, and the launcher names each failed rank") {
  const fs::path out = scratch("nproc"), log = scratch("logs") / "nproc.txt";
  const auto start = std::chrono::steady_clock::now();
  CHECK(run_dsmil(cv_args({"--nproc", "2", "--device", "cpu", "--out", out.string()}), log) != 0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string message = text_of(log);
  INFO(message);
  CHECK(message.find("data-parallel job: 2 ranks started") != std::string::npos);
  // The first rank to refuse ends the job: the other may be stopped before it says why.
  CHECK(message.find(" of 2: data-parallel training runs on GPUs") != std::string::npos);
  CHECK(message.find("rank 0 failed") != std::string::npos);
  CHECK(message.find("rank 1 failed") != std::string::npos);
  CHECK(seconds < 60.0);  // a rank left waiting for the others would hang: the launcher stops them
  CHECK(fs::is_empty(out));
  CHECK(run_dsmil(cv_args({"--nproc", "0", "--out", out.string()}), log) != 0);
}
