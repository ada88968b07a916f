// CPU dropout and drop-path with the counter-based generator of base/counter_rng.h: element i (or
// sample n) keeps when uniform(seed, offset + i) >= p; kept values are scaled by 1 / (1 - p).
#include "base/counter_rng.h"
#include "tensor/cpu/common.h"

namespace dsmil::cpu {

namespace {
float keep_scale(float p) { return 1.0f / (1.0f - p); }
}  // namespace

Tensor dropout(const Tensor& x, float p, MaskSeed mask_seed, uint64_t offset) {
  const uint64_t seed = mask_seed.value;
  const float kept = keep_scale(p);
  Tensor y = empty_like(x);
  const float* xp = x.f32();
  float* yp = y.f32();
  const int64_t n = x.numel();
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
  for (int64_t i = 0; i < n; ++i) yp[i] = counter_uniform(seed, offset + i) >= p ? xp[i] * kept : 0.0f;
  return y;
}

Tensor drop_path(const Tensor& x, float p, MaskSeed mask_seed, uint64_t offset) {
  const uint64_t seed = mask_seed.value;
  const float kept = keep_scale(p);
  Tensor y = empty_like(x);
  const int64_t samples = x.size(0), per_sample = x.numel() / std::max<int64_t>(samples, 1);
  const float* xp = x.f32();
  float* yp = y.f32();
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < samples; ++s) {
    const float factor = counter_uniform(seed, offset + s) >= p ? kept : 0.0f;
    for (int64_t i = 0; i < per_sample; ++i) yp[s * per_sample + i] = xp[s * per_sample + i] * factor;
  }
  return y;
}

}  // namespace dsmil::cpu
