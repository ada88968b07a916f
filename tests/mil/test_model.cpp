// The whole DualStreamMIL-3D model: end-to-end finite-difference check of the loss with respect to
// inputs and parameters for each pooling and attention, masking, and a tiny model learning a toy MIL task.
#include <algorithm>
#include <cmath>

#include "mil/dual_stream.h"
#include "nn/optim.h"
#include "tests/test_util.h"

using namespace dsmil;
using namespace dsmil::test;

namespace {

mil::ModelConfig tiny_config(mil::Pooling pooling, mil::Attention attention) {
  mil::ModelConfig c;
  c.encoder = {10, 2, 3, 4, 0.0f};
  c.head.pooling = pooling;
  c.head.attention = attention;
  c.head.topk = 2;
  c.head.feature_dropout = 0.0f;
  c.head.query_size = 8;
  return c;
}

const float kBalanced[2] = {1.5f, 0.75f};

double loss_value(mil::DualStreamMIL& model, const Tensor& x, const Tensor& mask, const Tensor& target,
                  const mil::LossConfig& lc) {
  NoGradGuard no_grad;
  nn::StepRandom random{7, 0};
  return mil::mil_loss(model.forward(Variable(x), mask, 0.5f, random), target, kBalanced, lc).value().item();
}

}  // namespace

TEST_CASE("whole model: d loss / d (input, every kind of parameter) matches finite differences") {
  // fp32 through ~10 layers with batch statistics: the loss carries ~1e-7 relative rounding, so h = 1e-3
  // leaves ~1e-4 of noise in the estimate; a ReLU, max-pool or top-k switch crossed by the step moves it
  // further, and such crossings grow with h (seen at h = 1e-2: up to 3e-2). Bound: 2e-2 of the largest
  // gradient.
  const std::vector<std::pair<mil::Pooling, mil::Attention>> variants = {{mil::Pooling::Soft, mil::Attention::Dsmil},
                                                                         {mil::Pooling::TopK, mil::Attention::Gated},
                                                                         {mil::Pooling::Max, mil::Attention::Dsmil}};
  for (const auto& [pooling, attention] : variants) {
    const std::string name = std::string(mil::pooling_name(pooling)) + "/" + mil::attention_name(attention);
    mil::DualStreamMIL model(tiny_config(pooling, attention), run_seed());
    const int64_t bags = 2, n = 3;
    const Tensor x = random_tensor({bags * n, 3, 12, 12, 4}, -2.0f, 2.0f);
    const Tensor mask = Tensor::from_ints({bags, n}, {1, 1, 1, 1, 0, 1});
    const Tensor target = Tensor::from_ints({bags}, {1, 0});
    // The attention-entropy term rides along on two of the three variants.
    const mil::LossConfig lc{0.2f, 2.0f, 0.5f, pooling == mil::Pooling::Max ? 0.0f : 0.3f};
    Variable input(x.clone(), true);
    nn::StepRandom random{7, 0};
    mil::mil_loss(model.forward(input, mask, 0.5f, random), target, kBalanced, lc).backward();

    std::vector<float> analytic;
    std::vector<double> numeric;
    const double h = 1e-3;
    // Central difference at step `step` for element i of `value`.
    auto difference = [&](Tensor& value, int64_t i, double step) {
      const float saved = value.f32()[i];
      value.f32()[i] = static_cast<float>(saved + step);
      const double up = loss_value(model, x, mask, target, lc);
      value.f32()[i] = static_cast<float>(saved - step);
      const double down = loss_value(model, x, mask, target, lc);
      value.f32()[i] = saved;
      return (up - down) / (2 * step);
    };
    // The loss is piecewise smooth (ReLU and max pooling switch; a top-k or max selection that changes
    // makes it jump). A probe whose estimates at h, h/2 and h/4 disagree by more than their rounding
    // noise has such a point inside its step, where no derivative exists: the next element is taken
    // instead. Noise: the loss is an fp32 value, so each difference quotient at step s carries up to
    // 2^-24 |L| / s; three estimates at s >= h/4 spread by at most 4 2^-24 |L| / (h/4) from it.
    const double noise = 4.0 * std::ldexp(std::fabs(loss_value(model, x, mask, target, lc)), -24) / (h / 4);
    int skipped = 0;
    auto probe = [&](Tensor& value, const Tensor& grad, int64_t first) -> bool {
      for (int64_t j = 0; j < std::min<int64_t>(16, value.numel()); ++j) {
        const int64_t i = (first + j) % value.numel();
        const double coarse = difference(value, i, h), fine = difference(value, i, h / 2),
                     finest = difference(value, i, h / 4);
        const double spread = std::max({coarse, fine, finest}) - std::min({coarse, fine, finest});
        if (spread > 1e-3 * std::max(1.0, std::fabs(fine)) + noise) {
          ++skipped;
          continue;
        }
        numeric.push_back(fine);
        analytic.push_back(grad.f32()[i]);
        return true;
      }
      return false;
    };
    Tensor x_probe = x;  // loss_value reads x: perturb it in place
    for (int64_t i : {int64_t{5}, x.numel() / 3, x.numel() - 7}) CHECK(probe(x_probe, input.grad(), i));
    int with_grad = 0, unprobed = 0, unprobed_tiny = 0;
    for (const auto& p : model.parameters()) {
      if (!p.variable->has_grad()) {
        std::printf("[model %s] no gradient reached %s\n", name.c_str(), p.name.c_str());
        continue;
      }
      ++with_grad;
      const int64_t count = p.variable->value().numel();
      if (probe(p.variable->value(), p.variable->grad(), count / 2)) continue;
      ++(count < 16 ? unprobed_tiny : unprobed);
    }
    CHECK(with_grad == static_cast<int>(model.parameters().size()));
    std::printf("[model %s] %zu probes, %d skipped at a switch; unprobed: %d tensors of 16+ values, %d smaller\n",
                name.c_str(), numeric.size(), skipped, unprobed, unprobed_tiny);
    // Every parameter tensor probed, but for at most 2 of 16 or more values whose 16 candidates all sat at a
    // switch; a tensor of 1-4 values (a bias) has no other element to move to when its few sit at one.
    CHECK(unprobed <= 2);
    CHECK(max_rel_error("model " + name, analytic, numeric, 2e-2) <= 2e-2);
  }
}

