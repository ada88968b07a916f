// Rank discovery from each launcher's environment variables, and the file rendezvous.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "dist/ranks.h"
#include "base/error.h"

using namespace dsmil;
namespace fs = std::filesystem;

namespace {

dist::EnvironmentLookup environment(std::map<std::string, std::string> values) {
  return [values = std::move(values)](const char* name) -> const char* {
    const auto it = values.find(name);
    return it == values.end() ? nullptr : it->second.c_str();
  };
}

}  // namespace

TEST_CASE("ranks: each launcher's variables give rank, world size and local rank, and none gives one rank") {
  const dist::RankInfo alone = dist::rank_from_environment(environment({}));
  CHECK(alone.world_size == 1);
  CHECK_FALSE(alone.distributed());
  CHECK(alone.launcher == "none");

  const dist::RankInfo mpi = dist::rank_from_environment(
      environment({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "8"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}}));
  CHECK(mpi.rank == 3);
  CHECK(mpi.world_size == 8);
  CHECK(mpi.local_rank == 1);
  CHECK(mpi.launcher == "Open MPI");

  const dist::RankInfo slurm =
      dist::rank_from_environment(environment({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "6"}, {"SLURM_LOCALID", "2"}}));
  CHECK(slurm.rank == 5);
  CHECK(slurm.local_rank == 2);
  CHECK(slurm.launcher == "Slurm");

  // dsmil's own variables win over the others (a --nproc job run inside a Slurm allocation).
  const dist::RankInfo own = dist::rank_from_environment(
      environment({{"DSMIL_RANK", "1"}, {"DSMIL_WORLD_SIZE", "2"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}));
  CHECK(own.rank == 1);
  CHECK(own.world_size == 2);
  CHECK(own.local_rank == 0);
  CHECK(own.launcher == "dsmil");

  const dist::RankInfo torchrun =
      dist::rank_from_environment(environment({{"RANK", "0"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "0"}}));
  CHECK(torchrun.world_size == 4);
  CHECK(torchrun.launcher == "torchrun");

  CHECK_THROWS_AS(dist::rank_from_environment(environment({{"DSMIL_RANK", "2"}, {"DSMIL_WORLD_SIZE", "2"}})), Error);
  CHECK_THROWS_AS(dist::rank_from_environment(environment({{"DSMIL_RANK", "x"}, {"DSMIL_WORLD_SIZE", "2"}})), Error);
  CHECK_THROWS_AS(dist::rank_from_environment(environment({{"DSMIL_RANK", "-1"}, {"DSMIL_WORLD_SIZE", "2"}})), Error);
  CHECK_THROWS_AS(dist::rendezvous_path(environment({})), Error);
  CHECK(dist::rendezvous_path(environment({{"DSMIL_RENDEZVOUS", "/tmp/x/id"}})) == fs::path("/tmp/x/id"));
}

TEST_CASE("rendezvous: rank 0's bytes reach the others whole, a stale file and a missing one are errors") {
  const fs::path folder = fs::temp_directory_path() / ("dsmil-rendezvous-test-" + std::to_string(::getpid()));
  fs::remove_all(folder);
  fs::create_directories(folder);
  const fs::path path = folder / "nccl_id";
  std::string bytes(128, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 37 + 11) % 256);
  CHECK_THROWS_AS(dist::await_rendezvous(path, bytes.size(), std::chrono::milliseconds(50)), Error);
  dist::publish_rendezvous(path, bytes);
  CHECK(dist::await_rendezvous(path, bytes.size(), std::chrono::milliseconds(50)) == bytes);
  CHECK_FALSE(fs::exists(path.string() + ".partial"));
  CHECK_THROWS_AS(dist::publish_rendezvous(path, bytes), Error);
  CHECK_THROWS_AS(dist::await_rendezvous(path, bytes.size() + 1, std::chrono::milliseconds(50)), Error);
  fs::remove_all(folder);
}
