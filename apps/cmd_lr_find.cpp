// `dsmil lr-find`: the learning-rate range test on the training cases of one fold (its outer training set
// less its inner validation split: no validation or test case is seen), with the config's recipe. Writes
// lr_find.csv and lr_find.svg and prints the suggested learning rate; lr_find.log beside them keeps what it printed.
#include <filesystem>

#include <fmt/format.h>

#include "apps/command_registry.h"
#include "apps/train/cv.h"
#include "apps/train/lr_find.h"
#include "apps/train/trainer.h"
#include "logging/log.h"

namespace dsmil::app {
namespace {

struct LrFindArgs {
  std::string config = "recommended-v2", data, out = "lr_find", device;
  std::vector<std::string> overrides;
  int fold = 0;
  LrFindOptions options;
};

void run_lr_find(const LrFindArgs& a) {
  RunConfig config = load_config(find_config_file(a.config));
  for (const std::string& o : a.overrides) apply_override(config, o);
  if (!a.data.empty()) config.data_root = a.data;
  if (!a.device.empty()) config.device = a.device;
  validate_config(config);
  if (config.data_root.empty()) throw Error("no data: give --data ROOT (a BraTS folder or a manifest CSV)");
  if (a.fold < 0 || a.fold >= config.folds)
    throw Error(fmt::format("--fold {}: there is no such fold (cv.folds = {})", a.fold, config.folds));
  const Device device = resolve_device(config.device);
  resolve_precision(config, device);
  std::filesystem::create_directories(a.out);
  logging::open_run_log(std::filesystem::path(a.out) / "lr_find.log");

  const data::PreprocessedCohort cohort = prepare_cohort(config, {}, false);
  const data::Splits splits = cohort_splits(config, cohort.cases, 0);
  const data::Fold& fold = splits.folds[a.fold];
  logging::line(fmt::format("lr-find: {}, fold {}'s {} training cases, {} on {}, {} steps from {:.1e} to {:.1e}",
                            config.name, a.fold, fold.train.size(), choice_name(config.precision), device_name(device),
                            a.options.steps, a.options.lr_min, a.options.lr_max));
  const LrFindResult result = lr_find(config, cohort.cases, fold.train, device, a.options);
  const std::filesystem::path svg = write_lr_find(result, a.out);
  logging::result(fmt::format("{} steps{}; the smoothed loss is lowest at lr {:.2e} and rises above it",
                              result.points.size(), result.diverged ? " (stopped: the loss diverged)" : "",
                              result.suggested_lr));
  logging::result(fmt::format("suggested train.lr <= {:.1e} (the peak of the warm-up + cosine schedule); plot {}",
                              result.suggested_lr, svg.string()));
}

const RegisterCommand lr_find_command{
    "lr-find", 45, [](CLI::App& root) {
      auto a = std::make_shared<LrFindArgs>();
      CLI::App* cmd = root.add_subcommand("lr-find",
                                          "learning-rate range test: loss against a growing learning rate, "
                                          "plotted, with a suggested train.lr");
      cmd->add_option("--config", a->config, "config name (configs/NAME.toml) or file")->capture_default_str();
      cmd->add_option("--data", a->data, "dataset: BraTS folder or manifest CSV (overrides data.root)");
      cmd->add_option("--set", a->overrides, "override a config key: section.key=value (repeatable)");
      cmd->add_option("--device", a->device, "cpu | cuda | auto");
      cmd->add_option("--fold", a->fold, "whose training cases to use")->capture_default_str();
      cmd->add_option("--steps", a->options.steps, "number of steps")
          ->capture_default_str()
          ->check(CLI::Range(2, 1000000));
      cmd->add_option("--lr-min", a->options.lr_min, "first learning rate")->capture_default_str();
      cmd->add_option("--lr-max", a->options.lr_max, "last learning rate")->capture_default_str();
      cmd->add_option("--out", a->out, "folder for lr_find.csv and lr_find.svg")->capture_default_str();
      cmd->callback([a] { run_lr_find(*a); });
    }};

}  // namespace
}  // namespace dsmil::app
