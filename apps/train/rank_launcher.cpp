// The local rank launcher: fork/exec of the ranks, a private rendezvous folder, and a wait that stops the
// job at the first failure.
#include "apps/train/rank_launcher.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "apps/train/child_process.h"
#include "logging/log.h"
#include "base/error.h"

namespace dsmil::app {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t start = 0; start < text.size();) {
    const size_t end = text.find('\0', start);
    args.push_back(text.substr(start, end - start));
    start = end == std::string::npos ? text.size() : end + 1;
  }
  if (args.empty()) throw Error("--nproc: cannot read this process's command line from /proc/self/cmdline");
  args[0] = fs::read_symlink("/proc/self/exe").string();
  return args;
}

}  // namespace

void run_local_ranks(int nproc) {
  if (nproc < 1) throw Error(fmt::format("--nproc {}: expected a positive number of processes", nproc));
  std::string folder_template = (fs::temp_directory_path() / "dsmil-ranks-XXXXXX").string();
  if (!mkdtemp(folder_template.data()))
    throw Error(fmt::format("--nproc: cannot make a rendezvous folder: {}", std::strerror(errno)));
  const fs::path folder = folder_template;
  const std::vector<std::string> args = own_command_line();
  std::map<pid_t, int> running;
  std::vector<std::string> failures;
  // The run directory is made by rank 0, after this process has printed its line: rank 0 writes the launch into
  // the run's log (apps/train/cv.cpp), so that run.log holds what the terminal showed.
  const std::string launch = fmt::format("data-parallel job of {} ranks launched by process {} (rendezvous {})", nproc,
                                         getpid(), folder.string());
  for (int rank = 0; rank < nproc; ++rank) {
    const std::vector<std::string> env = {fmt::format("DSMIL_RANK={}", rank), fmt::format("DSMIL_WORLD_SIZE={}", nproc),
                                          fmt::format("DSMIL_LOCAL_RANK={}", rank),
                                          "DSMIL_RENDEZVOUS=" + (folder / "nccl_id").string(),
                                          "DSMIL_LAUNCH=" + launch};
    try {
      running[start_child(args, env, -1)] = rank;
    } catch (const Error& e) {
      failures.push_back(fmt::format("rank {}: {}", rank, e.what()));
      break;
    }
  }
  logging::line(fmt::format("data-parallel job: {} ranks started (rendezvous {})", running.size(), folder.string()));
  while (!running.empty()) {
    int status = 0;
    const pid_t pid = wait_for_child(status, "the ranks");
    const auto it = running.find(pid);
    if (it == running.end()) continue;
    const int rank = it->second;
    running.erase(it);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
    failures.push_back(fmt::format("rank {} failed ({})", rank, describe_status(status)));
    for (const auto& [other, other_rank] : running) kill(other, SIGTERM);
  }
  fs::remove_all(folder);
  if (failures.empty()) return;
  std::string message = failures.front();
  for (size_t i = 1; i < failures.size(); ++i) message += "; " + failures[i];
  throw Error(message);
}

}  // namespace dsmil::app
