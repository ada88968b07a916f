// The fold trainer: the epoch driver of a fold, over its parts (the learner, model selection, checkpoints,
// records and progress), and the evaluation of trained models that the CV, `eval` and `predict` share.
#include "apps/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <map>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/report/metrics.h"
#include "apps/report/plots.h"
#include "apps/report/run_dir.h"
#include "apps/train/batches.h"
#include "apps/train/fault_points.h"
#include "apps/train/fold_checkpoints.h"
#include "apps/train/fold_records.h"
#include "apps/train/health.h"
#include "apps/train/learner.h"
#include "apps/train/model_selection.h"
#include "data/progress.h"
#include "logging/log.h"
#include "nn/checkpoint.h"
#include "tensor/device.h"

namespace dsmil::app {

namespace fs = std::filesystem;
using json = nlohmann::json;

Device resolve_device(const std::string& name) {
  const bool cuda = device::cuda_available();
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") {
    if (!cuda) throw Error("--device cuda: no CUDA device (or this build has no CUDA backend)");
    return Device::CUDA;
  }
  return cuda ? Device::CUDA : Device::CPU;
}

BagSpec training_bag_spec(const RunConfig& config, const data::GridShape& grid) {
  BagSpec spec{config.instances, config.slab_depth, config.instance_sampling, config.augment, {}};
  // Augmentation shifts scale with the grid: up to 1/16 of the width (8 voxels at 128).
  spec.augment_params.max_shift = std::max(1, grid.width / 16);
  return spec;
}

std::array<float, 2> class_weights(const RunConfig& config, const std::vector<data::CaseVolume>& cohort,
                                   const std::vector<int>& train) {
  int counts[2] = {0, 0};
  for (int i : train) ++counts[cohort[i].label];
  std::array<float, 2> weights{1.0f, 1.0f};
  for (int k = 0; k < 2; ++k)
    if (config.class_weights == ClassWeights::balanced && counts[k] > 0)
      weights[k] = static_cast<float>(train.size()) / (2.0f * counts[k]);
  return weights;
}

float soft_pooling_tau(const RunConfig& config, int epoch) {
  if (config.epochs <= 1) return static_cast<float>(config.tau_start);
  return static_cast<float>(config.tau_start *
                            std::pow(config.tau_end / config.tau_start, epoch / double(config.epochs - 1)));
}

TrainedModel load_trained_model(const fs::path& checkpoint, Device device) {
  const nn::Checkpoint ckpt = nn::load_checkpoint(checkpoint.string());
  const json meta = json::parse(ckpt.metadata);
  TrainedModel trained{parse_config(meta.at("config").get<std::string>(), checkpoint.string() + " (its config)"),
                       meta.at("epoch").get<int>(), std::nullopt, nullptr, meta};
  if (meta.contains("threshold")) {
    const json& bags = meta.at("threshold_bags");
    trained.threshold = CheckpointThreshold{
        meta.at("threshold").get<double>(), meta.at("threshold_method").get<std::string>(),
        fmt::format("{:.4f} ({} on the inner validation split, bags of {} fixed slabs)",
                    meta.at("threshold").get<double>(), meta.at("threshold_method").get<std::string>(),
                    bags.at("instances").get<int>())};
  }
  // A model trained in bf16 keeps fp32 master weights: on the CPU it runs in fp32.
  if (device == Device::CPU && trained.config.precision == Precision::bf16) trained.config.precision = Precision::fp32;
  resolve_precision(trained.config, device);
  trained.model = std::make_unique<mil::DualStreamMIL>(trained.config.model_config(), 0);
  // The model computes as its run evaluated it (learner.cpp): with the run's TF32, determinism and convolution
  // choices, so that a strict-fp32 run's model predicts in strict fp32.
  trained.model->set_math_mode(trained.config.math());
  nn::restore_parameters(ckpt, "model.", trained.model->parameters());
  nn::restore_state(ckpt, "model.", trained.model->buffers());
  trained.model->to(device);
  trained.model->set_training(false);
  return trained;
}

