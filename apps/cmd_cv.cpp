// `dsmil cv` (nested K-fold cross-validation, DESIGN section 5) and `dsmil train` (one fold of it).
#include <filesystem>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "apps/command_registry.h"
#include "apps/train/cv.h"
#include "apps/train/fold_scheduler.h"
#include "apps/train/rank_launcher.h"
#include "dist/ranks.h"
#include "logging/log.h"
#ifdef DSMIL_WITH_NCCL
#include "dist/nccl_communicator.h"
#endif
#include "apps/train/trainer.h"

namespace dsmil::app {
namespace {

struct CvArgs {
  std::string config;  // empty: recommended-v2, or the run's own config.toml when resuming
  std::string data;
  std::vector<std::string> overrides;
  std::string runs_root = "runs";
  std::string resume;
  std::string folds;
  std::string device;
  int repeats = 0;
  int plot_every = -1;
  bool select_on_test = false, deterministic = false, strict_fp32 = false;
  std::optional<std::string> gpus;  // cv only: folds scheduled over these GPUs, one child process each
  std::optional<int> workers;       // cv only: folds scheduled over N child processes on one device
  bool no_audit = false;
  bool fold_process = false;  // cv only: started by the fold scheduler of another cv (apps/train/fold_scheduler.h)
  int nproc = 1;              // data-parallel ranks on this machine, one per GPU
};

void add_common_options(CLI::App* cmd, CvArgs& a) {
  cmd->add_option("--config", a.config,
                  "config name (configs/NAME.toml) or file (default: recommended-v2; with "
                  "--resume, the run's own config.toml)");
  cmd->add_option("--data", a.data, "dataset: BraTS folder or manifest CSV (overrides data.root)");
  cmd->add_option("--set", a.overrides, "override a config key: section.key=value (repeatable)");
  cmd->add_option("--out", a.runs_root, "folder for run directories")->capture_default_str();
  cmd->add_option("--resume", a.resume,
                  "run directory to continue from each fold's last.ckpt, with the run's config and data (flags that "
                  "disagree with them are refused, naming the key)");
  cmd->add_option("--device", a.device, "cpu | cuda | auto");
  cmd->add_flag("--deterministic", a.deterministic, "deterministic algorithms: identical predictions on a rerun");
  cmd->add_flag("--strict-fp32", a.strict_fp32, "no TF32 on the GPU");
  cmd->add_option("--plot-every", a.plot_every, "plots every N epochs");
  cmd->add_option("--nproc", a.nproc,
                  "data-parallel training: N processes, one per GPU, each step's bags split over them and their "
                  "gradients summed by NCCL (mpirun/srun/torchrun start ranks themselves: see README)")
      ->check(CLI::PositiveNumber);
}

// The communicator of this rank of a data-parallel job; null when the process trains alone.
std::unique_ptr<dist::Communicator> join_ranks(const dist::RankInfo& ranks, const RunConfig& config) {
  if (!ranks.distributed()) return nullptr;
  if (resolve_device(config.device) != Device::CUDA)
    throw Error(fmt::format("rank {} of {}: data-parallel training runs on GPUs, one per rank (run.device = {})",
                            ranks.rank, ranks.world_size, config.device));
#ifdef DSMIL_WITH_NCCL
  return std::make_unique<dist::NcclCommunicator>(ranks);
#else
  throw Error(
      fmt::format("{} set {} ranks, but this build has no NCCL (data-parallel training needs the CUDA "
                  "backend built with NCCL)",
                  ranks.launcher, ranks.world_size));
#endif
}

RunConfig resolve(const CvArgs& a) {
  const std::string base = !a.config.empty()   ? find_config_file(a.config).string()
                           : !a.resume.empty() ? (std::filesystem::path(a.resume) / "config.toml").string()
                                               : find_config_file("recommended-v2").string();
  RunConfig config = load_config(base);
  for (const std::string& o : a.overrides) apply_override(config, o);
  if (!a.data.empty()) config.data_root = a.data;
  if (!a.device.empty()) config.device = a.device;
  if (a.repeats > 0) config.repeats = a.repeats;
  if (a.plot_every >= 0) config.plot_every = a.plot_every;
  config.select_on_test = config.select_on_test || a.select_on_test;
  config.deterministic = config.deterministic || a.deterministic;
  config.strict_fp32 = config.strict_fp32 || a.strict_fp32;
  validate_config(config);
  return config;
}

void run(const CvArgs& a, std::vector<int> folds) {
  const dist::RankInfo rank_info = dist::rank_from_environment();
  if (a.nproc > 1 && rank_info.launcher == "none") {
    run_local_ranks(a.nproc);
    return;
  }
  const RunConfig config = resolve(a);
  const std::unique_ptr<dist::Communicator> ranks = join_ranks(rank_info, config);
  CvOptions options;
  options.ranks = ranks.get();
  options.runs_root = a.runs_root;
  options.resume_dir = a.resume;
  options.folds = std::move(folds);
  options.audit = !a.no_audit;
  options.fold_process = a.fold_process;
  if (a.gpus || a.workers) {
    // --gpus and --workers share every step but the CUDA_VISIBLE_DEVICES of the children.
    const std::vector<FoldSlot> slots = a.gpus ? gpu_slots(*a.gpus) : worker_slots(*a.workers);
    if (a.gpus && resolve_device(config.device) == Device::CPU)
      throw Error(
          fmt::format("--gpus {}: this run is on the CPU (run.device = {}); --workers N runs folds side by side there",
                      *a.gpus, config.device));
    options.train_folds = [slots, threads = config.threads](const std::filesystem::path& run_dir,
                                                            const std::vector<int>& fold_list) {
      run_folds_in_children({.run_dir = run_dir, .folds = fold_list, .slots = slots, .run_threads = threads});
    };
  }
  const CvResult result = run_cv(config, options);
  if (!result.audit_md.empty()) logging::result(result.audit_md.string());
  if (!result.consistent) throw Error("the audit's consistency check failed: see the consistency section of AUDIT.md");
}

const RegisterCommand cv_command{
    "cv", 40, [](CLI::App& root) {
      auto args = std::make_shared<CvArgs>();
      CLI::App* cmd = root.add_subcommand("cv", "cross-validate on a dataset; prints the path of AUDIT.md");
      add_common_options(cmd, *args);
      cmd->add_option("--folds", args->folds, "run only these folds (e.g. 0,2); the audit covers the folds present")
          ->check(fold_list_validator());
      cmd->add_option("--repeats", args->repeats, "repeated CV with R seeds");
      cmd->add_flag("--select-on-test", args->select_on_test,
                    "the seed's optimistic protocol: select and calibrate on the test fold");
      CLI::Option* gpus = cmd->add_option(
          "--gpus", args->gpus,
          "run folds side by side, one child process per GPU (e.g. 0,1,2,3; CUDA_VISIBLE_DEVICES of each), the next "
          "fold starting on the first GPU free; logs in RUN_DIR/fold_K.log");
      cmd->add_option("--workers", args->workers,
                      "run folds side by side in N child processes on one device (the --gpus scheduler without "
                      "CUDA_VISIBLE_DEVICES; run.threads = 0 shares the cores among them)")
          ->excludes(gpus);
      cmd->add_flag("--no-audit", args->no_audit,
                    "write no cv_summary.json / AUDIT.md (folds run apart; `dsmil audit` merges them)");
      // Hidden: the fold scheduler marks its children, whose lines in run.log then name their fold.
      cmd->add_flag("--fold-process", args->fold_process)->group("");
      cmd->callback([args] { run(*args, args->folds.empty() ? std::vector<int>{} : parse_fold_list(args->folds)); });
    }};

const RegisterCommand train_command{"train", 30, [](CLI::App& root) {
                                      auto args = std::make_shared<CvArgs>();
                                      auto fold = std::make_shared<int>(0);
                                      CLI::App* cmd = root.add_subcommand(
                                          "train", "train and evaluate one fold of the cross-validation split");
                                      add_common_options(cmd, *args);
                                      cmd->add_option("--fold", *fold, "which fold to train")->capture_default_str();
                                      cmd->callback([args, fold] { run(*args, {*fold}); });
                                    }};

}  // namespace
}  // namespace dsmil::app
