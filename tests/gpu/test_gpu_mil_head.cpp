// GPU tests of the MIL head's kernels (masked softmax with statistics, top-k, gather_mean, bag
// contractions), the fused focal loss and the AdamW / EMA updates, each against its CPU twin (F32).
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

TEST_CASE("gpu fused focal / smoothed cross-entropy loss: loss, per-sample losses and gradient") {
  if (skip_without_gpu()) return;
  const int64_t batch = 37;
  for (const auto& [classes, eps, gamma] :
       std::vector<std::tuple<int64_t, float, float>>{{2, 0.1f, 0.0f}, {2, 0.2f, 2.0f}, {5, 0.05f, 0.5f}}) {
    const std::string where = " C=" + std::to_string(classes) + " eps=" + std::to_string(eps).substr(0, 4) +
                              " gamma=" + std::to_string(gamma).substr(0, 3);
    // Logits up to +-12 so that some p_c round to 1 in fp32 (the (1 - p)^gamma edge).
    const Twin logits = random_twin({batch, classes}, DType::F32, -12.0f, 12.0f);
    std::vector<int32_t> targets(batch);
    std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(classes) - 1);
    for (int32_t& t : targets) t = pick(test::rng());
    const Twin target = int_twin(Tensor::from_ints({batch}, targets));
    const Twin weight = random_twin({batch}, DType::F32, 0.2f, 3.0f);
    const auto out =
        run_poisoned([&] { return ops::focal_loss(logits.device, target.device, weight.device, eps, gamma); });
    const FocalLossOut ref = cpu::focal_loss(logits.host, target.host, weight.host, eps, gamma);
    for (const FocalLossOut& run : out) {
      check_close("focal_loss loss" + where, run.loss, ref.loss, Precision::F32);
      check_close("focal_loss per_sample" + where, run.per_sample, ref.per_sample, Precision::F32);
      check_close("focal_loss grad" + where, run.grad, ref.grad, Precision::F32);
    }
  }
}

TEST_CASE("gpu AdamW step and EMA update match the CPU") {
  if (skip_without_gpu()) return;
  const Shape shape{515, 67};
  const Twin param = random_twin(shape, DType::F32), grad = random_twin(shape, DType::F32);
  const Twin m = random_twin(shape, DType::F32, -0.1f, 0.1f), v = random_twin(shape, DType::F32, 0.0f, 0.01f);
  AdamWHyper h;
  h.lr = 3e-4f;
  h.weight_decay = 0.05f;
  h.step = std::uniform_int_distribution<int64_t>(1, 500)(test::rng());
  Tensor p_d = param.device.clone(), m_d = m.device.clone(), v_d = v.device.clone();
  Tensor p_h = param.host.clone(), m_h = m.host.clone(), v_h = v.host.clone();
  ops::adamw_step(p_d, grad.device, m_d, v_d, h);
  cpu::adamw_step(p_h, grad.host, m_h, v_h, h);
  check_close("adamw_step param (step " + std::to_string(h.step) + ")", p_d, p_h, Precision::F32);
  check_close("adamw_step m", m_d, m_h, Precision::F32);
  check_close("adamw_step v", v_d, v_h, Precision::F32);

  const float decay = std::uniform_real_distribution<float>(0.9f, 0.9999f)(test::rng());
  Tensor ema_d = m.device.clone(), ema_h = m.host.clone();
  ops::ema_update(ema_d, param.device, decay);
  cpu::ema_update(ema_h, param.host, decay);
  check_close("ema_update", ema_d, ema_h, Precision::F32);
}
