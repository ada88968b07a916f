// Bags of preprocessed cases as model input (apps/train/batches.h): `all` sampling puts every slab position of
// each case in its bag, the bags as wide as the batch's longest, the rest masked.
#include "apps/train/batches.h"
#include "data/cases.h"
#include "data/cohort.h"
#include "tests/test_util.h"

using namespace dsmil;

TEST_CASE("all sampling: every slab position of each case, bags as wide as the longest, the rest masked") {
  const auto root = test::scratch("batches_cohort");
  data::write_small_cohort(root, 4, 3, {48, 48, 40});
  const data::Discovery found = data::discover_dataset(root.string(), data::BadCasePolicy::fail);
  data::PreprocessOptions options;
  options.params.grid = {20, 32, 32};
  const data::PreprocessedCohort cohort = data::preprocess_cohort(found.cases, options);
  const std::vector<int> cases{0, 1, 2, 3};
  app::BagSpec spec{3, 3, data::InstanceSampling::all, false, {}};
  const app::Batch batch = app::make_batch(cohort.cases, cases, {1, 2, 3, 4}, spec);
  size_t widest = 0;
  for (int c : cases) {
    const std::vector<int> positions = data::brain_slab_starts(cohort.cases[c].slice_has_brain, 3);
    CHECK(batch.starts[c] == positions);
    widest = std::max(widest, positions.size());
  }
  REQUIRE(widest > 3);
  REQUIRE(batch.mask.shape() == Shape{4, static_cast<int64_t>(widest)});
  for (int c : cases)
    for (size_t i = 0; i < widest; ++i) CHECK(batch.mask.i32()[c * widest + i] == (i < batch.starts[c].size() ? 1 : 0));
  CHECK(batch.x.shape() == Shape{static_cast<int64_t>(4 * widest), 3, 32, 32, 4});
}
