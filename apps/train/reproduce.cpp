// The reproduce check: inputs by content before anything is trained, the build compared with the run's, the
// folds trained again through run_cv, and the predictions compared file by file.
#include "apps/train/reproduce.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apps/provenance.h"
#include "apps/report/metrics.h"
#include "apps/report/run_dir.h"
#include "apps/train/config.h"
#include "apps/train/cv.h"
#include "apps/train/inputs.h"
#include "apps/train/trainer.h"
#include "data/cases.h"

namespace dsmil::app {

namespace fs = std::filesystem;

namespace {

nlohmann::json read_json_file(const fs::path& path) {
  try {
    return nlohmann::json::parse(report::read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON: {}", path.string(), e.what()));
  }
}

// The first record of provenance.jsonl: the process that started the run. Null when the file is absent.
nlohmann::json run_start_provenance(const fs::path& run_dir) {
  std::ifstream in(run_dir / "provenance.jsonl");
  std::string line;
  if (!in || !std::getline(in, line)) return nullptr;
  try {
    return nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(
        fmt::format("{}: line 1 is not valid JSON: {}", (run_dir / "provenance.jsonl").string(), e.what()));
  }
}

fs::path predictions_path(const fs::path& run_dir, int repeats, int repeat, int fold) {
  return repeat_dir(run_dir, repeats, repeat) / fmt::format("fold_{}", fold) / "predictions.csv";
}

// Folds 0..K-1 whose predictions.csv the run holds in its first repeat.
std::vector<int> recorded_folds(const fs::path& run_dir, const RunConfig& config) {
  std::vector<int> folds;
  for (int fold = 0; fold < config.folds; ++fold)
    if (fs::exists(predictions_path(run_dir, config.repeats, 0, fold))) folds.push_back(fold);
  return folds;
}

struct FoldComparison {
  int repeat = 0, fold = 0;
  bool identical = false;
  int n_test = 0;
  double max_p_difference = 0;         // over the (case, split) rows both files hold
  std::vector<std::string> unmatched;  // rows one file holds and the other not
  double auc_then = NAN, auc_now = NAN;
  double auc_spread = NAN;  // std over the run's repeats of this fold's recorded test AUC
};

double test_auc(const std::vector<report::PredictionRow>& rows) {
  const report::LabelledScores test = report::scores_of_split(rows, "test");
  return report::auc(test.labels, test.p_hgg);
}

FoldComparison compare_fold(const fs::path& then_path, const fs::path& now_path, int repeat, int fold) {
  FoldComparison c{.repeat = repeat, .fold = fold};
  c.identical = report::read_text_file(then_path) == report::read_text_file(now_path);
  const auto then_rows = report::read_predictions_csv(then_path);
  const auto now_rows = report::read_predictions_csv(now_path);
  c.n_test = static_cast<int>(report::scores_of_split(then_rows, "test").labels.size());
  c.auc_then = test_auc(then_rows);
  c.auc_now = test_auc(now_rows);
  std::map<std::pair<std::string, std::string>, double> now_p;
  for (const report::PredictionRow& row : now_rows) now_p[{row.case_id, row.split}] = row.p_hgg;
  for (const report::PredictionRow& row : then_rows) {
    const auto found = now_p.find({row.case_id, row.split});
    if (found == now_p.end()) {
      c.unmatched.push_back(fmt::format("{} ({})", row.case_id, row.split));
      continue;
    }
    c.max_p_difference = std::max(c.max_p_difference, std::abs(found->second - row.p_hgg));
    now_p.erase(found);
  }
  for (const auto& [key, p] : now_p) c.unmatched.push_back(fmt::format("{} ({}, new)", key.first, key.second));
  return c;
}

// The pooled test AUC of one repeat over `folds`.
double pooled_auc(const fs::path& run_dir, int repeats, int repeat, const std::vector<int>& folds) {
  std::vector<int> labels;
  std::vector<double> p;
  for (const int fold : folds) {
    const auto test =
        report::scores_of_split(report::read_predictions_csv(predictions_path(run_dir, repeats, repeat, fold)), "test");
    labels.insert(labels.end(), test.labels.begin(), test.labels.end());
    p.insert(p.end(), test.p_hgg.begin(), test.p_hgg.end());
  }
  return report::auc(labels, p);
}

double spread_std(const std::vector<double>& values) { return report::spread(values).std; }

std::string fold_name(int repeats, int repeat, int fold) {
  return repeats > 1 ? fmt::format("repeat {} fold {}", repeat, fold) : fmt::format("fold {}", fold);
}

std::string number(double value) { return std::isnan(value) ? "n/a" : fmt::format("{:.6f}", value); }

}  // namespace

std::vector<std::string> build_differences(const nlohmann::json& recorded, const nlohmann::json& current) {
  std::vector<std::string> differences;
  for (const char* key : {"version", "commit", "dirty", "build_type", "compiler", "cuda_backend", "cuda_toolkit",
                          "cuda_headers", "cuda"}) {
    const nlohmann::json then = recorded.value(key, nlohmann::json());
    const nlohmann::json now = current.value(key, nlohmann::json());
    if (then != now) differences.push_back(fmt::format("{}: run {}, this binary {}", key, then.dump(), now.dump()));
  }
  return differences;
}

ReproduceResult reproduce_run(const ReproduceOptions& options) {
  const fs::path& run_dir = options.run_dir;
  for (const char* file : {"config.toml", "inputs.json"})
    if (!fs::exists(run_dir / file))
      throw Error(fmt::format(
          "reproduce {}: no {} there, so what the run was made from cannot be checked{}", run_dir.string(), file,
          std::string(file) == "inputs.json"
              ? " (the run predates recorded inputs, or was made by `dsmil train`); run the CV again to record them"
              : ""));
  RunConfig config = load_config(run_dir / "config.toml");
  validate_config(config);
  const int threads = options.threads > 0  ? options.threads
                      : config.threads > 0 ? config.threads
                                           : static_cast<int>(std::thread::hardware_concurrency());

  std::vector<int> folds = options.folds.empty() ? recorded_folds(run_dir, config) : options.folds;
  if (folds.empty())
    throw Error(fmt::format("reproduce {}: the run holds no fold's predictions.csv", run_dir.string()));
  for (const int fold : folds)
    for (int repeat = 0; repeat < config.repeats; ++repeat)
      if (!fs::exists(predictions_path(run_dir, config.repeats, repeat, fold)))
        throw Error(fmt::format("reproduce {}: --folds {}: the run holds no {}", run_dir.string(), fold,
                                predictions_path(run_dir, config.repeats, repeat, fold).string()));

  // The build: a warning, not a refusal. Whether another build gives the run's predictions is a question this
  // command answers; the report names the differing fields beside the verdict so that a difference is traced.
  const nlohmann::json recorded_build = run_start_provenance(run_dir);
  std::vector<std::string> build_changes =
      recorded_build.is_null() ? std::vector<std::string>{"provenance.jsonl: absent, the run's build is unknown"}
                               : build_differences(recorded_build, current_provenance().to_json());
  for (const std::string& change : build_changes)
    std::fprintf(stderr, "warning: reproduce: this binary is not the run's build: %s\n", change.c_str());

  // The inputs, by content, before anything is trained: throws InputChanged naming the case and the file.
  const nlohmann::json recorded_inputs = read_json_file(run_dir / "inputs.json");
  const data::Discovery found = data::discover_dataset(config.data_root, config.on_bad_case);
  check_source_files(recorded_inputs, found.cases, threads);
  std::fprintf(stderr, "reproduce: the source files of %zu cases match inputs.json\n",
               recorded_inputs.at("cases").size());

  CvOptions cv;
  cv.runs_root = options.out.empty() ? run_dir : options.out;
  cv.run_prefix = "reproduce";
  cv.folds = folds;
  cv.audit = false;
  ReproduceResult result;
  result.new_run_dir = run_cv(config, cv).run_dir;

  const std::vector<std::string> array_changes =
      array_differences(recorded_inputs, read_json_file(result.new_run_dir / "inputs.json"));
  std::vector<std::string> split_changes;
  for (int repeat = 0; repeat < config.repeats; ++repeat) {
    const fs::path then = repeat_dir(run_dir, config.repeats, repeat) / "splits.json";
    const fs::path now = repeat_dir(result.new_run_dir, config.repeats, repeat) / "splits.json";
    if (!fs::exists(then) || report::read_text_file(then) != report::read_text_file(now))
      split_changes.push_back(fmt::format("{} differs from {}", now.string(), then.string()));
  }

  std::vector<FoldComparison> comparisons;
  for (int repeat = 0; repeat < config.repeats; ++repeat)
    for (const int fold : folds)
      comparisons.push_back(compare_fold(predictions_path(run_dir, config.repeats, repeat, fold),
                                         predictions_path(result.new_run_dir, config.repeats, repeat, fold), repeat,
                                         fold));
  std::vector<double> pooled_then, pooled_now;
  for (int repeat = 0; repeat < config.repeats; ++repeat) {
    pooled_then.push_back(pooled_auc(run_dir, config.repeats, repeat, folds));
    pooled_now.push_back(pooled_auc(result.new_run_dir, config.repeats, repeat, folds));
  }
  for (FoldComparison& c : comparisons) {
    std::vector<double> fold_aucs;
    for (const FoldComparison& other : comparisons)
      if (other.fold == c.fold) fold_aucs.push_back(other.auc_then);
    c.auc_spread = spread_std(fold_aucs);
  }
  const double pooled_spread = spread_std(pooled_then);

  const bool all_identical =
      std::all_of(comparisons.begin(), comparisons.end(), [](const FoldComparison& c) { return c.identical; });
  const bool on_cpu = resolve_device(config.device) == Device::CPU;
  bool within_spread = config.repeats > 1;
  for (const FoldComparison& c : comparisons)
    within_spread = within_spread && c.unmatched.empty() && std::abs(c.auc_now - c.auc_then) < c.auc_spread;
  for (int repeat = 0; repeat < config.repeats; ++repeat)
    within_spread = within_spread && std::abs(pooled_now[repeat] - pooled_then[repeat]) < pooled_spread;
  std::string criterion, reason;
  if (on_cpu) {
    criterion = "identical bytes of every fold's predictions.csv (training on the CPU is deterministic)";
    result.reproduced = all_identical;
  } else if (all_identical) {
    criterion = "identical predictions.csv, or every metric within the run's spread over its repeats";
    result.reproduced = true;
  } else if (config.repeats > 1) {
    criterion = "every fold test AUC and pooled AUC moved by less than its standard deviation over the run's repeats";
    result.reproduced = within_spread;
  } else {
    criterion = "identical predictions.csv (the run has one repeat: no measured spread to judge differences by)";
    result.reproduced = false;
  }
  const std::string verdict = result.reproduced ? "REPRODUCED" : "NOT REPRODUCED";

  std::vector<std::string> fold_lines;
  for (const FoldComparison& c : comparisons)
    fold_lines.push_back(
        c.identical
            ? fmt::format("{}: predictions identical ({} cases)", fold_name(config.repeats, c.repeat, c.fold), c.n_test)
            : fmt::format("{}: predictions differ (largest |dp(HGG)| {:.3g}, test AUC {} -> {})",
                          fold_name(config.repeats, c.repeat, c.fold), c.max_p_difference, number(c.auc_then),
                          number(c.auc_now)));
  result.summary = fmt::format("reproduce: {}; verdict: {}", fmt::join(fold_lines, "; "), verdict);

  std::string md = fmt::format("# Reproduce of {}\n\n**Verdict: {}**\n\n", fs::absolute(run_dir).string(), verdict);
  md += fmt::format("- New run: `{}` (folds {})\n", result.new_run_dir.string(), fmt::join(folds, ", "));
  md += fmt::format("- Device: {}; criterion: {}\n", device_name(resolve_device(config.device)), criterion);
  md += fmt::format("- Source files: the {} cases' files match inputs.json (SHA-256)\n",
                    recorded_inputs.at("cases").size());
  md += array_changes.empty() ? "- Preprocessed arrays: identical to the run's\n"
                              : fmt::format("- Preprocessed arrays: {} cases differ (the preprocessing changed): {}\n",
                                            array_changes.size(), fmt::join(array_changes, "; "));
  md += split_changes.empty() ? "- splits.json: identical to the run's\n"
                              : fmt::format("- splits.json: {}\n", fmt::join(split_changes, "; "));
  md += build_changes.empty()
            ? "- Build: the run's (provenance.jsonl's first record)\n"
            : fmt::format("- Build: not the run's (a warning: the comparison below says whether it matters): {}\n",
                          fmt::join(build_changes, "; "));
  md +=
      "\n## Folds\n\n| fold | predictions.csv | test cases | largest \\|Δp(HGG)\\| | test AUC run | now | Δ | spread "
      "(std over repeats) |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- |\n";
  for (const FoldComparison& c : comparisons)
    md += fmt::format("| {} | {} | {} | {:.3g} | {} | {} | {} | {} |\n", fold_name(config.repeats, c.repeat, c.fold),
                      c.identical ? "identical" : "differs", c.n_test, c.max_p_difference, number(c.auc_then),
                      number(c.auc_now), number(c.auc_now - c.auc_then), number(c.auc_spread));
  for (const FoldComparison& c : comparisons)
    if (!c.unmatched.empty())
      md += fmt::format("\n{}: rows in one file only: {}\n", fold_name(config.repeats, c.repeat, c.fold),
                        fmt::join(c.unmatched, ", "));
  md +=
      "\n## Pooled test AUC\n\n| repeat | run | now | Δ | spread (std over repeats) |\n| --- | --- | --- | --- | --- "
      "|\n";
  for (int repeat = 0; repeat < config.repeats; ++repeat)
    md += fmt::format("| {} | {} | {} | {} | {} |\n", repeat, number(pooled_then[repeat]), number(pooled_now[repeat]),
                      number(pooled_now[repeat] - pooled_then[repeat]), number(pooled_spread));
  result.report_md = run_dir / "REPRODUCE.md";
  report::write_text_file(result.report_md, md);
  return result;
}

}  // namespace dsmil::app
