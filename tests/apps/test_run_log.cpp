// The run's logs, from the dsmil binary on the CPU: RUN_DIR/run.log holds every line the process printed (stdout
// and stderr) after a parseable UTC time stamp, the stamps never going back; RUN_DIR/fold_K/fold.log holds its
// fold's lines; a killed run resumed appends to both and says so; the error that ends a run is its log's last
// line; under `cv --workers` the fold processes add their lines, marked with their fold, to the same run.log;
// `lr-find` keeps its lines in lr_find.log beside its plot.
#include <stdlib.h>

#include <ctime>
#include <filesystem>
#include <iomanip>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "apps/train/fault_points.h"
#include "tests/apps/subprocess.h"
#include "tests/apps/small_runs.h"
#include "tests/test_util.h"

using namespace dsmil;
namespace fs = std::filesystem;
using test::file_text;
using test::scratch;

namespace {

// `dsmil cv` of three-fold CV with two epochs a fold, last.ckpt written at every epoch.
std::vector<std::string> cv_args(std::vector<std::string> extra) {
  std::vector<std::string> args = {DSMIL_BINARY, "cv",
                                   "--config",   "tiny",
                                   "--data",     test::small_cohort().string(),
                                   "--set",      "data.cache=" + scratch("cache").string(),
                                   "--set",      "train.epochs=2",
                                   "--set",      "train.min_epochs=2",
                                   "--set",      "cv.folds=3",
                                   "--set",      "run.threads=1",
                                   "--set",      "run.checkpoint_seconds=0"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

test::Finished run_with_fault(const std::vector<std::string>& args, const std::string& fault) {
  setenv("DSMIL_FAULT", fault.c_str(), 1);
  test::Finished finished = test::run_program(args);
  unsetenv("DSMIL_FAULT");
  return finished;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

struct LogLine {
  int64_t unix_ms = 0;
  std::string text;
};

// Every line of a log, its stamp parsed ("2026-12-04T05:41:17.123Z"); a line without one fails the test.
std::vector<LogLine> parse_log(const fs::path& path) {
  REQUIRE(fs::exists(path));
  static const std::regex stamped(R"((\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z (.*))");
  std::vector<LogLine> lines;
  for (const std::string& line : lines_of(file_text(path))) {
    std::smatch m;
    INFO(path.string() << ": " << line);
    REQUIRE(std::regex_match(line, m, stamped));
    std::tm utc{};
    std::istringstream(m[1].str()) >> std::get_time(&utc, "%Y-%m-%dT%H:%M:%S");
    const std::time_t seconds = timegm(&utc);
    REQUIRE(seconds > 0);
    lines.push_back({int64_t{seconds} * 1000 + std::stoi(m[2].str()), m[3].str()});
  }
  return lines;
}

// The stamps never go back, and lie within the test's own run (with a second's slack for the clock).
void check_stamps(const std::vector<LogLine>& lines, std::time_t started) {
  const int64_t now_ms = int64_t{std::time(nullptr)} * 1000 + 1000;
  for (size_t i = 0; i < lines.size(); ++i) {
    INFO("line " << i << ": " << lines[i].text);
    CHECK(lines[i].unix_ms >= int64_t{started} * 1000 - 1000);
    CHECK(lines[i].unix_ms <= now_ms);
    if (i > 0) CHECK(lines[i].unix_ms >= lines[i - 1].unix_ms);
  }
}

// Each printed line is a log line, in the order printed (the log may hold more between them).
void check_printed_lines_logged(const test::Finished& run, const std::vector<LogLine>& log, size_t from = 0) {
  for (const std::string* stream : {&run.out, &run.err}) {
    size_t at = from;
    for (const std::string& printed : lines_of(*stream)) {
      INFO("printed: " << printed);
      while (at < log.size() && log[at].text != printed) ++at;
      CHECK(at < log.size());
      if (at < log.size()) ++at;
    }
  }
}

std::vector<std::string> texts_containing(const std::vector<LogLine>& log, const std::string& part) {
  std::vector<std::string> texts;
  for (const LogLine& line : log)
    if (line.text.find(part) != std::string::npos) texts.push_back(line.text);
  return texts;
}

}  // namespace

TEST_CASE(
    "run.log and fold.log hold every printed line, stamped in order, a resumed run appends, and the ending "
    "error is logged") {
  const std::time_t started = std::time(nullptr);
  const fs::path out = scratch("runs");
  // Killed at the third last.ckpt: fold 0 whole (two epochs), fold 1's first epoch saved but not yet printed.
  const test::Finished killed =
      run_with_fault(cv_args({"--folds", "0,1", "--out", out.string()}), "checkpoint_saved:3");
  INFO("stderr of the killed run:\n" << killed.err);
  REQUIRE(killed.status == app::kFaultExitCode);
  const fs::path run_dir = test::only_run_dir(out);
  const std::string killed_log = file_text(run_dir / "run.log");
  const std::vector<LogLine> first = parse_log(run_dir / "run.log");
  REQUIRE(!first.empty());
  CHECK(first.front().text.find("run started by process") == 0);
  check_stamps(first, started);
  check_printed_lines_logged(killed, first);
  CHECK(first.back().text == "DSMIL_FAULT: exiting at checkpoint_saved (3)");

  const std::vector<LogLine> fold0 = parse_log(run_dir / "fold_0" / "fold.log");
  check_stamps(fold0, started);
  CHECK(texts_containing(fold0, "[fold_0, 1/2] epoch ").size() == 2);
  CHECK(texts_containing(fold0, "[fold_0, 1/2] done: best epoch").size() == 1);
  CHECK(texts_containing(fold0, "[fold_1").empty());
  for (const std::string& epoch_line : texts_containing(fold0, "[fold_0, 1/2] epoch "))
    CHECK(killed.err.find(epoch_line + "\n") != std::string::npos);
  const std::string killed_fold1 = file_text(run_dir / "fold_1" / "fold.log");
  CHECK(texts_containing(parse_log(run_dir / "fold_1" / "fold.log"), "[fold_1, 2/2] started in process").size() == 1);

  // As a rank 0 that the --nproc launcher started (apps/train/rank_launcher.cpp): the launch opens its part of
  // run.log.
  const std::string launch = "data-parallel job of 2 ranks launched by process 1 (rendezvous /tmp/dsmil-ranks-x)";
  setenv("DSMIL_LAUNCH", launch.c_str(), 1);
  const test::Finished resumed =
      test::run_program({DSMIL_BINARY, "cv", "--resume", run_dir.string(), "--folds", "0,1"});
  unsetenv("DSMIL_LAUNCH");
  INFO("stderr of the resumed run:\n" << resumed.err);
  REQUIRE(resumed.status == 0);
  const std::string resumed_log = file_text(run_dir / "run.log");
  CHECK(resumed_log.compare(0, killed_log.size(), killed_log) == 0);
  const std::vector<LogLine> both = parse_log(run_dir / "run.log");
  REQUIRE(both.size() > first.size());
  REQUIRE(both.size() > first.size() + 1);
  CHECK(both[first.size()].text == launch);
  CHECK(both[first.size() + 1].text.find("run resumed by process") == 0);
  check_stamps(both, started);
  check_printed_lines_logged(resumed, both, first.size());
  CHECK(both.back().text == (run_dir / "AUDIT.md").string());  // the result printed on stdout, last

  const std::string fold1_text = file_text(run_dir / "fold_1" / "fold.log");
  CHECK(fold1_text.compare(0, killed_fold1.size(), killed_fold1) == 0);
  const std::vector<LogLine> fold1 = parse_log(run_dir / "fold_1" / "fold.log");
  check_stamps(fold1, started);
  CHECK(texts_containing(fold1, "[fold_1, 2/2] resumed in process").size() == 1);
  CHECK(texts_containing(fold1, "[fold_1, 2/2] resumed after epoch 1").size() == 1);
  CHECK(texts_containing(fold1, "[fold_1, 2/2] epoch   2/2").size() == 1);
  CHECK(texts_containing(fold1, "[fold_1, 2/2] done: best epoch").size() == 1);

  const test::Finished refused =
      test::run_program({DSMIL_BINARY, "cv", "--resume", run_dir.string(), "--set", "train.lr=0.5"});
  CHECK(refused.status == 1);
  const std::vector<std::string> error_lines = lines_of(refused.err);
  REQUIRE(!error_lines.empty());
  CHECK(error_lines.back().find("dsmil: error: --resume") == 0);
  const std::vector<LogLine> with_error = parse_log(run_dir / "run.log");
  check_stamps(with_error, started);
  CHECK(with_error.back().text == error_lines.back());
}

TEST_CASE(
    "cv --workers 2: run.log holds the scheduler's lines and each fold process's, marked, and each fold has "
    "its fold.log") {
  const std::time_t started = std::time(nullptr);
  const fs::path out = scratch("workers");
  const test::Finished run = test::run_program(cv_args({"--workers", "2", "--out", out.string()}));
  INFO("stderr:\n" << run.err);
  REQUIRE(run.status == 0);
  const fs::path run_dir = test::only_run_dir(out);
  const std::vector<LogLine> log = parse_log(run_dir / "run.log");
  check_stamps(log, started);  // three processes appending to one file
  check_printed_lines_logged(run, log);
  for (int fold = 0; fold < 3; ++fold) {
    CAPTURE(fold);
    const std::string tag = fmt::format("[fold_{}, 1/1]", fold);
    CHECK(texts_containing(log, fmt::format("fold {}: started on worker", fold)).size() == 1);
    CHECK(texts_containing(log, fmt::format("fold {}: fold process", fold)).size() == 1);
    CHECK(texts_containing(log, fmt::format("fold {}: {} epoch ", fold, tag)).size() == 2);
    const std::vector<LogLine> fold_log = parse_log(run_dir / fmt::format("fold_{}", fold) / "fold.log");
    check_stamps(fold_log, started);
    CHECK(texts_containing(fold_log, tag + " epoch ").size() == 2);
    CHECK(texts_containing(fold_log, tag + " done: best epoch").size() == 1);
  }
}

TEST_CASE("lr-find keeps what it printed in lr_find.log, stamped") {
  const std::time_t started = std::time(nullptr);
  const fs::path out = scratch("lr_find");
  const test::Finished run = test::run_program(
      {DSMIL_BINARY, "lr-find", "--config", "tiny", "--data", test::small_cohort().string(), "--set",
       "data.cache=" + scratch("cache").string(), "--set", "run.threads=1", "--steps", "6", "--out", out.string()});
  INFO("stderr:\n" << run.err);
  REQUIRE(run.status == 0);
  const std::vector<LogLine> log = parse_log(out / "lr_find.log");
  check_stamps(log, started);
  check_printed_lines_logged(run, log);
  CHECK(texts_containing(log, "lr-find: tiny, fold 0's").size() == 1);
  CHECK(texts_containing(log, "suggested train.lr <=").size() == 1);
  CHECK(texts_containing(log, "lr-find step").empty());  // the in-place progress stays on the terminal
}
