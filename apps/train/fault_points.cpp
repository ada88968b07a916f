// DSMIL_FAULT: the test hook of fault_points.h.
#include "apps/train/fault_points.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "logging/log.h"

namespace dsmil::app {

namespace {

struct Fault {
  std::string name;
  int at = 1;  // the n-th time the point is reached
  int seen = 0;
};

std::optional<Fault>& requested_fault() {
  static std::optional<Fault> fault = []() -> std::optional<Fault> {
    const char* text = std::getenv("DSMIL_FAULT");
    if (text == nullptr || *text == '\0') return std::nullopt;
    const std::string spec = text;
    const size_t colon = spec.find(':');
    return Fault{spec.substr(0, colon), colon == std::string::npos ? 1 : std::atoi(spec.c_str() + colon + 1)};
  }();
  return fault;
}

}  // namespace

void fault_point(const char* name) {
  std::optional<Fault>& fault = requested_fault();
  if (!fault || fault->name != name || ++fault->seen != fault->at) return;
  logging::line(fmt::format("DSMIL_FAULT: exiting at {} ({})", name, fault->at));
  std::fflush(nullptr);
  ::_exit(kFaultExitCode);
}

}  // namespace dsmil::app
