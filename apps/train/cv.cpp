// The cross-validation driver.
#include "apps/train/cv.h"

#include <omp.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "apps/report/audit.h"
#include "apps/train/trainer.h"
#include "data/cases.h"
#include "data/preprocess.h"
#include "data/progress.h"
#include "data/splits.h"

namespace dsmil::app {

namespace fs = std::filesystem;

std::vector<int> parse_fold_list(const std::string& text) {
  std::vector<int> folds;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      folds.push_back(std::stoi(item));
    } catch (const std::exception&) {
      throw Error(fmt::format("--folds '{}': expected numbers like 0,2,3", text));
    }
  }
  return folds;
}

namespace {

std::string timestamp() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof text, "%Y%m%d_%H%M%S", std::localtime(&now));
  return text;
}

// A repeat's folder: the run directory itself unless the CV is repeated.
fs::path repeat_dir(const fs::path& run_dir, int repeats, int repeat) {
  return repeats > 1 ? run_dir / fmt::format("repeat_{}", repeat) : run_dir;
}

}  // namespace

CvResult run_cv(const RunConfig& config, const CvOptions& options) {
  validate_config(config);
  if (config.data_root.empty()) throw Error("no data: give --data ROOT (a BraTS folder or a manifest CSV)");
  if (config.threads > 0) omp_set_num_threads(config.threads);
  const Device device = resolve_device(config.device);
  math_mode().allow_tf32 = !config.strict_fp32;
  math_mode().deterministic = config.deterministic;
  if (config.precision == "bf16" && device == Device::CPU)
    throw Error("run.precision = bf16 needs the CUDA backend; the CPU backend computes in fp32");

  CvResult result;
  const bool resuming = !options.resume_dir.empty();
  result.run_dir = resuming ? options.resume_dir : options.runs_root / fmt::format("{}_{}", config.name, timestamp());
  if (resuming) {
    std::ifstream saved(result.run_dir / "config.toml");
    std::stringstream text;
    text << saved.rdbuf();
    if (!saved || text.str() != config_to_toml(config))
      throw Error(fmt::format("--resume {}: its config.toml is missing or differs from this run's config",
                              result.run_dir.string()));
  }
  fs::create_directories(result.run_dir);
  std::ofstream(result.run_dir / "config.toml") << config_to_toml(config);
  std::fprintf(stderr, "run directory: %s (device %s)\n", result.run_dir.string().c_str(), device_name(device));

  const data::BadCasePolicy policy = data::parse_bad_case_policy(config.on_bad_case);
  const data::Discovery found = data::discover_dataset(config.data_root, policy);
  data::PreprocessOptions prep;
  prep.cache_dir = config.cache_dir;
  prep.params.grid = data::parse_grid(config.grid);
  prep.on_bad_case = policy;
  prep.threads = config.threads > 0 ? config.threads : static_cast<int>(std::thread::hardware_concurrency());
  data::ProgressReporter progress("preprocess", static_cast<int64_t>(found.cases.size()));
  prep.progress = &progress;
  const data::PreprocessedCohort cohort = data::preprocess_cohort(found.cases, prep);
  progress.finish();
  std::vector<data::SkippedCase> skipped = found.skipped;
  skipped.insert(skipped.end(), cohort.skipped.begin(), cohort.skipped.end());
  {
    std::ofstream out(result.run_dir / "skipped_cases.txt");
    for (const data::SkippedCase& s : skipped) {
      out << s.message() << "\n";
      std::fprintf(stderr, "skipped: %s\n", s.message().c_str());
    }
  }
  std::fprintf(stderr, "%zu cases (%d from the cache, %d preprocessed), %zu skipped\n", cohort.cases.size(),
               cohort.cache_hits, cohort.cache_builds, skipped.size());

  std::vector<int> labels;
  std::vector<std::string> groups, ids;
  for (const data::CaseVolume& c : cohort.cases) {
    labels.push_back(c.label);
    groups.push_back(c.patient_id.empty() ? c.case_id : c.patient_id);
    ids.push_back(c.case_id);
  }
  Trainer trainer(config, cohort.cases, device);
  const auto t0 = std::chrono::steady_clock::now();
  for (int repeat = 0; repeat < config.repeats; ++repeat) {
    const data::SplitOptions split_options{config.folds, config.select_on_test ? 0.0 : config.inner_val,
                                           static_cast<uint64_t>(config.seed) + static_cast<uint64_t>(repeat)};
    const data::Splits splits = data::make_splits(labels, groups, split_options);
    const fs::path base = repeat_dir(result.run_dir, config.repeats, repeat);
    fs::create_directories(base);
    data::write_splits_json(base / "splits.json", splits, ids);
    for (int fold = 0; fold < config.folds; ++fold) {
      if (!options.folds.empty() && std::find(options.folds.begin(), options.folds.end(), fold) == options.folds.end())
        continue;
      const data::Fold& f = splits.folds[fold];
      trainer.run_fold({repeat, fold, f.train, f.inner_val, f.test}, base / fmt::format("fold_{}", fold), resuming);
    }
  }
  std::fprintf(stderr, "training done in %.1f s\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (options.audit) {
    const report::AuditResult audit = report::write_cv_report(result.run_dir);
    result.audit_md = audit.audit_md;
    result.consistent = audit.consistent();
    for (const std::string& f : audit.failures) std::fprintf(stderr, "consistency FAILED: %s\n", f.c_str());
  }
  return result;
}

}  // namespace dsmil::app
