// Before/after comparison of two cross-validations from their cv_summary.json objects: a markdown table
// of fold means ± std, pooled values and deltas, plus protocol, fold counts, anomalies and consistency.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsmil::report {

// The CV summary of a run: its cv_summary.json when present (or `path` itself when it names a JSON
// file), else computed in memory from the fold files (nothing is written). A cv_summary.json read from
// disk is checked again against its fold files (found through its "dir" entries, relative to the
// file's folder) when they still exist. FormatError when neither exists or a file is malformed.
struct LoadedSummary {
  nlohmann::json summary;
  std::string source;                      // the file read, or "recomputed from <dir>"
  int verified_numbers = 0;                // numbers of the file recomputed from the fold files now
  std::vector<std::string> disagreements;  // those that disagree
  bool verified = false;                   // false: fold files not found, or the summary was computed here
};
LoadedSummary load_cv_summary(const std::filesystem::path& path);

// The markdown comparison; "A" is the before, "B" the after run. Δ = B − A; for Brier and ECE a
// negative Δ is the better direction, for every other metric a positive one.
std::string compare_markdown(const LoadedSummary& a, const LoadedSummary& b, const std::string& name_a,
                             const std::string& name_b);

}  // namespace dsmil::report
