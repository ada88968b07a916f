// Tests of the audit on crafted run directories: cv_summary.json against the test's own recomputation,
// anomaly rules on crafted histories, tampered numbers caught by the consistency section, repeats,
// merged fold directories, the optimistic protocol and malformed files.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "apps/report/audit.h"
#include "apps/report/consistency.h"
#include "apps/report/metrics.h"
#include "apps/report/run_dir.h"
#include "run_fixture.h"
#include "base/error.h"

using namespace dsmil::report;
using fixture::FoldSpec;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A fresh directory under the system temp folder, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() / fmt::format("dsmil_report_test_{:08x}{:08x}", rd(), rd());
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

void write_text(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

std::mt19937 fresh_rng() { return std::mt19937(std::random_device{}()); }

// Five healthy folds; folds 1 and 3 calibrate their threshold with Youden on the validation rows.
std::vector<FoldSpec> healthy_folds(std::mt19937& rng) {
  std::vector<FoldSpec> folds;
  for (int k = 0; k < 5; ++k) {
    FoldSpec f = fixture::healthy_fold(rng, k);
    if (k % 2 == 1) {
      f.threshold_method = "youden";
      f.threshold = choose_threshold(f.val_labels, f.val_p, ThresholdMethod::youden);
    }
    folds.push_back(f);
  }
  return folds;
}

void write_run(const fs::path& run, const std::vector<FoldSpec>& folds) {
  for (const auto& f : folds)
    fixture::write_fold(f.repeat >= 0 ? run / fmt::format("repeat_{}", f.repeat) / fmt::format("fold_{}", f.fold)
                                      : run / fmt::format("fold_{}", f.fold),
                        f);
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double sample_std_of(const std::vector<double>& v) {
  const double m = mean_of(v);
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return std::sqrt(ss / static_cast<double>(v.size() - 1));
}

std::set<std::pair<std::string, std::string>> anomaly_set(const json& summary) {
  std::set<std::pair<std::string, std::string>> found;
  for (const auto& a : summary["anomalies"])
    found.insert({a["rule"].get<std::string>(), a["scope"].get<std::string>()});
  return found;
}

bool any_failure_mentions(const AuditResult& r, const std::string& text) {
  return std::any_of(r.failures.begin(), r.failures.end(),
                     [&](const std::string& f) { return f.find(text) != std::string::npos; });
}

// Five folds, four of them sick the seed's ways (fold 0 and fold 4 healthy).
std::vector<FoldSpec> seedlike_folds(std::mt19937& rng) {
  std::vector<FoldSpec> folds;
  for (int k = 0; k < 5; ++k) folds.push_back(fixture::healthy_fold(rng, k));

  // Fold 1, like the seed's fold 4: a perfect ranking but every HGG score below 0.5.
  std::uniform_real_distribution<double> low_hgg(0.3, 0.45), lgg(0.02, 0.2);
  for (size_t i = 0; i < folds[1].test_p.size(); ++i)
    folds[1].test_p[i] = folds[1].test_labels[i] == 1 ? low_hgg(rng) : lgg(rng);
  // Fold 2: the validation loss bottoms out at epoch 4 and climbs while the training loss keeps falling.
  for (int e = 0; e < 10; ++e) {
    auto& s = folds[2].epochs[static_cast<size_t>(e)];
    s.train_loss = 0.6 - 0.04 * e;
    s.val_loss = e < 4 ? 0.7 - 0.075 * e : 0.475 + 0.03 * (e - 3);
  }
  // Fold 3: attention concentrated on one instance in the last epochs, and training bags never ranked
  // better than 0.62 (the 2026-11-25 H100 runs' failure: the model had not begun to learn).
  for (size_t e = 5; e < 10; ++e) folds[3].epochs[e].top1 = 0.95, folds[3].epochs[e].neff = 1.1;
  for (size_t e = 0; e < 10; ++e) folds[3].epochs[e].train_auc = 0.5 + 0.012 * static_cast<double>(e);
  return folds;
}

// The paragraph after the title: AUDIT.md's verdict.
std::string first_paragraph(const std::string& md) {
  const size_t start = md.find("\n\n") + 2;
  return md.substr(start, md.find("\n\n", start) - start);
}

// Writes and audits a run and returns its AUDIT.md, having checked that every number agrees with its
// recomputation and that the document opens with the verdict, the consistency line right after it.
std::string audited_md(const fs::path& run, const std::vector<FoldSpec>& folds) {
  write_run(run, folds);
  const AuditResult result = write_cv_report(run);
  for (const auto& f : result.failures) MESSAGE(f);
  CHECK(result.consistent());
  const std::string md = read_text(run / "AUDIT.md");
  const std::string verdict = first_paragraph(md);
  CHECK(verdict.rfind("**Verdict.** ", 0) == 0);
  CHECK(md.substr(md.find(verdict) + verdict.size()).rfind("\n\n> ✅ Consistency: all", 0) == 0);
  return md;
}

// The numbers of the recommendation headings ("### 3. Regularise …"), in document order; -1 for a heading
// that does not start with one.
std::vector<int> recommendation_numbers(const std::string& md) {
  const size_t begin = md.find("\n## 4. Recommendations"), end = md.find("\n## 5. ");
  std::vector<int> numbers;
  std::istringstream section(md.substr(begin, end - begin));
  for (std::string line; std::getline(section, line);) {
    if (line.rfind("### ", 0) != 0) continue;
    const size_t dot = line.find(". ");
    const std::string digits = line.substr(4, dot == std::string::npos ? 0 : dot - 4);
    const bool numeric = !digits.empty() && std::all_of(digits.begin(), digits.end(), ::isdigit);
    numbers.push_back(numeric ? std::stoi(digits) : -1);
  }
  return numbers;
}

// A resolved config.toml as the training loop writes it, reduced to the keys the advice depends on: the model and
// the focal loss of configs/recommended-v2, with settings it no longer ships (a weighted sampler, lr 1e-4, label
// smoothing 0.2, a fixed 0.5 threshold) so that the advice about them can be checked; `changes` ("key = value"
// lines of a [section]) replaces any of them.
std::string config_toml(const std::map<std::string, std::string>& changes = {}) {
  const std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>> sections{
      {"model",
       {{"drop_path", "0.1"},
        {"pooling", "\"topk\""},
        {"attention", "\"gated\""},
        {"feature_dropout", "0.6"},
        {"instance_dropout", "0.1"}}},
      {"loss",
       {{"label_smoothing", "0.2"},
        {"focal_gamma", "2.0"},
        {"class_weights", "\"balanced\""},
        {"entropy_weight", "0.0"}}},
      {"train",
       {{"epochs", "40"},
        {"patience", "10"},
        {"selection_train_auc", "0.75"},
        {"monitor", "\"min_class_recall\""},
        {"instances", "16"},
        {"instance_sampling", "\"stratified\""},
        {"case_sampling", "\"weighted\""},
        {"lr", "1e-4"},
        {"threshold", "\"0.5\""}}},
      {"cv", {{"inner_val", "0.15"}, {"repeats", "1"}}}};
  std::string text;
  for (const auto& [section, keys] : sections) {
    text += "[" + section + "]\n";
    for (const auto& [key, value] : keys) {
      const auto changed = changes.find(section + "." + key);
      text += key + " = " + (changed == changes.end() ? value : changed->second) + "\n";
    }
  }
  return text;
}

}  // namespace

TEST_CASE("a healthy CV: cv_summary.json equals an independent recomputation, no anomaly, all checks pass") {
  TempDir tmp;
  auto rng = fresh_rng();
  const auto folds = healthy_folds(rng);
  const fs::path run = tmp.path / "healthy_20260109_032250";
  write_run(run, folds);

  const AuditResult result = write_cv_report(run);
  for (const auto& f : result.failures) INFO(f);
  CHECK(result.consistent());
  CHECK(result.checks > 500);
  CHECK(result.anomalies == 0);
  CHECK(result.audit_md == run / "AUDIT.md");

  const json s = read_json(run / "cv_summary.json");
  CHECK(s["protocol"] == "nested");
  CHECK(s["optimistic"] == false);
  REQUIRE(s["folds"].size() == 5);
  std::vector<double> f1s, aucs;
  std::vector<int> pooled_y;
  std::vector<double> pooled_p;
  fixture::Counts pooled_cal;
  for (size_t i = 0; i < folds.size(); ++i) {
    const FoldSpec& f = folds[i];
    const json& fj = s["folds"][i];
    const auto c = fixture::count_at(f.test_labels, f.test_p, f.threshold);
    const json& cal = fj["at_threshold"]["calibrated"];
    CHECK(cal["confusion"] == json{{c.tn, c.fp}, {c.fn, c.tp}});
    CHECK(cal["accuracy"].get<double>() == doctest::Approx(double(c.tn + c.tp) / f.test_labels.size()));
    const double f1 = 2.0 * c.tp / (2.0 * c.tp + c.fp + c.fn);
    CHECK(cal["f1"].get<double>() == doctest::Approx(f1));
    CHECK(cal["threshold"].get<double>() == f.threshold);
    const double auc = fixture::pair_auc(f.test_labels, f.test_p);
    CHECK(fj["auc"].get<double>() == doctest::Approx(auc));
    CHECK(fj["n_test"] == f.test_labels.size());
    f1s.push_back(f1);
    aucs.push_back(auc);
    pooled_y.insert(pooled_y.end(), f.test_labels.begin(), f.test_labels.end());
    pooled_p.insert(pooled_p.end(), f.test_p.begin(), f.test_p.end());
    pooled_cal.tp += c.tp, pooled_cal.tn += c.tn, pooled_cal.fp += c.fp, pooled_cal.fn += c.fn;
  }
  const json& summary_f1 = s["summary"]["at_threshold"]["calibrated"]["f1"];
  CHECK(summary_f1["mean"].get<double>() == doctest::Approx(mean_of(f1s)));
  CHECK(summary_f1["n"] == 5);
  const json& summary_auc = s["summary"]["auc"];
  CHECK(summary_auc["mean"].get<double>() == doctest::Approx(mean_of(aucs)));
  CHECK(summary_auc["std"].get<double>() == doctest::Approx(sample_std_of(aucs)));
  CHECK(summary_auc["min"].get<double>() == *std::min_element(aucs.begin(), aucs.end()));
  CHECK(summary_auc["max"].get<double>() == *std::max_element(aucs.begin(), aucs.end()));
  REQUIRE(s["pooled"].size() == 1);
  CHECK(s["pooled"][0]["auc"].get<double>() == doctest::Approx(fixture::pair_auc(pooled_y, pooled_p)));
  CHECK(s["pooled"][0]["at_threshold"]["calibrated"]["confusion"] ==
        json{{pooled_cal.tn, pooled_cal.fp}, {pooled_cal.fn, pooled_cal.tp}});
  CHECK(s["pooled"][0]["n"] == pooled_y.size());
  CHECK(!s.contains("repeat_spread"));
  CHECK(s["consistency"]["failed"] == 0);

  const std::string md = read_text(run / "AUDIT.md");
  for (const char* section :
       {"## 1. Results audit", "## 2. Cross-validation summary", "## 3. Anomalies", "## 4. Recommendations",
        "## 5. Consistency", "No anomaly found", "HGG 9/9 correct (100.0%, 95% CI 70.1%–100.0%)",
        "LGG 5/5 correct (100.0%, 95% CI 56.6%–100.0%)", "Consistency: all"})
    CHECK_MESSAGE(md.find(section) != std::string::npos, section);
  CHECK(first_paragraph(md).find("better than chance, and at its calibrated thresholds it classifies every test case "
                                 "correctly.") != std::string::npos);
  CHECK(md.find("OPTIMISTIC") == std::string::npos);
  CHECK(md.find("FAIL**") == std::string::npos);
  CHECK(md.find("**Skipped cases:** none") != std::string::npos);
  CHECK(s["skipped_cases"] == json::array());
  for (const char* plot :
       {"roc.svg", "reliability.svg", "curves_fold_0.svg", "attention_fold_4.svg", "attention_slabs_fold_2.svg"})
    CHECK_MESSAGE(fs::exists(run / "plots" / plot), plot);
}

TEST_CASE("what made the run (provenance.jsonl) is in AUDIT.md and cv_summary.json, and two configs are flagged") {
  TempDir tmp;
  auto rng = fresh_rng();
  const fs::path run = tmp.path / "traced_20260109_032250";
  write_run(run, healthy_folds(rng));
  const json start = {
      {"version", "0.6.0"},
      {"commit", "0123456789abcdef0123"},
      {"dirty", false},
      {"build_type", "Release"},
      {"compiler", "GNU 12.2.0"},
      {"config_sha256", "aa"},
      {"cuda", {{"gpu", "NVIDIA H200"}, {"runtime", "13.0"}, {"cudnn", "9.19.0"}, {"cublas", "13.1.0"}}},
      {"command_line", {"dsmil", "cv"}}};
  json resume = start;
  resume["config_sha256"] = "bb";
  std::ofstream(run / "provenance.jsonl") << start.dump() << "\n" << resume.dump() << "\n";
  REQUIRE(write_cv_report(run).consistent());
  CHECK(read_json(run / "cv_summary.json")["provenance"] == json::array({start, resume}));
  const std::string md = read_text(run / "AUDIT.md");
  CHECK(
      md.find("dsmil 0.6.0, commit 0123456789ab, Release GNU 12.2.0, on NVIDIA H200 (CUDA runtime 13.0, cuDNN 9.19.0, "
              "cuBLAS 13.1.0): 2 processes") != std::string::npos);
  CHECK(md.find("2 different configs") != std::string::npos);
}

TEST_CASE("cases the run skipped as bad are listed in AUDIT.md and cv_summary.json with their reasons") {
  TempDir tmp;
  auto rng = fresh_rng();
  const fs::path run = tmp.path / "skipping_20260109_032250";
  write_run(run, healthy_folds(rng));
  const std::string reason = "case Brats18_X: Brats18_X_t1ce.nii.gz: non-finite values (NaN/inf) in 12 voxels";
  std::ofstream(run / "skipped_cases.txt") << reason << "\n";
  REQUIRE(write_cv_report(run).consistent());
  CHECK(read_json(run / "cv_summary.json")["skipped_cases"] == json::array({reason}));
  const std::string md = read_text(run / "AUDIT.md");
  CHECK(md.find("**Skipped cases:** 1 left out") != std::string::npos);
  CHECK(md.find(reason) != std::string::npos);
}

TEST_CASE("seed-like failures fire their rules and healthy folds stay clean") {
  TempDir tmp;
  auto rng = fresh_rng();
  const std::vector<FoldSpec> folds = seedlike_folds(rng);

  const fs::path run = tmp.path / "seedlike";
  write_run(run, folds);
  const AuditResult result = write_cv_report(run);
  for (const auto& f : result.failures) INFO(f);
  CHECK(result.consistent());

  const json s = read_json(run / "cv_summary.json");
  const auto found = anomaly_set(s);
  using P = std::pair<std::string, std::string>;
  CHECK(found.contains(P{"class collapse", "fold 1"}));
  CHECK(found.contains(P{"high AUC with low F1", "fold 1"}));
  CHECK(found.contains(P{"overfitting", "fold 2"}));
  CHECK(found.contains(P{"attention collapse", "fold 3"}));
  CHECK(found.contains(P{"no learning", "fold 3"}));
  CHECK(s["folds"][3]["stability"]["train_auc_max"].get<double>() == doctest::Approx(0.608));
  CHECK(s["folds"][3]["stability"]["train_auc_max_epoch"].get<int>() == 10);
  CHECK(found.contains(P{"fold spread", "CV"}));
  // Fold 1's HGG scores near 0.37 are also badly calibrated; no other fold is.
  CHECK(found.contains(P{"miscalibration", "fold 1"}));
  for (const auto& [rule, scope] : found) {
    INFO(rule << " in " << scope);
    CHECK(scope != "fold 0");
    CHECK(scope != "fold 4");
    CHECK((rule != "miscalibration" || scope == "fold 1"));
  }
  // Fold 2's overfitting fires both ways: the final gap (0.655 − 0.24) and the rise from the minimum.
  int overfitting_messages = 0;
  for (const auto& a : s["anomalies"]) overfitting_messages += a["rule"] == "overfitting";
  CHECK(overfitting_messages == 2);

  const json& collapsed = s["folds"][1]["at_threshold"]["calibrated"];
  CHECK(collapsed["confusion"] == json{{5, 0}, {9, 0}});
  CHECK(collapsed["accuracy"].get<double>() == doctest::Approx(5.0 / 14));
  CHECK(s["folds"][1]["auc"].get<double>() == 1.0);

  const std::string md = read_text(run / "AUDIT.md");
  CHECK(md.find("HGG 0/9 correct (0.0%, 95% CI 0.0%–29.9%)") != std::string::npos);
  CHECK(md.find("all 14 predictions are LGG") != std::string::npos);
  CHECK(md.find("### 1. Fix the class collapse") != std::string::npos);
  CHECK(md.find("### 3. Fix the decision threshold") != std::string::npos);
  CHECK(md.find("### 5. Regularise") != std::string::npos);
  CHECK(md.find("### 6. Keep attention spread") != std::string::npos);
  CHECK(md.find("class collapse** in 1/5 folds: fold 1") != std::string::npos);
}

TEST_CASE("concentrated attention is a collapse unless segmentations show it on the tumour") {
  TempDir tmp;
  auto rng = fresh_rng();
  std::vector<FoldSpec> folds = healthy_folds(rng);
  // Every fold's attention sits on about one instance in its last epochs; fold 1's on slabs holding tumour, fold
  // 2's mostly elsewhere, fold 0 without segmentations.
  for (FoldSpec& f : folds)
    for (size_t e = 5; e < f.epochs.size(); ++e) f.epochs[e].top1 = 0.95, f.epochs[e].neff = 1.1;
  for (size_t e = 0; e < folds[1].epochs.size(); ++e)
    folds[1].epochs[e].tumour_mass = 0.92, folds[1].epochs[e].tumour_slab_share = 0.4;
  for (size_t e = 0; e < folds[2].epochs.size(); ++e)
    folds[2].epochs[e].tumour_mass = 0.35, folds[2].epochs[e].tumour_slab_share = 0.4;
  const fs::path run = tmp.path / "concentrated";
  const std::string md = audited_md(run, folds);

  const json s = read_json(run / "cv_summary.json");
  const auto found = anomaly_set(s);
  using P = std::pair<std::string, std::string>;
  CHECK(found.contains(P{"attention collapse", "fold 0"}));
  CHECK_FALSE(found.contains(P{"attention collapse", "fold 1"}));
  CHECK(found.contains(P{"attention collapse", "fold 2"}));
  CHECK(s["folds"][1]["attention_last_epochs"]["tumour_mass"].get<double>() == doctest::Approx(0.92));
  CHECK(s["folds"][1]["attention_last_epochs"]["tumour_slab_share"].get<double>() == doctest::Approx(0.4));
  CHECK(s["folds"][0]["attention_last_epochs"]["tumour_mass"].is_null());
  CHECK(md.find("effective instances 1.10, entropy / log n 0.800; 0.920 of the weight on slabs holding tumour (0.400 "
                "under uniform attention)") != std::string::npos);
  CHECK(md.find("normalised entropy 0.800; 0.350 of the weight on slabs holding tumour (0.400 under uniform "
                "attention)") != std::string::npos);
  CHECK(md.find("unless tumour segmentations show at least 0.80 of the attention weight") != std::string::npos);
}

TEST_CASE("miscalibration is described by its calibration slope and shift, and the advice follows their direction") {
  TempDir tmp;
  auto rng = fresh_rng();
  std::vector<FoldSpec> folds = healthy_folds(rng);
  // Two levels of p(HGG) per fold, ten cases each, so that the logistic recalibration fits the observed HGG rates
  // exactly: slope = (logit(rate_hi) - logit(rate_lo)) / (logit(p_hi) - logit(p_lo)).
  const auto two_levels = [](FoldSpec& f, double p_lo, int hgg_lo, double p_hi, int hgg_hi) {
    f.test_labels.clear();
    f.test_p.clear();
    for (const auto [p, hgg] : {std::pair{p_lo, hgg_lo}, std::pair{p_hi, hgg_hi}})
      for (int i = 0; i < 10; ++i) {
        f.test_labels.push_back(i < hgg ? 1 : 0);
        f.test_p.push_back(p);
      }
  };
  const auto logit = [](double p) { return std::log(p / (1.0 - p)); };
  two_levels(folds[0], 0.4, 1, 0.6, 9);    // timid: slope 2 logit(0.9) / (2 logit(0.6)) = 5.42
  two_levels(folds[1], 0.05, 3, 0.95, 7);  // too extreme: slope logit(0.7) / logit(0.95) = 0.29
  two_levels(folds[2], 0.2, 5, 0.5, 8);    // shifted: slope 1, intercept logit(0.8), mean p 0.35 against 0.65
  const fs::path run = tmp.path / "calibration";
  const std::string md = audited_md(run, folds);

  const json s = read_json(run / "cv_summary.json");
  CHECK(s["folds"][0]["calibration"]["slope"].get<double>() == doctest::Approx(logit(0.9) / logit(0.6)));
  CHECK(s["folds"][1]["calibration"]["slope"].get<double>() == doctest::Approx(logit(0.7) / logit(0.95)));
  CHECK(s["folds"][2]["calibration"]["slope"].get<double>() == doctest::Approx(1.0));
  CHECK(s["folds"][2]["calibration"]["intercept"].get<double>() == doctest::Approx(logit(0.8)));
  CHECK(s["folds"][2]["calibration"]["mean_p_hgg"].get<double>() == doctest::Approx(0.35));
  CHECK(s["folds"][2]["calibration"]["hgg_share"].get<double>() == doctest::Approx(0.65));
  CHECK(md.find("calibration slope 5.42, intercept 0.00: under-confident") != std::string::npos);
  CHECK(md.find("calibration slope 0.29, intercept 0.00: over-confident") != std::string::npos);
  CHECK(md.find("mean p(HGG) 0.350 against an HGG share of 0.650; calibration slope 1.00, intercept 1.39: neither") !=
        std::string::npos);
  CHECK(md.find("In 1 of the 3 miscalibrated folds p(HGG) is under-confident (calibration slope above 1.25): label "
                "smoothing and focal loss pull p(HGG) further toward 0.5, so they are not the remedy.") !=
        std::string::npos);
  CHECK(md.find("In 1 of the 3 miscalibrated folds p(HGG) is over-confident (calibration slope below 0.8)") !=
        std::string::npos);
  CHECK(md.find("Mean p(HGG) lies 0.10 below the HGG share over these folds: a shift of the whole scale.") !=
        std::string::npos);
}

TEST_CASE("a tampered number written by the training loop is caught and fails the audit") {
  TempDir tmp;
  auto rng = fresh_rng();
  const fs::path run = tmp.path / "tampered";
  write_run(run, healthy_folds(rng));
  REQUIRE(write_cv_report(run).consistent());
  const fs::path fold0 = run / "fold_0";

  std::string expected_failure;
  SUBCASE("an accuracy in metrics.jsonl that its confusion matrix contradicts (the seed's fold 4)") {
    std::ifstream in(fold0 / "metrics.jsonl");
    std::string text, line;
    for (int n = 1; std::getline(in, line); ++n) {
      json j = json::parse(line);
      if (n == 3) j["val"]["accuracy"] = 0.9123;
      text += j.dump() + "\n";
    }
    in.close();
    write_text(fold0 / "metrics.jsonl", text);
    expected_failure = "epoch 3 val accuracy";
  }
  SUBCASE("a fold.json threshold that is not the one the predictions were cut at") {
    json j = read_json(fold0 / "fold.json");
    j["threshold"] = 0.4;
    write_text(fold0 / "fold.json", j.dump());
    expected_failure = "fold.json threshold";
  }
  SUBCASE("a fold.json monitor value that is not the best epoch's") {
    json j = read_json(fold0 / "fold.json");
    j["monitor_value"] = j["monitor_value"].get<double>() - 0.01;
    write_text(fold0 / "fold.json", j.dump());
    expected_failure = "monitor_value";
  }
  SUBCASE("a fold.json n_test that does not count the test rows") {
    json j = read_json(fold0 / "fold.json");
    j["n_test"] = j["n_test"].get<int>() + 1;
    write_text(fold0 / "fold.json", j.dump());
    expected_failure = "n_test";
  }
  SUBCASE("a pred_thr column that does not follow from p_hgg") {
    std::string text = read_text(fold0 / "predictions.csv");
    const size_t row = text.find("\ntest_f0_0,") + 1;
    const size_t end = text.find('\n', row);
    std::string line = text.substr(row, end - row);
    const size_t pred_thr_pos = line.find(",test,") - 1;  // pred_thr is the cell before split
    line[pred_thr_pos] = line[pred_thr_pos] == '0' ? '1' : '0';
    text.replace(row, end - row, line);
    write_text(fold0 / "predictions.csv", text);
    expected_failure = "pred_thr";
  }
  SUBCASE("validation predictions that the best epoch's record does not describe") {
    std::string text = read_text(fold0 / "predictions.csv");
    const size_t row = text.find("\nval_f0_0,") + 1;  // an LGG case with p < 0.5: now predicted HGG
    const size_t p_start = text.find(',', text.find(',', row) + 1) + 1;
    const size_t p_end = text.find(',', p_start);
    text.replace(p_start, p_end - p_start, "0.75");
    text.replace(text.find(',', p_start) + 1, 1, "1");  // keep pred_05 consistent with the new score
    write_text(fold0 / "predictions.csv", text);
    expected_failure = "metrics.jsonl best epoch";
  }

  const AuditResult result = write_cv_report(run);
  CHECK_FALSE(result.consistent());
  CHECK(result.failed_checks > 0);
  CHECK_MESSAGE(any_failure_mentions(result, expected_failure), expected_failure);
  CHECK(read_text(run / "AUDIT.md").find("CONSISTENCY FAILURE") != std::string::npos);
  CHECK(read_json(run / "cv_summary.json")["consistency"]["failed"].get<int>() == result.failed_checks);
}

TEST_CASE("printed and cv_summary.json numbers are compared with their recomputation") {
  TempDir tmp;
  auto rng = fresh_rng();
  const fs::path run = tmp.path / "ledger";
  const auto folds = healthy_folds(rng);
  write_run(run, folds);
  const RecomputedValues truth = recompute_values(load_runs({run}));
  const std::string pointer = "/folds/2/at_threshold/calibrated/accuracy";
  REQUIRE(truth.contains(pointer));
  const double right = std::round(truth.at(pointer) * 1e4) / 1e4;

  const double sensitivity = truth.at("/folds/2/at_threshold/calibrated/sensitivity");
  const auto checks = check_printed(
      {{pointer, "right", right, 4, 1.0},
       {pointer, "tampered", right + 0.0123, 4, 1.0},
       {"/folds/2/at_threshold/calibrated/sensitivity", "percent", std::round(1e6 * sensitivity) / 1e4, 4, 100.0},
       {"/folds/2/no_such_number", "unknown", 1.0, 4, 1.0}},
      truth);
  REQUIRE(checks.size() == 4);
  CHECK(checks[0].pass);
  CHECK_FALSE(checks[1].pass);
  CHECK(checks[2].pass);
  CHECK_FALSE(checks[3].pass);

  AuditOptions options{{run}, run, {}, false};
  REQUIRE(run_audit(options).consistent());
  json written = read_json(run / "cv_summary.json");
  CHECK(check_summary_json(written, truth).size() == truth.size());
  written["summary"]["at_threshold"]["calibrated"]["f1"]["std"] = 0.1000;  // the seed's habit
  size_t failed = 0;
  for (const auto& c : check_summary_json(written, truth)) failed += !c.pass;
  CHECK(failed == 1);
  CHECK_FALSE(fs::exists(run / "plots"));
}

TEST_CASE("a select_on_test run is marked optimistic and calibrated on its test rows") {
  TempDir tmp;
  auto rng = fresh_rng();
  auto folds = healthy_folds(rng);
  for (auto& f : folds) {
    f.protocol = "select_on_test";
    f.val_labels.clear();
    f.val_p.clear();
    if (f.threshold_method == "youden")
      f.threshold = choose_threshold(f.test_labels, f.test_p, ThresholdMethod::youden);
  }
  const fs::path run = tmp.path / "optimistic";
  write_run(run, folds);
  const AuditResult result = write_cv_report(run);
  for (const auto& f : result.failures) INFO(f);
  CHECK(result.consistent());
  const json s = read_json(run / "cv_summary.json");
  CHECK(s["optimistic"] == true);
  CHECK(anomaly_set(s).contains({"optimistic protocol", "CV"}));
  const std::string md = read_text(run / "AUDIT.md");
  CHECK(md.find("OPTIMISTIC RESULTS") < md.find("## 1."));
}

TEST_CASE("repeats give pooled metrics per repeat and their spread: fold directories of several runs merge") {
  TempDir tmp;
  auto rng = fresh_rng();
  std::vector<FoldSpec> folds;
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 3; ++k) {
      FoldSpec f = fixture::healthy_fold(rng, k);
      f.repeat = r;
      folds.push_back(f);
    }
  const fs::path run = tmp.path / "repeated";
  write_run(run, folds);
  // Each repeat draws its own splits, as `cv --repeats` writes them.
  for (int r = 0; r < 2; ++r)
    write_text(run / fmt::format("repeat_{}", r) / "splits.json", fmt::format("{{\"seed\": {}}}", 2026 + r));
  const AuditResult result = write_cv_report(run);
  for (const auto& f : result.failures) INFO(f);
  CHECK(result.consistent());
  const json s = read_json(run / "cv_summary.json");
  CHECK(s["n_repeats"] == 2);
  REQUIRE(s["pooled"].size() == 2);
  std::vector<double> pooled_auc;
  for (int r = 0; r < 2; ++r) {
    std::vector<int> y;
    std::vector<double> p;
    for (const auto& f : folds)
      if (f.repeat == r)
        y.insert(y.end(), f.test_labels.begin(), f.test_labels.end()),
            p.insert(p.end(), f.test_p.begin(), f.test_p.end());
    pooled_auc.push_back(fixture::pair_auc(y, p));
    CHECK(s["pooled"][r]["auc"].get<double>() == doctest::Approx(pooled_auc.back()));
  }
  CHECK(s["repeat_spread"]["pooled"]["auc"]["mean"].get<double>() == doctest::Approx(mean_of(pooled_auc)));
  CHECK(s["repeat_spread"]["pooled"]["auc"]["std"].get<double>() == doctest::Approx(sample_std_of(pooled_auc)));
  CHECK(s["folds"][3]["repeat"] == 1);
  CHECK(fs::exists(run / "plots" / "curves_r1_fold_2.svg"));
  const std::string md = read_text(run / "AUDIT.md");
  CHECK(md.find("Spread between 2 repeats") != std::string::npos);
  const std::string verdict = first_paragraph(md);
  CHECK(verdict.find("In repeat 0, the AUC") != std::string::npos);
  CHECK(verdict.find("In repeat 1, the AUC") != std::string::npos);

  // Folds trained apart: two in one run, one in another, audited together into a third folder.
  const fs::path run_a = tmp.path / "part_a", run_b = tmp.path / "part_b", merged = tmp.path / "merged";
  auto three = healthy_folds(rng);
  three.resize(3);
  write_run(run_a, {three[0], three[1]});
  write_run(run_b, {three[2]});
  AuditOptions options{{run_a, run_b / "fold_2"}, merged};
  const AuditResult merged_result = run_audit(options);
  CHECK(merged_result.consistent());
  CHECK(read_json(merged / "cv_summary.json")["n_folds"] == 3);
  CHECK_FALSE(fs::exists(run_a / "AUDIT.md"));

  options.inputs = {run_a, run_a / "fold_1"};
  CHECK_THROWS_AS(run_audit(options), dsmil::FormatError);

  // Folds of one repeat drawn from other splits are not one CV.
  write_text(run_a / "splits.json", "{\"seed\": 2026}");
  write_text(run_b / "splits.json", "{\"seed\": 2027}");
  options.inputs = {run_a, run_b / "fold_2"};
  CHECK_THROWS_WITH_AS(run_audit(options), doctest::Contains("come from runs with different splits"),
                       dsmil::FormatError);
}

