// Slab positions, instance samplers (random/stratified/fixed/all), epoch case orders
// (weighted/shuffle), and the gather of a bag [n][S][H][W][4] from a case [4][D][H][W] with augmentation.
#include "data/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "data/half.h"

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
  // then a uniform case of it. Equal to weights 1/count(class) per case.
  std::vector<int> by_class[2];
  for (int i = 0; i < n; ++i) {
    if (labels[i] != 0 && labels[i] != 1)
      throw Error(fmt::format("epoch_case_order: label {} is not 0 or 1", labels[i]));
    by_class[labels[i]].push_back(i);
  }
  const bool both = !by_class[0].empty() && !by_class[1].empty();
  for (int i = 0; i < n; ++i) {
    const int cls = both ? static_cast<int>(uniform_index(rng, 2)) : (by_class[0].empty() ? 1 : 0);
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

void gather_bag(const CaseVolume& c, std::span<const int> starts, int slab_depth, const BagAugmentation& augmentation,
                std::span<float> out) {
  const int H = c.grid.height, W = c.grid.width, D = c.grid.depth;
  const size_t slice = static_cast<size_t>(H) * W;
  const size_t expected = starts.size() * static_cast<size_t>(slab_depth) * slice * 4;
  if (out.size() != expected) {
    throw ShapeError(fmt::format("gather_bag {}: buffer of {} floats, need {} ({} x {} x {} x {} x 4)", c.case_id,
                                 out.size(), expected, starts.size(), slab_depth, H, W));
  }
  const auto& table = half_to_float_table();
  const size_t voxels = static_cast<size_t>(c.grid.voxels());
  float* dst = out.data();
  for (const int start : starts) {
    if (start < 0 || start + slab_depth > D) {
      throw ShapeError(
          fmt::format("gather_bag {}: slab [{}, {}) outside depth {}", c.case_id, start, start + slab_depth, D));
    }
    for (int z = start; z < start + slab_depth; ++z) {
      for (int y = 0; y < H; ++y) {
        const int sy = y - augmentation.shift_y;
        for (int x = 0; x < W; ++x, dst += 4) {
          const int u = x - augmentation.shift_x;
          const int sx = augmentation.flip ? W - 1 - u : u;
          if (sy < 0 || sy >= H || sx < 0 || sx >= W) {
            dst[0] = dst[1] = dst[2] = dst[3] = 0.0f;
            continue;
          }
          const size_t source = z * slice + static_cast<size_t>(sy) * W + sx;
          const bool brain = c.brain_mask[source] != 0;
          for (int ch = 0; ch < 4; ++ch) {
            dst[ch] =
                brain ? table[c.image[ch * voxels + source]] * augmentation.scale[ch] + augmentation.offset[ch] : 0.0f;
          }
        }
      }
    }
  }
}

}  // namespace dsmil::data
