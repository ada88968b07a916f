// Bench entries of the whole-tensor reductions on the largest weight's gradient (what gradient-norm
// clipping reduces): sum of squares (fast: block partial sums; plain: one fp64 atomicAdd per element)
// and the non-finite check.
#include <fmt/format.h>

#include <algorithm>

#include "apps/kernel_bench/bench_entry.h"
#include "tensor/ops.h"
#ifdef DSMIL_WITH_CUDA
#include <cuda_bf16.h>

#include "apps/kernel_bench/device_helpers.h"
#include "kernels/plain/reductions_plain.h"
#include "kernels/reductions.h"
#include "tensor/cuda/checks.h"
#include "tensor/cuda/context.h"
#endif

namespace dsmil::kernel_bench {

namespace {

KernelBench reduction_bench(const char* name, const char* bytes_meaning) {
  KernelBench b = described_bench(name, "reductions.cu", "x[...]", bytes_meaning, 0, {DType::F32, DType::BF16},
                                  [](const ModelShapes& m) { return m.largest_weight; }, {3, 5, 7});
  b.bytes = [](const Shape& s, DType d) { return element_bytes(d) * shape_numel(s) + 8; };  // + the fp64 result
  b.draw = [](const Shape& s, DType dtype, uint64_t seed) {
    Problem p;
    p.add(uniform_tensor(s, -1.0f, 1.0f, stream_seed(seed, 0), dtype), true);
    return p;
  };
  return b;
}

#ifdef DSMIL_WITH_CUDA
// Calls f(pointer) with x's data as float* or __nv_bfloat16*.
template <typename F>
void with_storage(const Tensor& x, F&& f) {
  if (x.dtype() == DType::BF16)
    f(x.data<__nv_bfloat16>());
  else
    f(x.f32());
}

// The plain sum into an fp64 device value (no host synchronisation).
void sum_squares_plain_into(const Tensor& x, double* result) {
  with_storage(x, [&](auto* p) {
    DSMIL_CUDA_CHECK(kernels::plain::sum_squares_plain(p, x.numel(), result, cuda::stream()),
                     cuda::op_context("sum_squares_plain", {{"x", &x}}));
  });
}
#endif

KernelBench sum_squares_bench() {
  KernelBench b = reduction_bench("sum_squares", "read x; write the fp64 sum");
  b.launchers = {"sum_squares"};
  b.plain_launchers = {"sum_squares_plain"};
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{Tensor::full({1}, ops::sum_squares(in[0]))};
  };
#ifdef DSMIL_WITH_CUDA
  // ops::sum_squares copies the sum to the host; the timed call is its kernels alone.
  b.timed_fast = [](std::vector<Tensor>& in, const Shape&, DType) {
    cuda::DeviceBuffer partial((kernels::kSumSquaresBlocks + 1) * sizeof(double));
    with_storage(in[0], [&](auto* p) {
      DSMIL_CUDA_CHECK(kernels::sum_squares(p, in[0].numel(), partial.as<double>(),
                                            partial.as<double>() + kernels::kSumSquaresBlocks, cuda::stream()),
                       cuda::op_context("sum_squares", {{"x", &in[0]}}));
    });
  };
  b.plain = [](std::vector<Tensor>& in, const Shape&, DType) {
    cuda::DeviceBuffer result(sizeof(double));
    sum_squares_plain_into(in[0], result.as<double>());
    double sum = 0.0;
    DSMIL_CUDA_CHECK(cudaMemcpyAsync(&sum, result.data(), sizeof sum, cudaMemcpyDeviceToHost, cuda::stream()),
                     "sum_squares_plain result");
    DSMIL_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()), "sum_squares_plain result");
    return std::vector<Tensor>{Tensor::full({1}, static_cast<float>(sum))};
  };
  b.timed_plain = [](std::vector<Tensor>& in, const Shape&, DType) {
    cuda::DeviceBuffer result(sizeof(double));
    sum_squares_plain_into(in[0], result.as<double>());
  };
  b.launch_fast = [](const Shape& s, DType) {
    const int64_t blocks = std::min<int64_t>(grid_stride_blocks(shape_numel(s)), kernels::kSumSquaresBlocks);
    return fmt::format("{} x 256, one launch (the last block to finish sums the fp64 partials)", blocks);
  };
  b.launch_plain = [](const Shape& s, DType) {
    constexpr int threads = kernels::plain::kSumSquaresPlainThreads;
    return fmt::format("memset + {} x {} (thread per element, fp64 atomicAdd)",
                       (shape_numel(s) + threads - 1) / threads, threads);
  };
#endif
  return b;
}

KernelBench all_finite_bench() {
  KernelBench b = reduction_bench("all_finite", "read x; write a flag");
  b.launchers = {"any_nonfinite"};
  b.bytes = [](const Shape& s, DType d) { return element_bytes(d) * shape_numel(s) + 4; };
  b.run = [](std::vector<Tensor>& in, const Shape&, DType) {
    return std::vector<Tensor>{Tensor::full({1}, ops::all_finite(in[0]) ? 1.0f : 0.0f)};
  };
#ifdef DSMIL_WITH_CUDA
  // ops::all_finite copies the flag to the host; the timed call is its kernel alone.
  b.timed_fast = [](std::vector<Tensor>& in, const Shape&, DType) {
    cuda::DeviceBuffer flag(sizeof(int32_t));
    with_storage(in[0], [&](auto* p) {
      DSMIL_CUDA_CHECK(kernels::any_nonfinite(p, in[0].numel(), flag.as<int32_t>(), cuda::stream()),
                       cuda::op_context("all_finite", {{"x", &in[0]}}));
    });
  };
  b.launch_fast = [](const Shape& s, DType) {
    const int64_t blocks = std::min<int64_t>(grid_stride_blocks(shape_numel(s)), kernels::kSumSquaresBlocks);
    return fmt::format("{} x 256, one launch (the last block to finish writes the flag)", blocks);
  };
#endif
  return b;
}

}  // namespace

void add_reduction_benches(std::vector<KernelBench>& list) {
  list.push_back(sum_squares_bench());
  list.push_back(all_finite_bench());
}

}  // namespace dsmil::kernel_bench
