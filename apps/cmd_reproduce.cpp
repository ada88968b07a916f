// `dsmil reproduce RUN_DIR`: the run's folds trained again from its own config and checked inputs, the
// predictions compared (apps/train/reproduce.h). Exit status 0 when reproduced, 1 when not or refused.
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "apps/command_registry.h"
#include "apps/train/cv.h"
#include "apps/train/reproduce.h"
#include "base/error.h"

namespace dsmil::app {
namespace {

struct ReproduceArgs {
  std::string run_dir, folds, out;
};

const RegisterCommand reproduce_command{
    "reproduce", 45, [](CLI::App& root) {
      auto args = std::make_shared<ReproduceArgs>();
      CLI::App* cmd = root.add_subcommand(
          "reproduce",
          "train a CV run's folds again from its config.toml and recorded inputs; compare the predictions");
      cmd->add_option("RUN_DIR", args->run_dir, "the run directory (holds config.toml, splits.json, inputs.json)")
          ->required()
          ->check(CLI::ExistingDirectory);
      cmd->add_option("--folds", args->folds, "only these folds (e.g. 0,2); default: every fold the run holds")
          ->check(fold_list_validator());
      cmd->add_option("--out", args->out, "folder of the new run directory reproduce_<timestamp> (default: RUN_DIR)");
      cmd->callback([args] {
        ReproduceOptions options;
        options.run_dir = args->run_dir;
        options.out = args->out;
        if (!args->folds.empty()) options.folds = parse_fold_list(args->folds);
        const ReproduceResult result = reproduce_run(options);
        std::printf("%s\n", result.summary.c_str());
        std::fprintf(stderr, "%s\n", result.report_md.string().c_str());
        if (!result.reproduced)
          throw Error(fmt::format("reproduce: not reproduced: see {}", result.report_md.string()));
      });
    }};

}  // namespace
}  // namespace dsmil::app
