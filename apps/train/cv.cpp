// The cross-validation driver.
#include "apps/train/cv.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apps/provenance.h"
#include "apps/report/audit.h"
#include "apps/report/run_dir.h"
#include "apps/train/inputs.h"
#include "apps/train/trainer.h"
#ifdef DSMIL_WITH_CUDA
#include "data/device_cohort.h"
#endif
#include "data/cases.h"
#include "data/preprocess.h"
#include "data/progress.h"
#include "data/splits.h"
#include "logging/log.h"

namespace dsmil::app {

namespace fs = std::filesystem;

std::vector<int> parse_fold_list(const std::string& text) {
  std::vector<int> folds;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    size_t used = 0;
    int fold = -1;
    try {
      fold = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || fold < 0)
      throw Error(fmt::format("--folds '{}': expected fold numbers like 0,2,3", text));
    folds.push_back(fold);
  }
  return folds;
}

namespace {

// The run directory's time stamp: rank 0's clock, so that every rank of a data-parallel job names one directory.
std::string run_timestamp(dist::Communicator* ranks) {
  std::time_t now = std::time(nullptr);
  if (ranks) now = static_cast<std::time_t>(ranks->sum({ranks->rank() == 0 ? static_cast<double>(now) : 0.0})[0]);
  char text[32];
  std::strftime(text, sizeof text, "%Y%m%d_%H%M%S", std::localtime(&now));
  return text;
}

// Creates root/stem, or root/stem_2, root/stem_3, ... when that exists: an exclusive create, so that two runs
// started in the same second never share a directory. Rank 0 of a data-parallel job creates it and tells the
// other ranks which suffix it took.
fs::path new_run_directory(const fs::path& root, const std::string& stem, dist::Communicator* ranks) {
  const bool writer = !ranks || ranks->rank() == 0;
  int suffix = 1;
  if (writer) {
    fs::create_directories(root);
    while (!fs::create_directory(suffix == 1 ? root / stem : root / fmt::format("{}_{}", stem, suffix))) ++suffix;
  }
  if (ranks) suffix = static_cast<int>(ranks->sum({writer ? static_cast<double>(suffix) : 0.0})[0]);
  return suffix == 1 ? root / stem : root / fmt::format("{}_{}", stem, suffix);
}

// Appends what this process is to run_dir/provenance.jsonl (the build, the device and libraries, the command,
// the config's hash): the first line is the run's start, each later one a resume or a fold process, possibly
// of another build or on another machine, which the audit then shows.
void record_provenance(const fs::path& run_dir, const RunConfig& config, Provenance provenance) {
  provenance.config_sha256 = sha256_hex(config_to_toml(config));
  std::ofstream(run_dir / "provenance.jsonl", std::ios::app) << provenance.to_json().dump() << "\n";
}

// Opens RUN_DIR/run.log for this process (apps/train/cv.h) with a line that says who writes to it from now:
// the run starting or resuming, or the fold process of `fold_process_folds` (its lines marked "fold K: ").
void open_run_log(const fs::path& run_dir, const Provenance& process, bool resuming,
                  const std::vector<int>& fold_process_folds) {
  const std::string command = fmt::format("{}", fmt::join(process.command_line, " "));
  if (!fold_process_folds.empty()) {
    const std::string folds = fmt::format("{}", fmt::join(fold_process_folds, ","));
    logging::open_run_log(run_dir / "run.log", fmt::format("fold {}: ", folds))
        .note(fmt::format("fold process {} started: {}", getpid(), command));
    return;
  }
  logging::LogFile& log = logging::open_run_log(run_dir / "run.log");
  if (const char* launch = std::getenv("DSMIL_LAUNCH")) log.note(launch);  // apps/train/rank_launcher.cpp
  log.note(fmt::format("run {} by process {}: {}", resuming ? "resumed" : "started", getpid(), command));
}

// Both grades, enough of each for a stratified split: otherwise no fold can be trained or judged.
void check_classes(const std::vector<data::CaseVolume>& cases, int folds) {
  int count[2] = {0, 0};
  for (const data::CaseVolume& c : cases) ++count[c.label == data::kLabelHGG];
  for (int label : {data::kLabelLGG, data::kLabelHGG})
    if (count[label] < folds)
      throw Error(
          fmt::format("the dataset holds {} {} case{} ({} HGG, {} LGG): a {}-fold grading CV needs at least {} of "
                      "each grade",
                      count[label], label == data::kLabelHGG ? "HGG" : "LGG", count[label] == 1 ? "" : "s", count[1],
                      count[0], folds, folds));
}

}  // namespace

fs::path repeat_dir(const fs::path& run_dir, int repeats, int repeat) {
  return repeats > 1 ? run_dir / fmt::format("repeat_{}", repeat) : run_dir;
}

