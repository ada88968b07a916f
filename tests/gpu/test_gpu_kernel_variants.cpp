// GPU tests of the plain kernel variants (kernels/plain/: sum of squares by fp64 atomics, masked softmax
// and its backward with one thread per bag) against their CPU twins, and of every `dsmil bench --kernel`
// entry's check (fast and plain) at a small shape, so that the bench's own plumbing is tested too.
#include <cuda_bf16.h>

#include <random>

#include "apps/kernel_bench/kernel_bench.h"
#include "kernels/plain/masked_softmax_plain.h"
#include "kernels/plain/reductions_plain.h"
#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

namespace {

double plain_sum_squares(const Tensor& x) {
  cuda::DeviceBuffer result(sizeof(double));
  cudaError_t status =
      x.dtype() == DType::BF16
          ? kernels::plain::sum_squares_plain(x.data<__nv_bfloat16>(), x.numel(), result.as<double>(), cuda::stream())
          : kernels::plain::sum_squares_plain(x.f32(), x.numel(), result.as<double>(), cuda::stream());
  REQUIRE(status == cudaSuccess);
  double sum = 0.0;
  REQUIRE(cudaMemcpyAsync(&sum, result.data(), sizeof sum, cudaMemcpyDeviceToHost, cuda::stream()) == cudaSuccess);
  cuda::synchronize();
  return sum;
}

}  // namespace

TEST_CASE("gpu plain sum_squares (fp64 atomics) matches the CPU in f32 and bf16") {
  if (skip_without_gpu()) return;
  for (const int64_t n : {int64_t{1}, int64_t{1000}, int64_t{(1 << 20) + 3}})
    for (Precision p : {Precision::F32, Precision::BF16}) {
      const Twin x = random_twin({n}, storage_dtype(p), -2.0f, 2.0f);
      const float got = static_cast<float>(plain_sum_squares(x.device)), ref = ops::sum_squares(x.host);
      check_close("sum_squares_plain n=" + std::to_string(n) + " [" + precision_name(p) + "]", Tensor::full({1}, got),
                  Tensor::full({1}, ref), kTolF32);
    }
}

TEST_CASE("gpu plain masked softmax (thread per bag) and its backward match the CPU") {
  if (skip_without_gpu()) return;
  const float temperature = std::uniform_real_distribution<float>(0.3f, 2.0f)(test::rng());
  for (const auto& [bags, n] : std::vector<std::pair<int64_t, int64_t>>{{5, 37}, {3, 300}, {200, 16}}) {
    const std::string where = " B=" + std::to_string(bags) + " n=" + std::to_string(n);
    const Twin e = random_twin({bags, n}, DType::F32, -4.0f, 4.0f);
    const Twin mask = int_twin(mask_with_edges(bags, n));
    const auto out = run_poisoned([&] {
      std::array<Tensor, 2> a_stats{Tensor::empty({bags, n}, DType::F32, Device::CUDA),
                                    Tensor::empty({bags, 3}, DType::F32, Device::CUDA)};
      REQUIRE(kernels::plain::masked_softmax_plain(e.device.f32(), mask.device.i32(), bags, n, temperature,
                                                   a_stats[0].f32(), a_stats[1].f32(), cuda::stream()) == cudaSuccess);
      return a_stats;
    });
    const MaskedSoftmaxOut ref = ops::masked_softmax(e.host, mask.host, temperature);
    for (const auto& run : out) {
      check_close("masked_softmax_plain a" + where, run[0], ref.a, Precision::F32);
      check_close("masked_softmax_plain stats" + where, run[1], ref.stats, Precision::F32);
    }
    const Twin da = random_twin({bags, n}, DType::F32), a = twin_of(ref.a, DType::F32);
    check_runs(
        "masked_softmax_backward_plain" + where, run_poisoned([&] {
          Tensor de = Tensor::empty({bags, n}, DType::F32, Device::CUDA);
          REQUIRE(kernels::plain::masked_softmax_backward_plain(da.device.f32(), a.device.f32(), bags, n, temperature,
                                                                de.f32(), cuda::stream()) == cudaSuccess);
          return de;
        }),
        ops::masked_softmax_backward(da.host, a.host, temperature), Precision::F32);
  }
}

TEST_CASE("gpu every kernel bench entry's check passes at its small shape, fast and plain") {
  if (skip_without_gpu()) return;
  const uint64_t seed = test::run_seed();
  for (const kernel_bench::Selection& s : kernel_bench::select_benches("all", "both", "all")) {
    const std::string what =
        s.bench->name + " " + kernel_bench::variant_name(s.variant) + " [" + dtype_name(s.dtype) + "]";
    guarded(what, [&] {
      const kernel_bench::CheckOutcome outcome = kernel_bench::check_selection(s, s.bench->tiny_shape, seed);
      const kernel_bench::Comparison& worst = outcome.worst();
      std::printf("[gpu-check] %-58s err %.3e tol %.1e %s\n", ("bench " + what).c_str(), worst.error, worst.tolerance,
                  outcome.pass ? "PASS" : "FAIL");
      CHECK_MESSAGE(outcome.pass, what << ": " << worst.output << " error " << worst.error << " > " << worst.tolerance);
    });
  }
}
