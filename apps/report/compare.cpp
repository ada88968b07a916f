// Compares two CV summaries (cv_summary.json layout): per metric the fold mean ± std of each run, the
// difference of means, the pooled out-of-fold values and their difference, and the anomaly counts.
#include "apps/report/compare.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <set>

#include <fmt/format.h>

#include "apps/report/anomalies.h"
#include "apps/report/consistency.h"
#include "apps/report/evaluation.h"
#include "apps/report/run_dir.h"
#include "base/error.h"

namespace dsmil::report {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double number_at(const json& j, const std::string& pointer) {
  const json::json_pointer at(pointer);
  if (!j.contains(at) || j.at(at).is_null()) return kNaN;
  return j.at(at).get<double>();
}

std::string fixed(double v) { return std::isnan(v) ? "n/a" : fmt::format("{:.4f}", v); }

std::string mean_std(const json& j, const std::string& pointer) {
  return fixed(number_at(j, pointer + "/mean")) + " ± " + fixed(number_at(j, pointer + "/std"));
}

// The pooled value of a metric: the one pooled repeat's, or the mean over repeats.
double pooled(const json& j, const std::string& tail) {
  if (!j.contains("pooled") || j["pooled"].empty()) return kNaN;
  double sum = 0;
  for (size_t r = 0; r < j["pooled"].size(); ++r) sum += number_at(j, fmt::format("/pooled/{}{}", r, tail));
  return sum / static_cast<double>(j["pooled"].size());
}

std::string delta(double a, double b, bool lower_is_better) {
  if (std::isnan(a) || std::isnan(b)) return "n/a";
  const double d = b - a;
  if (std::abs(d) < 5e-5) return fmt::format("{:+.4f}", d);
  const bool better = lower_is_better ? d < 0 : d > 0;
  return fmt::format("{:+.4f} {}", d, better ? "(better)" : "(worse)");
}

std::string metric_row(const LoadedSummary& a, const LoadedSummary& b, const std::string& title,
                       const std::string& summary_pointer, const std::string& pooled_tail, bool lower_is_better) {
  const double mean_a = number_at(a.summary, summary_pointer + "/mean"),
               mean_b = number_at(b.summary, summary_pointer + "/mean");
  const double pooled_a = pooled(a.summary, pooled_tail), pooled_b = pooled(b.summary, pooled_tail);
  return fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", title, mean_std(a.summary, summary_pointer),
                     mean_std(b.summary, summary_pointer), delta(mean_a, mean_b, lower_is_better), fixed(pooled_a),
                     fixed(pooled_b), delta(pooled_a, pooled_b, lower_is_better));
}

std::map<std::string, int> anomaly_counts(const json& j) {
  std::map<std::string, int> counts;
  if (j.contains("anomalies"))
    for (const auto& a : j["anomalies"]) counts[a["rule"].get<std::string>()]++;
  return counts;
}

std::string consistency_text(const LoadedSummary& s) {
  const json& j = s.summary;
  std::string text = "audit: not run";
  if (j.contains("consistency")) {
    const int failed = j["consistency"]["failed"].get<int>(), checks = j["consistency"]["checks"].get<int>();
    text = failed == 0 ? fmt::format("audit: all {} PASS", checks)
                       : fmt::format("audit: **{} FAIL** of {}", failed, checks);
  }
  if (!s.verified) return text + "; summary not re-verified";
  if (s.disagreements.empty()) return text + fmt::format("; re-verified now: {} numbers agree", s.verified_numbers);
  return text + fmt::format("; **re-verified now: {} of {} numbers disagree with the fold files**",
                            s.disagreements.size(), s.verified_numbers);
}

// Recomputes the summary's numbers from the fold directories it names, when all of them still exist.
void verify_against_folds(LoadedSummary& loaded, const fs::path& summary_dir) {
  if (!loaded.summary.contains("folds")) return;
  std::vector<fs::path> fold_dirs;
  for (const auto& fold : loaded.summary["folds"]) {
    const fs::path dir = fold.value("dir", "");
    const fs::path resolved = dir.is_absolute() ? dir : summary_dir / dir;
    if (!fs::is_regular_file(resolved / "fold.json")) return;
    fold_dirs.push_back(resolved);
  }
  for (const auto& c : check_summary_json(loaded.summary, recompute_values(load_runs(fold_dirs)))) {
    loaded.verified_numbers++;
    if (!c.pass)
      loaded.disagreements.push_back(fmt::format("{}: file {}, recomputed {}", c.what, c.reported, c.recomputed));
  }
  loaded.verified = true;
}

}  // namespace

