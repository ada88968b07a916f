// Forward of every CPU op against a direct double-precision reference, on random inputs of odd sizes.
#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "base/counter_rng.h"
#include "tensor/ops.h"
#include "tests/test_util.h"

using namespace dsmil;
using namespace dsmil::test;

namespace {
// fp32 ops against double references over short sums: a few ulps of the largest term.
constexpr double kF32Tol = 1e-5;

float at5(const std::vector<float>& v, const Shape& s, int64_t a, int64_t b, int64_t c, int64_t d, int64_t e) {
  return v[(((a * s[1] + b) * s[2] + c) * s[3] + d) * s[4] + e];
}

std::vector<double> conv3d_reference(const Tensor& x, const Tensor& w, const Conv3dGeometry& g) {
  const Shape xs = x.shape(), ws = w.shape(), ys = ops::conv3d_output_shape(xs, ws, g);
  const auto xv = x.to_vector(), wv = w.to_vector();
  std::vector<double> y(shape_numel(ys), 0.0);
  for (int64_t n = 0; n < ys[0]; ++n)
    for (int64_t od = 0; od < ys[1]; ++od)
      for (int64_t oh = 0; oh < ys[2]; ++oh)
        for (int64_t ow = 0; ow < ys[3]; ++ow)
          for (int64_t k = 0; k < ys[4]; ++k) {
            double acc = 0.0;
            for (int64_t t = 0; t < ws[1]; ++t)
              for (int64_t r = 0; r < ws[2]; ++r)
                for (int64_t s = 0; s < ws[3]; ++s) {
                  const int64_t id = od * g.stride[0] - g.pad[0] + t, ih = oh * g.stride[1] - g.pad[1] + r,
                                iw = ow * g.stride[2] - g.pad[2] + s;
                  if (id < 0 || id >= xs[1] || ih < 0 || ih >= xs[2] || iw < 0 || iw >= xs[3]) continue;
                  for (int64_t c = 0; c < xs[4]; ++c)
                    acc += static_cast<double>(at5(xv, xs, n, id, ih, iw, c)) * at5(wv, ws, k, t, r, s, c);
                }
            y[(((n * ys[1] + od) * ys[2] + oh) * ys[3] + ow) * ys[4] + k] = acc;
          }
  return y;
}
}  // namespace

TEST_CASE("conv3d forward matches the direct sum (several geometries)") {
  struct Case {
    Shape x, w;
    Conv3dGeometry g;
  };
  const std::vector<Case> cases = {
      {{2, 3, 9, 7, 4}, {5, 3, 7, 7, 4}, {{3, 7, 7}, {1, 2, 2}, {1, 3, 3}}},  // the stem
      {{3, 3, 5, 6, 3}, {4, 3, 3, 3, 3}, {{3, 3, 3}, {1, 1, 1}, {1, 1, 1}}},  // a block conv
      {{2, 1, 7, 5, 6}, {3, 1, 1, 1, 6}, {{1, 1, 1}, {1, 2, 2}, {0, 0, 0}}},  // a projection shortcut
      {{1, 4, 6, 5, 2}, {3, 2, 3, 2, 2}, {{2, 3, 2}, {2, 1, 3}, {0, 1, 1}}},  // uneven everything
  };
  for (const Case& c : cases) {
    const Tensor x = random_tensor(c.x), w = random_tensor(c.w);
    const Tensor y = ops::conv3d_forward(x, w, c.g, MathMode{});
    CHECK(y.shape() == ops::conv3d_output_shape(c.x, c.w, c.g));
    CHECK(max_rel_error("conv3d " + shape_str(c.x) + "*" + shape_str(c.w), y.to_vector(), conv3d_reference(x, w, c.g),
                        kF32Tol) <= kF32Tol);
  }
}

