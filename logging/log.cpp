// spdlog carries the lines: one logger per stream (stderr, stdout), each writing its console sink and one
// distributing sink that holds the open log files.
#include "logging/log.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include "base/error.h"

namespace dsmil::logging {

namespace fs = std::filesystem;

namespace {

class StampedFileSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  StampedFileSink(const fs::path& path, std::string prefix) : path_(path), prefix_(std::move(prefix)) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(fmt::format("{}: cannot open the log: {}", path.string(), std::strerror(errno)));
  }
  ~StampedFileSink() override { ::close(fd_); }

  void note(std::string_view text) {
    std::lock_guard lock(mutex_);
    append(text);
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& message) override {
    append({message.payload.data(), message.payload.size()});
  }
  void flush_() override {}  // every line is written when it is logged

 private:
  // The stamp is taken once the file is locked (not when the line was made), so that it orders the lines as
  // the file holds them; one write() of O_APPEND puts the line whole at the end.
  void append(std::string_view text) {
    while (::flock(fd_, LOCK_EX) != 0)
      if (errno != EINTR) throw Error(fmt::format("{}: cannot lock the log: {}", path_.string(), std::strerror(errno)));
    const std::string stamped =
        fmt::format("{} {}{}\n", utc_timestamp(std::chrono::system_clock::now()), prefix_, text);
    const ssize_t written = ::write(fd_, stamped.data(), stamped.size());
    const int write_errno = errno;
    ::flock(fd_, LOCK_UN);
    if (written != static_cast<ssize_t>(stamped.size()))
      throw Error(fmt::format("{}: cannot write the log: {}", path_.string(),
                              written < 0 ? std::strerror(write_errno) : "short write"));
  }

  fs::path path_;
  std::string prefix_;
  int fd_ = -1;
};

struct Loggers {
  std::shared_ptr<spdlog::sinks::dist_sink_mt> files = std::make_shared<spdlog::sinks::dist_sink_mt>();
  std::shared_ptr<spdlog::logger> terminal = make("dsmil", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  std::shared_ptr<spdlog::logger> results = make("dsmil.results", std::make_shared<spdlog::sinks::stdout_sink_mt>());
  std::mutex screen;          // a status erased and the next line written, as one
  bool status_shown = false;  // a status is on the terminal's current line
  std::unique_ptr<LogFile> run_log;

  std::shared_ptr<spdlog::logger> make(const std::string& name, std::shared_ptr<spdlog::sinks::sink> console) {
    console->set_pattern("%v");
    auto logger = std::make_shared<spdlog::logger>(name, spdlog::sinks_init_list{console, files});
    logger->set_level(spdlog::level::trace);
    logger->flush_on(spdlog::level::trace);
    // A log file that cannot be written (a full disk) must not end the training it records: said, not thrown.
    logger->set_error_handler(
        [](const std::string& message) { std::fprintf(stderr, "dsmil: log file: %s\n", message.c_str()); });
    return logger;
  }
};

Loggers& loggers() {
  static Loggers instance;
  return instance;
}

void erase_status_locked(Loggers& l) {
  if (!l.status_shown) return;
  std::fputs("\r\033[K", stderr);
  l.status_shown = false;
}

void log_lines(spdlog::logger& logger, std::string_view text) {
  for (;;) {
    const size_t end = text.find('\n');
    const std::string_view one = text.substr(0, end);
    logger.log(spdlog::level::info, spdlog::string_view_t(one.data(), one.size()));
    if (end == std::string_view::npos) return;
    text.remove_prefix(end + 1);
  }
}

}  // namespace

bool stderr_is_terminal() {
  static const bool terminal = isatty(STDERR_FILENO) != 0;
  return terminal;
}

void line(std::string_view text) {
  Loggers& l = loggers();
  std::lock_guard lock(l.screen);
  erase_status_locked(l);
  log_lines(*l.terminal, text);
}

void result(std::string_view text) {
  Loggers& l = loggers();
  std::lock_guard lock(l.screen);
  erase_status_locked(l);
  log_lines(*l.results, text);
}

void status(std::string_view text) {
  if (!stderr_is_terminal()) return;
  Loggers& l = loggers();
  std::lock_guard lock(l.screen);
  fmt::print(stderr, "\r\033[K{}", text);
  std::fflush(stderr);
  l.status_shown = true;
}

std::string utc_timestamp(std::chrono::system_clock::time_point time) {
  const auto since_epoch = std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch());
  const std::time_t seconds = std::chrono::system_clock::to_time_t(time);
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z", fmt::gmtime(seconds), since_epoch.count() % 1000);
}

LogFile::LogFile(const fs::path& path, std::string prefix)
    : sink_(std::make_shared<StampedFileSink>(path, std::move(prefix))) {
  loggers().files->add_sink(sink_);
}

LogFile::~LogFile() { loggers().files->remove_sink(sink_); }

void LogFile::note(std::string_view text) { static_cast<StampedFileSink&>(*sink_).note(text); }

LogFile& open_run_log(const fs::path& path, std::string prefix) {
  Loggers& l = loggers();
  std::lock_guard lock(l.screen);
  l.run_log.reset();
  l.run_log = std::make_unique<LogFile>(path, std::move(prefix));
  return *l.run_log;
}

}  // namespace dsmil::logging
