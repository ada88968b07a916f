// The synthetic cohort: byte-identical for a seed (any thread count), the requested label balance,
// valid BraTS-like content, files nifti_tool accepts, and a grade that whole-volume statistics and
// file sizes cannot read while the latent score can.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>

#include "data/cases.h"
#include "data/cohort.h"
#include "test_helpers.h"

namespace dsmil::data::test {

namespace {

std::vector<fs::path> files_under(const fs::path& root) {
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.is_regular_file()) files.push_back(fs::relative(e.path(), root));
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

TEST_CASE("cohort: the same seed writes byte-identical files whatever the thread count") {
  TempDir dir;
  CohortOptions options;
  options.cases = 5;
  options.dims = {48, 48, 40};
  options.seed = 17;
  options.out = dir / "a";
  options.threads = 1;
  write_cohort(options);
  options.out = dir / "b";
  options.threads = 2;
  write_cohort(options);
  options.out = dir / "c";
  options.seed = 18;
  write_cohort(options);
  const auto files = files_under(dir / "a");
  REQUIRE(files.size() == 5 * 5 + 1);
  CHECK(files == files_under(dir / "b"));
  int differing = 0;
  for (const auto& f : files) {
    CAPTURE(f);
    CHECK(read_bytes(dir / "a" / f) == read_bytes(dir / "b" / f));
    if (fs::exists(dir / "c" / f) && read_bytes(dir / "a" / f) != read_bytes(dir / "c" / f)) ++differing;
  }
  CHECK(differing > 0);  // another seed, other images
  // the gzip member header carries no modification time (bytes 4..7), so reruns match at any time
  const auto gz = read_bytes(dir / "a" / files.front());
  REQUIRE(gz.size() > 10);
  CHECK((gz[0] == '\x1f' && gz[1] == '\x8b' && gz[4] == 0 && gz[5] == 0 && gz[6] == 0 && gz[7] == 0));
}

TEST_CASE("cohort: label balance and BraTS layout and content") {
  TempDir dir;
  const auto truths = write_small_cohort(dir.path(), 40, 5);
  const int hgg =
      static_cast<int>(std::count_if(truths.begin(), truths.end(), [](const auto& t) { return t.label == 1; }));
  CHECK(hgg == 29);  // round(40 * 210 / 285)
  const Discovery found = discover_dataset(dir.path(), BadCasePolicy::fail);
  REQUIRE(found.cases.size() == 40);
  for (const CaseFiles& files : found.cases) {
    const auto truth =
        std::find_if(truths.begin(), truths.end(), [&](const auto& t) { return t.case_id == files.case_id; });
    REQUIRE(truth != truths.end());
    CHECK(truth->label == files.label);
    CHECK(truth->whole_tumour_ml > 0);
    CHECK(truth->tumour_slice_fraction > 0.05);
    CHECK(truth->tumour_slice_fraction < 0.6);  // the tumour is in a minority of slices
  }
  const CaseImages images = read_case_images(found.cases[0]);
  CHECK(images.modalities[0].dims == std::array<int64_t, 3>{64, 64, 48});
  CHECK(images.modalities[0].spacing == std::array<double, 3>{1, 1, 1});
  std::set<float> labels(images.seg->values.begin(), images.seg->values.end());
  for (float l : labels) CHECK((l == 0 || l == 1 || l == 2 || l == 4));
  CHECK(labels.count(2) == 1);
  for (int m = 0; m < kModalities; ++m) {
    for (size_t i = 0; i < images.seg->values.size(); ++i) {
      const float v = images.modalities[m].values[i];
      if (v != std::floor(v) || v < 0) FAIL("non-integer or negative intensity");
      if (images.seg->values[i] != 0 && v == 0) FAIL("tumour voxel outside the brain mask");
    }
  }
  std::ifstream truth_csv(dir / "truth.csv");
  std::string header;
  std::getline(truth_csv, header);
  CHECK(header == "case_id,label,grade_score,whole_tumour_ml,core_ml,enhancing_ml,tumour_slice_fraction");
}

TEST_CASE("cohort: nifti_tool accepts the files") {
  if (std::system("command -v nifti_tool > /dev/null 2>&1") != 0) {
    MESSAGE("nifti_tool not installed: check skipped");
    return;
  }
  TempDir dir;
  write_small_cohort(dir.path(), 2, 9, {40, 40, 32});
  for (const auto& f : files_under(dir.path())) {
    if (f.extension() != ".gz") continue;
    const fs::path report = dir / "report.txt";
    const std::string command = "nifti_tool -check_hdr -check_nim -infiles '" + (dir.path() / f).string() + "' > '" +
                                report.string() + "' 2>&1";
    CHECK(std::system(command.c_str()) == 0);
    const auto text = read_bytes(report);
    const std::string output(text.begin(), text.end());
    CAPTURE(output);
    CHECK(output.find("header IS GOOD") != std::string::npos);
    CHECK(output.find("nifti_image IS GOOD") != std::string::npos);
  }
}

TEST_CASE("cohort: the grade is not readable from whole-volume statistics or file sizes") {
  TempDir dir;
  write_small_cohort(dir.path(), 100, 23);
  const CueCheck check = check_trivial_cues(dir.path());
  MESSAGE("latent AUC " << check.latent_auc << ", intensity statistics AUC " << check.intensity_stats_auc
                        << ", file size AUC " << check.file_size_auc);
  CHECK(check.cases == 100);
  CHECK(check.latent_auc > 0.85);
  CHECK(check.intensity_stats_auc < check.latent_auc - 0.2);
  CHECK(check.file_size_auc < check.latent_auc - 0.2);
  CHECK(check.tumour_present_fraction == 1.0);
}

TEST_CASE("cohort: score_auc counts ties half") {
  CHECK(score_auc(std::vector<double>{0.1, 0.4, 0.35, 0.8}, std::vector<int>{0, 0, 1, 1}) == doctest::Approx(0.75));
  CHECK(score_auc(std::vector<double>{0.5, 0.5}, std::vector<int>{0, 1}) == doctest::Approx(0.5));
}

}  // namespace dsmil::data::test