std::vector<CasePrediction> predict_cases(mil::DualStreamMIL& model, const std::vector<data::CaseVolume>& cohort,
                                          const std::vector<int>& cases, const RunConfig& config, Device device,
                                          float tau, const GatherTarget& gather) {
  NoGradGuard no_grad;
  const bool was_training = model.training();
  model.set_training(false);
  std::vector<CasePrediction> preds;
  const BagSpec spec{config.eval_instances, config.slab_depth, data::InstanceSampling::fixed, false, {}};
  for (size_t first = 0; first < cases.size(); first += config.bags_per_step) {
    std::vector<int> chunk(cases.begin() + first, cases.begin() + std::min(first + config.bags_per_step, cases.size()));
    const Batch batch = make_batch(cohort, chunk, std::vector<uint64_t>(chunk.size(), 0), spec, gather);
    nn::StepRandom random;
    const mil::MilOutput out = model.forward(Variable(batch.x.to(device)), batch.mask, tau, random);
    const std::vector<float> y = out.y.value().to_vector(), a = out.attention.to_vector(),
                             s = out.selection.to_vector(), z = out.margins.to_vector(),
                             stats = out.attention_stats.to_vector();
    // Each bag's own loss (unit weights): the validation loss weighs them by class like training.
    const Tensor target = batch.target.to(device), unit = Tensor::full({batch.target.numel()}, 1.0f).to(device);
    const mil::LossConfig lc = config.loss_config();
    const std::vector<float> l1 =
        ops::focal_loss(out.y1.value(), target, unit, lc.label_smoothing, lc.focal_gamma).per_sample.to_vector();
    const std::vector<float> l2 =
        ops::focal_loss(out.y2.value(), target, unit, lc.label_smoothing, lc.focal_gamma).per_sample.to_vector();
    for (size_t b = 0; b < chunk.size(); ++b) {
      CasePrediction p;
      p.case_index = chunk[b];
      p.label = cohort[chunk[b]].label;
      p.p_hgg = hgg_probability(y[2 * b], y[2 * b + 1]);
      p.starts = batch.starts[b];
      const size_t n = spec.instances, valid = p.starts.size();
      p.attention.assign(a.begin() + b * n, a.begin() + b * n + valid);
      p.selection.assign(s.begin() + b * n, s.begin() + b * n + valid);
      p.margins.assign(z.begin() + b * n, z.begin() + b * n + valid);
      p.entropy = stats[3 * b];
      p.top1 = stats[3 * b + 1];
      p.neff = stats[3 * b + 2];
      p.loss = config.stream_weight * l1[b] + (1.0 - config.stream_weight) * l2[b];
      preds.push_back(std::move(p));
    }
  }
  model.set_training(was_training);
  return preds;
}

PreparedDataset prepare_dataset(const fs::path& dataset, const fs::path& cache, const RunConfig& config,
                                data::BadCasePolicy policy) {
  const data::Discovery found = data::discover_dataset(dataset, policy);
  data::PreprocessOptions prep;
  prep.cache_dir = cache.empty() ? fs::path(config.cache_dir) : cache;
  prep.params.grid = data::parse_grid(config.grid);
  prep.on_bad_case = policy;
  prep.threads = static_cast<int>(std::thread::hardware_concurrency());
  data::ProgressReporter progress("preprocess", static_cast<int64_t>(found.cases.size()));
  prep.progress = &progress;
  data::PreprocessedCohort cohort = data::preprocess_cohort(found.cases, prep);
  progress.finish();

  PreparedDataset prepared{std::move(cohort.cases), {}, found.skipped};
  prepared.skipped.insert(prepared.skipped.end(), cohort.skipped.begin(), cohort.skipped.end());
  std::map<std::string, const data::CaseFiles*> files_by_id;
  for (const data::CaseFiles& files : found.cases) files_by_id.emplace(files.case_id, &files);
  for (const data::CaseVolume& volume : prepared.cases) prepared.files.push_back(*files_by_id.at(volume.case_id));
  return prepared;
}

