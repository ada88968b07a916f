// `dsmil compare RUN_A RUN_B [--out FILE]`: before/after markdown table of two CV summaries (fold mean
// ± std, pooled values, deltas, anomaly counts), printed and optionally written to a file.
#include <cstdio>
#include <memory>
#include <string>

#include "apps/command_registry.h"
#include "apps/report/compare.h"
#include "apps/report/run_dir.h"

namespace {

struct CompareArgs {
  std::string run_a, run_b, out;
};

void run(const CompareArgs& args) {
  const auto a = dsmil::report::load_cv_summary(args.run_a);
  const auto b = dsmil::report::load_cv_summary(args.run_b);
  const std::string table = dsmil::report::compare_markdown(a, b, args.run_a, args.run_b);
  std::fputs(table.c_str(), stdout);
  if (!args.out.empty()) dsmil::report::write_text_file(args.out, table);
}

const dsmil::app::RegisterCommand register_compare("compare", 70, [](CLI::App& root) {
  auto args = std::make_shared<CompareArgs>();
  CLI::App* sub = root.add_subcommand("compare", "Before/after table of two CV runs (A = before, B = after)");
  sub->add_option("run_a", args->run_a, "Run directory (or cv_summary.json) before")
      ->required()
      ->check(CLI::ExistingPath);
  sub->add_option("run_b", args->run_b, "Run directory (or cv_summary.json) after")
      ->required()
      ->check(CLI::ExistingPath);
  sub->add_option("--out", args->out, "Also write the table to this markdown file");
  sub->callback([args] { run(*args); });
});

}  // namespace