TEST_CASE("the space-to-depth fold of a strided convolution gives the same y, dx and dw") {
  struct Case {
    Shape x, w;
    Conv3dGeometry g;
    int64_t folded_c;
  };
  const std::vector<Case> cases = {
      {{2, 3, 9, 7, 4}, {5, 3, 7, 7, 4}, {{3, 7, 7}, {1, 2, 2}, {1, 3, 3}}, 16},    // the stem, odd H and W
      {{2, 3, 10, 12, 4}, {5, 3, 7, 7, 4}, {{3, 7, 7}, {1, 2, 2}, {1, 3, 3}}, 32},  // widened with zeros
      {{1, 2, 11, 9, 3}, {4, 1, 7, 7, 3}, {{1, 7, 7}, {1, 2, 2}, {0, 3, 3}}, 12},   // kd = 1, C = 3
      {{2, 4, 8, 9, 2}, {3, 3, 3, 5, 2}, {{3, 3, 5}, {2, 3, 2}, {1, 1, 2}}, 16},    // uneven blocks, depth stride
  };
  for (const Case& c : cases) {
    const Conv3dFold f = ops::conv3d_fold(c.x, c.w, c.g, c.folded_c);
    const Tensor x = random_tensor(c.x), w = random_tensor(c.w);
    const Tensor xs = ops::space_to_depth(x, f.x_fold), ws = ops::space_to_depth(w, f.w_fold);
    const std::string name = "fold " + shape_str(c.x) + "*" + shape_str(c.w);
    const Tensor y = ops::conv3d_forward(xs, ws, f.geometry, MathMode{});
    REQUIRE(y.shape() == ops::conv3d_output_shape(c.x, c.w, c.g));
    CHECK(max_rel_error(name + " y", y.to_vector(), conv3d_reference(x, w, c.g), kF32Tol) <= kF32Tol);
    const Tensor dy = random_tensor(y.shape());
    const Tensor dx =
        ops::depth_to_space(ops::conv3d_backward_data(dy, ws, xs.shape(), f.geometry, MathMode{}), f.x_fold, c.x);
    CHECK(max_rel_error(name + " dx", dx.to_vector(),
                        to_double(ops::conv3d_backward_data(dy, w, c.x, c.g, MathMode{}).to_vector()),
                        kF32Tol) <= kF32Tol);
    const Tensor dw =
        ops::depth_to_space(ops::conv3d_backward_filter(xs, dy, ws.shape(), f.geometry, MathMode{}), f.w_fold, c.w);
    CHECK(max_rel_error(name + " dw", dw.to_vector(),
                        to_double(ops::conv3d_backward_filter(x, dy, c.w, c.g, MathMode{}).to_vector()),
                        kF32Tol) <= kF32Tol);
  }
}

