// GPU tests of the runtime (pool, copies, fill, f32 <-> bf16) and of the elementwise and reduction ops: each
// CUDA op against its CPU twin on fresh random inputs, in f32 and bf16.
#include <cstring>
#include <random>

#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

namespace {

// Round-to-nearest-even f32 -> bf16 -> f32 on the host: the independent reference of the conversion.
float bf16_round(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  bits &= 0xFFFF0000u;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

const Shape kOddShape{3, 5, 7, 11, 13};  // 15015 elements: no multiple of a block size

}  // namespace

TEST_CASE("gpu runtime: pool kept, copies, fill and bf16 conversion") {
  if (skip_without_gpu()) return;
  const Tensor host = test::random_tensor(kOddShape, -3.0f, 3.0f);
  const Tensor device = host.to(Device::CUDA);
  check_equal("copy host -> device -> host", device, host);
  check_equal("device clone", device.clone(), host);

  std::vector<float> rounded = host.to_vector();
  for (float& v : rounded) v = bf16_round(v);
  const Tensor bf16 = device.to_dtype(DType::BF16);
  check_equal("convert f32 -> bf16 (round to nearest even)", bf16, Tensor::from_vector(kOddShape, rounded));
  check_equal("convert bf16 -> f32", bf16.to_dtype(DType::F32), Tensor::from_vector(kOddShape, rounded));

  const float value = std::uniform_real_distribution<float>(-9.0f, 9.0f)(test::rng());
  const auto filled = run_poisoned([&] { return Tensor::full(kOddShape, value, Device::CUDA); });
  check_equal("fill f32", filled[0], Tensor::full(kOddShape, value));
  Tensor filled_bf16 = Tensor::empty(kOddShape, DType::BF16, Device::CUDA);
  filled_bf16.fill(value);
  check_equal("fill bf16", filled_bf16, Tensor::full(kOddShape, bf16_round(value)));
  Tensor filled_i32 = Tensor::empty(kOddShape, DType::I32, Device::CUDA);
  filled_i32.fill(value);
  check_equal("fill i32 (truncated)", filled_i32,
              Tensor::full(kOddShape, static_cast<float>(static_cast<int32_t>(value))));

  // Freed memory stays in the pool (release threshold = max): a freed block is reserved, not in use.
  const uint64_t used_before = cuda::pool_usage().used;
  { const Tensor big = Tensor::empty({64 << 20}, DType::F32, Device::CUDA); }
  cuda::synchronize();
  const cuda::PoolUsage after = cuda::pool_usage();
  CHECK(after.used == used_before);
  CHECK(after.reserved >= after.used + (uint64_t{256} << 20));
}

TEST_CASE("gpu elementwise ops match the CPU in f32 and bf16") {
  if (skip_without_gpu()) return;
  for (Precision p : {Precision::F32, Precision::BF16}) {
    const DType dt = storage_dtype(p);
    const Twin a = random_twin(kOddShape, dt, -3.0f, 3.0f), b = random_twin(kOddShape, dt, -3.0f, 3.0f);
    const float s = std::uniform_real_distribution<float>(-2.0f, 2.0f)(test::rng());
    check_runs("add", run_poisoned([&] { return ops::add(a.device, b.device); }), cpu::add(a.host, b.host), p);
    check_runs("mul", run_poisoned([&] { return ops::mul(a.device, b.device); }), cpu::mul(a.host, b.host), p);
    check_runs("scale", run_poisoned([&] { return ops::scale(a.device, s); }), cpu::scale(a.host, s), p);
    check_runs("relu", run_poisoned([&] { return ops::relu(a.device); }), cpu::relu(a.host), p);
    check_runs("tanh", run_poisoned([&] { return ops::tanh(a.device); }), cpu::tanh(a.host), p);
    check_runs("sigmoid", run_poisoned([&] { return ops::sigmoid(a.device); }), cpu::sigmoid(a.host), p);
    // Backward ops take (dy, y): y from the forward on each side.
    const Twin dy = random_twin(kOddShape, dt);
    const Twin relu_y = twin_of(cpu::relu(a.host), dt), tanh_y = twin_of(cpu::tanh(a.host), dt),
               sigmoid_y = twin_of(cpu::sigmoid(a.host), dt);
    check_runs("relu_backward", run_poisoned([&] { return ops::relu_backward(dy.device, relu_y.device); }),
               cpu::relu_backward(dy.host, relu_y.host), p);
    check_runs("tanh_backward", run_poisoned([&] { return ops::tanh_backward(dy.device, tanh_y.device); }),
               cpu::tanh_backward(dy.host, tanh_y.host), p);
    check_runs("sigmoid_backward", run_poisoned([&] { return ops::sigmoid_backward(dy.device, sigmoid_y.device); }),
               cpu::sigmoid_backward(dy.host, sigmoid_y.host), p);
  }
}

TEST_CASE("gpu in-place axpy_ and scale_ match the CPU") {
  if (skip_without_gpu()) return;
  const Twin y = random_twin(kOddShape, DType::F32), x = random_twin(kOddShape, DType::F32);
  const float alpha = std::uniform_real_distribution<float>(-2.0f, 2.0f)(test::rng());
  Tensor y_device = y.device.clone(), y_host = y.host.clone();
  ops::axpy_(y_device, alpha, x.device);
  cpu::axpy_(y_host, alpha, x.host);
  check_close("axpy_", y_device, y_host, Precision::F32);
  ops::scale_(y_device, alpha);
  cpu::scale_(y_host, alpha);
  check_close("scale_", y_device, y_host, Precision::F32);
}

TEST_CASE("gpu sum_squares and all_finite") {
  if (skip_without_gpu()) return;
  for (Precision p : {Precision::F32, Precision::BF16}) {
    const Twin x = random_twin({1 << 20, 3}, storage_dtype(p), -2.0f, 2.0f);
    const float got = ops::sum_squares(x.device), ref = cpu::sum_squares(x.host);
    check_close(std::string("sum_squares [") + precision_name(p) + "]", Tensor::full({1}, got), Tensor::full({1}, ref),
                kTolF32);
    CHECK(ops::sum_squares(x.device) == got);  // fixed summation order: bit-identical rerun
    CHECK(ops::all_finite(x.device));
  }
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    Tensor host = test::random_tensor(kOddShape);
    host.f32()[std::uniform_int_distribution<int64_t>(0, host.numel() - 1)(test::rng())] = bad;
    CHECK_FALSE(ops::all_finite(host.to(Device::CUDA)));
    CHECK_FALSE(ops::all_finite(host.to(Device::CUDA).to_dtype(DType::BF16)));
    CHECK_FALSE(cpu::all_finite(host));
  }
}

