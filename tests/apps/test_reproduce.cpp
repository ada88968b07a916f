// `dsmil cv` records its inputs by content (inputs.json) and `dsmil reproduce` trains a run's folds again from
// them: identical predictions on the CPU, on another thread count too, a refusal naming the case when a source file
// has changed, a refusal for a run without recorded inputs.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "apps/provenance.h"
#include "apps/report/run_dir.h"
#include "apps/train/config.h"
#include "apps/train/inputs.h"
#include "data/cases.h"
#include "data/cohort.h"
#include "data/nifti_io.h"
#include "data/preprocess.h"
#include "tests/apps/subprocess.h"
#include "tests/test_util.h"

using namespace dsmil;
namespace fs = std::filesystem;
using test::scratch;

namespace {

// The program's OpenMP threads (run.threads = 0, the tiny config's, leaves them to OMP_NUM_THREADS) while `run` runs.
template <typename F>
auto with_omp_threads(const char* threads, F run) {
  const char* outer = std::getenv("OMP_NUM_THREADS");
  const std::optional<std::string> before = outer ? std::optional<std::string>(outer) : std::nullopt;
  setenv("OMP_NUM_THREADS", threads, 1);
  auto result = run();
  if (before)
    setenv("OMP_NUM_THREADS", before->c_str(), 1);
  else
    unsetenv("OMP_NUM_THREADS");
  return result;
}

// A one-fold CV of the tiny config on one thread, two epochs, on a cohort of its own (the last test changes a file
// of it).
struct TinyRun {
  fs::path cohort, run_dir;
};

const TinyRun& tiny_run() {
  static const TinyRun run = [] {
    TinyRun r{scratch("reproduce_cohort"), {}};
    data::write_small_cohort(r.cohort, 24, 5);
    const fs::path out = scratch("reproduce_runs");
    const test::Finished cv = with_omp_threads("1", [&] {
      return test::run_program({DSMIL_BINARY, "cv", "--config", "tiny", "--data", r.cohort.string(), "--set",
                                "data.cache=" + scratch("reproduce_cache").string(), "--set", "train.epochs=2", "--set",
                                "train.min_epochs=2", "--set", "cv.folds=2", "--folds", "0", "--no-audit", "--out",
                                out.string()});
    });
    INFO(cv.err);
    REQUIRE(cv.status == 0);
    r.run_dir = fs::directory_iterator(out)->path();
    return r;
  }();
  return run;
}

nlohmann::json inputs_of(const fs::path& run_dir) {
  return nlohmann::json::parse(report::read_text_file(run_dir / "inputs.json"));
}

}  // namespace

TEST_CASE("inputs.json lists every case with the SHA-256 of its files and of its preprocessed arrays") {
  const TinyRun& run = tiny_run();
  const nlohmann::json inputs = inputs_of(run.run_dir);
  const data::Discovery found = data::discover_dataset(run.cohort, data::BadCasePolicy::fail);
  REQUIRE(inputs["cases"].size() == found.cases.size());
  CHECK(inputs["splits"]["seed"].get<int64_t>() == app::load_config(run.run_dir / "config.toml").seed);
  const data::PreprocessParams params{data::parse_grid(app::load_config(run.run_dir / "config.toml").grid)};
  CHECK(inputs["preprocess"]["grid"] == nlohmann::json({params.grid.depth, params.grid.height, params.grid.width}));
  for (size_t i = 0; i < found.cases.size(); ++i) {
    const data::CaseFiles& files = found.cases[i];
    const nlohmann::json& record = inputs["cases"][i];
    CAPTURE(files.case_id);
    REQUIRE(record["case_id"] == files.case_id);
    for (int m = 0; m < data::kModalities; ++m)
      CHECK(record["files"][std::string(data::kModalityNames[m])]["sha256"] ==
            app::sha256_file_hex(files.modalities[m]));
    // Recomputed without the cache: preprocessing the sources again gives the arrays the run trained on.
    CHECK(record["arrays_sha256"] == app::arrays_sha256(data::preprocess_case(files, params)));
  }
}

TEST_CASE(
    "reproduce of a one-fold CPU run made on one thread finds identical predictions on three, and refuses once a "
    "source file has changed") {
  const TinyRun& run = tiny_run();
  // Seen before the CPU products came in fixed tiles: "predictions differ (largest |dp(HGG)| 9.29e-09 ...); verdict:
  // NOT REPRODUCED" after two epochs of this kind of run.
  const test::Finished same = with_omp_threads("3", [&] {
    return test::run_program({DSMIL_BINARY, "reproduce", run.run_dir.string()});
  });
  INFO(same.out, same.err);
  CHECK(same.status == 0);
  CHECK(same.out.find("fold 0: predictions identical") != std::string::npos);
  CHECK(same.out.find("verdict: REPRODUCED") != std::string::npos);
  CHECK(report::read_text_file(run.run_dir / "REPRODUCE.md").find("**Verdict: REPRODUCED**") != std::string::npos);
  std::printf("[reproduce] %s", same.out.c_str());

  // One voxel of one case's T2 changed: the refusal names the case and the file, and nothing is trained.
  const data::CaseFiles changed = data::discover_dataset(run.cohort, data::BadCasePolicy::fail).cases[3];
  data::Image3D image = data::read_nifti(changed.modalities[3]);
  image.values[image.values.size() / 2] += 1.0f;
  data::NiftiWriteOptions write;
  write.spacing = image.spacing;
  write.voxel_to_world = image.voxel_to_world;
  data::write_nifti<float>(changed.modalities[3], image.dims, image.values, write);
  const size_t runs_before = std::distance(fs::directory_iterator(run.run_dir), fs::directory_iterator());
  const test::Finished refused = test::run_program({DSMIL_BINARY, "reproduce", run.run_dir.string()});
  INFO(refused.err);
  CHECK(refused.status == 1);
  CHECK(refused.err.find("case " + changed.case_id + ": t2 file " + changed.modalities[3].string()) !=
        std::string::npos);
  CHECK(std::distance(fs::directory_iterator(run.run_dir), fs::directory_iterator()) == runs_before);
  std::printf("[reproduce] refused: %s", refused.err.c_str());
}

TEST_CASE("reproduce refuses a run without inputs.json, and a call without a run directory is a usage error") {
  const fs::path old_run = scratch("run_without_inputs");
  fs::create_directories(old_run);
  fs::copy_file(app::find_config_file("tiny"), old_run / "config.toml");
  const test::Finished refused = test::run_program({DSMIL_BINARY, "reproduce", old_run.string()});
  INFO(refused.err);
  CHECK(refused.status == 1);
  CHECK(refused.err.find("no inputs.json there") != std::string::npos);
  CHECK(test::run_program({DSMIL_BINARY, "reproduce"}).status == 2);
}
