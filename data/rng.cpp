// Standard normal deviates for dsmil_data's reproducible random streams (see rng.h).
#include "data/rng.h"

#include <cmath>
#include <numbers>

namespace dsmil::data {

double standard_normal(Rng& rng) {
  const double u1 = 1.0 - uniform01(rng);  // in (0, 1]: log is finite
  const double u2 = uniform01(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

}  // namespace dsmil::data