LoadedSummary load_cv_summary(const fs::path& path) {
  const fs::path file = fs::is_directory(path) ? path / "cv_summary.json" : path;
  if (fs::is_regular_file(file)) {
    LoadedSummary loaded;
    loaded.source = file.string();
    std::ifstream in(file);
    try {
      loaded.summary = json::parse(in);
    } catch (const json::parse_error& e) {
      throw FormatError(fmt::format("{}: not JSON ({})", file.string(), e.what()));
    }
    verify_against_folds(loaded, file.parent_path());
    return loaded;
  }
  if (!fs::is_directory(path))
    throw FormatError(fmt::format("{}: neither a run directory nor a cv_summary.json", path.string()));
  const CvEvaluation cv = evaluate(load_runs({path}));
  LoadedSummary computed;
  computed.summary = summary_json(cv, {path.string()});
  computed.summary["anomalies"] = anomalies_json(find_anomalies(cv));
  computed.source = "recomputed from " + path.string() + " (no cv_summary.json; consistency not checked)";
  return computed;
}

std::string compare_markdown(const LoadedSummary& a, const LoadedSummary& b, const std::string& name_a,
                             const std::string& name_b) {
  const json& ja = a.summary;
  const json& jb = b.summary;
  std::string s = fmt::format("# CV comparison: A = `{}` → B = `{}`\n\n", name_a, name_b);
  s += fmt::format("- A: {}\n- B: {}\n\n", a.source, b.source);
  for (const auto& [name, j] :
       {std::pair<std::string, const json&>{"A", ja}, std::pair<std::string, const json&>{"B", jb}})
    if (j.value("optimistic", false))
      s += fmt::format(
          "> ⚠️ **{} is optimistic** (protocol `{}`): its test metrics are biased upwards; the "
          "comparison is not like for like.\n\n",
          name, j.value("protocol", "?"));

  s += "| | A | B |\n|---|---|---|\n";
  s += fmt::format("| Protocol | {} | {} |\n", ja.value("protocol", "?"), jb.value("protocol", "?"));
  s += fmt::format("| Folds (repeats) | {} ({}) | {} ({}) |\n", ja.value("n_folds", 0), ja.value("n_repeats", 0),
                   jb.value("n_folds", 0), jb.value("n_repeats", 0));
  s += fmt::format("| Consistency | {} | {} |\n\n", consistency_text(a), consistency_text(b));
  for (const auto& [name, loaded] :
       {std::pair<std::string, const LoadedSummary&>{"A", a}, std::pair<std::string, const LoadedSummary&>{"B", b}})
    if (!loaded.disagreements.empty())
      s += fmt::format(
          "> ❌ **{}'s cv_summary.json disagrees with its fold files** (first: {}). Rerun `dsmil audit`.\n\n", name,
          loaded.disagreements.front());

  const std::string header =
      "| Metric | A mean ± std | B mean ± std | Δ mean | A pooled | B pooled | Δ pooled "
      "|\n|---|---|---|---|---|---|---|\n";
  s += "Mean ± sample std over the test folds; pooled = all out-of-fold test predictions together (the mean "
       "over repeats where a run has several); Δ = B − A.\n\n**Threshold-free**\n\n" +
       header;
  for (const auto& name : kThresholdFreeMetrics)
    s += metric_row(a, b, metric_title(name), "/summary/" + name, "/" + name, name != "auc");
  for (const auto& key : kThresholdKeys) {
    s += fmt::format("\n**At the {} threshold**\n\n", key == kThresholdKeys[0] ? "calibrated" : "0.5") + header;
    for (const auto& name : kThresholdMetrics)
      s += metric_row(a, b, metric_title(name), "/summary/at_threshold/" + key + "/" + name,
                      "/at_threshold/" + key + "/" + name, false);
  }

  const auto counts_a = anomaly_counts(ja), counts_b = anomaly_counts(jb);
  std::set<std::string> rules;
  for (const auto& [rule, n] : counts_a) rules.insert(rule);
  for (const auto& [rule, n] : counts_b) rules.insert(rule);
  s += "\n**Anomalies** (findings per rule)\n\n| Rule | A | B |\n|---|---|---|\n";
  if (rules.empty()) s += "| (none) | 0 | 0 |\n";
  for (const auto& rule : rules)
    s += fmt::format("| {} | {} | {} |\n", rule, counts_a.contains(rule) ? counts_a.at(rule) : 0,
                     counts_b.contains(rule) ? counts_b.at(rule) : 0);
  return s;
}

}  // namespace dsmil::report
