// Seeded random numbers for everything in dsmil_data that must be reproducible: the engine is
// std::mt19937_64 (its output sequence is fixed by the C++ standard) and the distributions below
// are our own, because the standard library's distributions differ between implementations.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <random>

namespace dsmil::data {

using Rng = std::mt19937_64;

// SplitMix64 finaliser: a well-mixed 64-bit function of a 64-bit value.
constexpr uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A seed for an independent stream, derived from a base seed and a path of indices, e.g.
// derive_seed(seed, {fold, epoch, bag}). Different paths give unrelated streams.
constexpr uint64_t derive_seed(uint64_t seed, std::initializer_list<uint64_t> path) {
  uint64_t h = mix64(seed);
  for (uint64_t p : path) h = mix64(h ^ mix64(p + 0x632BE59BD9B4E019ull));
  return h;
}

inline Rng make_rng(uint64_t seed, std::initializer_list<uint64_t> path = {}) { return Rng{derive_seed(seed, path)}; }

// Uniform integer in [0, n) without modulo bias (Lemire's multiply-shift with rejection). n > 0.
inline uint64_t uniform_index(Rng& rng, uint64_t n) {
  unsigned __int128 m = static_cast<unsigned __int128>(rng()) * n;
  auto low = static_cast<uint64_t>(m);
  if (low < n) {
    const uint64_t threshold = (0 - n) % n;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(rng()) * n;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

// Uniform double in [0, 1) with 53 random bits.
inline double uniform01(Rng& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

inline double uniform(Rng& rng, double lo, double hi) { return lo + (hi - lo) * uniform01(rng); }

// Standard normal by the Box-Muller transform (one value per call; simple and portable).
double standard_normal(Rng& rng);

}  // namespace dsmil::data
