// Runs a program as a child process and collects its exit status, stdout and stderr: for the tests of the
// dsmil binary's command line and of the build's git lookup.
#pragma once

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace dsmil::test {

struct Finished {
  int status = -1;  // the exit status; 127: the program could not be started (not on PATH)
  std::string out, err;
};

inline std::string file_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// argv[0] is looked up on PATH unless it holds a '/'. Output goes through files, not pipes, so that a child
// filling one stream while the test reads the other cannot stall.
inline Finished run_program(const std::vector<std::string>& argv) {
  const std::filesystem::path dir = scratch("subprocess");
  const std::string out = (dir / "stdout").string(), err = (dir / "stderr").string();
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int out_fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err_fd = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out_fd < 0 || err_fd < 0 || dup2(out_fd, STDOUT_FILENO) < 0 || dup2(err_fd, STDERR_FILENO) < 0) _exit(126);
    execvp(args[0], args.data());
    _exit(127);
  }
  REQUIRE(pid > 0);
  int status = 0;
  waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, file_text(out), file_text(err)};
}

// The commit checked out at `dir`, or std::nullopt (saying why) without git or outside a checkout.
inline std::optional<std::string> git_head(const std::string& dir) {
  const Finished git = run_program({"git", "-C", dir, "rev-parse", "HEAD"});
  if (git.status == 127) {
    MESSAGE("git is not installed: the commit is not compared with the checkout's");
    return std::nullopt;
  }
  if (git.status != 0) {
    MESSAGE(dir << " is not a git checkout: the commit is not compared with the checkout's");
    return std::nullopt;
  }
  return git.out.substr(0, git.out.find('\n'));
}

}  // namespace dsmil::test
