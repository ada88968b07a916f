// The 65536-entry half -> float table used to decode cached volumes quickly.
#include "data/half.h"

namespace dsmil::data {

const std::array<float, 65536>& half_to_float_table() {
  static const std::array<float, 65536> table = [] {
    std::array<float, 65536> t{};
    for (uint32_t h = 0; h < 65536; ++h) t[h] = half_to_float(static_cast<uint16_t>(h));
    return t;
  }();
  return table;
}

}  // namespace dsmil::data
