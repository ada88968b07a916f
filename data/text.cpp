// parse_int_triple: "a,b,c" -> three positive integers, or an Error naming the option.
#include "data/text.h"

#include <charconv>
#include <fmt/format.h>

#include "base/error.h"

namespace dsmil::data {

std::array<int64_t, 3> parse_int_triple(std::string_view text, std::string_view what) {
  std::array<int64_t, 3> values{};
  size_t pos = 0;
  for (int i = 0; i < 3; ++i) {
    const size_t comma = i < 2 ? text.find(',', pos) : text.size();
    const bool well_formed = comma != std::string_view::npos && comma > pos;
    int64_t value = 0;
    const auto part = well_formed ? text.substr(pos, comma - pos) : std::string_view{};
    const auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), value);
    if (!well_formed || ec != std::errc{} || end != part.data() + part.size() || value < 1 || value > 4096) {
      throw Error(fmt::format("{} '{}': expected three integers in 1..4096, separated by commas", what, text));
    }
    values[i] = value;
    pos = comma + 1;
  }
  return values;
}

}  // namespace dsmil::data
