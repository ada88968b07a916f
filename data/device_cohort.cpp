// Upload of a cohort's cases (fp16 image [4][D][H][W] + mask [D][H][W] each) into one device arena, and the
// batched bag gather x[B*n, S, H, W, 4] from it through kernels::gather_bags (one launch per batch).
#include "data/device_cohort.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstdio>

#include "kernels/gather_bag.h"
#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"
#include "tensor/cuda/runtime.h"

namespace dsmil::data {

namespace {

constexpr size_t kArrayAlignment = 256;  // every array starts on a 256-byte boundary (cudaMalloc's own)

size_t align_up(size_t bytes) { return (bytes + kArrayAlignment - 1) / kArrayAlignment * kArrayAlignment; }

double gib(size_t bytes) { return static_cast<double>(bytes) / (size_t{1} << 30); }

void check_case(const CaseVolume& c, const GridShape& grid) {
  if (c.grid != grid)
    throw ShapeError(fmt::format("DeviceCohort: case {} has grid {}x{}x{}, the cohort {}x{}x{}", c.case_id,
                                 c.grid.depth, c.grid.height, c.grid.width, grid.depth, grid.height, grid.width));
  const auto voxels = static_cast<size_t>(grid.voxels());
  if (c.image.size() != kModalities * voxels || c.brain_mask.size() != voxels)
    throw ShapeError(fmt::format("DeviceCohort: case {} holds {} image and {} mask values, its grid needs {} and {}",
                                 c.case_id, c.image.size(), c.brain_mask.size(), kModalities * voxels, voxels));
}

}  // namespace

void DeviceCohort::FreeDeviceMemory::operator()(void* memory) const noexcept {
  const cudaError_t status = cudaFree(memory);
  // At process exit the runtime may already be unloaded; there is nothing left to free then.
  if (status != cudaSuccess && status != cudaErrorCudartUnloading)
    std::fprintf(stderr, "dsmil: cudaFree of the device cohort failed: %s\n", cudaGetErrorString(status));
}

DeviceCohort::DeviceCohort(std::span<const CaseVolume> cases) {
  if (cases.empty()) throw ShapeError("DeviceCohort: no cases to upload");
  if (!cuda::device_available()) throw DeviceError("DeviceCohort: no usable CUDA device");
  grid_ = cases.front().grid;
  const auto voxels = static_cast<size_t>(grid_.voxels());
  const size_t image_bytes = align_up(kModalities * voxels * sizeof(uint16_t)), mask_bytes = align_up(voxels);
  for (const CaseVolume& c : cases) check_case(c, grid_);
  bytes_ = cases.size() * (image_bytes + mask_bytes);

  cuda::stream();  // starts the runtime on its device before memory is queried
  size_t free_bytes = 0, total_bytes = 0;
  DSMIL_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes), "DeviceCohort: cudaMemGetInfo");
  const auto short_of_memory = [&] {
    return DeviceError(fmt::format(
        "DeviceCohort: {} cases of grid {}x{}x{} need {} bytes ({:.2f} GiB) of device memory; {} bytes ({:.2f} GiB) "
        "are free of {:.2f} GiB (memory the tensor pool keeps for reuse does not count as free)",
        cases.size(), grid_.depth, grid_.height, grid_.width, bytes_, gib(bytes_), free_bytes, gib(free_bytes),
        gib(total_bytes)));
  };
  if (bytes_ > free_bytes) throw short_of_memory();
  void* arena = nullptr;
  const cudaError_t status = cudaMalloc(&arena, bytes_);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear it, so that a later, unrelated check does not report it
    throw short_of_memory();
  }
  DSMIL_CUDA_CHECK(status, fmt::format("DeviceCohort: cudaMalloc of {} bytes", bytes_));
  arena_.reset(arena);

  auto* next = static_cast<uint8_t*>(arena);
  cases_.reserve(cases.size());
  for (const CaseVolume& c : cases) {
    ResidentCase resident{c.case_id, reinterpret_cast<const uint16_t*>(next),
                          reinterpret_cast<const uint8_t*>(next + image_bytes)};
    cuda::copy_bytes(next, Device::CUDA, c.image.data(), Device::CPU, c.image.size_bytes());
    cuda::copy_bytes(next + image_bytes, Device::CUDA, c.brain_mask.data(), Device::CPU, c.brain_mask.size_bytes());
    next += image_bytes + mask_bytes;
    cases_.push_back(std::move(resident));
  }
}

