// Helpers shared by the tests: seeded random tensors, error measures, and the finite-difference
// gradient check used for every differentiable function.
#pragma once

#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "tensor/autograd.h"
#include "tensor/tensor.h"

namespace dsmil::test {

// A fresh seed per process (printed), so that every run checks other inputs; DSMIL_TEST_SEED=N replays the
// run that printed N.
inline uint64_t run_seed() {
  static const uint64_t seed = [] {
    const char* replay = std::getenv("DSMIL_TEST_SEED");
    const uint64_t s = replay != nullptr ? std::stoull(replay) : std::random_device{}();
    std::printf("[test] random seed %llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

// scratch("name"): a folder for this test process's files, under one root in the temp directory that is
// removed when the process ends (ctest runs each test case in a process of its own), so that test runs
// leave nothing behind. Forked children that exit normally do not remove it: only the process that made it.
inline std::filesystem::path scratch(const std::string& name) {
  struct Root {
    std::filesystem::path path;
    pid_t owner;
    ~Root() {
      std::error_code ignored;
      if (::getpid() == owner) std::filesystem::remove_all(path, ignored);
    }
  };
  static const Root root{std::filesystem::temp_directory_path() /
                             ("dsmil_test_" + std::to_string(::getpid()) + "_" + std::to_string(run_seed())),
                         ::getpid()};
  const std::filesystem::path dir = root.path / name;
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::mt19937_64& rng() {
  static std::mt19937_64 engine(run_seed());
  return engine;
}

inline Tensor random_tensor(const Shape& shape, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(shape_numel(shape));
  for (float& x : v) x = dist(rng());
  return Tensor::from_vector(shape, v);
}

// Values whose pairwise gaps all exceed `gap` (a shuffled ramp plus small noise): keeps max pooling,
// ReLU and top-k away from ties and kinks under finite-difference steps smaller than gap / 2.
inline Tensor spread_tensor(const Shape& shape, float gap) {
  const int64_t n = shape_numel(shape);
  std::vector<float> v(n);
  std::uniform_real_distribution<float> jitter(0.0f, 0.2f * gap);
  for (int64_t i = 0; i < n; ++i) v[i] = (static_cast<float>(i) - 0.5f * n) * gap + jitter(rng());
  std::shuffle(v.begin(), v.end(), rng());
  return Tensor::from_vector(shape, v);
}

inline double max_abs(const std::vector<float>& v) {
  double m = 0.0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

// Largest |a - b| over all elements, relative to max(1, max |b|); prints it with the tolerance.
inline double max_rel_error(const std::string& what, const std::vector<float>& a, const std::vector<double>& b,
                            double tol) {
  REQUIRE(a.size() == b.size());
  double scale = 1.0, worst = 0.0;
  for (double x : b) scale = std::max(scale, std::fabs(x));
  for (size_t i = 0; i < a.size(); ++i) {
    const double err = std::fabs(a[i] - b[i]);
    worst = std::isnan(err) ? INFINITY : std::max(worst, err);
  }
  std::printf("[check] %-40s max error %.3e (scale %.3e) tolerance %.1e\n", what.c_str(), worst / scale, scale, tol);
  return worst / scale;
}

inline std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Finite-difference check of a differentiable function f of several inputs.
// L = <r, f(x)> with a fixed random r; analytic dL/dx from one backward pass; numeric from central
// differences (h) on up to `probes` elements of each input, L summed in double.
// fp32 values: the numeric estimate carries truncation O(h^2) and rounding ~1e-7 |L| / h, so `tol`
// (relative to max(1, max |grad|)) is set per test from h and the function's scale.
inline void gradcheck(const std::string& name, const std::function<Variable(const std::vector<Variable>&)>& f,
                      const std::vector<Tensor>& inputs, double h, double tol, int probes = 24) {
  std::vector<Variable> vars;
  for (const Tensor& t : inputs) vars.emplace_back(t.clone(), true);
  Variable y = f(vars);
  const Tensor r = random_tensor(y.shape());
  y.backward(r);
  const std::vector<float> rv = r.to_vector();
  auto objective = [&](const std::vector<Variable>& xs) {
    NoGradGuard no_grad;
    const std::vector<float> out = f(xs).value().to_vector();
    double total = 0.0;
    for (size_t i = 0; i < out.size(); ++i) total += static_cast<double>(rv[i]) * out[i];
    return total;
  };
  for (size_t k = 0; k < vars.size(); ++k) {
    REQUIRE_MESSAGE(vars[k].has_grad(), name << ": input " << k << " got no gradient");
    const std::vector<float> analytic = vars[k].grad().to_vector();
    const int64_t n = inputs[k].numel();
    std::vector<float> picked;
    std::vector<double> numeric;
    std::uniform_int_distribution<int64_t> pick(0, n - 1);
    for (int p = 0; p < std::min<int64_t>(probes, n); ++p) {
      const int64_t i = n <= probes ? p : pick(rng());
      std::vector<Variable> plus, minus;
      for (size_t j = 0; j < vars.size(); ++j) {
        plus.emplace_back(inputs[j].clone(), false);
        minus.emplace_back(inputs[j].clone(), false);
      }
      plus[k].value().f32()[i] += static_cast<float>(h);
      minus[k].value().f32()[i] -= static_cast<float>(h);
      numeric.push_back((objective(plus) - objective(minus)) / (2.0 * h));
      picked.push_back(analytic[i]);
    }
    const double err = max_rel_error(name + " d/dinput" + std::to_string(k), picked, numeric, tol);
    CHECK_MESSAGE(err <= tol, name << " input " << k << ": finite-difference error " << err << " > " << tol);
  }
}

}  // namespace dsmil::test
