// Writes cv_summary.json and AUDIT.md of a CV: the seed audit's sections generated from the fold files,
// every printed number taken from cv_summary.json and then checked against a fresh recomputation.
#include "apps/report/audit.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "apps/report/evaluation.h"
#include "apps/report/plots.h"
#include "apps/report/recommendations.h"
#include "apps/report/run_dir.h"
#include "base/error.h"

namespace dsmil::report {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr size_t kListedChecksPerGroup = 60;  // larger groups list only their failures

// Prints numbers of cv_summary.json by pointer and remembers each as printed, so that the consistency
// section can recompute every one of them.
class Printer {
 public:
  explicit Printer(const json& summary) : summary_(summary) {}

  std::string num(const std::string& pointer, int decimals = 4) { return put(pointer, decimals, 1.0, ""); }
  std::string pct(const std::string& pointer, int decimals = 1) { return put(pointer, decimals, 100.0, "%"); }
  std::string count(const std::string& pointer) { return put(pointer, 0, 1.0, ""); }
  // "mean ± std" of a spread block.
  std::string mean_std(const std::string& pointer) { return num(pointer + "/mean") + " ± " + num(pointer + "/std"); }

  const std::vector<PrintedNumber>& printed() const { return printed_; }

 private:
  std::string put(const std::string& pointer, int decimals, double scale, const char* unit) {
    const json& value = summary_.at(json::json_pointer(pointer));
    if (value.is_null()) {
      printed_.push_back({pointer, "n/a", std::nan(""), decimals, scale});
      return "n/a";
    }
    const std::string number = fmt::format("{:.{}f}", value.get<double>() * scale, decimals);
    printed_.push_back({pointer, number + unit, std::stod(number), decimals, scale});
    return number + unit;
  }