TEST_CASE("masked instances change nothing in evaluation: the mask after instance dropout keeps one") {
  for (auto pooling : {mil::Pooling::Max, mil::Pooling::TopK, mil::Pooling::Soft}) {
    mil::DualStreamMIL model(tiny_config(pooling, mil::Attention::Gated), 3);
    model.set_training(false);
    const Tensor mask = Tensor::from_ints({2, 3}, {1, 0, 1, 0, 1, 1});
    Tensor x = random_tensor({6, 3, 12, 12, 4});
    nn::StepRandom random;
    const auto before = model.forward(Variable(x), mask, 1.0f, random);
    std::fill(x.f32() + x.numel() / 6, x.f32() + 2 * x.numel() / 6, 100.0f);  // instance 1 of bag 0 (masked)
    const auto after = model.forward(Variable(x), mask, 1.0f, random);
    CHECK(before.y.value().to_vector() == after.y.value().to_vector());
    CHECK(before.attention.to_vector()[1] == 0.0f);
  }
  mil::ModelConfig cfg = tiny_config(mil::Pooling::TopK, mil::Attention::Dsmil);
  cfg.head.instance_dropout = 0.99f;
  mil::DualStreamMIL model(cfg, 3);
  nn::StepRandom random{11, 0};
  const auto out = model.forward(Variable(random_tensor({6, 3, 12, 12, 4})),
                                 Tensor::from_ints({2, 3}, {1, 1, 1, 1, 1, 1}), 1.0f, random);
  for (int b = 0; b < 2; ++b) {
    const auto m = out.mask.to_vector();
    CHECK(m[b * 3] + m[b * 3 + 1] + m[b * 3 + 2] >= 1.0f);
  }
}

