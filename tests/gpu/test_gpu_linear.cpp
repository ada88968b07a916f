// GPU tests of the linear ops: matmul in f32, TF32 and bf16 with every transpose, the bias add and its gradient,
// each against its CPU twin.
#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

TEST_CASE("gpu matmul in f32, TF32 and bf16 with every transpose: bias add and its gradient") {
  if (skip_without_gpu()) return;
  const int64_t m = 67, k = 515, n = 129;  // head-like: 64 instances x 512 features, odd on purpose
  for (Precision p : {Precision::F32, Precision::TF32, Precision::BF16}) {
    const auto mode = math_for(p);
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const Twin a = random_twin(ta ? Shape{k, m} : Shape{m, k}, storage_dtype(p));
        const Twin b = random_twin(tb ? Shape{n, k} : Shape{k, n}, storage_dtype(p));
        check_runs("matmul ta=" + std::to_string(ta) + " tb=" + std::to_string(tb),
                   run_poisoned([&] { return ops::matmul(a.device, b.device, ta, tb, mode); }),
                   cpu::matmul(a.host, b.host, ta, tb, mode), p);
      }
  }
  for (Precision p : {Precision::F32, Precision::BF16}) {
    const Twin x = random_twin({m, n}, storage_dtype(p)), bias = random_twin({n}, DType::F32);
    check_runs("add_bias", run_poisoned([&] { return ops::add_bias(x.device, bias.device); }),
               cpu::add_bias(x.host, bias.host), p);
    // db is F32 whatever dy is: only the summation order differs from the CPU.
    const auto db = run_poisoned([&] { return ops::bias_backward(x.device); });
    check_runs(std::string("bias_backward dy ") + precision_name(p), db, cpu::bias_backward(x.host), Precision::F32);
  }
}
