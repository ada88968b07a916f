// Helpers of the GPU tests: device inputs with exact CPU twins, outputs produced under poisoned memory,
// tolerances derived from the precision, and one printed line per comparison (scripts/gpu_check.sh
// collects the "[gpu-check]" lines into its table).
#pragma once

#include <doctest/doctest.h>

#include <array>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "apps/kernel_bench/relative_error.h"
#include "tensor/cpu/ops_cpu.h"
#include "tensor/cuda/context.h"
#include "tensor/cuda/runtime.h"
#include "tensor/ops.h"
#include "tests/test_util.h"

namespace dsmil::gpu_test {

// Largest |cuda - cpu| over max |cpu|, allowed per precision. Each is a multiple of the format's machine
// epsilon (2^-mantissa bits):
// - f32 (both sides fp32, sums in other orders over up to ~10^6 terms): 64 eps = 7.6e-6;
// - TF32 (10 mantissa bits; the conversion may truncate, biasing every product by up to one eps, so the
//   result can be off by one eps of itself plus the random part): 2 eps = 2^-9 = 2.0e-3;
// - bf16 (inputs are the same bf16 values on both sides; the bf16 output is rounded, half an eps): 1 eps
//   = 2^-7 = 7.8e-3.
enum class Precision { F32, TF32, BF16 };
constexpr double kTolF32 = 64.0 / (1 << 23);
constexpr double kTolTF32 = 2.0 / (1 << 10);
constexpr double kTolBF16 = 1.0 / (1 << 7);

inline double tolerance(Precision p) {
  return p == Precision::F32 ? kTolF32 : p == Precision::TF32 ? kTolTF32 : kTolBF16;
}
inline const char* precision_name(Precision p) {
  return p == Precision::F32 ? "f32" : p == Precision::TF32 ? "tf32" : "bf16";
}
inline DType storage_dtype(Precision p) { return p == Precision::BF16 ? DType::BF16 : DType::F32; }

// Prints "SKIPPED: no CUDA device" and returns true when the test has nothing to run on.
inline bool skip_without_gpu() {
  if (cuda::device_available()) return false;
  std::printf("SKIPPED: no CUDA device\n");
  MESSAGE("SKIPPED: no CUDA device");
  return true;
}

// A tensor on the device and an F32 CPU tensor holding exactly its values (bf16-rounded for BF16).
struct Twin {
  Tensor device, host;
};

inline Twin twin_of(const Tensor& cpu_values, DType dtype) {
  Tensor device = cpu_values.to(Device::CUDA);
  if (dtype != DType::F32) device = device.to_dtype(dtype);
  return {device, Tensor::from_vector(cpu_values.shape(), device.to_vector())};
}

inline Twin random_twin(const Shape& shape, DType dtype, float lo = -1.0f, float hi = 1.0f) {
  return twin_of(test::random_tensor(shape, lo, hi), dtype);
}

inline Twin int_twin(const Tensor& cpu_ints) { return {cpu_ints.to(Device::CUDA), cpu_ints}; }

// mask[B, n]: random holes, bag 0 full, bag 1 with one instance, the last bag empty.
inline Tensor mask_with_edges(int64_t bags, int64_t n) {
  std::bernoulli_distribution present(0.75);
  std::vector<int32_t> m(bags * n);
  for (int64_t b = 0; b < bags; ++b)
    for (int64_t i = 0; i < n; ++i) {
      int32_t v = present(test::rng()) ? 1 : 0;
      if (b == 0) v = 1;
      if (b == 1) v = i == n / 2;
      if (b == bags - 1) v = 0;
      m[b * n + i] = v;
    }
  return Tensor::from_ints({bags, n}, m);
}

// Runs `op` twice: new device memory filled with 0xFF bytes (NaN in f32 and bf16), then with 0x7F bytes
// (3.4e38): an output element the op never writes fails the comparison in at least one of the runs.
template <typename F>
auto run_poisoned(F op) -> std::array<decltype(op()), 2> {
  struct PoisonOff {
    ~PoisonOff() { cuda::set_allocation_poison(std::nullopt); }
  } restore;
  cuda::set_allocation_poison(0xFF);
  auto first = op();
  cuda::synchronize();
  cuda::set_allocation_poison(0x7F);
  auto second = op();
  cuda::synchronize();
  return {std::move(first), std::move(second)};
}

// Compares a result of the CUDA backend (any dtype) with the CPU reference, prints one line, checks.
inline void check_close(const std::string& what, const Tensor& got, const Tensor& ref, double tol) {
  REQUIRE_MESSAGE(got.shape() == ref.shape(), what << ": shape " << got.describe() << " vs " << ref.describe());
  const double err = kernel_bench::relative_max_error(got.to_vector(), ref.to_vector());
  const bool pass = err <= tol;
  std::printf("[gpu-check] %-58s err %.3e tol %.1e %s\n", what.c_str(), err, tol, pass ? "PASS" : "FAIL");
  CHECK_MESSAGE(pass, what << ": relative max error " << err << " > tolerance " << tol);
}

inline void check_close(const std::string& what, const Tensor& got, const Tensor& ref, Precision p) {
  check_close(what + " [" + precision_name(p) + "]", got, ref, tolerance(p));
}

// Both poisoned runs against the reference.
inline void check_runs(const std::string& what, const std::array<Tensor, 2>& runs, const Tensor& ref, Precision p) {
  check_close(what + " (NaN poison)", runs[0], ref, p);
  check_close(what + " (huge poison)", runs[1], ref, p);
}

// Exact equality (indices, masks, maxima), printed like the others.
inline void check_equal(const std::string& what, const Tensor& got, const Tensor& ref) {
  REQUIRE_MESSAGE(got.shape() == ref.shape(), what << ": shape " << got.describe() << " vs " << ref.describe());
  const std::vector<float> g = got.to_vector(), r = ref.to_vector();
  size_t mismatches = 0;
  for (size_t i = 0; i < g.size(); ++i) mismatches += !(g[i] == r[i]);
  std::printf("[gpu-check] %-58s mismatches %zu of %zu %s\n", what.c_str(), mismatches, g.size(),
              mismatches == 0 ? "PASS" : "FAIL");
  CHECK_MESSAGE(mismatches == 0, what << ": " << mismatches << " elements differ");
}

// Bitwise equality of two results of the CUDA backend (determinism checks).
inline void check_identical(const std::string& what, const Tensor& a, const Tensor& b) {
  check_equal(what + " (rerun bit-identical)", a, b);
}

// Runs one comparison's body; an exception (a cuDNN status, a shape error) is reported as a failed
// check, and the test case goes on with its other comparisons.
template <typename F>
void guarded(const std::string& what, F&& body) {
  try {
    body();
  } catch (const std::exception& e) {
    std::printf("[gpu-check] %-58s threw: %s FAIL\n", what.c_str(), e.what());
    FAIL_CHECK(what << " threw: " << e.what());
  }
}

// The words of the ShapeError `call` throws ("(no ShapeError)" when it throws none), with the device names of
// tensor descriptions (" cpu", " cuda") taken out: an op refuses a bad input on both backends in the same words.
template <typename Call>
std::string shape_error_words(Call call) {
  std::string message = "(no ShapeError)";
  try {
    call();
  } catch (const ShapeError& e) {
    message = e.what();
  }
  for (const std::string device : {" cuda", " cpu"})
    for (size_t at; (at = message.find(device)) != std::string::npos;) message.erase(at, device.size());
  return message;
}

// The math mode a comparison at precision `p` passes to the ops it runs.
inline MathMode math_for(Precision p, bool deterministic = false, ConvFolding folding = ConvFolding::measured,
                         ConvKernel conv16 = ConvKernel::measured) {
  return MathMode{p == Precision::TF32, deterministic, folding, conv16};
}

}  // namespace dsmil::gpu_test
