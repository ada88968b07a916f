// The fused batch norm + ReLU (ops::batchnorm_relu_*, fn::batchnorm_relu) on the CPU: forward and backward
// against the separate ops it replaces (BN, drop-path, add, ReLU), the backward against central finite
// differences, the backward without y (mask from x) against the y path, and the recomputation of y from the saved
// statistics against the training forward's; with and without a residual and a per-sample factor, training and
// evaluation.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "tensor/functions.h"
#include "tests/test_util.h"

using namespace dsmil;
using namespace dsmil::test;

namespace {

constexpr float kMomentum = 0.1f, kEps = 1e-5f;
// The fused CPU op runs the very float operations of the composition (it is seen to agree bit for bit):
// a difference above one rounding of the largest value is a bug.
constexpr double kSameOpsTol = 1e-6;
// Finite differences as in tests/tensor/op_test_util.h.
constexpr double kH = 1e-2, kTol = 2e-3;
constexpr float kDropP = 0.5f;

// x[..., c] = offset_c + scale_c u with u uniform in [-1, 1), log10 scale_c uniform in [lo, hi], offset_c
// within two scales of 0: every channel its own scale.
Tensor channel_scaled(const Shape& shape, float log10_lo, float log10_hi) {
  Tensor t = random_tensor(shape);
  const int64_t c = shape.back();
  std::uniform_real_distribution<float> exponent(log10_lo, log10_hi), shift(-2.0f, 2.0f);
  std::vector<float> scale(c), offset(c);
  for (int64_t ch = 0; ch < c; ++ch) {
    scale[ch] = std::pow(10.0f, exponent(rng()));
    offset[ch] = scale[ch] * shift(rng());
  }
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = offset[i % c] + scale[i % c] * p[i];
  return t;
}

double compare(const std::string& what, const Tensor& got, const Tensor& ref, double tol) {
  REQUIRE_MESSAGE(got.shape() == ref.shape(), what << ": " << got.describe() << " vs " << ref.describe());
  return max_rel_error(what, got.to_vector(), to_double(ref.to_vector()), tol);
}

struct Variant {
  bool residual, factor;
  std::string name() const {
    return std::string(residual ? "residual" : "no residual") + (factor ? ", drop-path factor" : "");
  }
};
const Variant kVariants[] = {{false, false}, {true, false}, {false, true}, {true, true}};

// Drop-path counters and their per-sample factors keep / (1 - p), made as nn::BasicBlock makes them
// (drop_path of ones), with some samples kept and some dropped: a mask of all or none would test less.
struct DropPath {
  uint64_t seed, offset;
  Tensor factor;
};

DropPath mixed_drop_path(int64_t samples) {
  const uint64_t seed = rng()();
  for (uint64_t offset = 0;; offset += samples) {
    const Tensor factor = ops::drop_path(Tensor::full({samples}, 1.0f), kDropP, seed, offset);
    const std::vector<float> f = factor.to_vector();
    if (std::count(f.begin(), f.end(), 0.0f) % samples != 0) return {seed, offset, factor};
  }
}

// The gradients of the composition nn::BasicBlock used before the fusion (BN, drop-path, add, ReLU as separate
// autograd ops) for the output gradient dy; residual undefined: no add.
struct ComposedGrads {
  Variable x, gamma, beta, residual;
  Tensor y;
};

ComposedGrads composed_grads(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& residual,
                             const DropPath* drop, const Tensor& dy) {
  const int64_t c = x.size(-1);
  ComposedGrads ref{Variable(x.clone(), true), Variable(gamma.clone(), true), Variable(beta.clone(), true),
                    residual.defined() ? Variable(residual.clone(), true) : Variable(), Tensor()};
  Tensor rm = Tensor::zeros({c}), rv = Tensor::full({c}, 1.0f);
  Variable branch = fn::batchnorm(ref.x, ref.gamma, ref.beta, rm, rv, true, kMomentum, kEps);
  if (drop) branch = fn::drop_path(branch, kDropP, drop->seed, drop->offset);
  if (residual.defined()) branch = fn::add(branch, ref.residual);
  Variable y = fn::relu(branch);
  y.backward(dy);
  ref.y = y.value();
  return ref;
}

}  // namespace

