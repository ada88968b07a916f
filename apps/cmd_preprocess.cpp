// `dsmil preprocess`: finds and checks the cases of a dataset, preprocesses them into the cache,
// and lists the skipped cases (with reasons) and the timing; `--index` lists each case's cache entry.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include <fmt/format.h>

#include "apps/command_registry.h"
#include "data/cases.h"
#include "data/preprocess.h"
#include "data/progress.h"

namespace {

struct PreprocessArgs {
  std::string data;
  std::string manifest;
  std::string cache = "cache";
  std::string grid = "128,128,128";
  std::string on_bad_case = "fail";
  std::string index;  // CSV case_id,label,entry of the preprocessed cases ("" = none)
  int threads = 2;
};

// The index of the cache: one row per preprocessed case (label 1 = HGG, 0 = LGG), with the absolute path of
// its entry, so that tools outside dsmil (tools/torch_twin/train.py) read the very files a run maps.
void write_index(const std::string& path, const dsmil::data::Discovery& found,
                 const dsmil::data::PreprocessedCohort& cohort, const dsmil::data::PreprocessOptions& options) {
  namespace fs = std::filesystem;
  std::set<std::string> preprocessed;
  for (const auto& c : cohort.cases) preprocessed.insert(c.case_id);
  std::ofstream out(path);
  out << "case_id,label,entry\n";
  for (const auto& files : found.cases) {
    if (!preprocessed.count(files.case_id)) continue;  // skipped as a bad case
    const fs::path entry = fs::absolute(dsmil::data::cache_entry_path(options.cache_dir, files, options.params));
    const std::string row = fmt::format("{},{},{}", files.case_id, files.label, entry.lexically_normal().string());
    if (std::count(row.begin(), row.end(), ',') != 2)
      throw dsmil::FormatError(fmt::format("--index {}: case {} or its entry path holds a comma", path, files.case_id));
    out << row << "\n";
  }
  if (!out) throw dsmil::FormatError(fmt::format("--index {}: cannot write", path));
}

void run_preprocess(const PreprocessArgs& args) {
  using namespace dsmil::data;
  const BadCasePolicy policy = parse_bad_case_policy(args.on_bad_case);
  PreprocessOptions options;
  options.params.grid = parse_grid(args.grid);
  options.cache_dir = args.cache;
  options.on_bad_case = policy;
  options.threads = args.threads;

  const Discovery found =
      args.manifest.empty() ? discover_dataset(args.data, policy) : read_manifest(args.manifest, policy);
  int hgg = 0;
  for (const auto& c : found.cases) hgg += c.label == kLabelHGG;
  fmt::print("{}: {} cases ({} HGG, {} LGG), layout {}\n", args.manifest.empty() ? args.data : args.manifest,
             found.cases.size(), hgg, found.cases.size() - hgg, layout_name(found.layout));

  ProgressReporter progress("preprocess", static_cast<int64_t>(found.cases.size()));
  options.progress = &progress;
  const PreprocessedCohort cohort = preprocess_cohort(found.cases, options);

  std::vector<SkippedCase> skipped = found.skipped;
  skipped.insert(skipped.end(), cohort.skipped.begin(), cohort.skipped.end());
  fmt::print("preprocessed {} cases to {}x{}x{} (float16) in {}: {} from cache, {} built, {:.1f} s\n",
             cohort.cases.size(), options.params.grid.depth, options.params.grid.height, options.params.grid.width,
             args.cache, cohort.cache_hits, cohort.cache_builds, cohort.seconds);
  if (!skipped.empty()) {
    fmt::print("skipped {} cases:\n", skipped.size());
    for (const auto& s : skipped) fmt::print("  {}\n", s.message());
  }
  if (!args.index.empty()) {
    write_index(args.index, found, cohort, options);
    fmt::print("index of {} cache entries: {}\n", cohort.cases.size(), args.index);
  }
}

dsmil::app::RegisterCommand reg{
    "preprocess", 20, [](CLI::App& root) {
      auto args = std::make_shared<PreprocessArgs>();
      auto* cmd = root.add_subcommand("preprocess", "Check and preprocess a dataset into the cache");
      auto* data =
          cmd->add_option("--data", args->data, "Dataset root (BraTS 2018/2019/2020 layout) or a manifest .csv");
      auto* manifest = cmd->add_option("--manifest", args->manifest,
                                       "Manifest CSV: case_id,label,flair,t1,t1ce,t2[,seg][,patient_id]");
      data->excludes(manifest);
      cmd->add_option("--cache", args->cache, "Cache folder")->capture_default_str();
      cmd->add_option("--grid", args->grid, "Grid D,H,W (D axial)")->capture_default_str();
      cmd->add_option("--on-bad-case", args->on_bad_case, "fail: stop at the first bad case; skip: list it and go on")
          ->capture_default_str()
          ->check(CLI::IsMember({"fail", "skip"}));
      cmd->add_option("--threads", args->threads, "Worker threads")->capture_default_str()->check(CLI::PositiveNumber);
      cmd->add_option("--index", args->index,
                      "Also write FILE.csv: case_id,label,entry (absolute path of each case's cache entry)");
      cmd->callback([args] {
        if (args->data.empty() && args->manifest.empty()) throw CLI::RequiredError("--data or --manifest");
        if (!args->index.empty() && args->cache.empty())
          throw CLI::ValidationError("--index", "needs a --cache folder");
        run_preprocess(*args);
      });
    }};

}  // namespace