Tensor gather_batch_on_device(const DeviceCohort& cohort, std::span<const int> case_indices,
                              std::span<const std::vector<int>> starts, std::span<const BagAugmentation> augmentations,
                              int instances_per_bag, int slab_depth, DType out) {
  const size_t bags = case_indices.size();
  const GridShape& grid = cohort.grid();
  if (starts.size() != bags || augmentations.size() != bags)
    throw ShapeError(
        fmt::format("gather_batch_on_device: {} cases, {} start lists and {} augmentations (one each per bag)", bags,
                    starts.size(), augmentations.size()));
  if (instances_per_bag < 1 || slab_depth < 1 || slab_depth > grid.depth)
    throw ShapeError(fmt::format("gather_batch_on_device: {} instances per bag of {} slices from depth {}",
                                 instances_per_bag, slab_depth, grid.depth));
  if (out != DType::F32 && out != DType::BF16)
    throw ShapeError(fmt::format("gather_batch_on_device: output dtype {} (expected f32 or bf16)", dtype_name(out)));

  const size_t n = static_cast<size_t>(instances_per_bag);
  std::vector<kernels::GatherBagJob> jobs(bags);
  std::vector<int32_t> row_starts(bags * n, 0);  // the starts of padded rows are never read
  for (size_t b = 0; b < bags; ++b) {
    const int index = case_indices[b];
    if (index < 0 || index >= cohort.size())
      throw ShapeError(
          fmt::format("gather_batch_on_device: bag {} names case {} of a cohort of {}", b, index, cohort.size()));
    if (starts[b].size() > n)
      throw ShapeError(fmt::format("gather_batch_on_device: bag {} (case {}) has {} slabs, more than {} instances", b,
                                   cohort.case_id(index), starts[b].size(), n));
    for (size_t i = 0; i < starts[b].size(); ++i) {
      const int start = starts[b][i];
      if (start < 0 || start + slab_depth > grid.depth)
        throw ShapeError(fmt::format("gather_batch_on_device: case {}: slab [{}, {}) outside depth {}",
                                     cohort.case_id(index), start, start + slab_depth, grid.depth));
      row_starts[b * n + i] = start;
    }
    const BagAugmentation& a = augmentations[b];
    kernels::GatherBagJob& job = jobs[b];
    job.image = cohort.image(index);
    job.mask = cohort.mask(index);
    job.instances = static_cast<int32_t>(starts[b].size());
    job.flip = a.flip ? 1 : 0;
    job.shift_y = a.shift_y;
    job.shift_x = a.shift_x;
    for (int c = 0; c < kModalities; ++c) {
      job.scale[c] = a.scale[c];
      job.offset[c] = a.offset[c];
    }
  }

  const Shape shape{static_cast<int64_t>(bags * n), slab_depth, grid.height, grid.width, kModalities};
  Tensor x = Tensor::empty(shape, out, Device::CUDA);
  if (bags == 0) return x;
  const auto context = [&] {
    return fmt::format("gather_batch_on_device({} bags of {} x {} slices, grid {}x{}x{}, out {})", bags, n, slab_depth,
                       grid.depth, grid.height, grid.width, x.describe());
  };
  // The descriptors travel in one pool buffer, freed in stream order after the launch. The host vectors
  // are pageable, so cudaMemcpyAsync has consumed them by the time it returns.
  const size_t job_bytes = jobs.size() * sizeof(kernels::GatherBagJob);
  const size_t start_bytes = row_starts.size() * sizeof(int32_t);
  cuda::DeviceBuffer descriptors(job_bytes + start_bytes);
  auto* device_jobs = descriptors.as<kernels::GatherBagJob>();
  auto* device_starts = reinterpret_cast<int32_t*>(descriptors.as<uint8_t>() + job_bytes);
  const cudaStream_t stream = cuda::stream();
  DSMIL_CUDA_CHECK(cudaMemcpyAsync(device_jobs, jobs.data(), job_bytes, cudaMemcpyHostToDevice, stream), context());
  DSMIL_CUDA_CHECK(cudaMemcpyAsync(device_starts, row_starts.data(), start_bytes, cudaMemcpyHostToDevice, stream),
                   context());
  const kernels::GatherGeometry geometry{
      static_cast<int64_t>(bags), instances_per_bag, grid.depth, grid.height, grid.width, slab_depth};
  if (out == DType::F32)
    DSMIL_CUDA_CHECK(kernels::gather_bags(device_jobs, device_starts, geometry, x.data<float>(), stream), context());
  else
    DSMIL_CUDA_CHECK(kernels::gather_bags(device_jobs, device_starts, geometry, x.data<__nv_bfloat16>(), stream),
                     context());
  return x;
}

}  // namespace dsmil::data
