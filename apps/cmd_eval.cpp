// `dsmil eval`: a trained checkpoint on a labelled dataset (any layout `cv` reads). Every case is
// preprocessed like the training data (through the cache), predicted from `fixed` bags (the run's
// train.eval_instances slabs, or --instances), and written to OUT/predictions.csv; the command prints the AUC
// with its DeLong 95% interval and the confusion matrix and threshold metrics at the fold's calibrated threshold
// and at 0.5.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "apps/command_registry.h"
#include "apps/report/metrics.h"
#include "apps/report/run_dir.h"
#include "apps/train/trainer.h"
#include "data/cases.h"

namespace dsmil::app {
namespace {

namespace fs = std::filesystem;

struct EvalArgs {
  std::string checkpoint, data, cache, out = "eval", device = "auto", on_bad_case = "fail";
  int instances = 0;  // slabs per bag; 0: the run's train.eval_instances
};

void print_threshold_metrics(const char* label, const report::ThresholdMetrics& m) {
  const report::Confusion& c = m.confusion;
  std::printf(
      "at threshold %s: HGG %ld/%ld correct, LGG %ld/%ld correct; accuracy %.4f, balanced accuracy %.4f, "
      "F1 (HGG) %.4f, macro F1 %.4f; [[tn, fp], [fn, tp]] = [[%ld, %ld], [%ld, %ld]]\n",
      label, c.tp, c.n_hgg(), c.tn, c.n_lgg(), m.accuracy, m.balanced_accuracy, m.f1, m.macro_f1, c.tn, c.fp, c.fn,
      c.tp);
}

void run_eval(const EvalArgs& a) {
  const Device device = resolve_device(a.device);
  const TrainedModel trained = load_trained_model(a.checkpoint, device);
  RunConfig config = trained.config;
  const int calibrated_instances = config.eval_instances;
  if (a.instances > 0) config.eval_instances = a.instances;

  const PreparedDataset cohort = prepare_dataset(a.data, a.cache, config, data::parse_bad_case_policy(a.on_bad_case));
  for (const data::SkippedCase& s : cohort.skipped) std::fprintf(stderr, "skipped: %s\n", s.message().c_str());

  std::vector<int> all(cohort.cases.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
  const std::vector<CasePrediction> preds =
      predict_cases(*trained.model, cohort.cases, all, config, device, soft_pooling_tau(config, trained.epoch - 1));
  // A checkpoint without a calibrated threshold (last.ckpt) is judged at 0.5 alone.
  const double threshold = trained.threshold ? trained.threshold->value : 0.5;

  std::vector<int> labels;
  std::vector<double> p;
  std::vector<report::PredictionRow> rows;
  for (const CasePrediction& q : preds) {
    labels.push_back(q.label);
    p.push_back(q.p_hgg);
    rows.push_back(
        report::prediction_row(cohort.cases[q.case_index].case_id, q.label, q.p_hgg, threshold, "eval", a.checkpoint));
  }
  fs::create_directories(a.out);
  report::write_predictions_csv(fs::path(a.out) / "predictions.csv", rows);

  std::printf("%zu cases (%ld HGG), checkpoint %s (epoch %d), bags of %d fixed slabs\n", preds.size(),
              static_cast<long>(std::count(labels.begin(), labels.end(), 1)), a.checkpoint.c_str(), trained.epoch,
              config.eval_instances);
  if (report::has_both_classes(labels)) {
    const report::AucInterval auc = report::auc_delong(labels, p);
    std::printf("AUC %.4f (95%% CI %.4f-%.4f); Brier %.4f; ECE %.4f\n", auc.auc, auc.lo, auc.hi,
                report::brier(labels, p), report::ece(labels, p));
  } else {
    std::printf("AUC undefined: the dataset holds one class only\n");
  }
  if (trained.threshold && config.eval_instances != calibrated_instances)
    std::printf("the calibrated threshold was chosen on bags of %d slabs: it may not suit bags of %d\n",
                calibrated_instances, config.eval_instances);
  if (trained.threshold)
    print_threshold_metrics(trained.threshold->source.c_str(), report::threshold_metrics(labels, p, threshold));
  else
    std::printf("no calibrated threshold in %s (only best.ckpt and best_ema.ckpt carry one)\n", a.checkpoint.c_str());
  print_threshold_metrics("0.5", report::threshold_metrics(labels, p, 0.5));
  std::printf("%s\n", (fs::path(a.out) / "predictions.csv").string().c_str());
}

const RegisterCommand eval_command{
    "eval", 50, [](CLI::App& root) {
      auto a = std::make_shared<EvalArgs>();
      CLI::App* cmd = root.add_subcommand(
          "eval", "a checkpoint on a labelled dataset: predictions.csv, AUC with CI, confusion matrix");
      cmd->add_option("--checkpoint", a->checkpoint, "best.ckpt or best_ema.ckpt of a fold")
          ->required()
          ->check(CLI::ExistingFile);
      cmd->add_option("--data", a->data, "dataset: BraTS folder or manifest CSV")->required();
      cmd->add_option("--cache", a->cache, "preprocessing cache (default: the checkpoint config's)");
      cmd->add_option("--out", a->out, "output folder")->capture_default_str();
      cmd->add_option("--instances", a->instances,
                      "slabs per evaluation bag, evenly spaced over the brain (all of them where fewer); default: the "
                      "run's train.eval_instances")
          ->check(CLI::Range(1, 4096));
      cmd->add_option("--device", a->device, "cpu | cuda | auto")->capture_default_str();
      cmd->add_option("--on-bad-case", a->on_bad_case, "fail | skip")->capture_default_str();
      cmd->callback([a] { run_eval(*a); });
    }};

}  // namespace
}  // namespace dsmil::app
