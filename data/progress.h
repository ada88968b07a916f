// Progress of long data jobs (cohort writing, preprocessing): on a terminal one line that updates
// in place (logging::status); otherwise (a file, a pipe) plain lines at most every few seconds. The final
// line is a line of the log (logging::line) either way.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

namespace dsmil::data {

class ProgressReporter {
 public:
  ProgressReporter(std::string label, int64_t total);
  ~ProgressReporter();  // an unfinished job's last count (e.g. when it threw) stays, as a line
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;
  // Thread-safe: one more item done; `note` (e.g. "cached") is shown with the line.
  void advance(std::string_view note = {});
  // Ends the updating line (prints the final count and elapsed time).
  void finish();

 private:
  void print_locked(bool final_line);
  std::string text_locked(bool final_line) const;

  std::string label_;
  int64_t total_;
  int64_t done_ = 0;
  bool terminal_;
  bool shown_ = false;  // a count has been shown
  bool finished_ = false;
  std::string last_note_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
  std::mutex mutex_;
};

}  // namespace dsmil::data
