// Counter-based uniform random numbers: uniform(seed, counter) in [0, 1), a pure function of its two
// arguments, identical on host and device, so dropout masks never depend on the launch shape.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DSMIL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DSMIL_HOST_DEVICE inline
#endif

namespace dsmil {

// SplitMix64's finaliser (Steele, Lea, Flood 2014) over seed and counter: a strong 64-bit mix that
// passes BigCrush as a counter-based generator.
DSMIL_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

DSMIL_HOST_DEVICE float counter_uniform(uint64_t seed, uint64_t counter) {
  const uint64_t bits = mix64(mix64(seed + 0x9e3779b97f4a7c15ULL) ^ (counter * 0x9e3779b97f4a7c15ULL));
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);  // top 24 bits: exact in float
}

}  // namespace dsmil