namespace {

// A flat-training warning is repeated at most this often (epochs) while it holds.
constexpr int kWarningEvery = 5;

volatile std::sig_atomic_t interrupted = 0;
void on_interrupt(int) { interrupted = 1; }

// The epoch driver of one fold: trains (learner.h), validates and selects (model_selection.h), saves
// (fold_checkpoints.h) and reports (fold_records.h) each epoch, then calibrates the selected models and writes
// the fold's outputs.
class FoldRun {
 public:
  FoldRun(const RunConfig& config, const std::vector<data::CaseVolume>& cohort, Device device,
          const GatherTarget& gather, dist::Communicator* ranks, const FoldPlan& plan, const fs::path& dir)
      : c_(config),
        cohort_(cohort),
        device_(device),
        gather_(gather),
        ranks_(ranks),
        writer_(!ranks || ranks->rank() == 0),
        plan_(plan),
        dir_(dir),
        progress_(config, plan_),
        learner_(config, cohort, device, gather, ranks, plan_, writer_, progress_.tag()),
        selection_(config),
        checkpoints_(config, plan_, dir) {}

  void run(bool resume) {
    fs::create_directories(dir_);
    // The fold's lines (its epochs, warnings, resumption and end) while it trains, beside the run's log.
    std::optional<logging::LogFile> fold_log;
    if (writer_) {
      const bool continued = fs::exists(dir_ / "fold.log");
      fold_log.emplace(dir_ / "fold.log");
      fold_log->note(fmt::format("{} {} in process {}", progress_.tag(), continued ? "resumed" : "started", getpid()));
    }
    int start_epoch = 0;
    if (resume && fs::exists(checkpoints_.last_path()))
      start_epoch = resume_from_last();
    else if (writer_)
      std::ofstream(dir_ / "metrics.jsonl", std::ios::trunc);
    progress_.start(start_epoch);
    std::signal(SIGINT, on_interrupt);
    // A fold killed after its stopping epoch was saved has stopped: it only finishes.
    for (int epoch = start_epoch; epoch < c_.epochs && !selection_.stopped_early(); ++epoch) {
      const auto t0 = std::chrono::steady_clock::now();
      json record = learner_.train_epoch(epoch);
      bool stop = writer_ && validate_and_save(epoch, record, t0);
      // Rank 0 alone validates: its decision is every rank's (each must leave the step loop together).
      if (ranks_) stop = ranks_->sum({stop ? 1.0 : 0.0})[0] > 0;
      epochs_run_ = epoch + 1;
      if (interrupted)
        throw Error(fmt::format("interrupted: resume with --resume ({} holds epoch {} of the {} run)",
                                checkpoints_.last_path().string(), checkpoints_.saved_epochs(), epoch + 1));
      if (stop) break;
    }
    if (writer_) finish();
  }

 private:
  // Validates the epoch's raw and EMA models, selects, appends the record to metrics.jsonl and saves last.ckpt
  // when due; returns whether early stopping ends the fold here.
  bool validate_and_save(int epoch, json& record, std::chrono::steady_clock::time_point t0) {
    const double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const float tau = soft_pooling_tau(c_, epoch);
    const auto eval_start = std::chrono::steady_clock::now();
    const std::vector<CasePrediction> val = predict(learner_.model(), selection_set(), tau);
    record["val"] = validation_metrics(val, learner_.class_weights());
    if (learner_.has_ema())
      record["val_ema"] =
          validation_metrics(predict(learner_.refreshed_ema_model(), selection_set(), tau), learner_.class_weights());
    const double eval_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - eval_start).count();
    const size_t eval_bags = selection_set().size() * (learner_.has_ema() ? 2 : 1);
    record["attention"] = attention_diagnostics(val, cohort_, c_.slab_depth);
    record["health"]["val_logit_spread"] = logit_spread(val);
    const double train_auc = record["train"]["auc"].is_null() ? NAN : record["train"]["auc"].get<double>();
    const std::string warning = flat_training_warning(epoch + 1, c_, record["train"], record["health"]);
    if (!warning.empty()) record["health"]["warning"] = warning;
    const SelectionUpdate update = selection_.add_epoch(epoch + 1, train_auc, record);
    record["selection_open"] = selection_.open();
    record["throughput_bags_per_s"] = plan_.train.size() / std::max(train_seconds, 1e-9);
    record["eval_bags_per_s"] = eval_bags / std::max(eval_seconds, 1e-9);
    record["epoch_time_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (update.raw_improved) best_.raw = checkpoints_.snapshot(learner_.model(), epoch + 1);
    if (update.ema_improved) best_.ema = checkpoints_.snapshot(learner_.ema_model(), epoch + 1);
    std::ofstream(dir_ / "metrics.jsonl", std::ios::app) << record.dump() << "\n";
    const bool last_epoch = epoch + 1 == c_.epochs;
    if (update.stop || last_epoch || checkpoints_.due()) checkpoints_.save_last(epoch + 1, learner_, selection_, best_);
    if (c_.plot_every > 0 && (epoch + 1) % c_.plot_every == 0)
      report::write_training_plots(dir_,
                                   fmt::format("repeat {} fold {} (epoch {})", plan_.repeat, plan_.fold, epoch + 1),
                                   selection_.best_overall().epoch);
    logging::line(progress_.epoch_line(record, choice_name(c_.monitor), selection_.best_overall().value,
                                       selection_.best_is_ema(), selection_.best_overall().epoch));
    if (!warning.empty() && (last_warning_epoch_ == 0 || epoch + 1 - last_warning_epoch_ >= kWarningEvery)) {
      logging::line(fmt::format("{} warning: {}", progress_.tag(), warning));
      last_warning_epoch_ = epoch + 1;
    }
    return update.stop;
  }

