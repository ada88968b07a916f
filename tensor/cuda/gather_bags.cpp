// CUDA bag gather: x[B n, S, H, W, 4] f32 or bf16 of B bags from case volumes in device memory, in one launch of
// kernels/gather_bags.cu (contract: tensor/op_declarations.inc; checked by ops::).
#include "kernels/gather_bags.h"
#include "tensor/cuda/ops_cuda.h"
#include "tensor/cuda/op_helpers.h"

namespace dsmil::cuda {

Tensor gather_bags(Device, std::span<const BagGather> bags, std::span<const int32_t> starts, const BagGatherGeometry& g,
                   DType out) {
  const int64_t n = g.instances_per_bag;
  Tensor x = empty_device({static_cast<int64_t>(bags.size()) * n, g.slab_depth, g.height, g.width, 4}, out);
  if (bags.empty()) return x;
  std::vector<kernels::GatherBagJob> jobs(bags.size());
  for (size_t b = 0; b < bags.size(); ++b) {
    const BagGather& bag = bags[b];
    kernels::GatherBagJob& job = jobs[b];
    job.image = bag.image;
    job.mask = bag.mask;
    job.instances = bag.instances;
    job.flip = bag.flip ? 1 : 0;
    job.shift_y = bag.shift_y;
    job.shift_x = bag.shift_x;
    for (int c = 0; c < 4; ++c) {
      job.scale[c] = bag.scale[c];
      job.offset[c] = bag.offset[c];
    }
  }
  const auto context = [&] {
    return fmt::format("gather_bags({} bags of {} x {} slices, grid {}x{}x{}, out {})", bags.size(), n, g.slab_depth,
                       g.depth, g.height, g.width, x.describe());
  };
  // The descriptors travel in one pool buffer, freed in stream order after the launch. The host spans are
  // pageable memory, so cudaMemcpyAsync has consumed them by the time it returns.
  const size_t job_bytes = jobs.size() * sizeof(kernels::GatherBagJob), start_bytes = starts.size_bytes();
  DeviceBuffer descriptors(job_bytes + start_bytes);
  auto* device_jobs = descriptors.as<kernels::GatherBagJob>();
  auto* device_starts = reinterpret_cast<int32_t*>(descriptors.as<uint8_t>() + job_bytes);
  DSMIL_CUDA_CHECK(cudaMemcpyAsync(device_jobs, jobs.data(), job_bytes, cudaMemcpyHostToDevice, stream()), context());
  DSMIL_CUDA_CHECK(cudaMemcpyAsync(device_starts, starts.data(), start_bytes, cudaMemcpyHostToDevice, stream()),
                   context());
  const kernels::GatherGeometry geometry{
      static_cast<int64_t>(bags.size()), n, g.depth, g.height, g.width, g.slab_depth};
  with_float_type("gather_bags", x, [&](auto type) {
    using T = typename decltype(type)::type;
    DSMIL_CUDA_CHECK(kernels::gather_bags(device_jobs, device_starts, geometry, ptr<T>(x), stream()), context());
  });
  return x;
}

}  // namespace dsmil::cuda
