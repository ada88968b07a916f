// Multi-tensor AdamW (global-norm clip folded in) and EMA against the per-tensor path they replace:
// ops::adamw_step / ops::ema_update per tensor after nn::clip_grad_norm, on random lists, over several steps.
#include <algorithm>
#include <cmath>
#include <limits>

#include "nn/optim.h"
#include "tests/test_util.h"

using namespace dsmil;
using namespace dsmil::test;

namespace {

// Several tensors of the model's kinds: weights, one above the CPU's parallel grain, per-channel vectors, a
// scalar. Tensor i is weight-decayed when i is even.
const std::vector<Shape> kShapes = {{7, 5}, {33}, {3, 3, 3, 4}, {1}, {40000}, {64}};

// A module of random parameters of kShapes and two random buffers.
struct RandomModule : nn::Module {
  std::vector<Variable> params;
  std::vector<Tensor> stats;
  RandomModule() {
    for (const Shape& s : kShapes) params.emplace_back(random_tensor(s), true);
    for (size_t i = 0; i < params.size(); ++i) register_parameter("p" + std::to_string(i), params[i], i % 2 == 0);
    stats = {random_tensor({64}, 0.5f, 2.0f), random_tensor({5})};
    for (size_t i = 0; i < stats.size(); ++i) register_buffer("s" + std::to_string(i), stats[i]);
  }
  // Same values as `other`.
  void copy_values_from(RandomModule& other) {
    for (size_t i = 0; i < params.size(); ++i) params[i].value().copy_from(other.params[i].value());
    for (size_t i = 0; i < stats.size(); ++i) stats[i].copy_from(other.stats[i]);
  }
};

// The per-tensor reference of nn::AdamW: its own moments, one ops::adamw_step per parameter with a gradient.
struct PerTensorAdamW {
  std::vector<Tensor> m, v;
  explicit PerTensorAdamW(RandomModule& model) {
    for (const Variable& p : model.params) {
      m.push_back(Tensor::zeros(p.shape()));
      v.push_back(Tensor::zeros(p.shape()));
    }
  }
  void step(RandomModule& model, const nn::AdamWConfig& c, float lr, int64_t t) {
    for (size_t i = 0; i < model.params.size(); ++i) {
      if (!model.params[i].has_grad()) continue;
      const AdamWHyper h{lr, c.beta1, c.beta2, c.eps, i % 2 == 0 ? c.weight_decay : 0.0f, t};
      ops::adamw_step(model.params[i].value(), model.params[i].grad(), m[i], v[i], h);
    }
  }
};

// Largest |got - ref| relative to max |ref| (the moments v of clipped gradients are ~1e-7: relative to 1,
// as max_rel_error measures, any error would pass).
void compare(const std::string& what, const Tensor& got, const Tensor& ref, double tol) {
  std::vector<float> g = got.to_vector(), r = ref.to_vector();
  const double scale = std::max(max_abs(r), 1e-30);
  for (float& x : g) x = static_cast<float>(x / scale);
  for (float& x : r) x = static_cast<float>(x / scale);
  const double err = max_rel_error(what + " / max|ref|", g, to_double(r), tol);
  CHECK_MESSAGE(err <= tol, what << ": error " << err << " > " << tol);
}

// fp32 rounding: both sides run the same float expressions; a compiler contracting one into FMAs differs
// by an ulp or so per step.
constexpr double kTol = 1e-6;

}  // namespace

TEST_CASE("multi-tensor AdamW equals clip_grad_norm + adamw_step per tensor, skipping tensors without gradient") {
  // No clip; a max norm the gradients' (about 116) exceeds; one above it, where nothing is scaled.
  for (const float max_norm : {0.0f, 1.0f, 1e4f}) {
    CAPTURE(max_norm);
    RandomModule model, reference;
    reference.copy_values_from(model);
    nn::AdamWConfig config{1e-2f, 0.9f, 0.999f, 1e-8f, 0.05f, max_norm};
    nn::AdamW optimizer(model.parameters(), config);
    PerTensorAdamW per_tensor(reference);
    for (int64_t t = 1; t <= 3; ++t) {
      const float lr = 1e-2f / static_cast<float>(t);
      for (size_t i = 0; i < model.params.size(); ++i) {
        if (i == 3 && t != 2) continue;  // the scalar gets a gradient at step 2 only
        const Tensor g = random_tensor(kShapes[i]);
        model.params[i].accumulate_grad(g);
        reference.params[i].accumulate_grad(g.clone());
      }
      optimizer.step(lr);
      // Measured with or without clipping; clip_grad_norm with an infinite bound only measures.
      const float norm = nn::clip_grad_norm(reference.parameters(), max_norm > 0.0f ? max_norm : INFINITY);
      CHECK(optimizer.last_grad_norm() == norm);
      per_tensor.step(reference, config, lr, t);
      optimizer.zero_grad();
      for (Variable& p : reference.params) p.zero_grad();
    }
    const std::vector<nn::NamedBuffer> state = optimizer.state();
    REQUIRE(state.size() == 2 * kShapes.size());
    for (size_t i = 0; i < kShapes.size(); ++i) {
      const std::string name = "p" + std::to_string(i), where = name + " (max norm " + std::to_string(max_norm) + ")";
      CHECK(state[2 * i].name == "m." + name);
      CHECK(state[2 * i + 1].name == "v." + name);
      compare("multi-tensor adamw param " + where, model.params[i].value(), reference.params[i].value(), kTol);
      compare("multi-tensor adamw m " + where, *state[2 * i].tensor, per_tensor.m[i], kTol);
      compare("multi-tensor adamw v " + where, *state[2 * i + 1].tensor, per_tensor.v[i], kTol);
    }
    CHECK(optimizer.steps() == 3);
  }
}

