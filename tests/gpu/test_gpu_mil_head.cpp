// GPU tests of the MIL head's kernels (masked softmax with statistics, top-k, gather_mean, bag
// contractions), each against its CPU twin (F32).
#include <random>

#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

namespace {

// Scores with deliberate ties (copies of other entries of the bag), to exercise the tie rule.
Tensor scores_with_ties(int64_t bags, int64_t n) {
  Tensor s = test::random_tensor({bags, n}, -3.0f, 3.0f);
  std::uniform_int_distribution<int64_t> pick(0, n - 1);
  for (int64_t b = 0; b < bags; ++b)
    for (int t = 0; t < 4; ++t) s.f32()[b * n + pick(test::rng())] = s.f32()[b * n + pick(test::rng())];
  return s;
}

}  // namespace

TEST_CASE("gpu masked softmax with entropy / top-1 / effective-instance stats, and its backward") {
  if (skip_without_gpu()) return;
  const float temperature = std::uniform_real_distribution<float>(0.3f, 2.0f)(test::rng());
  for (const auto& [bags, n] : std::vector<std::pair<int64_t, int64_t>>{{5, 37}, {3, 300}, {7, 16}}) {
    const std::string where = " B=" + std::to_string(bags) + " n=" + std::to_string(n);
    const Twin e = random_twin({bags, n}, DType::F32, -4.0f, 4.0f);
    const Twin mask = int_twin(mask_with_edges(bags, n));
    const auto out = run_poisoned([&] { return ops::masked_softmax(e.device, mask.device, temperature); });
    const MaskedSoftmaxOut ref = cpu::masked_softmax(e.host, mask.host, temperature);
    for (const MaskedSoftmaxOut& run : out) {
      check_close("masked_softmax a" + where, run.a, ref.a, Precision::F32);
      check_close("masked_softmax stats" + where, run.stats, ref.stats, Precision::F32);
    }
    const Twin da = random_twin({bags, n}, DType::F32), a = twin_of(ref.a, DType::F32);
    check_runs("masked_softmax_backward" + where,
               run_poisoned([&] { return ops::masked_softmax_backward(da.device, a.device, temperature); }),
               cpu::masked_softmax_backward(da.host, a.host, temperature), Precision::F32);
  }
}

TEST_CASE("gpu top-k indices (ties to the lower index, -1 past the bag), gather_mean and its backward") {
  if (skip_without_gpu()) return;
  const int64_t bags = 6, n = 33, features = 130;
  for (int k : {1, 4, 40}) {
    const std::string where = " k=" + std::to_string(k);
    const Twin score = twin_of(scores_with_ties(bags, n), DType::F32);
    const Twin mask = int_twin(mask_with_edges(bags, n));
    const auto idx = run_poisoned([&] { return ops::topk_indices(score.device, mask.device, k); });
    const Tensor ref_idx = cpu::topk_indices(score.host, mask.host, k);
    check_equal("topk_indices" + where, idx[0], ref_idx);
    check_equal("topk_indices (huge poison)" + where, idx[1], ref_idx);

    const Twin x = random_twin({bags, n, features}, DType::F32), index = int_twin(ref_idx);
    check_runs("gather_mean" + where, run_poisoned([&] { return ops::gather_mean(x.device, index.device); }),
               cpu::gather_mean(x.host, index.host), Precision::F32);
    const Twin dy = random_twin({bags, features}, DType::F32);
    check_runs("gather_mean_backward" + where,
               run_poisoned([&] { return ops::gather_mean_backward(dy.device, index.device, n); }),
               cpu::gather_mean_backward(dy.host, index.host, n), Precision::F32);
  }
}

TEST_CASE("gpu bag contractions weighted_sum, dot and outer") {
  if (skip_without_gpu()) return;
  const int64_t bags = 3, n = 37, features = 515;
  const Twin a = random_twin({bags, n}, DType::F32), v = random_twin({bags, n, features}, DType::F32);
  const Twin m = random_twin({bags, features}, DType::F32);
  check_runs("bag_weighted_sum", run_poisoned([&] { return ops::bag_weighted_sum(a.device, v.device); }),
             cpu::bag_weighted_sum(a.host, v.host), Precision::F32);
  check_runs("bag_dot", run_poisoned([&] { return ops::bag_dot(v.device, m.device); }), cpu::bag_dot(v.host, m.host),
             Precision::F32);
  check_runs("bag_outer", run_poisoned([&] { return ops::bag_outer(a.device, m.device); }),
             cpu::bag_outer(a.host, m.host), Precision::F32);
}
