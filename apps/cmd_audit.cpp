// `dsmil audit RUN_DIR... [--out DIR]`: recomputes every metric of a CV from its fold files and writes
// cv_summary.json, AUDIT.md and plots/; exits non-zero when a reported number disagrees with its
// recomputation.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "apps/command_registry.h"
#include "apps/report/audit.h"
#include "base/error.h"

namespace {

constexpr size_t kFailuresShown = 10;

struct AuditArgs {
  std::vector<std::string> inputs;
  std::string out;
  bool no_plots = false;
};

void run(const AuditArgs& args) {
  dsmil::report::AuditOptions options;
  for (const auto& in : args.inputs) options.inputs.emplace_back(in);
  if (!args.out.empty())
    options.out_dir = args.out;
  else if (options.inputs.size() == 1)
    options.out_dir = options.inputs.front();
  else
    throw dsmil::Error("audit: several inputs are merged into one report; name its folder with --out");
  options.write_plots = !args.no_plots;

  const dsmil::report::AuditResult result = dsmil::report::run_audit(options);
  std::printf("audit: wrote %s and %s\n", result.audit_md.c_str(), result.cv_summary_json.c_str());
  std::printf("audit: %d anomalies; consistency: %d of %d numbers agree\n", result.anomalies,
              result.checks - result.failed_checks, result.checks);
  if (result.consistent()) return;
  for (size_t i = 0; i < result.failures.size() && i < kFailuresShown; ++i)
    std::fprintf(stderr, "audit: FAIL %s\n", result.failures[i].c_str());
  throw dsmil::Error(fmt::format("audit: {} reported number(s) disagree with their recomputation (see {})",
                                 result.failed_checks, result.audit_md.string()));
}

const dsmil::app::RegisterCommand register_audit("audit", 60, [](CLI::App& root) {
  auto args = std::make_shared<AuditArgs>();
  CLI::App* sub = root.add_subcommand(
      "audit", "Recompute a CV's metrics from its fold files; write cv_summary.json, AUDIT.md and plots/");
  sub->add_option("inputs", args->inputs, "Run directories and/or fold directories (merged into one report)")
      ->required()
      ->check(CLI::ExistingDirectory);
  sub->add_option("--out", args->out, "Output folder (default: the run directory when only one is given)");
  sub->add_flag("--no-plots", args->no_plots, "Do not write plots/");
  sub->callback([args] { run(*args); });
});

}  // namespace
