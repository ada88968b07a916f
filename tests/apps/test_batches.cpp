// Bags of preprocessed cases as model input (apps/train/batches.h): `all` sampling puts every slab position of
// each case in its bag, the bags as wide as the batch's longest, the rest masked; the note on cases whose training
// bags must be padded.
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

TEST_CASE("padded_bags_note names the cases that cannot fill a training bag, and nothing when all can") {
  const auto case_with_brain_slices = [](const std::string& id, std::vector<uint8_t> has_brain) {
    data::CaseVolume c;
    c.case_id = id;
    c.slice_has_brain = std::move(has_brain);
    return c;
  };
  // Slabs of 3 slices holding brain: 8 slices all brain -> 6 starts; brain in slices 3-4 only -> starts 1-4.
  const std::vector<data::CaseVolume> cases{case_with_brain_slices("full", std::vector<uint8_t>(8, 1)),
                                            case_with_brain_slices("narrow", {0, 0, 0, 1, 1, 0, 0, 0})};
  app::BagSpec spec{5, 3, data::InstanceSampling::stratified, false, {}};
  CHECK(app::padded_bags_note(cases, spec) ==
        "note: 1 of 2 cases have fewer slabs of 3 slices holding brain than the 5 instances of a training bag "
        "(fewest: 4, case narrow): their bags are padded with zero slabs, which the MIL head masks but which take "
        "part in the encoder's batch-norm statistics in training");
  spec.instances = 4;
  CHECK(app::padded_bags_note(cases, spec).empty());
  spec.instances = 7;
  CHECK(app::padded_bags_note(cases, spec).starts_with("note: 2 of 2 cases"));
  spec.sampling = data::InstanceSampling::all;
  CHECK(app::padded_bags_note(cases, spec).empty());
}
