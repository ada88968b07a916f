// fork/execve of a child with an edited environment; after fork only async-signal-safe calls, since the
// parent may run OpenMP threads.
#include "apps/train/child_process.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "base/error.h"

extern char** environ;

namespace dsmil::app {

namespace {

std::vector<std::string> child_environment(const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  for (char** entry = environ; *entry; ++entry) {
    const std::string text = *entry;
    const bool replaced = std::any_of(overrides.begin(), overrides.end(), [&](const std::string& o) {
      const size_t name_end = o.find('=') + 1;
      return text.compare(0, name_end, o, 0, name_end) == 0;
    });
    if (!replaced) env.push_back(text);
  }
  env.insert(env.end(), overrides.begin(), overrides.end());
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

}  // namespace

pid_t start_child(std::vector<std::string> args, const std::vector<std::string>& env_overrides, int log_fd) {
  std::vector<std::string> env = child_environment(env_overrides);
  std::vector<char*> argv = c_strings(args), envp = c_strings(env);
  const pid_t pid = fork();
  if (pid == 0) {
    if (log_fd >= 0) {
      dup2(log_fd, STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
    }
    execve(argv[0], argv.data(), envp.data());
    static const char failed[] = "dsmil: error: cannot execute the dsmil binary in a child process\n";
    [[maybe_unused]] const ssize_t ignored = write(STDERR_FILENO, failed, sizeof failed - 1);
    _exit(127);
  }
  const int fork_errno = errno;
  if (log_fd >= 0) close(log_fd);
  if (pid < 0) throw Error(fmt::format("{}: cannot start a process: {}", args[0], std::strerror(fork_errno)));
  return pid;
}

pid_t wait_for_child(int& status, const char* children) {
  for (;;) {
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid >= 0) return pid;
    if (errno != EINTR) throw Error(fmt::format("waiting for {}: {}", children, std::strerror(errno)));
  }
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exit status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return fmt::format("wait status {}", status);
}

}  // namespace dsmil::app