data::PreprocessedCohort prepare_cohort(const RunConfig& config, const fs::path& run_dir, bool writer) {
  const data::BadCasePolicy policy = config.on_bad_case;
  const data::Discovery found = data::discover_dataset(config.data_root, policy);
  data::PreprocessOptions prep;
  prep.cache_dir = config.cache_dir;
  prep.params.grid = data::parse_grid(config.grid);
  prep.on_bad_case = policy;
  prep.threads = config.threads > 0 ? config.threads : static_cast<int>(std::thread::hardware_concurrency());
  data::ProgressReporter progress("preprocess", static_cast<int64_t>(found.cases.size()));
  prep.progress = &progress;
  data::PreprocessedCohort cohort = data::preprocess_cohort(found.cases, prep);
  progress.finish();
  std::vector<data::SkippedCase> skipped = found.skipped;
  skipped.insert(skipped.end(), cohort.skipped.begin(), cohort.skipped.end());
  if (writer) {
    std::ofstream out;
    if (!run_dir.empty()) out.open(run_dir / "skipped_cases.txt");
    for (const data::SkippedCase& s : skipped) {
      out << s.message() << "\n";
      logging::line("skipped: " + s.message());
    }
  }
  logging::line(fmt::format("{} cases ({} from the cache, {} preprocessed), {} skipped", cohort.cases.size(),
                            cohort.cache_hits, cohort.cache_builds, skipped.size()));
  if (writer && !cohort.cases.empty()) {
    const std::string padded = padded_bags_note(cohort.cases, training_bag_spec(config, cohort.cases.front().grid));
    if (!padded.empty()) logging::line(padded);
  }
  // Written once per run: the fold processes of a scheduled or resumed run find it there and hash nothing.
  if (writer && !run_dir.empty() && !fs::exists(run_dir / "inputs.json")) {
    const auto start = std::chrono::steady_clock::now();
    report::write_text_file(run_dir / "inputs.json",
                            inputs_json(config, found.cases, cohort.cases, skipped, prep.threads).dump(1) + "\n");
    logging::line(fmt::format("inputs.json: {} cases' files and arrays hashed in {:.2f} s", cohort.cases.size(),
                              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()));
  }
  return cohort;
}

data::Splits cohort_splits(const RunConfig& config, const std::vector<data::CaseVolume>& cases, int repeat) {
  std::vector<int> labels;
  std::vector<std::string> groups;
  for (const data::CaseVolume& c : cases) {
    labels.push_back(c.label);
    groups.push_back(c.patient_id.empty() ? c.case_id : c.patient_id);
  }
  const data::SplitOptions split_options{config.folds, config.select_on_test ? 0.0 : config.inner_val,
                                         static_cast<uint64_t>(config.seed) + static_cast<uint64_t>(repeat)};
  return data::make_splits(labels, groups, split_options);
}

namespace {

// The seeded splits of every repeat, written to its splits.json by the `writer` (kept as it is when resuming:
// scheduled folds resume the run side by side and must not rewrite a file under each other).
std::vector<data::Splits> make_repeat_splits(const RunConfig& config, const std::vector<data::CaseVolume>& cases,
                                             const fs::path& run_dir, bool resuming, bool writer) {
  std::vector<std::string> ids;
  for (const data::CaseVolume& c : cases) ids.push_back(c.case_id);
  std::vector<data::Splits> repeat_splits;
  for (int repeat = 0; repeat < config.repeats; ++repeat) {
    repeat_splits.push_back(cohort_splits(config, cases, repeat));
    const fs::path base = repeat_dir(run_dir, config.repeats, repeat);
    if (!writer) continue;
    fs::create_directories(base);
    if (!resuming || !fs::exists(base / "splits.json"))
      data::write_splits_json(base / "splits.json", repeat_splits.back(), ids);
  }
  return repeat_splits;
}

// Trains `folds` of every repeat in this process, one after another.
void train_here(const RunConfig& config, const std::vector<data::CaseVolume>& cases, Device device,
                const std::vector<data::Splits>& repeat_splits, const std::vector<int>& folds, const fs::path& run_dir,
                bool resuming, dist::Communicator* ranks) {
  GatherTarget gather;
#ifdef DSMIL_WITH_CUDA
  std::unique_ptr<data::DeviceCohort> resident;
  if (device == Device::CUDA && config.resident) {
    resident = std::make_unique<data::DeviceCohort>(cases);
    gather = {resident.get(), config.precision == Precision::bf16 ? DType::BF16 : DType::F32};
    logging::line(fmt::format("cohort resident on the GPU: {:.2f} GiB", resident->bytes() / 1073741824.0));
  }
#endif
  Trainer trainer(config, cases, device, gather, ranks);
  const int count = config.repeats * static_cast<int>(folds.size());
  int position = 0;
  for (int repeat = 0; repeat < config.repeats; ++repeat)
    for (const int fold : folds) {
      const data::Fold& f = repeat_splits[repeat].folds[fold];
      trainer.run_fold({repeat, fold, f.train, f.inner_val, f.test, ++position, count},
                       repeat_dir(run_dir, config.repeats, repeat) / fmt::format("fold_{}", fold), resuming);
    }
}

}  // namespace