  // The fold's state from last.ckpt; metrics.jsonl keeps exactly the epochs the checkpoint holds (a killed run
  // may have logged one more). Returns the number of epochs already done.
  int resume_from_last() {
    const int done = checkpoints_.restore_last(learner_, selection_, best_);
    epochs_run_ = done;
    if (!writer_) return done;
    std::vector<std::string> lines;
    std::ifstream in(dir_ / "metrics.jsonl");
    for (std::string line; std::getline(in, line) && static_cast<int>(lines.size()) < done;) lines.push_back(line);
    std::ofstream out(dir_ / "metrics.jsonl", std::ios::trunc);
    for (const std::string& line : lines) out << line << "\n";
    logging::line(fmt::format("{} resumed after epoch {}", progress_.tag(), done));
    return done;
  }

  // The inner validation split; the test fold under select_on_test.
  const std::vector<int>& selection_set() const { return c_.select_on_test ? plan_.test : plan_.val; }

  std::vector<CasePrediction> predict(mil::DualStreamMIL& model, const std::vector<int>& cases, float tau) {
    return predict_cases(model, cohort_, cases, c_, device_, tau, gather_);
  }

  // One best model restored and calibrated: its predictions of the calibration set (the selection set) and the
  // threshold they give.
  struct Calibrated {
    std::vector<CasePrediction> predictions;
    std::string method;
    double threshold = 0.5;
    bool both_classes = false;  // false: the calibration set lacks a class, and the threshold is 0.5
  };
  Calibrated calibrate(mil::DualStreamMIL& model, const nn::Checkpoint& weights, const Candidate& best) {
    nn::restore_parameters(weights, "model.", model.parameters());
    nn::restore_state(weights, "model.", model.buffers());
    // The best epoch's model evaluated again exactly as in its epoch: the val rows reproduce its record.
    Calibrated out;
    out.predictions = predict(model, selection_set(), soft_pooling_tau(c_, best.epoch - 1));
    std::vector<int> labels;
    std::vector<double> p;
    for (const CasePrediction& q : out.predictions) labels.push_back(q.label), p.push_back(q.p_hgg);
    out.both_classes = report::has_both_classes(labels);
    const report::ThresholdMethod method = out.both_classes ? c_.threshold : report::ThresholdMethod::fixed_0_5;
    out.method = choice_name(method);
    out.threshold = report::choose_threshold(labels, p, method);
    return out;
  }

