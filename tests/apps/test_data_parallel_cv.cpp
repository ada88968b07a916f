// `cv` as one rank of a data-parallel job, on the CPU with ranks as threads (dist/thread_communicator.h):
// two ranks with synchronised batch norm train fold 0 as one process holding each whole step does (the
// same predictions within fp32 drift), and rank 0 alone names and writes the run directory.
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "apps/train/cv.h"
#include "data/cohort.h"
#include "dist/thread_communicator.h"
#include "tests/test_util.h"

using namespace dsmil;
namespace fs = std::filesystem;
using test::scratch;

namespace {

// p_hgg of every (case, split) row of the only run's fold_0/predictions.csv under `root`.
std::map<std::string, double> predictions_under(const fs::path& root) {
  std::vector<fs::path> runs;
  for (const fs::directory_entry& e : fs::directory_iterator(root)) runs.push_back(e.path());
  REQUIRE_MESSAGE(runs.size() == 1, root << " holds " << runs.size() << " run directories");
  std::ifstream in(runs.front() / "fold_0" / "predictions.csv");
  std::map<std::string, double> p;
  std::string line;
  std::getline(in, line);  // case_id,label,p_hgg,...
  while (std::getline(in, line)) {
    std::stringstream row(line);
    std::vector<std::string> cells;
    for (std::string cell; std::getline(row, cell, ',');) cells.push_back(cell);
    p[cells[0] + "/" + cells[6]] = std::stod(cells[2]);
  }
  return p;
}

}  // namespace

TEST_CASE("cv as 2 thread ranks with synchronised batch norm trains fold 0 as one process, rank 0 writing alone") {
  const fs::path cohort = scratch("cohort");
  data::write_small_cohort(cohort, 40, 5);
  app::RunConfig config = app::load_config(app::find_config_file("tiny"));
  config.data_root = cohort.string();
  config.cache_dir = scratch("cache").string();
  config.folds = 4;
  config.epochs = 2;
  config.min_epochs = 2;
  config.bags_per_step = 4;
  config.sync_batchnorm = true;
  // Without augmentation the two runs agree to ~2e-8; with tiny's augmentation on they differed by 2.7e-4 (seen
  // once, not yet explained: notes/DATA-PARALLEL.md). This test checks the ranks' arithmetic, so it runs without.
  config.augment = false;
  config.threads = 1;

  app::CvOptions one;
  one.runs_root = scratch("one");
  one.folds = {0};
  one.audit = false;
  app::run_cv(config, one);

  const int world = 2;
  auto group = std::make_shared<dist::ThreadGroup>(world);
  std::vector<std::thread> ranks;
  std::vector<std::string> errors(world);
  for (int r = 0; r < world; ++r)
    ranks.emplace_back([&, r] {
      try {
        dist::ThreadCommunicator comm(group, r);
        app::CvOptions options = one;
        options.runs_root = scratch("two");
        options.ranks = &comm;
        app::run_cv(config, options);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (std::thread& t : ranks) t.join();
  for (int r = 0; r < world; ++r) REQUIRE_MESSAGE(errors[r].empty(), "rank " << r << ": " << errors[r]);

  const std::map<std::string, double> single = predictions_under(scratch("one")),
                                      parallel = predictions_under(scratch("two"));
  REQUIRE(single.size() == parallel.size());
  std::vector<float> got;
  std::vector<double> expected;
  for (const auto& [key, p] : single) {
    REQUIRE(parallel.count(key) == 1);
    got.push_back(static_cast<float>(parallel.at(key)));
    expected.push_back(p);
  }
  // Two epochs of fp32 steps whose sums run in another order (two half batches, statistics combined in
  // double): the difference grows from ~1e-7 per step; 1e-4 bounds it at this size.
  const double tol = 1e-4;
  CHECK(test::max_rel_error("p_hgg, 2 ranks vs 1 process", got, expected, tol) <= tol);

  const fs::path run = fs::directory_iterator(scratch("two"))->path();
  std::ifstream metrics(run / "fold_0" / "metrics.jsonl");
  int epochs = 0;
  for (std::string line; std::getline(metrics, line); ++epochs) {
    const nlohmann::json record = nlohmann::json::parse(line);
    CHECK(record["data_parallel"]["ranks"] == world);
    CHECK(record["data_parallel"]["left_out_bags"] == 0);
    CHECK(record["data_parallel"]["buckets_started_in_backward"].get<int>() >= 1);
  }
  CHECK(epochs == 2);
}
