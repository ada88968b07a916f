// Batch assembly: per bag, instance positions from the sampler, then data::gather_bag into its rows.
#include "apps/train/batches.h"

#include <span>

#include <fmt/format.h>

namespace dsmil::app {

Batch make_batch(const std::vector<data::CaseVolume>& cohort, const std::vector<int>& case_indices,
                 const std::vector<uint64_t>& seeds, const BagSpec& spec) {
  const int64_t bags = static_cast<int64_t>(case_indices.size());
  if (bags == 0) throw Error("make_batch: no cases");
  const data::GridShape grid = cohort[case_indices[0]].grid;
  const int64_t n = spec.instances, s = spec.slab_depth;
  const int64_t instance_floats = s * grid.height * grid.width * 4;
  Batch batch;
  batch.x = Tensor::zeros({bags * n, s, grid.height, grid.width, 4});
  std::vector<int32_t> mask(bags * n, 0), target(bags);
  batch.cases = case_indices;
  for (int64_t b = 0; b < bags; ++b) {
    const data::CaseVolume& c = cohort[case_indices[b]];
    if (c.grid != grid) throw Error(fmt::format("case {}: grid differs from the rest of the batch", c.case_id));
    data::Rng rng(seeds[b]);
    const std::vector<int> positions = data::brain_slab_starts(c.slice_has_brain, spec.slab_depth);
    if (positions.empty()) throw Error(fmt::format("case {}: no slab of {} slices holds brain", c.case_id, s));
    std::vector<int> starts = data::sample_instances(positions, spec.instances, spec.sampling, rng);
    if (static_cast<int64_t>(starts.size()) > n) starts.resize(n);  // `all` yields every position
    const data::BagAugmentation aug =
        spec.augment ? data::draw_augmentation(spec.augment_params, rng()) : data::BagAugmentation{};
    data::gather_bag(c, starts, spec.slab_depth, aug,
                     std::span<float>(batch.x.f32() + b * n * instance_floats, starts.size() * instance_floats));
    for (size_t i = 0; i < starts.size(); ++i) mask[b * n + i] = 1;
    target[b] = c.label;
    batch.starts.push_back(std::move(starts));
  }
  batch.mask = Tensor::from_ints({bags, n}, mask);
  batch.target = Tensor::from_ints({bags}, target);
  return batch;
}

}  // namespace dsmil::app
