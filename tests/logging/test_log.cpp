// logging/log.h in one process: the stamp's format, which lines reach which open log file, and a line holding
// newlines logged as several.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "logging/log.h"

namespace fs = std::filesystem;
using namespace dsmil;

namespace {

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("dsmil_test_logging_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

// The text of each line after its stamp ("2026-12-04T05:41:17.123Z ").
std::vector<std::string> texts_of(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::string> texts;
  for (std::string line; std::getline(in, line);) {
    REQUIRE(line.size() > 25);
    CHECK(line[24] == ' ');
    texts.push_back(line.substr(25));
  }
  return texts;
}

}  // namespace

TEST_CASE("utc_timestamp: ISO-8601 in UTC with milliseconds") {
  const auto time = std::chrono::system_clock::from_time_t(1764826877) + std::chrono::milliseconds(45);
  CHECK(logging::utc_timestamp(time) == "2025-12-04T05:41:17.045Z");
  CHECK(logging::utc_timestamp(std::chrono::system_clock::from_time_t(0)) == "1970-01-01T00:00:00.000Z");
}

TEST_CASE("a log file gets the lines logged while it is open, with its prefix, and notes go to it alone") {
  TempDir dir;
  const fs::path run = dir.path / "run.log", fold = dir.path / "fold.log", other = dir.path / "other.log";
  logging::line("before any log");
  logging::open_run_log(run).note("run started");
  {
    logging::LogFile fold_log(fold, "fold 2: ");
    logging::line("epoch 1\nepoch 2");
    fold_log.note("fold note");
    logging::result("a result");
  }
  logging::line("after the fold");
  logging::open_run_log(other);
  logging::line("in the other run");
  CHECK(texts_of(run) == std::vector<std::string>{"run started", "epoch 1", "epoch 2", "a result", "after the fold"});
  CHECK(texts_of(fold) ==
        std::vector<std::string>{"fold 2: epoch 1", "fold 2: epoch 2", "fold 2: fold note", "fold 2: a result"});
  CHECK(texts_of(other) == std::vector<std::string>{"in the other run"});
  CHECK_THROWS_AS(logging::LogFile(dir.path / "no" / "such" / "folder.log"), std::runtime_error);
}
