// GPU tests of the dropout / drop-path masks against their CPU twins in f32 and bf16.
#include <random>

#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

namespace {

// 1 where y != 0: the kept elements of a dropout output (inputs are random, never exactly 0).
Tensor kept_mask(const Tensor& y) {
  std::vector<float> v = y.to_vector();
  for (float& e : v) e = e != 0.0f ? 1.0f : 0.0f;
  return Tensor::from_vector(y.shape(), v);
}

uint64_t random_u64() { return test::rng()(); }

}  // namespace

TEST_CASE("gpu dropout and drop_path masks equal the CPU's bit for bit") {
  if (skip_without_gpu()) return;
  const uint64_t seed = random_u64(), offset = random_u64() >> 20;
  const float p_drop = std::uniform_real_distribution<float>(0.1f, 0.7f)(test::rng());
  std::printf("[gpu-check] dropout seed %llu offset %llu p %.3f\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(offset), p_drop);
  for (Precision p : {Precision::F32, Precision::BF16}) {
    const std::string tag = std::string(" [") + precision_name(p) + "]";
    const Twin x = random_twin({3, 5, 7, 11, 13}, storage_dtype(p));
    const auto dropped = run_poisoned([&] { return ops::dropout(x.device, p_drop, seed, offset); });
    const Tensor ref = cpu::dropout(x.host, p_drop, seed, offset);
    check_equal("dropout mask" + tag, kept_mask(dropped[0]), kept_mask(ref));
    check_runs("dropout values", dropped, ref, p);

    const Twin samples = random_twin({64, 4, 5, 6}, storage_dtype(p));
    const auto paths = run_poisoned([&] { return ops::drop_path(samples.device, p_drop, seed, offset); });
    const Tensor ref_paths = cpu::drop_path(samples.host, p_drop, seed, offset);
    check_equal("drop_path mask" + tag, kept_mask(paths[0]), kept_mask(ref_paths));
    check_runs("drop_path values", paths, ref_paths, p);
  }
}

TEST_CASE("gpu dropout and drop_path read a seed from the device where MaskSeed names one") {
  if (skip_without_gpu()) return;
  const uint64_t given = random_u64(), on_device = random_u64(), offset = random_u64() >> 20;
  const Tensor seed =
      Tensor::from_ints({2}, {static_cast<int32_t>(on_device & 0xffffffffu), static_cast<int32_t>(on_device >> 32)})
          .to(Device::CUDA);
  const MaskSeed read_there(given, static_cast<const uint64_t*>(seed.raw()));
  const Twin x = random_twin({4, 6, 9, 10}, DType::F32);
  const auto dropped = run_poisoned([&] { return ops::dropout(x.device, 0.4f, read_there, offset); });
  check_equal("dropout with the seed on the device", kept_mask(dropped[0]),
              kept_mask(cpu::dropout(x.host, 0.4f, on_device, offset)));
  const auto paths = run_poisoned([&] { return ops::drop_path(x.device, 0.4f, read_there, offset); });
  check_equal("drop_path with the seed on the device", kept_mask(paths[0]),
              kept_mask(cpu::drop_path(x.host, 0.4f, on_device, offset)));
}
