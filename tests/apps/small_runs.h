// For the tests that run the dsmil binary on a small cohort: the cohort, and the run directory a run made.
#pragma once

#include <doctest/doctest.h>

#include <filesystem>
#include <vector>

#include "data/cohort.h"
#include "tests/test_util.h"

namespace dsmil::test {

// 24 cases of 64x64x48 voxels, drawn from this run's seed; written once per test process.
inline const std::filesystem::path& small_cohort() {
  static const std::filesystem::path root = [] {
    const std::filesystem::path dir = scratch("cohort");
    data::write_small_cohort(dir, 24, run_seed());
    return dir;
  }();
  return root;
}

// The one run directory under `runs_root`.
inline std::filesystem::path only_run_dir(const std::filesystem::path& runs_root) {
  std::vector<std::filesystem::path> dirs;
  for (const auto& entry : std::filesystem::directory_iterator(runs_root)) dirs.push_back(entry.path());
  REQUIRE(dirs.size() == 1);
  return dirs.front();
}

}  // namespace dsmil::test