TEST_CASE(
    "zero-initialised classifiers: first logits 0 for any seed, every other parameter as drawn without, "
    "and the classifiers still get gradients") {
  for (const uint64_t seed : {run_seed(), run_seed() + 1}) {
    mil::ModelConfig zeroed_config = tiny_config(mil::Pooling::TopK, mil::Attention::Gated);
    zeroed_config.head.zero_init_classifiers = true;
    mil::DualStreamMIL drawn(tiny_config(mil::Pooling::TopK, mil::Attention::Gated), seed);
    mil::DualStreamMIL zeroed(zeroed_config, seed);
    const auto drawn_parameters = drawn.parameters();
    const auto zeroed_parameters = zeroed.parameters();
    REQUIRE(drawn_parameters.size() == zeroed_parameters.size());
    int classifier_tensors = 0;
    for (size_t i = 0; i < drawn_parameters.size(); ++i) {
      const std::string& name = zeroed_parameters[i].name;
      const std::vector<float> values = zeroed_parameters[i].variable->value().to_vector();
      if (name.find("classifier") != std::string::npos) {
        ++classifier_tensors;
        CHECK_MESSAGE(std::all_of(values.begin(), values.end(), [](float v) { return v == 0.0f; }), name);
        const std::vector<float> drawn_values = drawn_parameters[i].variable->value().to_vector();
        CHECK_MESSAGE(std::any_of(drawn_values.begin(), drawn_values.end(), [](float v) { return v != 0.0f; }), name);
      } else {
        CHECK_MESSAGE(values == drawn_parameters[i].variable->value().to_vector(), name);
      }
    }
    CHECK(classifier_tensors == 4);

    const Tensor x = random_tensor({6, 3, 12, 12, 4}, -2.0f, 2.0f);
    const Tensor mask = Tensor::from_ints({2, 3}, {1, 1, 1, 1, 1, 1});
    nn::StepRandom random{7, 0};
    const mil::MilOutput out = zeroed.forward(Variable(x), mask, 0.5f, random);
    for (const Variable* logits : {&out.y1, &out.y2, &out.y})
      for (float v : logits->value().to_vector()) CHECK(v == 0.0f);
    mil::mil_loss(out, Tensor::from_ints({2}, {1, 0}), kBalanced, mil::LossConfig{0.05f, 2.0f, 0.5f, 0.0f}).backward();
    for (const auto& p : zeroed_parameters) {
      if (p.name.find("classifier") == std::string::npos || p.name.find("weight") == std::string::npos) continue;
      REQUIRE(p.variable->has_grad());
      const std::vector<float> grad = p.variable->grad().to_vector();
      CHECK_MESSAGE(std::any_of(grad.begin(), grad.end(), [](float g) { return g != 0.0f; }), p.name);
    }
  }
}

TEST_CASE("the head reports each instance's stream-1 weight in training and evaluation, for every pooling") {
  const Tensor mask = Tensor::from_ints({2, 3}, {1, 0, 1, 1, 1, 1});
  const Tensor x = random_tensor({6, 3, 12, 12, 4});
  for (auto pooling : {mil::Pooling::Max, mil::Pooling::TopK, mil::Pooling::Soft})
    for (bool training : {true, false}) {
      CAPTURE(static_cast<int>(pooling));
      CAPTURE(training);
      mil::DualStreamMIL model(tiny_config(pooling, mil::Attention::Gated), 3);
      model.set_training(training);
      nn::StepRandom random{5, 0};
      const mil::MilOutput out = model.forward(Variable(x), mask, 1.0f, random);
      REQUIRE(out.selection.defined());
      REQUIRE(out.selection.shape() == Shape{2, 3});
      const std::vector<float> weights = out.selection.to_vector(), margins = out.margins.to_vector();
      CHECK(weights[1] == 0.0f);  // masked
      const int k = pooling == mil::Pooling::Max ? 1 : 2;
      for (int b = 0; b < 2; ++b) {
        const float total = weights[b * 3] + weights[b * 3 + 1] + weights[b * 3 + 2];
        CHECK(total == doctest::Approx(1.0f).epsilon(1e-5));
        if (pooling == mil::Pooling::Soft) continue;
        const int valid = b == 0 ? 2 : 3, chosen = std::min(k, valid);
        int best = -1;
        for (int i = 0; i < 3; ++i)
          if (mask.i32()[b * 3 + i] && (best < 0 || margins[b * 3 + i] > margins[b * 3 + best])) best = i;
        CHECK(weights[b * 3 + best] == doctest::Approx(1.0f / chosen));
        CHECK(std::count(weights.begin() + b * 3, weights.begin() + b * 3 + 3, 0.0f) == 3 - chosen);
      }
    }
}

