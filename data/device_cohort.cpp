// Upload of a cohort's cases (fp16 image [4][D][H][W] + mask [D][H][W] each) into one block of device memory, and
// the batched bag gather x[B*n, S, H, W, 4] from it or from host memory through ops::gather_bags.
#include "data/device_cohort.h"

#include <fmt/format.h>

#include <functional>

#include "tensor/ops.h"

namespace dsmil::data {

namespace {

constexpr size_t kArrayAlignment = 256;  // every array starts on a 256-byte boundary (cudaMalloc's own)

size_t align_up(size_t bytes) { return (bytes + kArrayAlignment - 1) / kArrayAlignment * kArrayAlignment; }

void check_case(const CaseVolume& c, const GridShape& grid) {
  if (c.grid != grid)
    throw ShapeError(fmt::format("DeviceCohort: case {} has grid {}x{}x{}, the cohort {}x{}x{}", c.case_id,
                                 c.grid.depth, c.grid.height, c.grid.width, grid.depth, grid.height, grid.width));
  const auto voxels = static_cast<size_t>(grid.voxels());
  if (c.image.size() != kModalities * voxels || c.brain_mask.size() != voxels)
    throw ShapeError(fmt::format("DeviceCohort: case {} holds {} image and {} mask values, its grid needs {} and {}",
                                 c.case_id, c.image.size(), c.brain_mask.size(), kModalities * voxels, voxels));
}

// Bytes of one case's image and mask, each padded to the alignment.
std::pair<size_t, size_t> case_bytes(const GridShape& grid) {
  const auto voxels = static_cast<size_t>(grid.voxels());
  return {align_up(kModalities * voxels * sizeof(uint16_t)), align_up(voxels)};
}

std::span<const CaseVolume> checked_cases(std::span<const CaseVolume> cases) {
  if (cases.empty()) throw ShapeError("DeviceCohort: no cases to upload");
  for (const CaseVolume& c : cases) check_case(c, cases.front().grid);
  return cases;
}

device::DeviceMemory allocate(std::span<const CaseVolume> cases) {
  const GridShape& grid = cases.front().grid;
  const auto [image_bytes, mask_bytes] = case_bytes(grid);
  try {
    return device::DeviceMemory(cases.size() * (image_bytes + mask_bytes), device::MemorySource::dedicated);
  } catch (const DeviceError& e) {
    throw DeviceError(fmt::format("DeviceCohort: {} cases of grid {}x{}x{}: {}", cases.size(), grid.depth, grid.height,
                                  grid.width, e.what()));
  }
}

// A bag's volume (its case's image and mask in the memory of the gather's device) and the case's grid.
struct BagVolume {
  BagGather volume;
  GridShape grid;
};

Tensor gather(Device device, std::span<const int> case_indices, int cohort_size,
              const std::function<BagVolume(int case_index)>& volume_of, std::span<const std::vector<int>> starts,
              std::span<const BagAugmentation> augmentations, int instances_per_bag, int slab_depth, DType out) {
  const size_t bags = case_indices.size();
  if (bags == 0) throw ShapeError("gather_batch: no bags");
  if (starts.size() != bags || augmentations.size() != bags)
    throw ShapeError(fmt::format("gather_batch: {} cases, {} start lists and {} augmentations (one each per bag)", bags,
                                 starts.size(), augmentations.size()));
  const auto n = static_cast<size_t>(std::max(instances_per_bag, 0));
  std::vector<BagGather> jobs(bags);
  std::vector<int32_t> row_starts(bags * n, 0);  // the starts of padded rows are never read
  GridShape grid;
  for (size_t b = 0; b < bags; ++b) {
    const int index = case_indices[b];
    if (index < 0 || index >= cohort_size)
      throw ShapeError(fmt::format("gather_batch: bag {} names case {} of a cohort of {}", b, index, cohort_size));
    if (starts[b].size() > n)
      throw ShapeError(fmt::format("gather_batch: bag {} (case {}) has {} slabs, more than {} instances", b, index,
                                   starts[b].size(), n));
    const BagVolume v = volume_of(index);
    if (b == 0) grid = v.grid;
    if (v.grid != grid)
      throw ShapeError(fmt::format("gather_batch: bag {} (case {}) has grid {}x{}x{}, bag 0 {}x{}x{}", b, index,
                                   v.grid.depth, v.grid.height, v.grid.width, grid.depth, grid.height, grid.width));
    std::copy(starts[b].begin(), starts[b].end(), row_starts.begin() + static_cast<ptrdiff_t>(b * n));
    const BagAugmentation& a = augmentations[b];
    BagGather& job = jobs[b] = v.volume;
    job.instances = static_cast<int32_t>(starts[b].size());
    job.flip = a.flip;
    job.shift_y = a.shift_y;
    job.shift_x = a.shift_x;
    job.scale = a.scale;
    job.offset = a.offset;
  }
  const BagGatherGeometry geometry{grid.depth, grid.height, grid.width, instances_per_bag, slab_depth};
  return ops::gather_bags(device, jobs, row_starts, geometry, out);
}

}  // namespace

DeviceCohort::DeviceCohort(std::span<const CaseVolume> cases)
    : grid_(checked_cases(cases).front().grid), memory_(allocate(cases)) {
  const auto [image_bytes, mask_bytes] = case_bytes(grid_);
  const auto* base = static_cast<const uint8_t*>(memory_.data());
  cases_.reserve(cases.size());
  size_t offset = 0;
  for (const CaseVolume& c : cases) {
    memory_.upload(offset, c.image.data(), c.image.size_bytes());
    memory_.upload(offset + image_bytes, c.brain_mask.data(), c.brain_mask.size_bytes());
    cases_.push_back({c.case_id, reinterpret_cast<const uint16_t*>(base + offset), base + offset + image_bytes});
    offset += image_bytes + mask_bytes;
  }
}

Tensor gather_batch_on_device(const DeviceCohort& cohort, std::span<const int> case_indices,
                              std::span<const std::vector<int>> starts, std::span<const BagAugmentation> augmentations,
                              int instances_per_bag, int slab_depth, DType out) {
  const auto volume_of = [&](int index) { return BagVolume{{cohort.image(index), cohort.mask(index)}, cohort.grid()}; };
  return gather(Device::CUDA, case_indices, cohort.size(), volume_of, starts, augmentations, instances_per_bag,
                slab_depth, out);
}

Tensor gather_batch_on_host(std::span<const CaseVolume> cohort, std::span<const int> case_indices,
                            std::span<const std::vector<int>> starts, std::span<const BagAugmentation> augmentations,
                            int instances_per_bag, int slab_depth) {
  const auto volume_of = [&](int index) {
    const CaseVolume& c = cohort[index];
    return BagVolume{{c.image.data(), c.brain_mask.data()}, c.grid};
  };
  return gather(Device::CPU, case_indices, static_cast<int>(cohort.size()), volume_of, starts, augmentations,
                instances_per_bag, slab_depth, DType::F32);
}

}  // namespace dsmil::data
