// GPU test of the fused focal / label-smoothed cross-entropy loss (kernels/focal_loss.cu, tensor/cuda/focal_loss.cpp)
// against its CPU twin (tensor/cpu/focal_loss.cpp), F32: loss, per-sample losses and gradient.
#include <random>
#include <tuple>

#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

TEST_CASE("gpu focal loss: the same errors as the CPU on bad shapes and gamma, and NaN where the CPU has NaN") {
  if (skip_without_gpu()) return;
  const Twin logits = random_twin({4, 2}, DType::F32, -3.0f, 3.0f);
  const Twin weight = random_twin({4}, DType::F32, 0.2f, 3.0f);
  const Twin short_target = int_twin(Tensor::from_ints({3}, {1, 0, 1}));
  const Twin bad_target = int_twin(Tensor::from_ints({4}, {1, 2, 0, -1}));
  const std::string cpu_shape =
      shape_error_words([&] { ops::focal_loss(logits.host, short_target.host, weight.host, 0.1f, 2.0f); });
  CHECK(cpu_shape != "(no ShapeError)");
  CHECK(shape_error_words([&] { ops::focal_loss(logits.device, short_target.device, weight.device, 0.1f, 2.0f); }) ==
        cpu_shape);
  const std::string cpu_gamma =
      shape_error_words([&] { ops::focal_loss(logits.host, bad_target.host, weight.host, 0.1f, -1.0f); });
  CHECK(cpu_gamma == "focal_loss: gamma -1 must be >= 0");
  CHECK(shape_error_words([&] { ops::focal_loss(logits.device, bad_target.device, weight.device, 0.1f, -1.0f); }) ==
        cpu_gamma);
  const FocalLossOut cpu = ops::focal_loss(logits.host, bad_target.host, weight.host, 0.1f, 2.0f);
  const FocalLossOut cuda = ops::focal_loss(logits.device, bad_target.device, weight.device, 0.1f, 2.0f);
  for (const auto& [name, cpu_values, cuda_values] :
       {std::tuple{"loss", cpu.loss.to_vector(), cuda.loss.to_vector()},
        std::tuple{"per_sample", cpu.per_sample.to_vector(), cuda.per_sample.to_vector()},
        std::tuple{"grad", cpu.grad.to_vector(), cuda.grad.to_vector()}})
    for (size_t i = 0; i < cpu_values.size(); ++i) {
      CAPTURE(name);
      CAPTURE(i);
      CHECK(std::isnan(cuda_values[i]) == std::isnan(cpu_values[i]));
    }
  const Tensor zeros = Tensor::zeros({4});
  const Twin target = int_twin(Tensor::from_ints({4}, {1, 0, 1, 0}));
  CHECK(!std::isfinite(ops::focal_loss(logits.host, target.host, zeros, 0.1f, 2.0f).loss.to_vector()[0]));
  CHECK(!std::isfinite(
      ops::focal_loss(logits.device, target.device, zeros.to(Device::CUDA), 0.1f, 2.0f).loss.to_vector()[0]));
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
