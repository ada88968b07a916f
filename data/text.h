// Small text parsing shared by the data options (grids, volume sizes).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace dsmil::data {

// "a,b,c" with three integers in [1, 4096]; `what` names the option in the error message.
std::array<int64_t, 3> parse_int_triple(std::string_view text, std::string_view what);

}  // namespace dsmil::data
