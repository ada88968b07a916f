// dsmil: one binary, one subcommand per job. Exit status 0 on success, 1 for an error while running, 2 for
// a usage error (the convention of POSIX utilities, so that a script can tell a wrong call from a failed
// one); either error is one line on stderr. Library code only throws.
#include <algorithm>
#include <exception>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apps/command_registry.h"
#include "apps/provenance.h"
#include "logging/log.h"
#include "base/error.h"

namespace dsmil::app {
std::vector<CommandSpec>& command_registry() {
  static std::vector<CommandSpec> registry;
  return registry;
}
}  // namespace dsmil::app

namespace {

constexpr int kRuntimeError = 1;
constexpr int kUsageError = 2;

// Optimal string alignment distance: an insertion, a deletion, a substitution or a swap of two adjacent
// letters each cost one, so that "tarin" is as near to "train" as "tran".
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// Suggests the nearest names within a third of the word's length in edits (at least one), else lists all.
std::string unknown_subcommand(const std::string& word, const std::vector<std::string>& names) {
  size_t nearest = std::max<size_t>(1, word.size() / 3);
  std::vector<std::string> suggestions;
  for (const std::string& name : names) {
    const size_t distance = edit_distance(word, name);
    if (distance > nearest) continue;
    if (distance < nearest) suggestions.clear();
    nearest = distance;
    suggestions.push_back(name);
  }
  if (suggestions.empty())
    return fmt::format("dsmil: unknown subcommand '{}' (the subcommands: {})", word, fmt::join(names, ", "));
  return fmt::format("dsmil: unknown subcommand '{}' (did you mean {}?)", word, fmt::join(suggestions, " or "));
}

// One line: what was wrong, in the words of the (sub)command the parse had reached, and where its usage is.
std::string usage_error(const CLI::App& root, const CLI::ParseError& e, int argc, char** argv) {
  if (root.get_subcommands().empty()) {
    std::vector<std::string> names;
    for (const CLI::App* sub : root.get_subcommands([](const CLI::App*) { return true; }))
      names.push_back(sub->get_name());
    // The root takes flags alone, so its first other argument is the subcommand the user meant.
    const auto word = std::find_if(argv + 1, argv + argc, [](const char* arg) { return arg[0] != '-'; });
    if (word != argv + argc && std::find(names.begin(), names.end(), *word) == names.end())
      return unknown_subcommand(*word, names);
  }
  std::string command = "dsmil";
  for (const CLI::App* app = &root; !app->get_subcommands().empty();) {
    app = app->get_subcommands().front();
    command += " " + app->get_name();
  }
  return fmt::format("{}: {} (see {} --help)", command, e.what(), command);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App root{"dsmil3d: dual-stream MIL for glioma grading on 3D MRI"};
  root.require_subcommand(1);
  root.set_version_flag(
      "--version",
      [] {
        std::string text = dsmil::app::current_provenance().version_text();
        text.pop_back();  // CLI11 ends it with a newline of its own
        return text;
      },
      "print the version, the commit and build it was made from, the CUDA device and libraries, and exit");
  auto& registry = dsmil::app::command_registry();
  std::sort(registry.begin(), registry.end(), [](const auto& a, const auto& b) { return a.order < b.order; });
  for (auto& spec : registry) spec.add(root);
  try {
    root.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return root.exit(e);  // --help, --version
    dsmil::logging::line(usage_error(root, e, argc, argv));
    return kUsageError;
  } catch (const std::exception& e) {
    // through the log: the error that ends a run is the last line of its run.log
    dsmil::logging::line(fmt::format("dsmil: error: {}", e.what()));
    return kRuntimeError;
  }
  return 0;
}
