// Batch assembly: per bag, instance positions from the sampler and an augmentation, then one gather of all
// bags (data/device_cohort.h) on the host or from the cohort resident on the GPU.
#include "apps/train/batches.h"

#include <fmt/format.h>

#include "data/device_cohort.h"

namespace dsmil::app {

std::string padded_bags_note(const std::vector<data::CaseVolume>& cases, const BagSpec& spec) {
  if (spec.sampling == data::InstanceSampling::all) return "";
  int short_cases = 0;
  const data::CaseVolume* shortest = nullptr;
  size_t fewest = 0;
  for (const data::CaseVolume& c : cases) {
    const size_t positions = data::brain_slab_starts(c.slice_has_brain, spec.slab_depth).size();
    if (positions >= static_cast<size_t>(spec.instances)) continue;
    ++short_cases;
    if (!shortest || positions < fewest) {
      shortest = &c;
      fewest = positions;
    }
  }
  if (short_cases == 0) return "";
  return fmt::format(
      "note: {} of {} cases have fewer slabs of {} slices holding brain than the {} instances of a training bag "
      "(fewest: {}, case {}): their bags are padded with zero slabs, which the MIL head masks but which take part in "
      "the encoder's batch-norm statistics in training",
      short_cases, cases.size(), spec.slab_depth, spec.instances, fewest, shortest->case_id);
}

Batch make_batch(const std::vector<data::CaseVolume>& cohort, const std::vector<int>& case_indices,
                 const std::vector<uint64_t>& seeds, const BagSpec& spec, const GatherTarget& target) {
  const int64_t bags = static_cast<int64_t>(case_indices.size());
  if (bags == 0) throw Error("make_batch: no cases");
  const data::GridShape grid = cohort[case_indices[0]].grid;
  const int s = spec.slab_depth;
  Batch batch;
  std::vector<int32_t> target_labels(bags);
  std::vector<data::BagAugmentation> augmentation(bags);
  batch.cases = case_indices;
  // `all` takes every slab position: the bags are as wide as the batch's longest, shorter ones masked.
  int64_t n = spec.sampling == data::InstanceSampling::all ? 0 : spec.instances;
  for (int64_t b = 0; b < bags; ++b) {
    const data::CaseVolume& c = cohort[case_indices[b]];
    if (c.grid != grid) throw Error(fmt::format("case {}: grid differs from the rest of the batch", c.case_id));
    data::Rng rng(seeds[b]);
    const std::vector<int> positions = data::brain_slab_starts(c.slice_has_brain, spec.slab_depth);
    if (positions.empty()) throw Error(fmt::format("case {}: no slab of {} slices holds brain", c.case_id, s));
    std::vector<int> starts = data::sample_instances(positions, spec.instances, spec.sampling, rng);
    if (spec.augment) augmentation[b] = data::draw_augmentation(spec.augment_params, rng());
    n = std::max<int64_t>(n, static_cast<int64_t>(starts.size()));
    target_labels[b] = c.label;
    batch.starts.push_back(std::move(starts));
  }
  std::vector<int32_t> mask(bags * n, 0);
  for (int64_t b = 0; b < bags; ++b)
    for (size_t i = 0; i < batch.starts[b].size(); ++i) mask[b * n + i] = 1;
  batch.mask = Tensor::from_ints({bags, n}, mask);
  batch.target = Tensor::from_ints({bags}, target_labels);
  batch.x = target.resident
                ? data::gather_batch_on_device(*target.resident, case_indices, batch.starts, augmentation,
                                               static_cast<int>(n), s, target.dtype)
                : data::gather_batch_on_host(cohort, case_indices, batch.starts, augmentation, static_cast<int>(n), s);
  return batch;
}

}  // namespace dsmil::app
