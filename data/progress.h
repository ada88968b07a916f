// Progress of long data jobs (cohort writing, preprocessing): on a terminal one line that updates
// in place; otherwise (a log file, a pipe) plain lines at most every few seconds and at the end.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>

namespace dsmil::data {

class ProgressReporter {
 public:
  ProgressReporter(std::string label, int64_t total, std::FILE* out = stderr);
  ~ProgressReporter();  // ends an unfinished terminal line (e.g. when the job threw)
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;
  // Thread-safe: one more item done; `note` (e.g. "cached") is shown with the line.
  void advance(std::string_view note = {});
  // Ends the updating line (prints the final count and elapsed time).
  void finish();

 private:
  void print_locked(bool final_line);

  std::string label_;
  int64_t total_;
  int64_t done_ = 0;
  std::FILE* out_;
  bool terminal_;
  bool finished_ = false;
  std::string last_note_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
  std::mutex mutex_;
};

}  // namespace dsmil::data