TEST_CASE("batch norm forward: training normalises with batch statistics, eval uses running ones") {
  const Shape s{3, 2, 5, 3, 7};
  const int64_t c = 7, m = shape_numel(s) / c;
  const Tensor x = random_tensor(s, -2.0f, 3.0f), gamma = random_tensor({c}, 0.5f, 1.5f), beta = random_tensor({c});
  Tensor rm = random_tensor({c}), rv = random_tensor({c}, 0.5f, 2.0f);
  const auto rm0 = rm.to_vector(), rv0 = rv.to_vector();
  const float momentum = 0.1f, eps = 1e-5f;
  BatchNormTrainOut out = ops::batchnorm_forward_train(x, gamma, beta, rm, rv, momentum, eps);
  const auto xv = x.to_vector(), gv = gamma.to_vector(), bv = beta.to_vector();
  std::vector<double> ref(xv.size()), ref_rm(c), ref_rv(c), ref_eval(xv.size());
  for (int64_t ch = 0; ch < c; ++ch) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < m; ++i) mean += xv[i * c + ch];
    mean /= m;
    for (int64_t i = 0; i < m; ++i) var += (xv[i * c + ch] - mean) * (xv[i * c + ch] - mean);
    for (int64_t i = 0; i < m; ++i)
      ref[i * c + ch] = gv[ch] * (xv[i * c + ch] - mean) / std::sqrt(var / m + eps) + bv[ch];
    ref_rm[ch] = 0.9 * rm0[ch] + 0.1 * mean;
    ref_rv[ch] = 0.9 * rv0[ch] + 0.1 * var / (m - 1);
    for (int64_t i = 0; i < m; ++i)
      ref_eval[i * c + ch] = gv[ch] * (xv[i * c + ch] - ref_rm[ch]) / std::sqrt(ref_rv[ch] + eps) + bv[ch];
  }
  CHECK(max_rel_error("batchnorm train y", out.y.to_vector(), ref, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("batchnorm running mean", rm.to_vector(), ref_rm, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("batchnorm running var", rv.to_vector(), ref_rv, kF32Tol) <= kF32Tol);
  const Tensor ye = ops::batchnorm_forward_eval(x, gamma, beta, rm, rv, eps);
  CHECK(max_rel_error("batchnorm eval y", ye.to_vector(), ref_eval, kF32Tol) <= kF32Tol);
}

TEST_CASE("max pool forward takes the window maximum and records where it was") {
  const Shape s{2, 3, 9, 7, 3};
  const Tensor x = random_tensor(s);
  const Pool3dGeometry g{{1, 3, 3}, {1, 2, 2}, {0, 1, 1}};
  MaxPoolOut out = ops::maxpool3d_forward(x, g);
  const Shape ys = out.y.shape();
  CHECK(ys == Shape{2, 3, 5, 4, 3});
  const auto xv = x.to_vector(), yv = out.y.to_vector(), av = out.argmax.to_vector();
  std::vector<double> ref(yv.size());
  int wrong_argmax = 0;
  for (int64_t n = 0; n < ys[0]; ++n)
    for (int64_t d = 0; d < ys[1]; ++d)
      for (int64_t h = 0; h < ys[2]; ++h)
        for (int64_t w = 0; w < ys[3]; ++w)
          for (int64_t c = 0; c < ys[4]; ++c) {
            double best = -1e30;
            for (int64_t r = 0; r < 3; ++r)
              for (int64_t q = 0; q < 3; ++q) {
                const int64_t ih = h * 2 - 1 + r, iw = w * 2 - 1 + q;
                if (ih >= 0 && ih < s[2] && iw >= 0 && iw < s[3])
                  best = std::max<double>(best, at5(xv, s, n, d, ih, iw, c));
              }
            const int64_t o = (((n * ys[1] + d) * ys[2] + h) * ys[3] + w) * ys[4] + c;
            ref[o] = best;
            const int64_t flat = static_cast<int64_t>(av[o]);
            const float at = xv[(n * s[1] * s[2] * s[3] + flat) * s[4] + c];
            wrong_argmax += at == yv[o] ? 0 : 1;
          }
  CHECK(max_rel_error("maxpool3d", yv, ref, 0.0) == 0.0);
  CHECK(wrong_argmax == 0);
}

TEST_CASE("global average pool, matmul and bias against direct sums") {
  const Tensor x = random_tensor({3, 2, 5, 3, 6});
  const auto xv = x.to_vector();
  std::vector<double> ref(18, 0.0);
  for (int64_t n = 0; n < 3; ++n)
    for (int64_t v = 0; v < 30; ++v)
      for (int64_t c = 0; c < 6; ++c) ref[n * 6 + c] += xv[(n * 30 + v) * 6 + c] / 30.0;
  CHECK(max_rel_error("global_avg_pool", ops::global_avg_pool(x).to_vector(), ref, kF32Tol) <= kF32Tol);

  for (int flags = 0; flags < 4; ++flags) {
    const bool ta = flags & 1, tb = flags & 2;
    const int64_t m = 7, k = 5, n = 3;
    const Tensor a = random_tensor(ta ? Shape{k, m} : Shape{m, k}), b = random_tensor(tb ? Shape{n, k} : Shape{k, n});
    const auto av = a.to_vector(), bv = b.to_vector();
    std::vector<double> c(m * n, 0.0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t l = 0; l < k; ++l)
          c[i * n + j] +=
              static_cast<double>(ta ? av[l * m + i] : av[i * k + l]) * (tb ? bv[j * k + l] : bv[l * n + j]);
    CHECK(max_rel_error("matmul flags " + std::to_string(flags), ops::matmul(a, b, ta, tb, MathMode{}).to_vector(), c,
                        kF32Tol) <= kF32Tol);
  }
  const Tensor y = random_tensor({4, 3}), bias = random_tensor({3});
  std::vector<double> yb(12), db(3, 0.0);
  for (int i = 0; i < 12; ++i) yb[i] = y.to_vector()[i] + bias.to_vector()[i % 3];
  for (int i = 0; i < 12; ++i) db[i % 3] += y.to_vector()[i];
  CHECK(max_rel_error("add_bias", ops::add_bias(y, bias).to_vector(), yb, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("bias_backward", ops::bias_backward(y).to_vector(), db, kF32Tol) <= kF32Tol);
}

TEST_CASE("dropout and drop-path follow the counter-based mask exactly") {
  const Tensor x = random_tensor({4, 3, 5, 2});
  const float p = 0.3f;
  const uint64_t seed = rng()(), offset = 1234;
  const auto xv = x.to_vector(), yv = ops::dropout(x, p, seed, offset).to_vector();
  std::vector<double> ref(xv.size());
  int64_t kept = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    const bool keep = counter_uniform(seed, offset + i) >= p;
    kept += keep;
    ref[i] = keep ? xv[i] / (1.0 - p) : 0.0;
  }
  CHECK(max_rel_error("dropout", yv, ref, kF32Tol) <= kF32Tol);
  CHECK(kept > 0);
  CHECK(kept < static_cast<int64_t>(xv.size()));
  const auto dv = ops::drop_path(x, p, seed, offset).to_vector();
  const int64_t per = 30;
  for (int64_t n = 0; n < 4; ++n) {
    const bool keep = counter_uniform(seed, offset + n) >= p;
    for (int64_t i = 0; i < per; ++i) ref[n * per + i] = keep ? xv[n * per + i] / (1.0 - p) : 0.0;
  }
  CHECK(max_rel_error("drop_path", dv, ref, kF32Tol) <= kF32Tol);
}

TEST_CASE("the counter-based generator is uniform enough for masks") {
  const uint64_t seed = rng()();
  const int n = 200000;
  std::vector<int> bins(10, 0);
  for (int i = 0; i < n; ++i) {
    const float u = counter_uniform(seed, i);
    REQUIRE(u >= 0.0f);
    REQUIRE(u < 1.0f);
    ++bins[static_cast<int>(u * 10)];
  }
  // Each bin ~ Binomial(n, 0.1): sd = 134; 6 sd leaves no room for a biased generator.
  for (int b : bins) CHECK(std::abs(b - n / 10) < 6 * 134);
}

TEST_CASE("masked softmax with temperature and its attention statistics") {
  const int64_t bags = 3, n = 7;
  const Tensor e = random_tensor({bags, n}, -3.0f, 3.0f);
  std::vector<int32_t> mv(bags * n, 1);
  mv[2] = mv[5] = 0;                              // bag 0 has two masked instances
  for (int i = 1; i < n; ++i) mv[2 * n + i] = 0;  // bag 2 keeps only one
  const Tensor mask = Tensor::from_ints({bags, n}, mv);
  const float temperature = 0.7f;
  MaskedSoftmaxOut out = ops::masked_softmax(e, mask, temperature);
  const auto ev = e.to_vector();
  std::vector<double> ref(bags * n, 0.0), stats(bags * 3);
  for (int64_t b = 0; b < bags; ++b) {
    double z = 0.0;
    for (int64_t i = 0; i < n; ++i) z += mv[b * n + i] ? std::exp(ev[b * n + i] / temperature) : 0.0;
    double ent = 0.0, top = 0.0, sq = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double a = mv[b * n + i] ? std::exp(ev[b * n + i] / temperature) / z : 0.0;
      ref[b * n + i] = a;
      ent -= a > 0 ? a * std::log(a) : 0.0;
      top = std::max(top, a);
      sq += a * a;
    }
    stats[b * 3] = ent;
    stats[b * 3 + 1] = top;
    stats[b * 3 + 2] = 1.0 / sq;
  }
  CHECK(max_rel_error("masked_softmax", out.a.to_vector(), ref, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("attention stats", out.stats.to_vector(), stats, kF32Tol) <= kF32Tol);
  CHECK(out.a.to_vector()[2 * n] == doctest::Approx(1.0));  // a single kept instance takes all
}

TEST_CASE("masked softmax and its backward refuse a temperature that is not > 0, in the dispatch") {
  const Tensor e = random_tensor({2, 5}), mask = Tensor::from_ints({2, 5}, std::vector<int>(10, 1));
  for (const float temperature : {0.0f, -0.5f, NAN}) {
    CAPTURE(temperature);
    CHECK_THROWS_WITH_AS(ops::masked_softmax(e, mask, temperature),
                         ("masked_softmax: temperature must be > 0, got " + fmt::format("{}", temperature)).c_str(),
                         ShapeError);
    CHECK_THROWS_WITH_AS(
        ops::masked_softmax_backward(e, e, temperature),
        ("masked_softmax_backward: temperature must be > 0, got " + fmt::format("{}", temperature)).c_str(),
        ShapeError);
  }
}

TEST_CASE(
    "focal loss refuses shapes, dtypes and gamma in the dispatch, and gives NaN for bad targets or zero weights") {
  const Tensor logits = random_tensor({4, 2}, -3.0f, 3.0f);
  const Tensor target = Tensor::from_ints({4}, {1, 0, 1, 0});
  const Tensor weight = Tensor::from_vector({4}, {0.7f, 2.0f, 0.7f, 2.0f});
  CHECK_THROWS_WITH_AS(ops::focal_loss(logits, Tensor::from_ints({3}, {1, 0, 1}), weight, 0.1f, 2.0f),
                       "focal_loss: logits f32[4,2] cpu, target i32[3] cpu and weight f32[4] cpu do not fit (expected "
                       "[B, C >= 1], [B], [B])",
                       ShapeError);
  CHECK_THROWS_AS(ops::focal_loss(logits, target, Tensor::from_vector({4, 1}, {1, 1, 1, 1}), 0.1f, 2.0f), ShapeError);
  CHECK_THROWS_AS(ops::focal_loss(random_tensor({4}), target, weight, 0.1f, 2.0f), ShapeError);
  CHECK_THROWS_AS(ops::focal_loss(logits, weight, weight, 0.1f, 2.0f), ShapeError);  // target must be I32
  for (const float gamma : {-1.0f, NAN}) {
    CAPTURE(gamma);
    CHECK_THROWS_WITH_AS(ops::focal_loss(logits, target, weight, 0.1f, gamma),
                         fmt::format("focal_loss: gamma {} must be >= 0", gamma).c_str(), ShapeError);
  }
  // Values are the device's to see: a target outside [0, C) poisons its sample, its gradient row and the loss.
  const FocalLossOut bad_target = ops::focal_loss(logits, Tensor::from_ints({4}, {1, 2, 0, -1}), weight, 0.1f, 2.0f);
  const std::vector<float> per_sample = bad_target.per_sample.to_vector(), grad = bad_target.grad.to_vector();
  CHECK(std::isnan(bad_target.loss.to_vector()[0]));
  for (int b = 0; b < 4; ++b) {
    CAPTURE(b);
    const bool outside = b == 1 || b == 3;
    CHECK(std::isnan(per_sample[b]) == outside);
    CHECK(std::isnan(grad[2 * b]) == outside);
    CHECK(std::isnan(grad[2 * b + 1]) == outside);
  }
  const FocalLossOut unweighted = ops::focal_loss(logits, target, Tensor::zeros({4}), 0.1f, 2.0f);
  CHECK(!std::isfinite(unweighted.loss.to_vector()[0]));
  CHECK(!ops::all_finite(unweighted.grad));
  CHECK(ops::all_finite(unweighted.per_sample));
}

TEST_CASE("top-k selection: descending, ties to the lower index, masked never chosen, -1 fills") {
  const Tensor score = Tensor::from_vector({2, 6}, {0.5f, 2.0f, 2.0f, -1.0f, 3.0f, 0.0f,  //
                                                    1.0f, 9.0f, 2.0f, 3.0f, 4.0f, 5.0f});
  const Tensor mask = Tensor::from_ints({2, 6}, {1, 1, 1, 1, 0, 1,  //
                                                 0, 0, 1, 0, 1, 0});
  const auto idx = ops::topk_indices(score, mask, 3).to_vector();
  CHECK(idx == std::vector<float>{1, 2, 0, 4, 2, -1});
  // gather_mean over the valid indices only
  const Tensor x = random_tensor({2, 6, 4});
  const auto xv = x.to_vector(), y = ops::gather_mean(x, ops::topk_indices(score, mask, 3)).to_vector();
  std::vector<double> ref(8);
  for (int f = 0; f < 4; ++f) {
    ref[f] = (xv[(0 * 6 + 1) * 4 + f] + xv[(0 * 6 + 2) * 4 + f] + xv[(0 * 6 + 0) * 4 + f]) / 3.0;
    ref[4 + f] = (xv[(1 * 6 + 4) * 4 + f] + xv[(1 * 6 + 2) * 4 + f]) / 2.0;
  }
  CHECK(max_rel_error("gather_mean", y, ref, kF32Tol) <= kF32Tol);
}

TEST_CASE("bag contractions weighted_sum, dot, outer") {
  const int64_t bags = 3, n = 5, f = 4;
  const Tensor a = random_tensor({bags, n}), v = random_tensor({bags, n, f}), m = random_tensor({bags, f});
  const auto av = a.to_vector(), vv = v.to_vector(), mv = m.to_vector();
  std::vector<double> ws(bags * f, 0.0), dot(bags * n, 0.0), outer(bags * n * f);
  for (int64_t b = 0; b < bags; ++b)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < f; ++k) {
        ws[b * f + k] += static_cast<double>(av[b * n + i]) * vv[(b * n + i) * f + k];
        dot[b * n + i] += static_cast<double>(vv[(b * n + i) * f + k]) * mv[b * f + k];
        outer[(b * n + i) * f + k] = static_cast<double>(av[b * n + i]) * mv[b * f + k];
      }
  CHECK(max_rel_error("bag_weighted_sum", ops::bag_weighted_sum(a, v).to_vector(), ws, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("bag_dot", ops::bag_dot(v, m).to_vector(), dot, kF32Tol) <= kF32Tol);
  CHECK(max_rel_error("bag_outer", ops::bag_outer(a, m).to_vector(), outer, kF32Tol) <= kF32Tol);
}

TEST_CASE("focal loss forward: smoothed CE at gamma 0, focal weights, class weights") {
  const Tensor logits = random_tensor({5, 2}, -3.0f, 3.0f);
  const Tensor target = Tensor::from_ints({5}, {1, 0, 1, 1, 0});
  const Tensor weight = Tensor::from_vector({5}, {0.7f, 2.0f, 0.7f, 0.7f, 2.0f});
  const auto lv = logits.to_vector();
  for (float gamma : {0.0f, 2.0f, 0.5f}) {
    const float eps = 0.2f;
    double num = 0.0, den = 0.0;
    for (int b = 0; b < 5; ++b) {
      const int t = target.to_vector()[b];
      const double z = std::exp(lv[b * 2]) + std::exp(lv[b * 2 + 1]);
      double l = 0.0;
      for (int c = 0; c < 2; ++c) {
        const double p = std::exp(lv[b * 2 + c]) / z;
        const double q = (c == t ? 1.0 - eps : 0.0) + eps / 2;
        l -= q * std::pow(1.0 - p, gamma) * std::log(p);
      }
      num += weight.to_vector()[b] * l;
      den += weight.to_vector()[b];
    }
    const FocalLossOut out = ops::focal_loss(logits, target, weight, eps, gamma);
    CHECK(max_rel_error("focal_loss gamma " + std::to_string(gamma), out.loss.to_vector(), {num / den}, kF32Tol) <=
          kF32Tol);
  }
}
