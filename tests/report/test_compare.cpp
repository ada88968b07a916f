// Tests of apps/report/compare: the before/after table of two crafted runs (deltas from the two
// summaries, anomaly counts, optimistic warning) and the in-memory summary of an unaudited run.
#include <doctest/doctest.h>

#include <fstream>
#include <random>

#include "apps/report/audit.h"
#include "apps/report/compare.h"
#include "run_fixture.h"
#include "base/error.h"

using namespace dsmil::report;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() / fmt::format("dsmil_compare_test_{:08x}{:08x}", rd(), rd());
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// Five healthy folds; with `collapse`, fold 2 ranks well but calls every case LGG.
void write_cv(const fs::path& run, std::mt19937& rng, bool collapse, const std::string& protocol) {
  for (int k = 0; k < 5; ++k) {
    fixture::FoldSpec f = fixture::healthy_fold(rng, k);
    f.protocol = protocol;
    if (collapse && k == 2)
      for (size_t i = 0; i < f.test_p.size(); ++i) f.test_p[i] = f.test_labels[i] == 1 ? 0.4 + 0.005 * i : 0.1;
    fixture::write_fold(run / fmt::format("fold_{}", k), f);
  }
}

}  // namespace

TEST_CASE("compare shows both runs' means, their delta, pooled values and anomaly counts") {
  TempDir tmp;
  std::mt19937 rng(std::random_device{}());
  const fs::path before = tmp.path / "seed_v1", after = tmp.path / "recommended_v2";
  write_cv(before, rng, true, "nested");
  write_cv(after, rng, false, "nested");
  REQUIRE(write_cv_report(before).consistent());
  REQUIRE(write_cv_report(after).consistent());

  const LoadedSummary a = load_cv_summary(before), b = load_cv_summary(after);
  CHECK(a.source == (before / "cv_summary.json").string());
  const std::string md = compare_markdown(a, b, "seed_v1", "recommended_v2");
  const auto mean = [](const LoadedSummary& s) {
    return s.summary["summary"]["at_threshold"]["calibrated"]["balanced_accuracy"]["mean"].get<double>();
  };
  const auto pooled = [](const LoadedSummary& s) {
    return s.summary["pooled"][0]["at_threshold"]["calibrated"]["balanced_accuracy"].get<double>();
  };
  REQUIRE(mean(b) > mean(a));
  const std::string row = fmt::format(
      "| Balanced accuracy | {:.4f} ± {:.4f} | {:.4f} ± {:.4f} | {:+.4f} (better) | {:.4f} | {:.4f} | {:+.4f} (better) "
      "|",
      mean(a), a.summary["summary"]["at_threshold"]["calibrated"]["balanced_accuracy"]["std"].get<double>(), mean(b),
      b.summary["summary"]["at_threshold"]["calibrated"]["balanced_accuracy"]["std"].get<double>(), mean(b) - mean(a),
      pooled(a), pooled(b), pooled(b) - pooled(a));
  CHECK_MESSAGE(md.find(row) != std::string::npos, row);
  CHECK(md.find("| class collapse | 1 | 0 |") != std::string::npos);
  CHECK(a.verified);
  CHECK(a.disagreements.empty());
  CHECK(a.verified_numbers > 100);
  CHECK(md.find("| Consistency | audit: all ") != std::string::npos);
  CHECK(md.find("re-verified now: ") != std::string::npos);
  CHECK(md.find("optimistic") == std::string::npos);
  CHECK(md.find("disagrees") == std::string::npos);
}

TEST_CASE("compare re-verifies a cv_summary.json against its fold files and flags an edited number") {
  TempDir tmp;
  std::mt19937 rng(std::random_device{}());
  const fs::path run = tmp.path / "edited", moved = tmp.path / "moved";
  write_cv(run, rng, false, "nested");
  REQUIRE(write_cv_report(run).consistent());
  // The run is movable: cv_summary.json names its folds relative to itself.
  fs::rename(run, moved);
  REQUIRE(load_cv_summary(moved).verified);

  nlohmann::json summary = load_cv_summary(moved).summary;
  summary["summary"]["at_threshold"]["calibrated"]["f1"]["mean"] = 0.7902;  // the seed's hand-made mean
  std::ofstream(moved / "cv_summary.json") << summary.dump(2);
  const LoadedSummary edited = load_cv_summary(moved);
  CHECK(edited.verified);
  REQUIRE(edited.disagreements.size() == 1);
  CHECK(edited.disagreements.front().find("/summary/at_threshold/calibrated/f1/mean") == 0);
  const std::string md = compare_markdown(edited, edited, "x", "y");
  CHECK(md.find("A's cv_summary.json disagrees with its fold files") != std::string::npos);
}

TEST_CASE("compare recomputes an unaudited run in memory and warns about an optimistic one") {
  TempDir tmp;
  std::mt19937 rng(std::random_device{}());
  const fs::path nested = tmp.path / "nested", optimistic = tmp.path / "optimistic";
  write_cv(nested, rng, false, "nested");
  write_cv(optimistic, rng, false, "select_on_test");
  const LoadedSummary unaudited = load_cv_summary(nested);
  CHECK(unaudited.source.find("recomputed from") == 0);
  CHECK_FALSE(fs::exists(nested / "cv_summary.json"));
  REQUIRE(write_cv_report(nested).consistent());
  const LoadedSummary audited = load_cv_summary(nested);
  CHECK(unaudited.summary["summary"]["auc"] == audited.summary["summary"]["auc"]);
  CHECK(unaudited.summary["pooled"] == audited.summary["pooled"]);

  const std::string md = compare_markdown(audited, load_cv_summary(optimistic), "nested", "optimistic");
  CHECK(md.find("B is optimistic") != std::string::npos);
  CHECK(md.find("| Protocol | nested | select_on_test |") != std::string::npos);
  CHECK(md.find("audit: not run; summary not re-verified") != std::string::npos);
  CHECK_THROWS_AS(load_cv_summary(tmp.path / "missing"), dsmil::FormatError);
}