TEST_CASE("multi-tensor EMA equals ema_update per tensor over parameters and buffers") {
  RandomModule model;
  nn::Ema ema(model, 0.95f);
  std::vector<Tensor> reference;
  for (const Variable& p : model.params) reference.push_back(p.value().clone());
  for (const Tensor& s : model.stats) reference.push_back(s.clone());
  for (int k = 0; k < 4; ++k) {
    for (Variable& p : model.params) p.value().copy_from(random_tensor(p.shape()));
    for (Tensor& s : model.stats) s.copy_from(random_tensor(s.shape()));
    const float d = ema.effective_decay();
    ema.update(model);
    size_t i = 0;
    for (const Variable& p : model.params) ops::ema_update(reference[i++], p.value(), d);
    for (const Tensor& s : model.stats) ops::ema_update(reference[i++], s, d);
  }
  const std::vector<nn::NamedBuffer> state = ema.state();
  REQUIRE(state.size() == reference.size());
  CHECK(state.front().name == "ema.p0");
  CHECK(state.back().name == "ema.s1");
  for (size_t i = 0; i < state.size(); ++i)
    compare("multi-tensor ema " + state[i].name, *state[i].tensor, reference[i], kTol);
}

TEST_CASE("multi-tensor AdamW: the norm stays readable, a non-finite gradient shows in it, bad lists are refused") {
  RandomModule model;
  nn::AdamW unclipped(model.parameters(), nn::AdamWConfig{});
  CHECK_THROWS_AS(unclipped.last_grad_norm(), Error);
  model.params[0].accumulate_grad(random_tensor(kShapes[0]));
  unclipped.step(1e-3f);
  CHECK(unclipped.last_grad_norm() == doctest::Approx(std::sqrt(ops::sum_squares(model.params[0].grad()))));
  unclipped.zero_grad();

  nn::AdamWConfig clip;
  clip.max_grad_norm = 1.0f;
  nn::AdamW optimizer(model.parameters(), clip);
  CHECK_THROWS_AS(optimizer.last_grad_norm(), Error);
  Tensor g = random_tensor(kShapes[0]);
  g.f32()[3] = std::numeric_limits<float>::quiet_NaN();
  model.params[0].accumulate_grad(g);
  optimizer.step(1e-3f);
  CHECK(std::isnan(optimizer.last_grad_norm()));

  Tensor p = random_tensor({4}), m = Tensor::zeros({4}), v = Tensor::zeros({4}), wrong = Tensor::zeros({5});
  Tensor norm = Tensor::zeros({1});
  AdamWTensors list{{&p}, {&m}, {&v}, {true}, nullptr};
  CHECK_THROWS_AS(ops::multi_tensor_adamw(list, {}, AdamWHyper{}, 0.0f, norm), ShapeError);
  CHECK_THROWS_AS(ops::multi_tensor_adamw(list, {random_tensor({5})}, AdamWHyper{}, 0.0f, norm), ShapeError);
  list.v = {&wrong};
  CHECK_THROWS_AS(ops::multi_tensor_adamw(list, {random_tensor({4})}, AdamWHyper{}, 0.0f, norm), ShapeError);
  EmaTensors pairs{{&p}, {&wrong}, nullptr};
  CHECK_THROWS_AS(ops::multi_tensor_ema(pairs, 0.9f), ShapeError);
}

TEST_CASE("AdamW and the EMA split in two for a recorded step: prepare then queue equals the step in one") {
  RandomModule whole, split;
  split.copy_values_from(whole);
  nn::AdamW whole_opt(whole.parameters(), {1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, 1.0f});
  nn::AdamW split_opt(split.parameters(), {1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, 1.0f});
  nn::Ema whole_ema(whole, 0.9f), split_ema(split, 0.9f);
  CHECK_THROWS_WITH_AS(split_opt.queue_step(), doctest::Contains("no step was prepared"), Error);
  CHECK_THROWS_WITH_AS(split_ema.queue_update(split), doctest::Contains("no update was prepared"), Error);
  for (int step = 0; step < 3; ++step) {
    const float lr = 1e-3f * static_cast<float>(step + 1);
    for (size_t i = 0; i < whole.params.size(); ++i) {
      const Tensor g = random_tensor(kShapes[i]);
      whole.params[i].accumulate_grad(g);
      split.params[i].accumulate_grad(g.clone());
    }
    whole_opt.step(lr);
    split_opt.prepare_step(lr);
    CHECK(split_opt.steps() == whole_opt.steps());  // counted when prepared
    split_opt.queue_step();
    whole_opt.zero_grad();
    split_opt.zero_grad();
    whole_ema.update(whole);
    split_ema.prepare_update();
    CHECK(split_ema.updates() == whole_ema.updates());
    split_ema.queue_update(split);
    CHECK(split_opt.last_grad_norm() == whole_opt.last_grad_norm());
  }
  for (size_t i = 0; i < whole.params.size(); ++i)
    CHECK(split.params[i].value().to_vector() == whole.params[i].value().to_vector());
  const auto whole_state = whole_ema.state(), split_state = split_ema.state();
  for (size_t i = 0; i < whole_state.size(); ++i)
    CHECK(split_state[i].tensor->to_vector() == whole_state[i].tensor->to_vector());
}