TEST_CASE("gpu sum_squares, all_finite and conversions on pack tails and views at odd offsets") {
  if (skip_without_gpu()) return;
  // Counts with a tail after the 16-byte packs (4 f32, 8 bf16), one beyond the reductions' 512 x 256 x 16
  // elements (the grid cap); views 0 elements into their storage (16-byte loads) or 1 (element by element).
  for (const int64_t count : {int64_t{9}, int64_t{4099}, int64_t{2100005}})
    for (const int64_t offset : {int64_t{0}, int64_t{1}})
      for (Precision p : {Precision::F32, Precision::BF16}) {
        const std::string where =
            " n=" + std::to_string(count) + " offset " + std::to_string(offset) + " [" + precision_name(p) + "]";
        const Twin base = random_twin({offset + count}, storage_dtype(p), -2.0f, 2.0f);
        const Tensor device = base.device.narrow0(offset, offset + count);
        const Tensor host = base.host.narrow0(offset, offset + count);
        const float got = ops::sum_squares(device);
        check_close("sum_squares view" + where, Tensor::full({1}, got), Tensor::full({1}, cpu::sum_squares(host)),
                    kTolF32);
        CHECK(ops::sum_squares(device) == got);  // fixed summation order: bit-identical rerun
        CHECK(ops::all_finite(device));

        std::vector<float> values = host.to_vector();
        if (p == Precision::F32) {
          for (float& v : values) v = bf16_round(v);
          check_equal("convert f32 -> bf16 view" + where, device.to_dtype(DType::BF16),
                      Tensor::from_vector({count}, values));
        } else {
          check_equal("convert bf16 -> f32 view" + where, device.to_dtype(DType::F32),
                      Tensor::from_vector({count}, values));
        }
      }
  // A non-finite value first in the view or in its tail is found; one just before the view is not.
  const int64_t count = 4099;
  for (const int64_t offset : {int64_t{0}, int64_t{1}})
    for (DType dtype : {DType::F32, DType::BF16})
      for (const int64_t at : {offset - 1, offset, offset + count - 1}) {
        if (at < 0) continue;
        Tensor host = test::random_tensor({offset + count});
        host.f32()[at] = NAN;
        const Tensor device = twin_of(host, dtype).device.narrow0(offset, offset + count);
        CHECK_MESSAGE(ops::all_finite(device) == (at < offset),
                      "all_finite " << dtype_name(dtype) << " offset " << offset << ", NaN at " << at);
      }
}
