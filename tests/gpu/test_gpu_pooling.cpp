// GPU tests of max pooling with argmax and its backward, and of global average pooling, each against its CPU
// twin in f32 and bf16.
#include <random>

#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

namespace {

// Values from {-1.5, -1, -0.5, 0.5, 1, 1.5} (exact in bf16): a 3x3 window almost always holds a tie.
Tensor small_set_tensor(const Shape& shape) {
  std::uniform_int_distribution<int> pick(0, 5);
  std::vector<float> v(shape_numel(shape));
  for (float& e : v) {
    const int k = pick(test::rng());
    e = 0.5f * static_cast<float>(k < 3 ? k - 3 : k - 2);
  }
  return Tensor::from_vector(shape, v);
}

}  // namespace

TEST_CASE("gpu max pooling: values, argmax and the gathered backward equal the CPU's bit for bit") {
  if (skip_without_gpu()) return;
  struct PoolCase {
    Shape x;
    Pool3dGeometry g;
  };
  // C = 64 and 24 take the 16-byte channel groups in f32 and bf16, C = 12 only in f32 (bf16 groups are 8
  // channels), C = 6 in neither; odd sizes put windows on the padding at both ends.
  const std::vector<PoolCase> cases = {
      {{2, 4, 32, 32, 64}, {{1, 3, 3}, {1, 2, 2}, {0, 1, 1}}},  // the stem's pool
      {{2, 3, 13, 15, 12}, {{1, 3, 3}, {1, 2, 2}, {0, 1, 1}}},  // the stem's window, odd sizes
      {{3, 2, 9, 7, 6}, {{1, 3, 3}, {1, 2, 2}, {0, 1, 1}}},
      {{2, 6, 9, 11, 24}, {{3, 3, 3}, {2, 2, 2}, {1, 1, 1}}},   // overlapping windows on every axis
      {{1, 5, 7, 9, 8}, {{3, 3, 3}, {1, 1, 1}, {1, 1, 1}}},     // stride 1: up to 27 windows per position
      {{2, 4, 10, 11, 16}, {{1, 2, 2}, {1, 3, 3}, {0, 0, 0}}},  // stride > kernel: positions no window covers
  };
  for (const PoolCase& pc : cases)
    for (Precision p : {Precision::F32, Precision::BF16})
      // Continuous values, then values from a small set so that windows hold ties (the first maximum in
      // (d, h, w) order must win, and a position may win several windows).
      for (const bool ties : {false, true}) {
        const std::string where = " " + shape_str(pc.x) + (ties ? " ties" : "");
        const std::string tagged = where + " [" + precision_name(p) + "]";
        const Twin x = ties ? twin_of(small_set_tensor(pc.x), storage_dtype(p)) : random_twin(pc.x, storage_dtype(p));
        const auto fwd = run_poisoned([&] { return ops::maxpool3d_forward(x.device, pc.g); });
        const MaxPoolOut ref = cpu::maxpool3d_forward(x.host, pc.g);
        for (const MaxPoolOut& run : fwd) {
          check_equal("maxpool3d y" + tagged, run.y, ref.y);
          check_equal("maxpool3d argmax" + tagged, run.argmax, ref.argmax);
        }
        // Each position sums its windows' dy in ascending output order, as the CPU does, in fp32 and
        // rounds once: the CPU's result rounded to the storage dtype, exactly.
        const Twin dy = random_twin(ref.y.shape(), storage_dtype(p));
        const Twin argmax = int_twin(ref.argmax);
        const Tensor ref_dx = twin_of(cpu::maxpool3d_backward(dy.host, argmax.host, pc.x, pc.g), storage_dtype(p)).host;
        const auto dx = run_poisoned([&] { return ops::maxpool3d_backward(dy.device, argmax.device, pc.x, pc.g); });
        check_equal("maxpool3d backward dx (NaN poison)" + tagged, dx[0], ref_dx);
        check_equal("maxpool3d backward dx (huge poison)" + tagged, dx[1], ref_dx);
      }
}

TEST_CASE("gpu global average pooling and its backward match the CPU") {
  if (skip_without_gpu()) return;
  const Shape shape{6, 4, 8, 8, 520};
  for (Precision p : {Precision::F32, Precision::BF16}) {
    const Twin x = random_twin(shape, storage_dtype(p));
    // y is F32 whatever x is: only the summation order differs.
    const auto y = run_poisoned([&] { return ops::global_avg_pool(x.device); });
    check_runs(std::string("global_avg_pool x ") + precision_name(p), y, cpu::global_avg_pool(x.host), Precision::F32);
    const Twin dy = random_twin({shape[0], shape[4]}, DType::F32);
    check_runs("global_avg_pool_backward",
               run_poisoned([&] { return ops::global_avg_pool_backward(dy.device, shape, storage_dtype(p)); }),
               cpu::global_avg_pool_backward(dy.host, shape, DType::F32), p);
  }
}
