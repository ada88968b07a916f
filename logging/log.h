// What the user is shown, and the log files that keep it. Every line meant for the user goes through line()
// (stderr) or result() (stdout: what scripts read): unchanged on the terminal, and after its time stamp in every
// open log file (a run's run.log, a fold's fold.log while the fold trains). status() is a terminal's line that
// updates in place (a training step, a preprocessing count): it is never logged, so that a log holds the lines
// that stay (one per epoch), not one per update.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

namespace spdlog::sinks {
class sink;
}

namespace dsmil::logging {

// A line on stderr and in every open log file (text holding newlines is several lines).
void line(std::string_view text);
// A line on stdout and in every open log file.
void result(std::string_view text);
// On a terminal (stderr): `text` in place of the previous status, until the next line() or result() erases
// it; elsewhere nothing.
void status(std::string_view text);
bool stderr_is_terminal();

// "2026-12-04T05:41:17.123Z": ISO-8601 in UTC with milliseconds, the stamp of every log line.
std::string utc_timestamp(std::chrono::system_clock::time_point time);

// A log file: while it lives, every line() and result() is appended to it as "STAMP PREFIXtext". Each line is
// stamped and written under an exclusive lock of the file (flock), so that processes appending to one log (the
// fold processes of `cv --workers` beside their parent) never split a line and their stamps never go back.
class LogFile {
 public:
  // Opens `path` for appending (created when missing); throws dsmil::Error naming it when it cannot be opened.
  explicit LogFile(const std::filesystem::path& path, std::string prefix = {});
  ~LogFile();
  LogFile(const LogFile&) = delete;
  LogFile& operator=(const LogFile&) = delete;
  // A line for this file alone, which the terminal does not show (e.g. that the run resumed).
  void note(std::string_view text);

 private:
  std::shared_ptr<spdlog::sinks::sink> sink_;
};

// Opens the log of the run this process works on, in place of any run log it had open. It stays open until the
// process ends, so that what is printed after the run's work (the path of AUDIT.md, the error that ended the
// run) is in it too.
LogFile& open_run_log(const std::filesystem::path& path, std::string prefix = {});

}  // namespace dsmil::logging