  void finish() {
    const bool use_ema = selection_.best_is_ema();
    const Candidate& best = selection_.best_overall();
    const std::string chosen = use_ema ? "ema" : "raw";
    // Each saved model gets its own threshold; the chosen one is calibrated last, so that it stays in place.
    Calibrated raw, ema;
    if (learner_.has_ema() && !use_ema) ema = calibrate(learner_.ema_model(), best_.ema, selection_.best_ema());
    raw = calibrate(learner_.model(), best_.raw, selection_.best_raw());
    if (learner_.has_ema() && use_ema) ema = calibrate(learner_.ema_model(), best_.ema, selection_.best_ema());
    checkpoints_.save_best("best.ckpt", best_.raw, raw.threshold, raw.method);
    if (learner_.has_ema()) checkpoints_.save_best("best_ema.ckpt", best_.ema, ema.threshold, ema.method);
    fault_point("best_saved");
    mil::DualStreamMIL& model = use_ema ? learner_.ema_model() : learner_.model();
    const Calibrated& calibrated = use_ema ? ema : raw;
    const std::vector<CasePrediction>& calibration = calibrated.predictions;
    const double threshold = calibrated.threshold;
    const std::vector<CasePrediction> test =
        c_.select_on_test ? calibration : predict(model, plan_.test, soft_pooling_tau(c_, best.epoch - 1));

    std::vector<report::PredictionRow> rows;
    std::vector<report::AttentionRow> attention;
    for (const CasePrediction& q : test) {
      const std::string& id = cohort_[q.case_index].case_id;
      rows.push_back(report::prediction_row(id, q.label, q.p_hgg, threshold, "test", chosen));
      const size_t critical = std::max_element(q.selection.begin(), q.selection.end()) - q.selection.begin();
      for (size_t i = 0; i < q.starts.size(); ++i)
        attention.push_back(
            {id, static_cast<int>(i), q.starts[i], q.attention[i], q.selection[i] > 0 && i == critical});
    }
    if (!c_.select_on_test)
      for (const CasePrediction& q : calibration)
        rows.push_back(
            report::prediction_row(cohort_[q.case_index].case_id, q.label, q.p_hgg, threshold, "val", chosen));
    report::write_predictions_csv(dir_ / "predictions.csv", rows);
    report::write_attention_csv(dir_ / "attention.csv", attention);
    fault_point("predictions_written");

    report::FoldInfo info;
    info.fold = plan_.fold;
    info.repeat = plan_.repeat;
    info.best_epoch = best.epoch;
    info.chosen_model = chosen;
    info.monitor = choice_name(c_.monitor);
    info.monitor_value = best.value;
    info.threshold_method = calibrated.method;
    info.threshold = threshold;
    info.stopped_early = selection_.stopped_early();
    info.epochs_run = epochs_run_;
    info.protocol = c_.select_on_test ? "select_on_test" : "nested";
    info.n_train = static_cast<int>(plan_.train.size());
    info.n_val = static_cast<int>(plan_.val.size());
    info.n_test = static_cast<int>(plan_.test.size());
    report::write_fold_json(dir_ / "fold.json", info);
    if (device_ == Device::CUDA) {
      std::ofstream algorithms(dir_ / "conv_algorithms.txt");
      for (const std::string& line : device::convolution_report()) algorithms << line << "\n";
    }
    logging::line(fmt::format("{} done: best epoch {} ({} model), threshold {:.3f} ({}{})", progress_.tag(), best.epoch,
                              chosen, threshold, calibrated.method,
                              calibrated.both_classes ? "" : ": the calibration set lacks a class"));
  }

  const RunConfig& c_;
  const std::vector<data::CaseVolume>& cohort_;
  Device device_;
  GatherTarget gather_;
  dist::Communicator* ranks_;
  bool writer_;  // rank 0 (or the only process): validates and writes the fold's files
  FoldPlan plan_;
  fs::path dir_;
  FoldProgress progress_;
  Learner learner_;
  ModelSelection selection_;
  FoldCheckpoints checkpoints_;
  BestModels best_;
  int epochs_run_ = 0;
  int last_warning_epoch_ = 0;
};

}  // namespace

Trainer::Trainer(const RunConfig& config, const std::vector<data::CaseVolume>& cohort, Device device,
                 const GatherTarget& gather, dist::Communicator* ranks)
    : config_(config), cohort_(cohort), device_(device), gather_(gather), ranks_(ranks) {}

void Trainer::run_fold(const FoldPlan& plan, const fs::path& dir, bool resume) {
  if (resume && fs::exists(dir / "fold.json")) return;
  FoldRun(config_, cohort_, device_, gather_, ranks_, plan, dir).run(resume);
}

}  // namespace dsmil::app