  const json& summary_;
  std::vector<PrintedNumber> printed_;
};

std::string threshold_title(const FoldEvaluation& f, const std::string& key) {
  if (key == kThresholdKeys[1]) return "0.5";
  return fmt::format("calibrated {:.4f} (`{}`)", f.info.threshold, f.info.threshold_method);
}

// A recall with its Wilson interval: on a fold's 15 LGG cases one case moves it by 7 points.
std::string class_line(Printer& p, const std::string& block, const std::string& prefix) {
  return fmt::format("LGG {}/{} correct ({}, 95% CI {}–{}), HGG {}/{} correct ({}, 95% CI {}–{})",
                     p.count(block + "/confusion/0/0"), p.count(prefix + "/n_lgg"), p.pct(block + "/specificity"),
                     p.pct(block + "/specificity_ci95/0"), p.pct(block + "/specificity_ci95/1"),
                     p.count(block + "/confusion/1/1"), p.count(prefix + "/n_hgg"), p.pct(block + "/sensitivity"),
                     p.pct(block + "/sensitivity_ci95/0"), p.pct(block + "/sensitivity_ci95/1"));
}

// Chance is AUC 0.5; the model is told apart from it only when its whole 95% interval lies on one side.
bool above_chance(const AucInterval& auc) { return auc.lo > 0.5; }

std::string chance_words(const AucInterval& auc) {
  if (above_chance(auc)) return "**distinguishable from chance**: the whole interval lies above 0.5";
  if (auc.hi < 0.5)
    return "**worse than chance**: the whole interval lies below 0.5, so the scores rank the grades the wrong way "
           "round";
  return "**not distinguishable from chance**: the interval includes 0.5";
}

// One repeat's pooled out-of-fold AUC, its distance from chance and the class recalls at the calibrated
// thresholds; the first one says what AUC means.
std::string pooled_verdict(Printer& p, const CvEvaluation& cv, size_t j) {
  const std::string at = fmt::format("/pooled/{}", j), block = at + "/at_threshold/calibrated";
  const std::string subject =
      (cv.n_repeats > 1 ? fmt::format("In repeat {}, the", cv.pooled[j].repeat) : std::string("The")) +
      (j == 0 ? " AUC (the probability that the model scores a random HGG case above a random LGG case; 0.5 is "
                "guessing)"
              : " AUC");
  return fmt::format(
      "{} of the out-of-fold predictions, pooled over all {} test cases ({} HGG, {} LGG), is {} (95% confidence "
      "interval {}–{}): {}. At the calibrated thresholds (each fold's own) the model classifies {} of HGG cases "
      "correctly ({} of {}: the sensitivity, or HGG recall) and {} of LGG cases ({} of {}: the specificity, or LGG "
      "recall). ",
      subject, p.count(at + "/n"), p.count(at + "/n_hgg"), p.count(at + "/n_lgg"), p.num(at + "/auc"),
      p.num(at + "/auc_ci95/0"), p.num(at + "/auc_ci95/1"), chance_words(cv.pooled[j].auc),
      p.pct(block + "/sensitivity"), p.count(block + "/confusion/1/1"), p.count(at + "/n_hgg"),
      p.pct(block + "/specificity"), p.count(block + "/confusion/0/0"), p.count(at + "/n_lgg"));
}

std::string anomaly_verdict(Printer& p, const std::vector<Anomaly>& anomalies) {
  if (anomalies.empty()) return "No anomaly rule fired (section 3). ";
  std::string found;
  for (const auto& [kind, where] : scopes_by_kind(anomalies)) {
    const std::string name(anomaly_name(kind));
    found += found.empty() ? "" : "; ";
    found += where.contains("CV")
                 ? name + " (over the whole CV)"
                 : fmt::format("{} in {} of {} folds", name, p.count("/anomaly_folds/" + name), p.count("/n_folds"));
  }
  return "Anomalies found (section 3): " + found + ". ";
}

// The class the calibrated thresholds serve worst (over repeats), as the cases of it they miss.
std::string worst_misses(Printer& p, const CvEvaluation& cv) {
  size_t worst_repeat = 0;
  bool worst_hgg = true;
  double worst_recall = 1.0;
  for (size_t j = 0; j < cv.pooled.size(); ++j)
    for (const bool hgg : {true, false}) {
      const ThresholdMetrics& m = cv.pooled[j].at_calibrated;
      const double recall = hgg ? m.sensitivity : m.specificity;
      if (recall < worst_recall) worst_repeat = j, worst_hgg = hgg, worst_recall = recall;
    }
  if (worst_recall == 1.0) return ", and at its calibrated thresholds it classifies every test case correctly";
  const std::string at = fmt::format("/pooled/{}", worst_repeat);
  return fmt::format(
      ", but at its calibrated thresholds it misses {} of the {} {} cases{}",
      p.count(at + (worst_hgg ? "/at_threshold/calibrated/confusion/1/0" : "/at_threshold/calibrated/confusion/0/1")),
      p.count(at + (worst_hgg ? "/n_hgg" : "/n_lgg")), worst_hgg ? "HGG" : "LGG",
      cv.n_repeats > 1 ? fmt::format(" in repeat {}", cv.pooled[worst_repeat].repeat) : "");
}

std::string bottom_line(Printer& p, const CvEvaluation& cv) {
  size_t above = 0;
  for (const auto& pooled : cv.pooled) above += above_chance(pooled.auc);
  if (above == 0) return "**Bottom line: this model does not separate the grades better than chance.**";
  if (above < cv.pooled.size())
    return "**Bottom line: the model separates the grades better than chance in some repeats and not in others, so "
           "the result depends on the seed.**";
  return "**Bottom line: the model separates the grades better than chance" + worst_misses(p, cv) + ".**";
}

// The paragraph AUDIT.md opens with: what a reader needs before any table.
std::string verdict(Printer& p, const CvEvaluation& cv, const std::vector<Anomaly>& anomalies) {
  std::string s = "**Verdict.** ";
  for (size_t j = 0; j < cv.pooled.size(); ++j) s += pooled_verdict(p, cv, j);
  return s + anomaly_verdict(p, anomalies) + bottom_line(p, cv);
}

std::string fold_section(Printer& p, const FoldEvaluation& f, size_t index, int n_repeats,
                         const std::vector<Anomaly>& anomalies) {
  const std::string prefix = fmt::format("/folds/{}", index);
  const std::string label = fold_label(f.info, n_repeats);
  const FoldInfo& info = f.info;
  std::string s = fmt::format("### {} (`{}`)\n\n", label, f.dir);
  s += fmt::format("- **Best epoch:** {} of {} (stopped early: {}); **chosen model:** {}; **monitor** `{}` = {}\n",
                   info.best_epoch, p.count(prefix + "/epochs_run"), info.stopped_early ? "yes" : "no",
                   info.chosen_model, info.monitor, p.num(prefix + "/monitor_value"));
  const std::string chosen_on = info.threshold_method == "0.5" ? "fixed, not calibrated"
                                : info.protocol == "nested"    ? "chosen on the inner validation split"
                                                               : "chosen on the **test fold** (optimistic)";
  s += fmt::format(
      "- **Threshold:** `{}` → {} ({}); test set {} cases ({} HGG, {} LGG), "
      "inner validation {} cases\n",
      info.threshold_method, p.num(prefix + "/threshold"), chosen_on, p.count(prefix + "/n_test"),
      p.count(prefix + "/n_hgg"), p.count(prefix + "/n_lgg"), p.count(prefix + "/n_val"));
  s += fmt::format("- **Test AUC:** {} (95% CI {}–{}); Brier {}; ECE {}\n\n", p.num(prefix + "/auc"),
                   p.num(prefix + "/auc_ci95/0"), p.num(prefix + "/auc_ci95/1"), p.num(prefix + "/brier"),
                   p.num(prefix + "/ece"));

  s += fmt::format("| Test metric | at {} | at {} |\n|---|---|---|\n", threshold_title(f, kThresholdKeys[0]),
                   threshold_title(f, kThresholdKeys[1]));
  for (const auto& name : kThresholdMetrics)
    s += fmt::format("| {} | {} | {} |\n", metric_title(name),
                     p.num(prefix + "/at_threshold/" + kThresholdKeys[0] + "/" + name),
                     p.num(prefix + "/at_threshold/" + kThresholdKeys[1] + "/" + name));
  s += "\n- **Confusion matrix** (rows true, columns predicted):\n";
  for (const auto& key : kThresholdKeys) {
    const std::string block = prefix + "/at_threshold/" + key;
    s += fmt::format("  - at {}: {}; [[tn, fp], [fn, tp]] = [[{}, {}], [{}, {}]]\n", threshold_title(f, key),
                     class_line(p, block, prefix), p.count(block + "/confusion/0/0"), p.count(block + "/confusion/0/1"),
                     p.count(block + "/confusion/1/0"), p.count(block + "/confusion/1/1"));
  }

  if (f.stability) {
    const Stability& st = *f.stability;
    s += fmt::format(
        "- **Stability** ({} validation record, from metrics.jsonl):\n"
        "  - val loss {:.4f} (epoch 1) → {:.4f} (best epoch {}) → {:.4f} (final, epoch {}); minimum {:.4f} at epoch "
        "{}\n"
        "  - val AUC {:.4f} → {:.4f} (best) → {:.4f} (final)\n"
        "  - train/val loss at the final epoch: {:.4f} (train) vs {:.4f} (val), gap {:+.4f}\n"
        "  - training AUC at the best epoch {:.4f}; highest of any epoch: {:.4f} (epoch {})\n",
        info.chosen_model == "ema" ? "EMA model's" : "raw model's", st.val_loss_first, st.val_loss_best, st.best_epoch,
        st.val_loss_final, st.epochs, st.val_loss_min, st.min_val_loss_epoch, st.val_auc_first, st.val_auc_best,
        st.val_auc_final, st.train_loss_final, st.val_loss_final, st.loss_gap_final, st.train_auc_best,
        st.train_auc_max, st.train_auc_max_epoch);
    if (!st.last_health_warning.empty())
      s += fmt::format("  - training health, last warning (epoch {}): {}\n", st.last_health_warning_epoch,
                       st.last_health_warning);
  } else {
    s += "- **Stability:** metrics.jsonl is empty\n";
  }
  if (f.attention)
    s += fmt::format(
        "- **Attention** (mean of the last {} epochs): top-1 weight {:.3f}, effective instances {:.2f}, "
        "entropy / log n {:.3f}{}\n",
        f.attention->epochs, f.attention->top1, f.attention->neff, f.attention->entropy_norm,
        tumour_attention_text(*f.attention));
  else
    s += "- **Attention:** not logged\n";

  std::string found;
  for (const auto& a : anomalies)
    if (a.scope == label) found += fmt::format("  - ⚠️ **{}**: {}\n", anomaly_name(a.kind), a.message);
  s += found.empty() ? "- **Anomalies:** none\n" : "- **Anomalies:**\n" + found;
  return s + "\n";
}

std::string spread_row(Printer& p, const std::string& title, const std::string& pointer) {
  return fmt::format("| {} | {} | {} | {} |\n", title, p.mean_std(pointer), p.num(pointer + "/min"),
                     p.num(pointer + "/max"));
}

std::string cv_section(Printer& p, const CvEvaluation& cv) {
  std::string s = "## 2. Cross-validation summary\n\n";
  s += fmt::format("Over {} folds{}: mean ± sample std (n−1), min, max of the per-fold test metrics above.\n\n",
                   cv.folds.size(), cv.n_repeats > 1 ? fmt::format(" ({} repeats)", cv.n_repeats) : "");
  for (const auto& key : kThresholdKeys) {
    s += fmt::format("**At the {} threshold{}**\n\n| Metric | Mean ± Std | Min | Max |\n|---|---|---|---|\n",
                     key == kThresholdKeys[0] ? "calibrated" : "0.5", key == kThresholdKeys[0] ? "s (per fold)" : "");
    if (key == kThresholdKeys[0]) {
      for (const auto& name : kThresholdFreeMetrics) s += spread_row(p, metric_title(name), "/summary/" + name);
      s += spread_row(p, "Threshold", "/summary/threshold");
    }
    for (const auto& name : kThresholdMetrics)
      s += spread_row(p, metric_title(name), "/summary/at_threshold/" + key + "/" + name);
    s += "\n";
  }

  s += "**Per fold** (calibrated threshold)\n\n| Fold | AUC | F1 | Balanced acc. | Accuracy | HGG correct | LGG "
       "correct |\n|---|---|---|---|---|---|---|\n";
  for (size_t i = 0; i < cv.folds.size(); ++i) {
    const std::string prefix = fmt::format("/folds/{}", i);
    const std::string block = prefix + "/at_threshold/calibrated";
    s += fmt::format("| {} | {} | {} | {} | {} | {}/{} | {}/{} |\n", fold_label(cv.folds[i].info, cv.n_repeats),
                     p.num(prefix + "/auc"), p.num(block + "/f1"), p.num(block + "/balanced_accuracy"),
                     p.num(block + "/accuracy"), p.count(block + "/confusion/1/1"), p.count(prefix + "/n_hgg"),
                     p.count(block + "/confusion/0/0"), p.count(prefix + "/n_lgg"));
  }

  s += "\n**Pooled out-of-fold** (all test predictions of a repeat together; calibrated: each case at its own "
       "fold's threshold)\n\n";
  for (size_t j = 0; j < cv.pooled.size(); ++j) {
    const std::string prefix = fmt::format("/pooled/{}", j);
    s += fmt::format("- {}{} cases ({} HGG, {} LGG): AUC {} (95% CI {}–{}), Brier {}, ECE {}\n",
                     cv.n_repeats > 1 ? fmt::format("repeat {}: ", cv.pooled[j].repeat) : "", p.count(prefix + "/n"),
                     p.count(prefix + "/n_hgg"), p.count(prefix + "/n_lgg"), p.num(prefix + "/auc"),
                     p.num(prefix + "/auc_ci95/0"), p.num(prefix + "/auc_ci95/1"), p.num(prefix + "/brier"),
                     p.num(prefix + "/ece"));
    for (const auto& key : kThresholdKeys) {
      const std::string block = prefix + "/at_threshold/" + key;
      s += fmt::format("  - at {}: F1 {}, balanced accuracy {}, accuracy {}; {}\n",
                       key == kThresholdKeys[0] ? "the calibrated thresholds" : "0.5", p.num(block + "/f1"),
                       p.num(block + "/balanced_accuracy"), p.num(block + "/accuracy"), class_line(p, block, prefix));
    }
  }

  if (cv.n_repeats > 1) {
    s += fmt::format(
        "\n**Spread between {} repeats** (mean ± sample std over repeats; fold spread above)\n\n"
        "| Metric | Pooled per repeat | Fold mean per repeat |\n|---|---|---|\n",
        cv.n_repeats);
    for (const auto& name : kThresholdFreeMetrics)
      s += fmt::format("| {} | {} | {} |\n", metric_title(name), p.mean_std("/repeat_spread/pooled/" + name),
                       p.mean_std("/repeat_spread/fold_mean/" + name));
    for (const auto& name : kThresholdMetrics) {
      const std::string tail = "/at_threshold/calibrated/" + name;
      s += fmt::format("| {} (calibrated) | {} | {} |\n", metric_title(name),
                       p.mean_std("/repeat_spread/pooled" + tail), p.mean_std("/repeat_spread/fold_mean" + tail));
    }
  }
  return s + "\n";
}

std::string anomaly_section(Printer& p, const std::vector<Anomaly>& anomalies, const AnomalyRules& rules) {
  std::string s = "## 3. Anomalies\n\nRules (limits stated; applied to every fold):\n\n" + rules_text(rules) + "\n";
  if (anomalies.empty()) return s + "**No anomaly found.**\n\n";
  s += "**Found:**\n\n";
  for (const auto& [kind, where] : scopes_by_kind(anomalies)) {
    const std::string name(anomaly_name(kind));
    if (where.contains("CV")) {
      s += fmt::format("- **{}** in the CV\n", name);
      continue;
    }
    std::string list;
    for (const auto& w : where) list += (list.empty() ? "" : ", ") + w;
    s += fmt::format("- **{}** in {}/{} folds: {}\n", name, p.count("/anomaly_folds/" + name), p.count("/n_folds"),
                     list);
  }
  s += "\n| Where | Rule | Finding |\n|---|---|---|\n";
  for (const auto& a : anomalies) s += fmt::format("| {} | {} | {} |\n", a.scope, anomaly_name(a.kind), a.message);
  return s + "\n";
}

std::string recommendation_section(const std::vector<Anomaly>& anomalies, const RunSettings& settings,
                                   const CvEvaluation& cv) {
  std::string s = "## 4. Recommendations\n\n";
  const auto recommendations = recommendations_for(anomalies, settings, calibration_findings(anomalies, cv));
  if (recommendations.empty()) return s + "No anomaly to act on.\n\n";
  s += settings.config_read
           ? fmt::format(
                 "From the anomalies above and the run's resolved config ({}): advice that the config already "
                 "follows is left out, and a setting to change is named with its current value.\n\n",
                 settings.source)
           : fmt::format(
                 "The run's config is unknown ({}), so this advice cannot take its settings into account; "
                 "it knows only what fold.json states: the monitor and the threshold method.\n\n",
                 settings.source);
  for (size_t i = 0; i < recommendations.size(); ++i) {
    const Recommendation& r = recommendations[i];
    s += fmt::format("### {}. {} (because of: {})\n\n", i + 1, r.title, anomaly_name(r.kind));
    for (size_t k = 0; k < r.actions.size(); ++k) s += fmt::format("{}. {}\n", k + 1, r.actions[k]);
    s += "\n";
  }
  return s;
}

std::string value_text(double v) { return std::isnan(v) ? "n/a" : fmt::format("{:.10g}", v); }

std::string check_row(const Check& c) {
  return fmt::format("| {} | {} | {} | {} | {} |\n", c.scope, c.what,
                     c.reported_text.empty() ? value_text(c.reported) : c.reported_text, value_text(c.recomputed),
                     c.pass ? "PASS" : "**FAIL**");
}

// Pointers in document order: digit runs compare as numbers ("/folds/2" before "/folds/10").
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t i_end = i, j_end = j;
      while (i_end < a.size() && std::isdigit(static_cast<unsigned char>(a[i_end]))) ++i_end;
      while (j_end < b.size() && std::isdigit(static_cast<unsigned char>(b[j_end]))) ++j_end;
      const long x = std::stol(a.substr(i, i_end - i)), y = std::stol(b.substr(j, j_end - j));
      if (x != y) return x < y;
      i = i_end, j = j_end;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i, ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

// One group of checks: every row when small, else a count and the failing rows.
std::string check_group(const std::string& title, const std::vector<Check>& checks) {
  size_t failed = 0;
  for (const auto& c : checks) failed += !c.pass;
  std::string s =
      fmt::format("#### {} — {} numbers, {} PASS, {} FAIL\n\n", title, checks.size(), checks.size() - failed, failed);
  const bool list_all = checks.size() <= kListedChecksPerGroup;
  if (!list_all && failed == 0) return s + "All agree.\n\n";
  std::string rows;
  for (const auto& c : checks)
    if (list_all || !c.pass) rows += check_row(c);
  return s + "| Where | Number | Reported | Recomputed | Result |\n|---|---|---|---|---|\n" + rows + "\n";
}

std::string consistency_section(const std::vector<Check>& training, const std::vector<Check>& printed,
                                const std::vector<Check>& summary) {
  std::string s =
      "## 5. Consistency\n\n"
      "The fold files are read again and every number is recomputed from the predictions: confusion matrices "
      "by counting rows at each row's threshold column, AUC and its DeLong interval over all HGG–LGG pairs, "
      "rates from the counts, CV spreads from the recomputed fold values, the number of folds each anomaly rule "
      "fired in by counting the findings that cv_summary.json lists. A number passes when it agrees with "
      "its recomputation within half a unit of its last printed digit (AUDIT.md), 1e-9 (cv_summary.json) or "
      "1e-6 (files written by the training loop). Losses and attention diagnostics are copied from "
      "metrics.jsonl and cannot be recomputed from predictions; metrics.jsonl's rates are checked against its "
      "own confusion matrices and its best epoch against the validation predictions.\n\n";
  s += "### 5.1 Files written by the training loop\n\n";
  std::map<std::string, std::vector<Check>> groups;
  for (const auto& c : training) groups[c.group].push_back(c);
  for (const auto& [group, checks] : groups) s += check_group(group, checks);

  s += "### 5.2 Numbers printed in this report\n\n";
  size_t failed = 0;
  std::string rows;
  std::vector<Check> in_order = printed;
  std::stable_sort(in_order.begin(), in_order.end(),
                   [](const Check& a, const Check& b) { return natural_less(a.what, b.what); });
  for (const auto& c : in_order) {
    failed += !c.pass;
    rows += check_row(c);
  }
  s += fmt::format("{} numbers, {} PASS, {} FAIL.\n\n", printed.size(), printed.size() - failed, failed);
  if (failed > 0) {
    s += "Failing:\n\n| Where | Number | Reported | Recomputed | Result |\n|---|---|---|---|---|\n";
    for (const auto& c : printed)
      if (!c.pass) s += check_row(c);
    s += "\n";
  }
  s += "<details><summary>Every printed number (cv_summary.json pointer, as printed, recomputed)</summary>\n\n"
       "| Where | Number | Printed | Recomputed | Result |\n|---|---|---|---|---|\n" +
       rows + "\n</details>\n\n";
  s += "### 5.3 cv_summary.json (read back from disk)\n\n" + check_group("cv_summary.json", summary);
  return s;
}

// The cases a run left out (skipped_cases.txt of each input run directory, written under --on-bad-case skip),
// one "case: file: reason" line each.
std::vector<std::string> skipped_cases(const std::vector<fs::path>& inputs) {
  std::vector<std::string> lines;
  for (const fs::path& input : inputs) {
    if (!fs::exists(input / "skipped_cases.txt")) continue;
    std::istringstream text(read_text_file(input / "skipped_cases.txt"));
    for (std::string line; std::getline(text, line);)
      if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

// The title, the verdict, the consistency line right after it (a reader must know at once whether the
// verdict's numbers can be trusted), then the run's identification.
// What made the audited folds: every line of each input run's provenance.jsonl (one per process that worked on
// the run: its start, resumes, fold processes), in order.
nlohmann::json provenance_records(const std::vector<fs::path>& inputs) {
  nlohmann::json records = nlohmann::json::array();
  for (const fs::path& input : inputs) {
    if (!fs::exists(input / "provenance.jsonl")) continue;
    std::istringstream text(read_text_file(input / "provenance.jsonl"));
    for (std::string line; std::getline(text, line);)
      if (!line.empty()) records.push_back(nlohmann::json::parse(line));
  }
  return records;
}

// One line per distinct build and device among the records: "dsmil 0.6.0, commit f0f0f58 (with uncommitted
// changes), Release GNU 12.2.0, on NVIDIA H200 (CUDA runtime ..., cuDNN ...) — 3 processes".
std::string provenance_lines(const nlohmann::json& records) {
  if (records.empty()) return "- **Made by:** not recorded (a run of a dsmil older than provenance.jsonl)\n";
  std::map<std::string, int> builds;
  std::set<std::string> configs;
  for (const nlohmann::json& r : records) {
    const nlohmann::json& cuda = r.value("cuda", nlohmann::json());
    const std::string device =
        cuda.is_object() ? fmt::format("on {} (CUDA runtime {}, cuDNN {}, cuBLAS {})", cuda.value("gpu", "?"),
                                       cuda.value("runtime", "?"), cuda.value("cudnn", "?"), cuda.value("cublas", "?"))
                         : "on the CPU";
    const std::string dirty = r["dirty"].is_boolean() && r["dirty"].get<bool>() ? " (with uncommitted changes)" : "";
    ++builds[fmt::format("dsmil {}, commit {}{}, {} {}, {}", r.value("version", "?"),
                         r.value("commit", "?").substr(0, 12), dirty, r.value("build_type", "?"),
                         r.value("compiler", "?"), device)];
    configs.insert(r.value("config_sha256", "?"));
  }
  std::string s = "- **Made by** (provenance.jsonl; cv_summary.json has the command lines):\n";
  for (const auto& [build, processes] : builds)
    s += fmt::format("  - {}: {} process{}\n", build, processes, processes == 1 ? "" : "es");
  if (configs.size() > 1)
    s += fmt::format("  - ⚠️ {} different configs (by SHA-256) worked on these folds\n", configs.size());
  return s;
}

std::string header(const CvEvaluation& cv, const AuditOptions& options, const std::string& verdict, int checks,
                   int failed) {
  std::string inputs;
  for (const auto& in : options.inputs) inputs += fmt::format(" `{}`", in.string());
  std::string s = "# dsmil3d cross-validation audit\n\n" + verdict + "\n\n";
  if (failed > 0)
    s += fmt::format(
        "> ❌ **CONSISTENCY FAILURE: {} of {} reported numbers disagree with their recomputation "
        "from the predictions — see section 5. Do not use these numbers.**\n\n",
        failed, checks);
  else
    s += fmt::format(
        "> ✅ Consistency: all {} reported numbers agree with their recomputation from the "
        "predictions (section 5).\n\n",
        checks);
  if (cv.optimistic())
    s += fmt::format(
        "> ⚠️ **OPTIMISTIC RESULTS — protocol `{}`.** Checkpoints and thresholds were selected on the "
        "test folds (the seed's protocol). Every test metric below is biased upwards; rerun with the "
        "nested protocol for an unbiased estimate.\n\n",
        cv.protocol);
  s += fmt::format(
      "- **Inputs:**{}\n- **Protocol:** `{}`; {} fold(s){}\n"
      "- **Conventions:** HGG is the positive class (label 1); a case is predicted HGG when p(HGG) ≥ threshold. "
      "Every threshold metric of a fold is computed from that fold's predictions.csv test rows at one stated "
      "threshold: the fold's calibrated threshold (fold.json, chosen by its method on the inner validation "
      "split), and separately at 0.5, each labelled. AUC counts ties as half, its 95% CI is DeLong's. ECE uses "
      "10 equal-width bins of p(HGG). Std is the sample std (n−1).\n\n",
      inputs, cv.protocol, cv.folds.size(), cv.n_repeats > 1 ? fmt::format(", {} repeats", cv.n_repeats) : "");
  s += provenance_lines(provenance_records(options.inputs));
  const std::vector<std::string> skipped = skipped_cases(options.inputs);
  if (skipped.empty()) return s + "- **Skipped cases:** none\n\n";
  s += fmt::format("- **Skipped cases:** {} left out of the dataset (`--on-bad-case skip`), with their reasons:\n",
                   skipped.size());
  for (const std::string& line : skipped) s += fmt::format("  - {}\n", line);
  return s + "\n";
}

// Each plot shown in place (relative paths: the run directory stays movable), under a caption saying what
// it shows.
std::string plots_section(const std::vector<Plot>& plots, const fs::path& out_dir) {
  if (plots.empty()) return "";
  std::string s = "## 6. Plots\n\n";
  for (const auto& plot : plots) {
    const std::string rel = fs::relative(plot.path, out_dir).generic_string();
    s += fmt::format("### {}\n\n![{}]({})\n\n", plot.caption, rel, rel);
  }
  return s;
}

// A fold directory as cv_summary.json records it: relative to the output folder when inside it (the run
// stays movable), else absolute; `dsmil compare` finds the fold files again from it.
std::string relocatable(const std::string& dir, const fs::path& out_dir) {
  const fs::path absolute = fs::absolute(dir).lexically_normal();
  const fs::path relative = absolute.lexically_relative(fs::absolute(out_dir).lexically_normal());
  const bool inside = !relative.empty() && *relative.begin() != "..";
  return inside ? relative.generic_string() : absolute.string();
}

}  // namespace

AuditResult run_audit(const AuditOptions& options) {
  if (options.out_dir.empty()) throw Error("audit: no output directory given");
  const RunData run = load_runs(options.inputs);
  const CvEvaluation cv = evaluate(run);
  const std::vector<Anomaly> anomalies = find_anomalies(cv, options.rules);

  std::vector<std::string> inputs;
  for (const auto& in : options.inputs) inputs.push_back(in.string());
  json summary = summary_json(cv, inputs);
  for (auto& fold : summary["folds"]) fold["dir"] = relocatable(fold["dir"].get<std::string>(), options.out_dir);
  summary["anomalies"] = anomalies_json(anomalies);
  summary["anomaly_folds"] = anomaly_folds_json(anomalies);
  summary["skipped_cases"] = skipped_cases(options.inputs);
  summary["provenance"] = provenance_records(options.inputs);

  Printer printer(summary);
  const std::string verdict_text = verdict(printer, cv, anomalies);
  std::string body = "## 1. Results audit (per-fold summary)\n\n";
  for (size_t i = 0; i < cv.folds.size(); ++i) body += fold_section(printer, cv.folds[i], i, cv.n_repeats, anomalies);
  body += cv_section(printer, cv);
  body += anomaly_section(printer, anomalies, options.rules);
  body += recommendation_section(anomalies, read_run_settings(options.inputs, run), cv);

  fs::create_directories(options.out_dir);
  AuditResult result;
  result.audit_md = options.out_dir / "AUDIT.md";
  result.cv_summary_json = options.out_dir / "cv_summary.json";
  result.anomalies = static_cast<int>(anomalies.size());
  write_text_file(result.cv_summary_json, summary.dump(2) + "\n");

  const RunData fresh = load_runs(options.inputs);
  std::ifstream written_in(result.cv_summary_json);
  const json written = json::parse(written_in);
  RecomputedValues truth = recompute_values(fresh);
  truth.merge(recount_anomaly_folds(written));
  const std::vector<Check> training = check_training_files(fresh);
  const std::vector<Check> printed = check_printed(printer.printed(), truth);
  const std::vector<Check> in_summary = check_summary_json(written, truth);
  for (const auto* group : {&training, &printed, &in_summary})
    for (const auto& c : *group) {
      result.checks++;
      if (c.pass) continue;
      result.failed_checks++;
      result.failures.push_back(fmt::format("{}: {}{}: reported {}, recomputed {}", c.group,
                                            c.scope.empty() ? "" : c.scope + ": ", c.what, value_text(c.reported),
                                            value_text(c.recomputed)));
    }

  const std::vector<Plot> plots =
      options.write_plots ? write_cv_plots(run, cv, options.out_dir / "plots") : std::vector<Plot>{};
  write_text_file(result.audit_md, header(cv, options, verdict_text, result.checks, result.failed_checks) + body +
                                       consistency_section(training, printed, in_summary) +
                                       plots_section(plots, options.out_dir));
  summary["consistency"] = {{"checks", result.checks}, {"failed", result.failed_checks}, {"failures", result.failures}};
  write_text_file(result.cv_summary_json, summary.dump(2) + "\n");
  return result;
}

AuditResult write_cv_report(const fs::path& run_dir) {
  AuditOptions options;
  options.inputs = {run_dir};
  options.out_dir = run_dir;
  return run_audit(options);
}

}  // namespace dsmil::report
