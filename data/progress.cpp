// Progress lines for long data jobs: "label  done/total  rate/s  ETA" (see progress.h).
#include "data/progress.h"

#include <fmt/format.h>

#include "logging/log.h"

namespace dsmil::data {

ProgressReporter::ProgressReporter(std::string label, int64_t total)
    : label_(std::move(label)),
      total_(total),
      terminal_(logging::stderr_is_terminal()),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

ProgressReporter::~ProgressReporter() {
  std::lock_guard lock(mutex_);
  if (terminal_ && !finished_ && shown_) logging::line(text_locked(false));
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
  shown_ = true;
  if (terminal_ && !final_line) {
    logging::status(text_locked(false));
  } else {
    logging::line(text_locked(final_line));
  }
}

std::string ProgressReporter::text_locked(bool final_line) const {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
  return final_line ? fmt::format("{}: {}/{} done in {:.1f} s", label_, done_, total_, elapsed)
                    : fmt::format("{}: {}/{} ({:.1f}/s, ETA {:.0f} s){}{}", label_, done_, total_, rate, eta,
                                  last_note_.empty() ? "" : "  ", last_note_);
}

}  // namespace dsmil::data
