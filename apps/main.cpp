// dsmil: one binary, one subcommand per job (DESIGN section 9). Errors end as one line on stderr and
// a non-zero exit; library code only throws.
#include <algorithm>
#include <cstdio>
#include <exception>

#include "apps/command_registry.h"
#include "tensor/error.h"

namespace dsmil::app {
std::vector<CommandSpec>& command_registry() {
  static std::vector<CommandSpec> registry;
  return registry;
}
}  // namespace dsmil::app

int main(int argc, char** argv) {
  CLI::App root{"dsmil3d: dual-stream MIL for glioma grading on 3D MRI"};
  root.require_subcommand(1);
  auto& registry = dsmil::app::command_registry();
  std::sort(registry.begin(), registry.end(),
            [](const auto& a, const auto& b) { return a.order < b.order; });
  for (auto& spec : registry) spec.add(root);
  try {
    root.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return root.exit(e);
  } catch (const dsmil::Error& e) {
    std::fprintf(stderr, "dsmil: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsmil: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
