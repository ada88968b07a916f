// `dsmil cohort`: writes the synthetic BraTS-2018-like cohort (DESIGN section 7) and prints the
// latent grade score's AUC (the task's ceiling); --check-cues also fits the trivial-cue baselines.
#include <cmath>
#include <cstdio>
#include <string>

#include <fmt/format.h>

#include "apps/command_registry.h"
#include "data/cases.h"
#include "data/cohort.h"
#include "data/progress.h"
#include "data/text.h"

namespace {

struct CohortArgs {
  dsmil::data::CohortOptions options;
  std::string dims = "240,240,155";
  bool no_gzip = false;
  bool check_cues = false;
};

void run_cohort(const CohortArgs& args) {
  using namespace dsmil::data;
  CohortOptions options = args.options;
  options.dims = parse_int_triple(args.dims, "--dims x,y,z");
  options.gzip = !args.no_gzip;
  ProgressReporter progress("cohort", options.cases);
  options.progress = &progress;
  const auto truths = write_cohort(options);

  std::vector<double> scores;
  std::vector<int> labels;
  int hgg = 0;
  for (const auto& t : truths) {
    scores.push_back(t.grade_score);
    labels.push_back(t.label);
    hgg += t.label == kLabelHGG;
  }
  fmt::print("wrote {} cases ({} HGG, {} LGG) of {}x{}x{} to {}\n", truths.size(), hgg, truths.size() - hgg,
             options.dims[0], options.dims[1], options.dims[2], options.out.string());
  const double ceiling = score_auc(scores, labels);
  if (std::isnan(ceiling))
    fmt::print("latent grade score AUC: undefined, the cohort holds one grade only (truth.csv)\n");
  else
    fmt::print("latent grade score AUC (the task's ceiling): {:.4f}  (truth.csv)\n", ceiling);
  if (args.check_cues) {
    const CueCheck check = check_trivial_cues(options.out, options.threads);
    fmt::print(
        "trivial cues, 5-fold logistic regression AUC: whole-volume intensity statistics {:.4f}, "
        "file sizes {:.4f}; tumour present in {:.0f}% of cases (latent {:.4f})\n",
        check.intensity_stats_auc, check.file_size_auc, 100 * check.tumour_present_fraction, check.latent_auc);
  }
}

dsmil::app::RegisterCommand reg{
    "cohort", 10, [](CLI::App& root) {
      auto args = std::make_shared<CohortArgs>();
      auto* cmd = root.add_subcommand("cohort", "Write a synthetic BraTS-2018-like cohort (NIfTI, truth.csv)");
      cmd->add_option("--out", args->options.out, "Dataset folder to write (HGG/, LGG/, truth.csv)")->required();
      cmd->add_option("--cases", args->options.cases, "Number of cases")
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
      cmd->add_option("--hgg-fraction", args->options.hgg_fraction, "Share of HGG cases")
          ->capture_default_str()
          ->check(CLI::Range(0.0, 1.0));
      cmd->add_option("--seed", args->options.seed, "Seed; the same seed writes byte-identical files")
          ->capture_default_str();
      cmd->add_option("--anatomy", args->options.anatomy, "Skull-stripped T1 NIfTI to build every brain on")
          ->check(CLI::ExistingFile);
      cmd->add_option("--difficulty", args->options.difficulty,
                      "Overlap of the grades and noise (1 = default, >1 harder)")
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
      cmd->add_option("--dims", args->dims, "Volume size x,y,z in 1 mm voxels")->capture_default_str();
      cmd->add_option("--threads", args->options.threads, "Worker threads")
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
      cmd->add_option("--gzip-level", args->options.gzip_level, "gzip level of the .nii.gz files (1..9)")
          ->capture_default_str()
          ->check(CLI::Range(1, 9));
      cmd->add_flag("--no-gzip", args->no_gzip, "Write .nii instead of .nii.gz");
      cmd->add_flag("--check-cues", args->check_cues,
                    "Also fit logistic regressions on whole-volume statistics and file sizes (should be far below the "
                    "latent AUC)");
      cmd->callback([args] { run_cohort(*args); });
    }};

}  // namespace