TEST_CASE("malformed fold files give a FormatError naming the file and the reason") {
  TempDir tmp;
  auto rng = fresh_rng();
  const fs::path fold = tmp.path / "run" / "fold_0";
  fixture::write_fold(fold, fixture::healthy_fold(rng, 0));
  const auto message_of = [&] {
    try {
      load_runs({tmp.path / "run"});
    } catch (const dsmil::FormatError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };

  SUBCASE("missing field") {
    json j = read_json(fold / "fold.json");
    j.erase("best_epoch");
    write_text(fold / "fold.json", j.dump());
    const std::string m = message_of();
    CHECK(m.find("fold.json") != std::string::npos);
    CHECK(m.find("best_epoch") != std::string::npos);
  }
  SUBCASE("bad label") {
    std::string text = read_text(fold / "predictions.csv");
    text.replace(text.find(",0,") + 1, 1, "2");
    write_text(fold / "predictions.csv", text);
    const std::string m = message_of();
    CHECK(m.find("predictions.csv:") != std::string::npos);
    CHECK(m.find("label") != std::string::npos);
  }
  SUBCASE("a metrics line that is not JSON") {
    std::ofstream(fold / "metrics.jsonl", std::ios::app) << "{epoch: 11\n";
    const std::string m = message_of();
    CHECK(m.find("metrics.jsonl:11") != std::string::npos);
  }
  SUBCASE("not a run directory") { CHECK_THROWS_AS(load_runs({tmp.path}), dsmil::FormatError); }
}

TEST_CASE("files written with the format's writers read back equal and pass the audit") {
  TempDir tmp;
  auto rng = fresh_rng();
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const fs::path fold_dir = tmp.path / "run" / "fold_0";
  fs::create_directories(fold_dir);

  std::vector<int> val_y, test_y;
  std::vector<double> val_p, test_p;
  for (int i = 0; i < 24; ++i) {
    val_y.push_back(i % 3 != 0), val_p.push_back(std::clamp(0.35 * val_y.back() + 0.65 * u(rng), 0.0, 1.0));
    test_y.push_back(i % 4 != 0), test_p.push_back(std::clamp(0.35 * test_y.back() + 0.65 * u(rng), 0.0, 1.0));
  }
  const double threshold = choose_threshold(val_y, val_p, ThresholdMethod::max_f1);

  std::string lines;
  for (int epoch = 1; epoch <= 3; ++epoch) {
    json line{{"epoch", epoch}, {"lr", 1e-4}, {"tau", 1.0}, {"throughput_bags_per_s", 10.0}, {"epoch_time_s", 2.0}};
    line["train"] = split_record_json(test_y, test_p, 0.5);
    line["val"] = split_record_json(val_y, val_p, 0.45);
    lines += line.dump() + "\n";
  }
  write_text(fold_dir / "metrics.jsonl", lines);

  std::vector<PredictionRow> rows;
  for (size_t i = 0; i < test_y.size(); ++i)
    rows.push_back(prediction_row(fmt::format("case_{}", i), test_y[i], test_p[i], threshold, "test", "raw"));
  for (size_t i = 0; i < val_y.size(); ++i)
    rows.push_back(prediction_row(fmt::format("val_{}", i), val_y[i], val_p[i], threshold, "val", "raw"));
  write_predictions_csv(fold_dir / "predictions.csv", rows);
  write_attention_csv(fold_dir / "attention.csv", {{"val_0", 0, 12, 0.25, false}, {"val_0", 1, 40, 0.75, true}});

  FoldInfo info;
  info.fold = 0;
  info.repeat = -1;
  info.best_epoch = 2;
  info.chosen_model = "raw";
  info.monitor = "auc";
  info.monitor_value = auc(val_y, val_p);
  info.threshold_method = "max_f1";
  info.threshold = threshold;
  info.epochs_run = 3;
  info.protocol = "nested";
  info.n_train = 100;
  info.n_val = static_cast<int>(val_y.size());
  info.n_test = static_cast<int>(test_y.size());
  write_fold_json(fold_dir / "fold.json", info);

  const FoldData back = load_fold(fold_dir);
  CHECK(back.info.repeat == 0);
  CHECK(back.info.threshold == threshold);
  REQUIRE(back.predictions.size() == rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    CHECK(back.predictions[i].p_hgg == rows[i].p_hgg);  // exact round trip
    CHECK(back.predictions[i].pred_thr == (rows[i].p_hgg >= threshold));
  }
  REQUIRE(back.history.size() == 3);
  CHECK(back.history[1].val.confusion == confusion_at(val_y, val_p, 0.5));
  CHECK_FALSE(back.history[1].val_ema.has_value());
  CHECK_FALSE(back.history[1].attention.has_value());
  REQUIRE(back.attention.size() == 2);
  CHECK(back.attention[1].critical);

  const AuditResult result = write_cv_report(tmp.path / "run");
  for (const auto& f : result.failures) INFO(f);
  CHECK(result.consistent());
}

TEST_CASE("AUDIT.md opens with its verdict: a run at chance is not distinguishable from chance") {
  TempDir tmp;
  auto rng = fresh_rng();
  std::vector<FoldSpec> folds;
  for (int k = 0; k < 5; ++k) {
    FoldSpec f = fixture::healthy_fold(rng, k);
    // Every HGG score has an LGG twin: the AUC is 0.5 in each fold and pooled.
    f.test_labels.clear();
    f.test_p.clear();
    for (double p : {0.2, 0.35, 0.5, 0.65, 0.8}) {
      f.test_labels.insert(f.test_labels.end(), {0, 1});
      f.test_p.insert(f.test_p.end(), {p, p});
    }
    folds.push_back(f);
  }
  const std::string md = audited_md(tmp.path / "chance", folds);
  const std::string verdict = first_paragraph(md);
  INFO(verdict);
  CHECK(verdict.find("pooled over all 50 test cases (25 HGG, 25 LGG), is 0.5000 (95% confidence interval") !=
        std::string::npos);
  CHECK(verdict.find("**not distinguishable from chance**: the interval includes 0.5") != std::string::npos);
  CHECK(verdict.find("60.0% of HGG cases correctly (15 of 25") != std::string::npos);
  CHECK(verdict.find("40.0% of LGG cases (10 of 25") != std::string::npos);
  // Scores of 0.2 … 0.8 for a class mix of one half: ECE 0.18 in every fold.
  CHECK(verdict.find("miscalibration in 5 of 5 folds") != std::string::npos);
  CHECK(verdict.find("Bottom line: this model does not separate the grades better than chance.") != std::string::npos);
  // The verdict's fold count is one of the numbers the consistency section checks.
  CHECK(md.find("|  | /anomaly_folds/miscalibration | 5 | 5 | PASS |") != std::string::npos);
}

TEST_CASE("AUDIT.md opens with its verdict: a run that learned is distinguishable from chance, with its recalls") {
  TempDir tmp;
  auto rng = fresh_rng();
  auto folds = healthy_folds(rng);
  REQUIRE(folds[0].threshold == 0.5);
  // Two of fold 0's five LGG cases scored above its threshold: still ranked below every HGG case.
  for (size_t i = 0, moved = 0; moved < 2; ++i)
    if (folds[0].test_labels[i] == 0) folds[0].test_p[i] = 0.6, ++moved;
  const std::string verdict = first_paragraph(audited_md(tmp.path / "learned", folds));
  INFO(verdict);
  CHECK(verdict.find("pooled over all 70 test cases (45 HGG, 25 LGG), is 1.0000 (95% confidence interval "
                     "1.0000–1.0000): **distinguishable from chance**: the whole interval lies above 0.5") !=
        std::string::npos);
  CHECK(verdict.find("100.0% of HGG cases correctly (45 of 45") != std::string::npos);
  CHECK(verdict.find("92.0% of LGG cases (23 of 25") != std::string::npos);
  CHECK(verdict.find("Bottom line: the model separates the grades better than chance, but at its calibrated "
                     "thresholds it misses 2 of the 25 LGG cases.") != std::string::npos);
}

TEST_CASE("recommendations follow the run's config.toml and are numbered 1, 2, 3, …") {
  TempDir tmp;
  auto rng = fresh_rng();
  auto folds = seedlike_folds(rng);
  for (auto& f : folds) f.monitor = "min_class_recall";
  const fs::path run = tmp.path / "configured";
  write_run(run, folds);
  const auto has = [](const std::string& md, const std::string& text) { return md.find(text) != std::string::npos; };
  const std::vector<int> one_to_seven{1, 2, 3, 4, 5, 6, 7};  // class collapse … fold spread, one heading each

  SUBCASE("a config that already does what the catalogue advises is not told to do it") {
    write_text(run / "config.toml", config_toml());
    REQUIRE(write_cv_report(run).consistent());
    const std::string md = read_text(run / "AUDIT.md");
    CHECK(recommendation_numbers(md) == one_to_seven);
    CHECK(has(md, "From the anomalies above and the run's resolved config"));
    for (const char* followed :
         {"Balance the classes", "n 32 → 16", "smaller bags", "on `min_class_recall`", "Monitor `balanced_accuracy`",
          "focal loss with γ = 2", "feature dropout 0.6", "stochastic depth", "`gated` attention", "`topk` pooling",
          "instance dropout 0.1", "`stratified`", "Lower the learning rate"})
      CHECK_MESSAGE(!has(md, followed), followed);
    CHECK(has(md, "corrects the class balance twice"));
    CHECK(has(md,
              "The learning rate is already at or below the 1e-4 that trains the default model (now "
              "`train.lr = 0.0001`)"));
    CHECK(has(md, "a smaller patience (now `train.patience = 10`)"));
    CHECK(has(md,
              "Give every step both classes: `train.case_sampling = \"balanced\"` (now `train.case_sampling = "
              "\"weighted\"`)"));
  }
  SUBCASE("balanced steps are not advised to a run that takes them, and still count as a class-balancing sampler") {
    write_text(run / "config.toml", config_toml({{"train.case_sampling", "\"balanced\""}}));
    REQUIRE(write_cv_report(run).consistent());
    const std::string md = read_text(run / "AUDIT.md");
    CHECK(recommendation_numbers(md) == one_to_seven);
    CHECK_FALSE(has(md, "Give every step both classes"));
    CHECK(has(md, "corrects the class balance twice"));
  }
  SUBCASE("a setting the catalogue advises to change is named with its current value") {
    write_text(run / "config.toml", config_toml({{"train.instances", "32"},
                                                 {"train.lr", "3e-3"},
                                                 {"train.case_sampling", "\"shuffle\""},
                                                 {"loss.class_weights", "\"none\""},
                                                 {"model.feature_dropout", "0.0"}}));
    REQUIRE(write_cv_report(run).consistent());
    const std::string md = read_text(run / "AUDIT.md");
    CHECK(recommendation_numbers(md) == one_to_seven);
    CHECK(has(md, "smaller bags (`train.instances` 32 → 16)"));
    CHECK(has(md, "Lower the learning rate (now `train.lr = 0.003`)"));
    CHECK(has(md,
              "Balance the classes: the `weighted` sampler (now `train.case_sampling = \"shuffle\"`) or "
              "`balanced` class weights (now `loss.class_weights = \"none\"`)"));
    CHECK(has(md, "feature dropout 0.6 (now `model.feature_dropout = 0`)"));
  }
  SUBCASE("an unreadable config.toml counts as unknown, and the advice says why") {
    write_text(run / "config.toml", "[train]\nlr = [\n");
    REQUIRE(write_cv_report(run).consistent());
    const std::string md = read_text(run / "AUDIT.md");
    CHECK(has(md, "config.toml` could not be read: "));
    CHECK(has(md, "Balance the classes once"));
  }
  SUBCASE("without config.toml the advice says that it cannot know the settings") {
    REQUIRE(write_cv_report(run).consistent());
    const std::string md = read_text(run / "AUDIT.md");
    CHECK(recommendation_numbers(md) == one_to_seven);
    CHECK(has(md, "The run's config is unknown (there is no config.toml in"));
    CHECK(has(md, "Balance the classes once"));
    CHECK_FALSE(has(md, "on `min_class_recall`"));  // fold.json states the monitor
  }
}

TEST_CASE("AUDIT.md shows its plots in place, which name each fold's AUC, the bins' counts, the monitor and the lr") {
  TempDir tmp;
  auto rng = fresh_rng();
  const fs::path run = tmp.path / "plotted";
  write_run(run, healthy_folds(rng));
  REQUIRE(write_cv_report(run).consistent());
  const std::string md = read_text(run / "AUDIT.md");
  size_t plots = 0;
  for (const auto& entry : fs::directory_iterator(run / "plots")) {
    const std::string rel = "plots/" + entry.path().filename().string();
    CHECK_MESSAGE(md.find(fmt::format("![{0}]({0})", rel)) != std::string::npos, rel);
    ++plots;
  }
  CHECK(plots == 2 + 3 * 5);

  const std::string roc = read_text(run / "plots" / "roc.svg");
  for (int k = 0; k < 5; ++k) CHECK(roc.find(fmt::format(">fold {} (AUC 1.000)<", k)) != std::string::npos);
  const std::string reliability = read_text(run / "plots" / "reliability.svg");
  long binned = 0;
  for (size_t at = reliability.find(">n="); at != std::string::npos; at = reliability.find(">n=", at + 1))
    binned += std::stol(reliability.substr(at + 3));
  CHECK(binned == 70);  // every pooled test case in one bin
  const std::string curves = read_text(run / "plots" / "curves_fold_0.svg");
  CHECK(curves.find(">val auc (EMA)<") != std::string::npos);
  CHECK(curves.find("fold 0: learning rate") != std::string::npos);
}