TEST_CASE("fused batch norm + ReLU forward equals BN, drop-path, add, ReLU as separate ops (train and eval)") {
  const Shape shape{4, 3, 5, 3, 6};
  const int64_t c = shape.back();
  for (const Variant& v : kVariants) {
    const Tensor x = channel_scaled(shape, -2.0f, 2.0f), gamma = random_tensor({c}, -1.5f, 1.5f);
    const Tensor beta = random_tensor({c}), residual = v.residual ? random_tensor(shape, -2.0f, 2.0f) : Tensor();
    const DropPath drop = mixed_drop_path(shape[0]);
    const Tensor factor = v.factor ? drop.factor : Tensor();
    const Tensor mean0 = random_tensor({c}), var0 = random_tensor({c}, 0.5f, 2.0f);

    Tensor rm_fused = mean0.clone(), rv_fused = var0.clone(), rm_ref = mean0.clone(), rv_ref = var0.clone();
    const BatchNormTrainOut fused =
        ops::batchnorm_relu_forward_train(x, gamma, beta, rm_fused, rv_fused, kMomentum, kEps, residual, factor);
    const BatchNormTrainOut bn = ops::batchnorm_forward_train(x, gamma, beta, rm_ref, rv_ref, kMomentum, kEps);
    auto finish = [&](Tensor branch) {
      if (v.factor) branch = ops::drop_path(branch, kDropP, drop.seed, drop.offset);
      if (v.residual) branch = ops::add(branch, residual);
      return ops::relu(branch);
    };
    const std::string tag = " (" + v.name() + ")";
    CHECK(compare("fused train y" + tag, fused.y, finish(bn.y), kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("fused save_mean" + tag, fused.save_mean, bn.save_mean, kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("fused save_invstd" + tag, fused.save_invstd, bn.save_invstd, kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("fused running_mean" + tag, rm_fused, rm_ref, kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("fused running_var" + tag, rv_fused, rv_ref, kSameOpsTol) <= kSameOpsTol);
    // A ReLU that cut nothing or everything would test little.
    const std::vector<float> y = fused.y.to_vector();
    const auto zeros = std::count(y.begin(), y.end(), 0.0f);
    CHECK(zeros > 0);
    CHECK(zeros < static_cast<int64_t>(y.size()));

    const Tensor eval = ops::batchnorm_relu_forward_eval(x, gamma, beta, mean0, var0, kEps, residual, factor);
    const Tensor eval_ref = finish(ops::batchnorm_forward_eval(x, gamma, beta, mean0, var0, kEps));
    CHECK(compare("fused eval y" + tag, eval, eval_ref, kSameOpsTol) <= kSameOpsTol);
  }
}

TEST_CASE("fused batch norm + ReLU backward equals the backward of the separate ops (autograd, every input)") {
  const Shape shape{3, 2, 4, 5, 7};
  const int64_t c = shape.back();
  for (const Variant& v : kVariants) {
    const Tensor x = channel_scaled(shape, -2.0f, 2.0f), gamma = random_tensor({c}, -1.5f, 1.5f);
    const Tensor beta = random_tensor({c}), residual = random_tensor(shape, -2.0f, 2.0f);
    const DropPath drop = mixed_drop_path(shape[0]);
    const Tensor dy = random_tensor(shape);

    const ComposedGrads ref =
        composed_grads(x, gamma, beta, v.residual ? residual : Tensor(), v.factor ? &drop : nullptr, dy);

    Variable x_fused(x.clone(), true), gamma_fused(gamma.clone(), true), beta_fused(beta.clone(), true),
        residual_fused(residual.clone(), true);
    Tensor rm = Tensor::zeros({c}), rv = Tensor::full({c}, 1.0f);
    Variable y = fn::batchnorm_relu(x_fused, gamma_fused, beta_fused, rm, rv, true, kMomentum, kEps,
                                    v.residual ? residual_fused : Variable(), v.factor ? drop.factor : Tensor());
    y.backward(dy);

    const std::string tag = " (" + v.name() + ")";
    CHECK(compare("fused y" + tag, y.value(), ref.y, kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("fused dx" + tag, x_fused.grad(), ref.x.grad(), kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("fused dgamma" + tag, gamma_fused.grad(), ref.gamma.grad(), kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("fused dbeta" + tag, beta_fused.grad(), ref.beta.grad(), kSameOpsTol) <= kSameOpsTol);
    if (v.residual)
      CHECK(compare("fused dresidual" + tag, residual_fused.grad(), ref.residual.grad(), kSameOpsTol) <= kSameOpsTol);
    else
      CHECK_FALSE(residual_fused.has_grad());
  }
}

TEST_CASE(
    "fused batch norm + ReLU backward without y: the mask from x gives the y path's and the composition's "
    "gradients") {
  const Shape shape{3, 2, 4, 5, 7};
  const int64_t c = shape.back();
  for (const bool with_factor : {false, true}) {
    const Tensor x = channel_scaled(shape, -2.0f, 2.0f), gamma = random_tensor({c}, -1.5f, 1.5f);
    const Tensor beta = random_tensor({c});
    const DropPath drop = mixed_drop_path(shape[0]);
    const Tensor factor = with_factor ? drop.factor : Tensor();
    const Tensor dy = random_tensor(shape);
    Tensor rm = Tensor::zeros({c}), rv = Tensor::full({c}, 1.0f);
    const BatchNormTrainOut out =
        ops::batchnorm_relu_forward_train(x, gamma, beta, rm, rv, kMomentum, kEps, Tensor(), factor);
    const BatchNormReluGrads from_y =
        ops::batchnorm_relu_backward(dy, out.y, x, gamma, Tensor(), out.save_mean, out.save_invstd, factor, false);
    const BatchNormReluGrads from_x =
        ops::batchnorm_relu_backward(dy, Tensor(), x, gamma, beta, out.save_mean, out.save_invstd, factor, false);
    const ComposedGrads ref = composed_grads(x, gamma, beta, Tensor(), with_factor ? &drop : nullptr, dy);

    const std::string tag = with_factor ? " (drop-path factor)" : " (no factor)";
    CHECK_FALSE(from_x.d_residual.defined());
    CHECK(compare("y-less dx vs y path" + tag, from_x.dx, from_y.dx, kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("y-less dgamma vs y path" + tag, from_x.dgamma, from_y.dgamma, kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("y-less dbeta vs y path" + tag, from_x.dbeta, from_y.dbeta, kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("y-less dx vs composition" + tag, from_x.dx, ref.x.grad(), kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("y-less dgamma vs composition" + tag, from_x.dgamma, ref.gamma.grad(), kSameOpsTol) <= kSameOpsTol);
    CHECK(compare("y-less dbeta vs composition" + tag, from_x.dbeta, ref.beta.grad(), kSameOpsTol) <= kSameOpsTol);
    // The mask must matter: a ReLU that cut nothing or everything would not tell a wrong one apart.
    const std::vector<float> y = out.y.to_vector();
    const auto zeros = std::count(y.begin(), y.end(), 0.0f);
    CHECK(zeros > 0);
    CHECK(zeros < static_cast<int64_t>(y.size()));
  }
}

TEST_CASE("batchnorm_relu_apply recomputes the training forward's y bit for bit from its saved statistics") {
  for (const Shape& shape : {Shape{4, 3, 5, 3, 6}, Shape{3, 2, 4, 4, 16}, Shape{9, 17}}) {
    const int64_t c = shape.back();
    const Tensor x = channel_scaled(shape, -2.0f, 2.0f), gamma = random_tensor({c}, -1.5f, 1.5f);
    const Tensor beta = random_tensor({c});
    Tensor rm = random_tensor({c}), rv = random_tensor({c}, 0.5f, 2.0f);
    const BatchNormTrainOut out =
        ops::batchnorm_relu_forward_train(x, gamma, beta, rm, rv, kMomentum, kEps, Tensor(), Tensor());
    const Tensor y = ops::batchnorm_relu_apply(x, gamma, beta, out.save_mean, out.save_invstd);
    CHECK(compare("apply vs train y " + shape_str(shape), y, out.y, 0.0) == 0.0);
    REQUIRE(y.dtype() == out.y.dtype());
    CHECK(std::memcmp(y.f32(), out.y.f32(), shape_numel(shape) * sizeof(float)) == 0);
    const std::vector<float> values = y.to_vector();
    const auto zeros = std::count(values.begin(), values.end(), 0.0f);
    CHECK(zeros > 0);
    CHECK(zeros < static_cast<int64_t>(values.size()));
  }
}

TEST_CASE("fused batch norm + ReLU backward against central finite differences") {
  // No step of kH may carry a pre-activation s[n] BN(x) (+ r) across the ReLU's kink. A step moves it by at
  // most s[n] 0.03 (x: s gamma kH / std with std >= 0.5; gamma: s kH |xhat|; beta, r: s kH or kH). With a
  // residual, r = t - s[n] BN(x) for targets t of either sign with |t| >= 0.2 (and s <= 2). Without, each
  // channel holds +-(0.5 + u) scale in equal numbers (|xhat| > 0.3) and |beta| <= 0.05, so that
  // |BN(x)| >= kMargin > 0.03 on every sample that is kept (a dropped one's output is 0 whatever the step).
  constexpr float kMargin = 0.05f;
  const Shape shape{4, 2, 3, 2, 5};
  const int64_t c = shape.back(), rows = shape_numel(shape) / c, per_sample = shape_numel(shape) / shape[0];
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (const Variant& v : kVariants) {
    const Tensor factor = v.factor ? mixed_drop_path(shape[0]).factor : Tensor();
    const std::vector<float> s = v.factor ? factor.to_vector() : std::vector<float>(shape[0], 1.0f);
    const Tensor gamma = random_tensor({c}, 0.5f, 1.5f), beta = random_tensor({c}, -0.05f, 0.05f);
    Tensor x, residual;
    if (v.residual) {
      x = channel_scaled(shape, std::log10(0.5f), std::log10(3.0f));
      residual = random_tensor(shape);
    } else {
      x = Tensor::empty(shape);
      for (int64_t ch = 0; ch < c; ++ch) {
        std::vector<float> column(rows);
        for (int64_t i = 0; i < rows; ++i) column[i] = (i % 2 ? 1.0f : -1.0f) * (0.5f + unit(rng()));
        std::shuffle(column.begin(), column.end(), rng());
        const float scale = 0.5f + 2.5f * unit(rng()), offset = 2.0f * unit(rng()) - 1.0f;
        for (int64_t i = 0; i < rows; ++i) x.f32()[i * c + ch] = offset + scale * column[i];
      }
    }
    Tensor rm = Tensor::zeros({c}), rv = Tensor::full({c}, 1.0f);
    const std::vector<float> bn = ops::batchnorm_forward_train(x, gamma, beta, rm, rv, kMomentum, kEps).y.to_vector();
    float worst = INFINITY;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float branch = s[i / per_sample] * bn[i];
      if (v.residual) {
        const float target = (residual.f32()[i] < 0.0f ? -1.0f : 1.0f) * (0.2f + 0.8f * unit(rng()));
        residual.f32()[i] = target - branch;
        worst = std::min(worst, std::fabs(target));
      } else if (s[i / per_sample] != 0.0f) {
        worst = std::min(worst, std::fabs(bn[i]));
      }
    }
    REQUIRE_MESSAGE(worst >= kMargin, "a pre-activation lies " << worst << " from the ReLU's kink");
    std::vector<Tensor> inputs{x, gamma, beta};
    if (v.residual) inputs.push_back(residual);
    gradcheck(
        "batchnorm_relu (" + v.name() + ")",
        [&](const std::vector<Variable>& in) {
          return fn::batchnorm_relu(in[0], in[1], in[2], rm, rv, true, kMomentum, kEps, v.residual ? in[3] : Variable(),
                                    factor);
        },
        inputs, kH, kTol);
  }
}

TEST_CASE("fused batch norm + ReLU: evaluation has no backward, bad residuals and factors are ShapeErrors") {
  const Shape shape{3, 2, 2, 2, 4};
  const Tensor x = random_tensor(shape), gamma = random_tensor({4}), beta = random_tensor({4});
  Tensor rm = Tensor::zeros({4}), rv = Tensor::full({4}, 1.0f);
  Variable input(x.clone(), true);
  CHECK_THROWS_AS(fn::batchnorm_relu(input, Variable(gamma), Variable(beta), rm, rv, false, kMomentum, kEps)
                      .backward(random_tensor(shape)),
                  Error);
  CHECK_THROWS_AS(ops::batchnorm_relu_forward_train(x, gamma, beta, rm, rv, kMomentum, kEps,
                                                    random_tensor({3, 2, 2, 2, 5}), Tensor()),
                  ShapeError);
  CHECK_THROWS_AS(ops::batchnorm_relu_forward_eval(x, gamma, beta, rm, rv, kEps, Tensor(), random_tensor({2})),
                  ShapeError);
  CHECK_THROWS_AS(ops::batchnorm_relu_backward(random_tensor(shape), random_tensor(shape), x, gamma, beta, rm, rv,
                                               random_tensor({4}), false),
                  ShapeError);
}

TEST_CASE("fused batch norm + ReLU without a residual: its output lives only as long as an op that reads it") {
  // The stem's pattern: BN + ReLU, then a max pool, whose backward reads its argmax, not its input.
  const Shape shape{2, 2, 8, 8, 16};
  const size_t value_bytes = shape_numel(shape) * sizeof(float);
  const Variable x(random_tensor(shape), true), gamma(random_tensor({16}), true), beta(random_tensor({16}), true);
  Tensor rm = Tensor::zeros({16}), rv = Tensor::full({16}, 1.0f);
  const Pool3dGeometry pool{{1, 3, 3}, {1, 2, 2}, {0, 1, 1}};
  const size_t before = host_bytes_in_use();
  Variable pooled;
  {
    const Variable y = fn::batchnorm_relu(x, gamma, beta, rm, rv, true, kMomentum, kEps);
    pooled = fn::maxpool3d(y, pool);
  }
  const size_t held = host_bytes_in_use() - before;
  // The pooled value is a quarter of y and its u8 argmax a sixteenth; y itself (value_bytes) must not be among them.
  MESSAGE("bytes held after the max pool " << held << ", the BN + ReLU output " << value_bytes);
  CHECK(held < value_bytes);
  pooled.backward(random_tensor(pooled.shape()));
  CHECK(x.has_grad());
  CHECK(gamma.has_grad());
}

TEST_CASE("a convolution reading a batch norm + ReLU output remakes it for its weight gradient: same bits, not held") {
  // A residual block's first half: BN + ReLU of a convolution's output, then a convolution (stride 2 here, so that
  // its output is a quarter of the BN + ReLU output and the two can be told apart in the bytes held).
  const Shape shape{2, 2, 8, 8, 16};
  const size_t value_bytes = shape_numel(shape) * sizeof(float);
  const Conv3dGeometry geometry{{3, 3, 3}, {1, 2, 2}, {1, 1, 1}};
  const Tensor c_value = random_tensor(shape), gamma_value = random_tensor({16}), beta_value = random_tensor({16});
  const Variable c(c_value.clone(), true), gamma(gamma_value.clone(), true), beta(beta_value.clone(), true),
      w(random_tensor({16, 3, 3, 3, 16}, -0.3f, 0.3f), true);
  Tensor rm = Tensor::zeros({16}), rv = Tensor::full({16}, 1.0f);
  const size_t before = host_bytes_in_use();
  Variable out;
  {
    const Variable y = fn::batchnorm_relu(c, gamma, beta, rm, rv, true, kMomentum, kEps);
    out = fn::conv3d(y, w, geometry, MathMode{});
  }
  const size_t held = host_bytes_in_use() - before;
  MESSAGE("bytes held after the convolution " << held << ", the BN + ReLU output " << value_bytes);
  CHECK(held < value_bytes);
  const Tensor dy = random_tensor(out.shape());
  out.backward(dy);

  // The weight gradient from the y the training forward wrote, kept.
  Tensor rm_kept = Tensor::zeros({16}), rv_kept = Tensor::full({16}, 1.0f);
  const BatchNormTrainOut kept = ops::batchnorm_relu_forward_train(c_value, gamma_value, beta_value, rm_kept, rv_kept,
                                                                   kMomentum, kEps, Tensor(), Tensor());
  const Tensor dw_kept = ops::conv3d_backward_filter(kept.y, dy, w.shape(), geometry, MathMode{});
  REQUIRE(w.grad().numel() == dw_kept.numel());
  float worst = 0.0f;
  for (int64_t i = 0; i < dw_kept.numel(); ++i)
    worst = std::max(worst, std::fabs(w.grad().f32()[i] - dw_kept.f32()[i]));
  MESSAGE("largest difference of the weight gradients, remade y against kept y: " << worst);
  CHECK(worst == 0.0f);
}