namespace {
// Toy MIL task: a bag of n slabs of noise is positive when one of its slabs holds a bright square.
void toy_batch(int64_t bags, int64_t n, std::mt19937_64& engine, Tensor& x, Tensor& target) {
  const int64_t s = 1, hw = 12, c = 4, slab = s * hw * hw * c;
  x = random_tensor({bags * n, s, hw, hw, c}, -0.5f, 0.5f);
  std::vector<int32_t> t(bags);
  for (int64_t b = 0; b < bags; ++b) {
    t[b] = static_cast<int32_t>(engine() % 2);
    if (!t[b]) continue;
    const int64_t inst = engine() % n, r0 = engine() % 8, c0 = engine() % 8;
    for (int64_t r = r0; r < r0 + 4; ++r)
      for (int64_t q = c0; q < c0 + 4; ++q) x.f32()[(b * n + inst) * slab + (r * hw + q) * c + 2] += 2.0f;
  }
  target = Tensor::from_ints({bags}, t);
}

double auc(const std::vector<float>& score, const std::vector<float>& label) {
  double wins = 0, pairs = 0;
  for (size_t i = 0; i < score.size(); ++i)
    for (size_t j = 0; j < score.size(); ++j)
      if (label[i] == 1 && label[j] == 0) {
        wins += score[i] > score[j] ? 1.0 : score[i] == score[j] ? 0.5 : 0.0;
        pairs += 1;
      }
  return wins / pairs;
}
}  // namespace

TEST_CASE("loss targets take each bag's class weight and refuse a label that is not 0 or 1") {
  const float class_weight[2] = {1.9f, 0.68f};
  const mil::LossTargets targets = mil::loss_targets(Tensor::from_ints({3}, {1, 0, 1}), class_weight, Device::CPU);
  CHECK(targets.weight.to_vector() == std::vector<float>{0.68f, 1.9f, 0.68f});
  CHECK(targets.weight_sum == doctest::Approx(0.68 + 1.9 + 0.68));
  CHECK_THROWS_WITH_AS(mil::loss_targets(Tensor::from_ints({2}, {1, 2}), class_weight, Device::CPU),
                       "loss_targets: bag 1 has label 2 (0 is LGG, 1 HGG)", ShapeError);
}

TEST_CASE("a tiny model learns a toy MIL problem on the CPU: loss falls, held-out AUC rises") {
  mil::ModelConfig cfg = tiny_config(mil::Pooling::TopK, mil::Attention::Gated);
  cfg.encoder = {10, 4, 1, 4, 0.0f};
  cfg.head.topk = 1;
  mil::DualStreamMIL model(cfg, 5);
  nn::AdamW opt(model.parameters(), {3e-3f, 0.9f, 0.999f, 1e-8f, 1e-4f});
  std::mt19937_64 engine(run_seed());
  const int64_t n = 4, bags = 8;
  const Tensor mask = Tensor::from_ints({bags, n}, std::vector<int32_t>(bags * n, 1));
  const float unit[2] = {1.0f, 1.0f};
  const mil::LossConfig lc{0.0f, 0.0f, 0.5f};
  Tensor hx, ht;
  toy_batch(64, n, engine, hx, ht);
  const Tensor held_mask = Tensor::from_ints({64, n}, std::vector<int32_t>(64 * n, 1));
  auto held_out_auc = [&] {
    NoGradGuard no_grad;
    model.set_training(false);
    nn::StepRandom random;
    const auto out = model.forward(Variable(hx), held_mask, 1.0f, random);
    model.set_training(true);
    std::vector<float> p;
    const auto y = out.y.value().to_vector();
    for (int64_t b = 0; b < 64; ++b) p.push_back(y[b * 2 + 1] - y[b * 2]);
    return auc(p, ht.to_vector());
  };
  const double auc_before = held_out_auc();
  double first = 0, last = 0;
  const int steps = 60;
  for (int step = 0; step < steps; ++step) {
    Tensor x, t;
    toy_batch(bags, n, engine, x, t);
    nn::StepRandom random{static_cast<uint64_t>(step), 0};
    Variable loss = mil::mil_loss(model.forward(Variable(x), mask, 1.0f, random), t, unit, lc);
    const double value = loss.value().item();
    if (step < 10) first += value / 10;
    if (step >= steps - 10) last += value / 10;
    loss.backward();
    opt.step(3e-3f);
    opt.zero_grad();
  }
  const double auc_after = held_out_auc();
  std::printf("[toy MIL] loss %.3f -> %.3f, held-out AUC %.3f -> %.3f\n", first, last, auc_before, auc_after);
  CHECK(last < 0.8 * first);
  CHECK(auc_after > 0.9);
}
