// Child processes of the `dsmil` binary: fork + execve with the parent's environment plus overrides.
// Used by the fold scheduler (apps/train/fold_scheduler.h) and the data-parallel rank launcher (ranks.h).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace dsmil::app {

// Starts args[0] with `args`, the parent's environment with `env_overrides` ("NAME=value") replacing
// entries of the same names; stdout and stderr go to `log_fd` when it is >= 0 (the parent closes it),
// else they are the parent's. Throws dsmil::Error when no process can be started.
pid_t start_child(std::vector<std::string> args, const std::vector<std::string>& env_overrides, int log_fd);

// Waits for any child to end (retrying when a signal interrupts the wait); returns its pid and sets
// `status`. Throws dsmil::Error naming `children` (e.g. "the ranks") when there is nothing to wait for.
pid_t wait_for_child(int& status, const char* children);

// "exit status 3", "killed by signal 9": a waitpid status in words.
std::string describe_status(int status);

}  // namespace dsmil::app
