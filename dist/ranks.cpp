// Rank discovery from the launchers' environment variables and the file rendezvous.
#include "dist/ranks.h"

#include <fstream>
#include <iterator>
#include <thread>

#include <fmt/format.h>

#include "base/error.h"

namespace dsmil::dist {

namespace fs = std::filesystem;

namespace {

struct LauncherVariables {
  const char *launcher, *rank, *world_size, *local_rank;
};

constexpr LauncherVariables kLaunchers[] = {
    {"dsmil", "DSMIL_RANK", "DSMIL_WORLD_SIZE", "DSMIL_LOCAL_RANK"},
    {"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
};

int parse_count(const char* name, const char* text) {
  const std::string s = text;
  size_t used = 0;
  int value = -1;
  try {
    value = std::stoi(s, &used);
  } catch (const std::exception&) {
  }
  if (s.empty() || used != s.size() || value < 0)
    throw Error(fmt::format("{}='{}': expected a non-negative integer", name, s));
  return value;
}

}  // namespace

RankInfo rank_from_environment(const EnvironmentLookup& lookup) {
  for (const LauncherVariables& v : kLaunchers) {
    const char *rank = lookup(v.rank), *world = lookup(v.world_size), *local = lookup(v.local_rank);
    if (!rank || !world) continue;
    RankInfo info{parse_count(v.rank, rank), parse_count(v.world_size, world),
                  local ? parse_count(v.local_rank, local) : 0, v.launcher};
    if (info.world_size < 1 || info.rank >= info.world_size)
      throw Error(fmt::format("{}={} with {}={}: the rank must lie in [0, world size)", v.rank, info.rank, v.world_size,
                              info.world_size));
    return info;
  }
  return RankInfo{};
}

fs::path rendezvous_path(const EnvironmentLookup& lookup) {
  const char* path = lookup("DSMIL_RENDEZVOUS");
  if (!path || !*path)
    throw Error(
        "data-parallel run: set DSMIL_RENDEZVOUS to a fresh file path on a filesystem every rank sees "
        "(`dsmil cv --nproc N` sets it itself)");
  return path;
}

void publish_rendezvous(const fs::path& path, const std::string& bytes) {
  if (fs::exists(path))
    throw Error(
        fmt::format("rendezvous {}: the file exists already (left by an earlier job?); remove it or name a "
                    "fresh one in DSMIL_RENDEZVOUS",
                    path.string()));
  const fs::path partial = path.string() + ".partial";
  {
    std::ofstream out(partial, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw Error(fmt::format("rendezvous {}: cannot write", partial.string()));
  }
  fs::rename(partial, path);
}

std::string await_rendezvous(const fs::path& path, size_t size, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!fs::exists(path)) {
    if (std::chrono::steady_clock::now() > deadline)
      throw Error(fmt::format("rendezvous {}: rank 0 did not publish it within {} s", path.string(),
                              std::chrono::duration_cast<std::chrono::seconds>(timeout).count()));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() != size)
    throw Error(fmt::format("rendezvous {}: {} bytes, expected {}", path.string(), bytes.size(), size));
  return bytes;
}

}  // namespace dsmil::dist
