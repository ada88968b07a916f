// Where this process stands in a data-parallel job (rank, world size, local rank), read from the
// environment a launcher sets, and the rendezvous file through which rank 0 hands its NCCL id to the others.
#pragma once

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

namespace dsmil::dist {

struct RankInfo {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string launcher = "none";  // whose variables gave them: dsmil, Open MPI, Slurm, torchrun, none
  bool distributed() const { return world_size > 1; }
};

using EnvironmentLookup = std::function<const char*(const char*)>;

// The first complete set found, in this order: DSMIL_RANK / DSMIL_WORLD_SIZE / DSMIL_LOCAL_RANK (`dsmil cv
// --nproc`), OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK (mpirun), SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID
// (srun), RANK / WORLD_SIZE / LOCAL_RANK (torchrun); none: one rank. Throws dsmil::Error on values that are
// not numbers or a rank outside [0, world size).
RankInfo rank_from_environment(const EnvironmentLookup& lookup = [](const char* name) { return std::getenv(name); });

// DSMIL_RENDEZVOUS: a file path all ranks see, fresh for each job (the --nproc launcher makes one; with
// mpirun or srun put the job id in it). Throws dsmil::Error when unset.
std::filesystem::path rendezvous_path(const EnvironmentLookup& lookup = [](const char* name) {
  return std::getenv(name);
});

// Rank 0 writes `bytes` to a temporary file beside `path` and renames it into place, so that a reader
// never sees part of it; it refuses a path that already exists (a stale file would hand out an old id).
void publish_rendezvous(const std::filesystem::path& path, const std::string& bytes);
// The other ranks wait for the file and read `size` bytes; throws dsmil::Error after `timeout`.
std::string await_rendezvous(const std::filesystem::path& path, size_t size, std::chrono::milliseconds timeout);

}  // namespace dsmil::dist
