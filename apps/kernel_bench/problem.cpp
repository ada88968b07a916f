// Seeded random inputs (base/counter_rng.h, so a seed gives the same tensors on any machine and
// thread count), bf16 rounding, the per-dtype tolerances and the output comparison of the kernel bench.
#include "apps/kernel_bench/problem.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "base/counter_rng.h"

namespace dsmil::kernel_bench {

int64_t Problem::device_bytes(DType storage) const {
  int64_t total = 0;
  for (size_t i = 0; i < inputs.size(); ++i)
    total += inputs[i].numel() * static_cast<int64_t>(dtype_size(stored[i] ? storage : inputs[i].dtype()));
  return total;
}

uint64_t stream_seed(uint64_t seed, uint64_t k) { return mix64(seed ^ mix64(k + 1)); }

float round_to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7f800000u) == 0x7f800000u) return v;  // infinity, NaN: not drawn, kept as they are
  bits += 0x7fffu + ((bits >> 16) & 1u);
  bits &= 0xffff0000u;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

Tensor uniform_tensor(const Shape& shape, float lo, float hi, uint64_t seed, DType storage) {
  Tensor t = Tensor::empty(shape, DType::F32);
  float* p = t.f32();
  const int64_t n = t.numel();
  // counter_uniform gives multiples of 2^-24 in [0, 1); the half step keeps u off 0 and off -lo / (hi - lo).
  const double half_step = 1.0 / (1 << 25), span = static_cast<double>(hi) - lo;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(lo + span * (counter_uniform(seed, static_cast<uint64_t>(i)) + half_step));
    p[i] = storage == DType::BF16 ? round_to_bf16(v) : v;
  }
  return t;
}

Tensor random_mask(int64_t bags, int64_t instances, uint64_t seed) {
  std::vector<int32_t> m(bags * instances);
  for (int64_t i = 0; i < bags * instances; ++i)
    m[i] = i % instances == 0 || counter_uniform(seed, static_cast<uint64_t>(i)) < 0.9f;
  return Tensor::from_ints({bags, instances}, m);
}

Tensor random_ints(const Shape& shape, int32_t count, uint64_t seed) {
  std::vector<int32_t> v(shape_numel(shape));
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = std::min(count - 1, static_cast<int32_t>(counter_uniform(seed, i) * static_cast<float>(count)));
  return Tensor::from_ints(shape, v);
}

double tolerance(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return 64.0 / (1 << 23);
    case DType::BF16:
      return 1.0 / (1 << 7);
    case DType::I32:
    case DType::U8:
      return 0.0;
  }
  return 0.0;
}

Comparison compare_output(const std::string& name, const Tensor& got, const Tensor& ref) {
  if (got.shape() != ref.shape())
    throw ShapeError(
        fmt::format("kernel bench: output {} has shape {}, its reference {}", name, got.describe(), ref.describe()));
  Comparison c;
  c.output = name;
  const std::vector<float> g = got.to_vector(), r = ref.to_vector();
  if (tolerance(got.dtype()) == 0.0 || tolerance(ref.dtype()) == 0.0) {  // integer outputs: equal or wrong
    c.exact = true;
    for (size_t i = 0; i < g.size(); ++i) c.error += !(g[i] == r[i]);
    c.pass = c.error == 0.0;
    return c;
  }
  c.tolerance = tolerance(got.dtype());
  c.error = relative_max_error(g, r);
  c.pass = c.error <= c.tolerance;
  return c;
}

}  // namespace dsmil::kernel_bench