CvResult run_cv(const RunConfig& requested, const CvOptions& options) {
  validate_config(requested);
  RunConfig config = requested;
  const Device device = resolve_device(config.device);
  resolve_precision(config, device);
  if (config.data_root.empty()) throw Error("no data: give --data ROOT (a BraTS folder or a manifest CSV)");
  std::vector<int> folds = options.folds;
  for (const int fold : folds)
    if (fold < 0 || fold >= config.folds)
      throw Error(fmt::format("--folds: there is no fold {} (cv.folds = {})", fold, config.folds));
  if (folds.empty())
    for (int fold = 0; fold < config.folds; ++fold) folds.push_back(fold);
  std::sort(folds.begin(), folds.end());
  folds.erase(std::unique(folds.begin(), folds.end()), folds.end());
  if (config.threads > 0) omp_set_num_threads(config.threads);

  CvResult result;
  const bool resuming = !options.resume_dir.empty();
  dist::Communicator* ranks = options.ranks;
  const bool writer = !ranks || ranks->rank() == 0;
  if (ranks && options.train_folds)
    throw Error("a data-parallel rank trains its folds itself: --gpus and --workers do not combine with it");
  const fs::path saved_config = options.resume_dir / "config.toml";
  if (resuming) {
    result.run_dir = options.resume_dir;
    if (!fs::exists(saved_config))
      throw Error(fmt::format("--resume {}: no config.toml there", result.run_dir.string()));
  } else {
    const std::string prefix = options.run_prefix.empty() ? config.name : options.run_prefix;
    result.run_dir = new_run_directory(options.runs_root, fmt::format("{}_{}", prefix, run_timestamp(ranks)), ranks);
  }
  const Provenance process = writer ? current_provenance() : Provenance{};
  // Opened first, so that the log holds whatever ends the run, a refused resumption included.
  if (writer) open_run_log(result.run_dir, process, resuming, options.fold_process ? folds : std::vector<int>{});
  if (resuming) {
    const std::vector<std::string> differences = config_differences(load_config(saved_config), config);
    if (!differences.empty())
      throw Error(fmt::format("--resume {}: the run was made with another config (the run's value vs this one's): {}",
                              result.run_dir.string(), fmt::join(differences, "; ")));
  } else if (writer) {
    report::write_text_file(result.run_dir / "config.toml", config_to_toml(config));
  }
  if (writer) record_provenance(result.run_dir, config, process);
  // A new run that fails before its folds start (no data, a bad case, one grade) leaves no directory behind.
  struct RemovedUnlessStarted {
    fs::path dir;
    ~RemovedUnlessStarted() {
      std::error_code ignored;
      if (!dir.empty()) fs::remove_all(dir, ignored);
    }
  } not_started{!resuming && writer ? result.run_dir : fs::path()};
  if (writer)
    logging::line(fmt::format("run directory: {} (device {}{})", result.run_dir.string(), device_name(device),
                              ranks ? fmt::format(", {} data-parallel ranks", ranks->world_size()) : ""));

  // Rank 0 fills the preprocessing cache before the other ranks read it.
  if (ranks && !writer) ranks->sum({0.0});
  data::PreprocessedCohort cohort = prepare_cohort(config, result.run_dir, writer);
  if (ranks && writer) ranks->sum({0.0});
  check_classes(cohort.cases, config.folds);
  const std::vector<data::Splits> repeat_splits =
      make_repeat_splits(config, cohort.cases, result.run_dir, resuming, writer);
  not_started.dir.clear();
  const auto t0 = std::chrono::steady_clock::now();
  if (options.train_folds) {
    cohort = {};  // the fold processes map the cohort from the cache this call has filled
    options.train_folds(result.run_dir, folds);
  } else {
    train_here(config, cohort.cases, device, repeat_splits, folds, result.run_dir, resuming, ranks);
  }
  if (!writer) return result;
  logging::line(fmt::format("training done in {:.1f} s",
                            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));
  if (options.audit) {
    const report::AuditResult audit = report::write_cv_report(result.run_dir);
    result.audit_md = audit.audit_md;
    result.consistent = audit.consistent();
    for (const std::string& f : audit.failures) logging::line("consistency FAILED: " + f);
  }
  return result;
}

}  // namespace dsmil::app
