// Progress lines for long data jobs: "label  done/total  rate/s  ETA" (see progress.h).
#include "data/progress.h"

#include <unistd.h>

#include <fmt/format.h>

namespace dsmil::data {

ProgressReporter::ProgressReporter(std::string label, int64_t total, std::FILE* out)
    : label_(std::move(label)),
      total_(total),
      out_(out),
      terminal_(isatty(fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

ProgressReporter::~ProgressReporter() {
  if (terminal_ && !finished_ && done_ > 0) fmt::print(out_, "\n");
}

void ProgressReporter::advance(std::string_view note) {
  std::lock_guard lock(mutex_);
  ++done_;
  last_note_ = note;
  const auto now = std::chrono::steady_clock::now();
  const double since_print = std::chrono::duration<double>(now - last_print_).count();
  // a terminal line is cheap to redraw; a log gets a line every 5 s (and the last one)
  if ((terminal_ && since_print > 0.1) || since_print > 5.0 || done_ == total_) {
    last_print_ = now;
    print_locked(false);
  }
}

void ProgressReporter::finish() {
  std::lock_guard lock(mutex_);
  if (finished_) return;
  finished_ = true;
  print_locked(true);
}

void ProgressReporter::print_locked(bool final_line) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
  std::string line = final_line
                         ? fmt::format("{}: {}/{} done in {:.1f} s", label_, done_, total_, elapsed)
                         : fmt::format("{}: {}/{} ({:.1f}/s, ETA {:.0f} s){}{}", label_, done_, total_, rate, eta,
                                       last_note_.empty() ? "" : "  ", last_note_);
  if (terminal_) {
    fmt::print(out_, "\r\033[K{}{}", line, final_line ? "\n" : "");
  } else {
    fmt::print(out_, "{}\n", line);
  }
  std::fflush(out_);
}

}  // namespace dsmil::data
