// Inputs of one benchmarked op and the comparison of its outputs: seeded random tensors (counter-based,
// never exactly zero, exact in the storage dtype so that the CPU twin sees the device's values), the
// tolerance of each output dtype and the largest relative error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "apps/kernel_bench/relative_error.h"
#include "tensor/tensor.h"

namespace dsmil::kernel_bench {

// The inputs of one op call, as CPU tensors: F32 (holding values exact in the storage dtype where
// `stored`) or I32. On the device, stored inputs are converted to the bench's storage dtype.
struct Problem {
  std::vector<Tensor> inputs;
  std::vector<bool> stored;

  void add(Tensor t, bool is_stored) {
    inputs.push_back(std::move(t));
    stored.push_back(is_stored);
  }
  // Bytes of the device copies, stored inputs in `storage`.
  int64_t device_bytes(DType storage) const;
};

// The k-th independent stream of random numbers of a problem drawn with `seed`.
uint64_t stream_seed(uint64_t seed, uint64_t k);

// Values uniform in (lo, hi), never exactly 0, rounded to `storage` (BF16 keeps 8 significant bits).
Tensor uniform_tensor(const Shape& shape, float lo, float hi, uint64_t seed, DType storage = DType::F32);
// I32 mask[B, n]: each instance present with probability 0.9, the first of each bag always.
Tensor random_mask(int64_t bags, int64_t instances, uint64_t seed);
// I32 values uniform in [0, count).
Tensor random_ints(const Shape& shape, int32_t count, uint64_t seed);

// Round to nearest even bf16, kept as float (what the CUDA backend's conversion does).
float round_to_bf16(float v);

// Tolerance on max |got - ref| / max |ref| for an output stored in `dtype`, a multiple of the format's
// machine epsilon (as tests/gpu/gpu_compare.h): fp32 64 eps = 7.6e-6 (sums in other orders over up to
// ~10^7 terms, libm against CUDA's expf/logf); bf16 1 eps = 2^-7 (both sides see the same bf16 inputs;
// rounding the output costs up to half an ulp, which is 2^-8 of a value just below a power of two, and
// the fp32 value before rounding may differ a little). I32 outputs must match exactly.
double tolerance(DType dtype);

struct Comparison {
  std::string output;  // "a", "stats", ... (its index where unnamed)
  double error = 0.0;  // relative max error, or the number of mismatches for I32
  double tolerance = 0.0;
  bool exact = false;  // compared for equality (I32)
  bool pass = false;
};

// One output against its reference (shapes must agree; dtypes may differ: got may be BF16).
Comparison compare_output(const std::string& name, const Tensor& got, const Tensor& ref);

}  // namespace dsmil::kernel_bench
