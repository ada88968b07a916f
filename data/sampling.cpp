// Slab positions, instance samplers (random/stratified/fixed/all), epoch case orders (weighted/shuffle) and the
// draw of a bag's augmentation.
#include "data/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

namespace dsmil::data {

std::vector<int> brain_slab_starts(std::span<const uint8_t> slice_has_brain, int slab_depth) {
  const int depth = static_cast<int>(slice_has_brain.size());
  std::vector<int> starts;
  if (slab_depth < 1 || slab_depth > depth) return starts;
  int brain_in_window = 0;
  for (int z = 0; z < slab_depth; ++z) brain_in_window += slice_has_brain[z] ? 1 : 0;
  for (int z = 0;; ++z) {
    if (brain_in_window > 0) starts.push_back(z);
    if (z + slab_depth >= depth) break;
    brain_in_window += (slice_has_brain[z + slab_depth] ? 1 : 0) - (slice_has_brain[z] ? 1 : 0);
  }
  return starts;
}

bool slab_holds_tumour(const CaseVolume& c, int start, int slab_depth) {
  for (int z = std::max(0, start); z < std::min(start + slab_depth, c.grid.depth); ++z) {
    if (c.slice_has_tumour[z]) return true;
  }
  return false;
}

std::vector<int> sample_instances(std::span<const int> positions, int n, InstanceSampling sampling, Rng& rng) {
  const int count = static_cast<int>(positions.size());
  if (sampling == InstanceSampling::all || n >= count) return {positions.begin(), positions.end()};
  std::vector<int> picked;
  if (n <= 0) return picked;
  switch (sampling) {
    case InstanceSampling::random: {
      std::vector<int> pool(positions.begin(), positions.end());
      for (int i = 0; i < n; ++i) {  // partial Fisher-Yates
        const auto j = i + static_cast<int>(uniform_index(rng, static_cast<uint64_t>(count - i)));
        std::swap(pool[i], pool[j]);
      }
      picked.assign(pool.begin(), pool.begin() + n);
      break;
    }
    case InstanceSampling::stratified: {
      const int first = positions.front();
      const int span = positions.back() - first + 1;
      for (int s = 0; s < n; ++s) {
        const int lo = first + static_cast<int>(static_cast<int64_t>(s) * span / n);
        const int hi = first + static_cast<int>(static_cast<int64_t>(s + 1) * span / n);
        const auto begin = std::lower_bound(positions.begin(), positions.end(), lo);
        const auto end = std::lower_bound(positions.begin(), positions.end(), hi);
        if (begin == end) continue;
        picked.push_back(*(begin + static_cast<int64_t>(uniform_index(rng, static_cast<uint64_t>(end - begin)))));
      }
      break;
    }
    case InstanceSampling::fixed: {
      for (int i = 0; i < n; ++i) {
        const double at = n == 1 ? (count - 1) / 2.0 : static_cast<double>(i) * (count - 1) / (n - 1);
        picked.push_back(positions[static_cast<size_t>(std::lround(at))]);
      }
      break;
    }
    case InstanceSampling::all:
      break;
  }
  std::sort(picked.begin(), picked.end());
  return picked;
}

std::vector<int> epoch_case_order(std::span<const int> labels, CaseSampling sampling, Rng& rng) {
  const int n = static_cast<int>(labels.size());
  std::vector<int> order(n);
  if (sampling == CaseSampling::shuffle) {
    std::iota(order.begin(), order.end(), 0);
    for (int i = n - 1; i > 0; --i) std::swap(order[i], order[uniform_index(rng, static_cast<uint64_t>(i) + 1)]);
    return order;
  }
  // Weighted: pick a class with probability proportional to (present classes each count once),
  // then a uniform case of it. Equal to weights 1/count(class) per case. Balanced: the second of each
  // pair takes the class the first did not.
  std::vector<int> by_class[2];
  for (int i = 0; i < n; ++i) {
    if (labels[i] != 0 && labels[i] != 1)
      throw Error(fmt::format("epoch_case_order: label {} is not 0 or 1", labels[i]));
    by_class[labels[i]].push_back(i);
  }
  const bool both = !by_class[0].empty() && !by_class[1].empty();
  for (int i = 0; i < n; ++i) {
    int cls = by_class[0].empty() ? 1 : 0;
    if (both)
      cls = sampling == CaseSampling::balanced && i % 2 == 1 ? 1 - labels[order[i - 1]]
                                                             : static_cast<int>(uniform_index(rng, 2));
    const auto& members = by_class[cls];
    order[i] = members[uniform_index(rng, members.size())];
  }
  return order;
}

BagAugmentation draw_augmentation(const AugmentParams& params, uint64_t seed) {
  BagAugmentation a;
  if (!params.enabled) return a;
  Rng rng(derive_seed(seed, {0xA06u}));
  a.flip = uniform01(rng) < params.flip_probability;
  const auto shift_range = static_cast<uint64_t>(2 * std::max(0, params.max_shift) + 1);
  a.shift_y = static_cast<int>(uniform_index(rng, shift_range)) - params.max_shift;
  a.shift_x = static_cast<int>(uniform_index(rng, shift_range)) - params.max_shift;
  for (int c = 0; c < 4; ++c) {
    a.scale[c] = static_cast<float>(uniform(rng, 1.0 - params.intensity_scale, 1.0 + params.intensity_scale));
    a.offset[c] = static_cast<float>(uniform(rng, -params.intensity_shift, params.intensity_shift));
  }
  return a;
}

}  // namespace dsmil::data
