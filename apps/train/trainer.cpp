// The fold trainer. Every random choice derives from (seed, repeat, fold, epoch, purpose, index), so
// an epoch is a pure function of the state at its start: resuming from last.ckpt is bit-exact.
#include "apps/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <map>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/provenance.h"
#include "apps/report/metrics.h"
#include "apps/report/plots.h"
#include "apps/report/run_dir.h"
#include "apps/train/batches.h"
#include "apps/train/fault_points.h"
#include "apps/train/health.h"
#include "data/progress.h"
#include "data/rng.h"
#include "logging/log.h"
#include "nn/checkpoint.h"
#include "nn/data_parallel.h"
#include "nn/optim.h"
#ifdef DSMIL_WITH_CUDA
#include "tensor/cuda/runtime.h"
#endif

namespace dsmil::app {

namespace fs = std::filesystem;
using json = nlohmann::json;

Device resolve_device(const std::string& name) {
#ifdef DSMIL_WITH_CUDA
  const bool cuda = dsmil::cuda::device_available();
#else
  const bool cuda = false;
#endif
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") {
    if (!cuda) throw Error("--device cuda: no CUDA device (or this build has no CUDA backend)");
    return Device::CUDA;
  }
  return cuda ? Device::CUDA : Device::CPU;
}

namespace {

// Purposes of the derived random streams.
enum Stream : uint64_t { kCaseOrder = 1, kTrainBag = 2, kStepMasks = 3, kInit = 4 };

double softmax_hgg(float y0, float y1) { return 1.0 / (1.0 + std::exp(static_cast<double>(y0) - y1)); }

double number_or_nan(const json& value) { return value.is_number() ? value.get<double>() : NAN; }

// The spread of the bags' logit margins y1 - y0 = log(p / (1 - p)).
double logit_spread(const std::vector<CasePrediction>& preds) {
  std::vector<double> margins;
  for (const CasePrediction& q : preds) {
    const double p = std::clamp(q.p_hgg, 1e-12, 1.0 - 1e-12);
    margins.push_back(std::log(p / (1.0 - p)));
  }
  return spread(margins);
}

// A flat-training warning is repeated at most this often (epochs) while it holds.
constexpr int kWarningEvery = 5;

// Where last.ckpt keeps the best models' tensors.
const std::string kBestRaw = "best_raw.", kBestEma = "best_ema.";

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string duration_text(double seconds) {
  const auto s = static_cast<long>(std::lround(seconds));
  return s >= 3600 ? fmt::format("{}h{:02}m", s / 3600, s % 3600 / 60)
                   : s >= 60 ? fmt::format("{}m{:02}s", s / 60, s % 60) : fmt::format("{}s", s);
}

// The monitor's value in a validation record (NaN when undefined), as fold.json states it.
double monitor_value(const std::string& monitor, const json& metrics) {
  auto get = [&](const char* key) { return metrics[key].is_null() ? NAN : metrics[key].get<double>(); };
  if (monitor == "min_class_recall") {
    const double lgg = get("recall_lgg"), hgg = get("recall_hgg");
    return std::isnan(lgg) || std::isnan(hgg) ? NAN : std::min(lgg, hgg);
  }
  return get(monitor.c_str());
}

// Ranking of monitor values: higher is better (loss negated), undefined ranks last.
double monitor_score(const std::string& monitor, double value) {
  if (std::isnan(value)) return -INFINITY;
  return monitor == "loss" ? -value : value;
}

struct Candidate {
  double value = NAN, score = -INFINITY, auc = -INFINITY;
  int epoch = 0;
  // The monitor decides; AUC breaks ties (min_class_recall moves in steps of 1/n).
  bool beaten_by(const Candidate& other) const {
    return other.score > score || (other.score == score && other.auc > auc);
  }
};

volatile std::sig_atomic_t interrupted = 0;
void on_interrupt(int) { interrupted = 1; }

}  // namespace

BagSpec training_bag_spec(const RunConfig& config, const data::GridShape& grid) {
  BagSpec spec{config.instances, config.slab_depth, data::parse_instance_sampling(config.instance_sampling),
               config.augment, {}};
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
    if (config.class_weights == "balanced" && counts[k] > 0)
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
                       meta.at("epoch").get<int>(), std::nullopt, nullptr};
  if (meta.contains("threshold")) {
    const json& bags = meta.at("threshold_bags");
    trained.threshold = CheckpointThreshold{
        meta.at("threshold").get<double>(), meta.at("threshold_method").get<std::string>(),
        fmt::format("{:.4f} ({} on the inner validation split, bags of {} fixed slabs)", meta.at("threshold").get<double>(),
                    meta.at("threshold_method").get<std::string>(), bags.at("instances").get<int>())};
  }
  // A model trained in bf16 keeps fp32 master weights: on the CPU it runs in fp32.
  if (device == Device::CPU && trained.config.precision == "bf16") trained.config.precision = "fp32";
  resolve_precision(trained.config, device);
  // The model computes as its run evaluated it (cv.cpp): with the run's TF32, determinism and convolution
  // choices, so that a strict-fp32 run's model predicts in strict fp32.
  math_mode() = trained.config.math();
  trained.model = std::make_unique<mil::DualStreamMIL>(trained.config.model_config(), 0);
  nn::restore_parameters(ckpt, "model.", trained.model->parameters());
  nn::restore_state(ckpt, "model.", trained.model->buffers());
  trained.model->to(device);
  trained.model->set_training(false);
  return trained;
}

std::vector<CasePrediction> predict_cases(mil::DualStreamMIL& model, const std::vector<data::CaseVolume>& cohort,
                                        const std::vector<int>& cases, const RunConfig& config, Device device, float tau,
                                        const GatherTarget& gather) {
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
    const std::vector<float> l1 = ops::focal_loss(out.y1.value(), target, unit, lc.label_smoothing, lc.focal_gamma).per_sample.to_vector();
    const std::vector<float> l2 = ops::focal_loss(out.y2.value(), target, unit, lc.label_smoothing, lc.focal_gamma).per_sample.to_vector();
    for (size_t b = 0; b < chunk.size(); ++b) {
      CasePrediction p;
      p.case_index = chunk[b];
      p.label = cohort[chunk[b]].label;
      p.p_hgg = softmax_hgg(y[2 * b], y[2 * b + 1]);
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
        model_(config.model_config(), stream_seed(kInit, 0, 0)),
        ema_model_(config.model_config(), stream_seed(kInit, 0, 0)) {
    model_.to(device);
    ema_model_.to(device);
    ema_model_.set_training(false);
    optimizer_ = std::make_unique<nn::AdamW>(
        model_.parameters(), c_.optimizer_config());
    if (c_.ema_decay > 0) ema_ = std::make_unique<nn::Ema>(model_, static_cast<float>(c_.ema_decay));
    if (ranks_) {
      reducer_ = std::make_unique<nn::GradientReducer>(model_.parameters(), *ranks_);
      if (c_.sync_batchnorm) nn::synchronise_batchnorm(model_, ranks_);
    }
    const std::array<float, 2> weights = class_weights(c_, cohort, plan.train);
    std::copy(weights.begin(), weights.end(), class_weight_);
    steps_per_epoch_ = (static_cast<int64_t>(plan.train.size()) + c_.bags_per_step - 1) / c_.bags_per_step;
  }

  void run(bool resume) {
    fs::create_directories(dir_);
    // The fold's lines (its epochs, warnings, resumption and end) while it trains, beside the run's log.
    std::optional<logging::LogFile> fold_log;
    if (writer_) {
      const bool continued = fs::exists(dir_ / "fold.log");
      fold_log.emplace(dir_ / "fold.log");
      fold_log->note(fmt::format("{} {} in process {}", tag(), continued ? "resumed" : "started", getpid()));
    }
    int start_epoch = 0;
    if (resume && fs::exists(dir_ / "last.ckpt")) start_epoch = restore_last();
    else if (writer_) std::ofstream(dir_ / "metrics.jsonl", std::ios::trunc);
    last_save_ = fold_start_ = std::chrono::steady_clock::now();
    first_epoch_ = start_epoch;
    std::signal(SIGINT, on_interrupt);
    // A fold killed after its stopping epoch was saved has stopped: it only finishes.
    for (int epoch = start_epoch; epoch < c_.epochs && !stopped_early_; ++epoch) {
      const auto t0 = std::chrono::steady_clock::now();
      json record = train_epoch(epoch);
      bool stop = writer_ && validate_and_save(epoch, record, t0);
      // Rank 0 alone validates: its decision is every rank's (each must leave the step loop together).
      if (ranks_) stop = ranks_->sum({stop ? 1.0 : 0.0})[0] > 0;
      epochs_run_ = epoch + 1;
      if (interrupted)
        throw Error(fmt::format("interrupted: resume with --resume ({} holds epoch {} of the {} run)",
                                (dir_ / "last.ckpt").string(), saved_epochs_, epoch + 1));
      if (stop) break;
    }
    if (writer_) finish();
  }

 private:
  // Validates the epoch's raw and EMA models, tracks the best, appends the record to metrics.jsonl and
  // saves last.ckpt when due; returns whether early stopping ends the fold here.
  bool validate_and_save(int epoch, json& record, std::chrono::steady_clock::time_point t0) {
    const double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::vector<int>& selection_set = c_.select_on_test ? plan_.test : plan_.val;
    const std::vector<CasePrediction> val = predict(model_, selection_set, tau_at(epoch));
    record["val"] = metrics_of(val);
    std::optional<std::vector<CasePrediction>> val_ema;
    if (ema_) {
      ema_->copy_to(ema_model_);
      val_ema = predict(ema_model_, selection_set, tau_at(epoch));
      record["val_ema"] = metrics_of(*val_ema);
    }
    record["attention"] = attention_diagnostics(val);
    record["health"]["val_logit_spread"] = logit_spread(val);
    const double train_auc = record["train"]["auc"].is_null() ? NAN : record["train"]["auc"].get<double>();
    const std::string warning = flat_training_warning(epoch + 1, c_.warmup_epochs, train_auc, c_.lr, record["health"]);
    if (!warning.empty()) record["health"]["warning"] = warning;
    // Selection and early stopping start once the model learns: before that, the validation peaks of a
    // model at chance are noise (one case of a 34-case split moves a recall by 0.03 to 0.2), and the epochs
    // before no longer compete. A model that never learns is selected over all its epochs and runs them all.
    if (learning_since_ == 0 && !(train_auc < c_.selection_train_auc)) {
      learning_since_ = epoch + 1;
      best_raw_ = best_ema_ = Candidate{};
    }
    record["selection_open"] = learning_since_ > 0;
    record["throughput_bags_per_s"] = plan_.train.size() / std::max(train_seconds, 1e-9);
    record["epoch_time_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    track_best(epoch, record);
    const bool last_epoch = epoch + 1 == c_.epochs;
    stopped_early_ = learning_since_ > 0 && !last_epoch && epoch + 1 >= c_.min_epochs &&
                     epoch + 1 - best_overall().epoch >= c_.patience;
    std::ofstream(dir_ / "metrics.jsonl", std::ios::app) << record.dump() << "\n";
    if (stopped_early_ || last_epoch || seconds_since(last_save_) >= c_.checkpoint_seconds) save_last(epoch + 1);
    if (c_.plot_every > 0 && (epoch + 1) % c_.plot_every == 0)
      report::write_training_plots(dir_, fmt::format("repeat {} fold {} (epoch {})", plan_.repeat, plan_.fold, epoch + 1),
                                   best_overall().epoch);
    const json& health = record["health"];
    logging::line(fmt::format(
        "{} epoch {:>3}/{} loss {:.4f} auc {:.3f} | val loss {:.4f} auc {:.3f} bacc {:.3f} | {} {:.3f} (best {} @{}) | "
        "gnorm {:.2f} upd {:.1e} spread {:.2f} | {:.1f} bags/s | {}",
        tag(), epoch + 1, c_.epochs, record["train"]["loss"].get<double>(), train_auc,
        number_or_nan(record["val"]["loss"]), number_or_nan(record["val"]["auc"]),
        number_or_nan(record["val"]["balanced_accuracy"]), c_.monitor, best_overall().value,
        best_is_ema() ? "ema" : "raw", best_overall().epoch, number_or_nan(health.value("grad_norm", json())["mean"]),
        encoder_update_ratio(health), health.value("logit_spread", NAN), record["throughput_bags_per_s"].get<double>(),
        eta(epoch + 1)));
    if (!warning.empty() && (last_warning_epoch_ == 0 || epoch + 1 - last_warning_epoch_ >= kWarningEvery)) {
      logging::line(fmt::format("{} warning: {}", tag(), warning));
      last_warning_epoch_ = epoch + 1;
    }
    return stopped_early_;
  }

  // "[fold_2, 3/5]" ("[repeat_1/fold_2, 8/10]" when repeated): the fold's folder and its place among the folds
  // this process trains.
  std::string tag() const {
    const std::string where = c_.repeats > 1 ? fmt::format("repeat_{}/fold_{}", plan_.repeat, plan_.fold)
                                             : fmt::format("fold_{}", plan_.fold);
    return fmt::format("[{}, {}/{}]", where, plan_.position, plan_.count);
  }

  // Upper bounds from the mean epoch time so far: early stopping can end a fold sooner.
  std::string eta(int epochs_done) const {
    const double per_epoch = seconds_since(fold_start_) / std::max(1, epochs_done - first_epoch_);
    const double fold = per_epoch * (c_.epochs - epochs_done);
    const double run = fold + per_epoch * c_.epochs * (plan_.count - plan_.position);
    return fmt::format("ETA fold <= {}, run <= {}", duration_text(fold), duration_text(run));
  }

  uint64_t stream_seed(uint64_t purpose, uint64_t a, uint64_t b) const {
    return data::derive_seed(static_cast<uint64_t>(c_.seed),
                             {static_cast<uint64_t>(plan_.repeat), static_cast<uint64_t>(plan_.fold), purpose, a, b});
  }

  float tau_at(int epoch) const { return soft_pooling_tau(c_, epoch); }

  BagSpec train_spec() const { return training_bag_spec(c_, cohort_.front().grid); }

  json train_epoch(int epoch) {
    model_.set_training(true);
    std::vector<int> labels;
    for (int i : plan_.train) labels.push_back(cohort_[i].label);
    data::Rng order_rng(stream_seed(kCaseOrder, epoch, 0));
    const std::vector<int> order = data::epoch_case_order(labels, data::parse_case_sampling(c_.case_sampling), order_rng);
    const float tau = tau_at(epoch);
    const int64_t total_steps = steps_per_epoch_ * c_.epochs;
    const int64_t warmup = static_cast<int64_t>(c_.warmup_epochs * steps_per_epoch_);
    std::vector<int> seen_labels;
    std::vector<double> seen_p;
    double loss_sum = 0.0, batch_seconds = 0.0;
    float lr = 0.0f;
    const auto t0 = std::chrono::steady_clock::now();
    const int world = ranks_ ? ranks_->world_size() : 1, rank = ranks_ ? ranks_->rank() : 0;
    int64_t left_out_bags = 0;
    std::optional<float> first_grad_norm;
    EpochHealth health(c_.clip_grad);
    // The update ratios and the last stage are read on one step, mid-epoch (only the final step can be
    // left out in data-parallel runs; the first runs at the lowest learning rate of a warm-up).
    const int64_t diagnostic_step = steps_per_epoch_ / 2;
    for (int64_t step = 0; step < steps_per_epoch_; ++step) {
      std::vector<int> step_cases;
      std::vector<uint64_t> step_seeds;
      for (int64_t j = step * c_.bags_per_step; j < std::min<int64_t>((step + 1) * c_.bags_per_step, order.size()); ++j) {
        step_cases.push_back(plan_.train[order[j]]);
        step_seeds.push_back(stream_seed(kTrainBag, epoch, j));
      }
      const int64_t step_bags = static_cast<int64_t>(step_cases.size());
      // Every rank needs a bag: a final step with fewer bags than ranks is left out, by every rank alike.
      if (step_bags < world) {
        left_out_bags += step_bags;
        continue;
      }
      // This rank's contiguous share of the step's bags.
      const int64_t first = rank * step_bags / world, end = (rank + 1) * step_bags / world;
      const std::vector<int> cases(step_cases.begin() + first, step_cases.begin() + end);
      const std::vector<uint64_t> seeds(step_seeds.begin() + first, step_seeds.begin() + end);
      const auto batch_start = std::chrono::steady_clock::now();
      const Batch batch = make_batch(cohort_, cases, seeds, train_spec(), gather_);
      batch_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - batch_start).count();
      nn::StepRandom random{stream_seed(kStepMasks, epoch, step), 0};
      mil::StepShare share;
      if (ranks_) {
        random.first_bag = first;
        random.local_bags = end - first;
        random.global_bags = step_bags;
        for (int i : step_cases) share.weight_sum += class_weight_[cohort_[i].label];
        share.bags = step_bags;
      }
      const bool diagnose = writer_ && step == diagnostic_step;
      const mil::LossTargets targets = mil::loss_targets(batch.target, class_weight_, device_);
      model_.encoder().set_record_last_stage(diagnose);
      const mil::MilOutput out = model_.forward(Variable(batch.x.to(device_)), batch.mask, tau, random);
      const Tensor last_stage = model_.encoder().last_stage_output();
      Variable loss = mil::mil_loss(out, targets, c_.loss_config(), share);
      loss.backward();
      if (reducer_) reducer_->finish();
      lr = nn::warmup_cosine_lr(static_cast<float>(c_.lr), epoch * steps_per_epoch_ + step, warmup, total_steps);
      if (diagnose) health.weights_before_step(model_.parameters());
      optimizer_->step(lr);
      if (diagnose) {
        health.weights_after_step(model_.parameters());
        health.last_stage(last_stage);
      }
      optimizer_->zero_grad();
      if (ema_) ema_->update(model_);
      // The global gradient norm before clipping, read once the step is queued whole; the first step's goes
      // in the record alone too: one process and the ranks of a data-parallel job must agree on it at the
      // same weights.
      const float grad_norm = optimizer_->last_grad_norm();
      if (!first_grad_norm) first_grad_norm = grad_norm;
      health.add_step(grad_norm);
      // The host reads the step once it is queued whole: the loss and every bag's logits (summed over ranks:
      // each rank fills its own bags' places). A diverged step ends the fold before its update is saved.
      std::vector<double> step_values(1 + 2 * step_bags, 0.0);
      step_values[0] = loss.value().item();
      const std::vector<float> y = out.y.value().to_vector();
      for (size_t v = 0; v < y.size(); ++v) step_values[1 + 2 * first + v] = y[v];
      if (ranks_) step_values = ranks_->sum(step_values);
      const double loss_value = step_values[0];
      if (!std::isfinite(loss_value))
        throw Error(fmt::format("fold {} epoch {} step {}: the loss is {} (diverged)", plan_.fold, epoch + 1, step, loss_value));
      for (int64_t b = 0; b < step_bags; ++b) {
        seen_labels.push_back(cohort_[step_cases[b]].label);
        seen_p.push_back(softmax_hgg(static_cast<float>(step_values[1 + 2 * b]), static_cast<float>(step_values[2 + 2 * b])));
        health.add_bag_margin(step_values[2 + 2 * b] - step_values[1 + 2 * b]);
      }
      loss_sum += loss_value * step_bags;
      if (!writer_) continue;
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      logging::status(fmt::format("{} epoch {}/{} step {}/{} loss {:.4f} lr {:.2e} | {:.1f} bags/s | ETA epoch {:.0f}s",
                                  tag(), epoch + 1, c_.epochs, step + 1, steps_per_epoch_, loss_value, lr,
                                  seen_p.size() / elapsed, elapsed / (step + 1) * (steps_per_epoch_ - step - 1)));
    }
    json record = {{"epoch", epoch + 1},
                   {"lr", lr},
                   {"tau", tau},
                   {"batch_assembly_s", batch_seconds},
                   {"train", report::split_record_json(seen_labels, seen_p, loss_sum / std::max<size_t>(seen_p.size(), 1))}};
    if (first_grad_norm) record["grad_norm_first_step"] = *first_grad_norm;
    record["health"] = health.record();
    if (ranks_)
      record["data_parallel"] = {{"ranks", world},
                                 {"sync_batchnorm", c_.sync_batchnorm},
                                 {"left_out_bags", left_out_bags},
                                 {"gradient_buckets", reducer_->bucket_count()},
                                 {"buckets_started_in_backward", reducer_->started_during_backward()}};
    return record;
  }

  std::vector<CasePrediction> predict(mil::DualStreamMIL& model, const std::vector<int>& cases, float tau) {
    return predict_cases(model, cohort_, cases, c_, device_, tau, gather_);
  }

  // Validation loss uses the fold's class weights, like the training loss.
  json metrics_of(const std::vector<CasePrediction>& preds) const {
    std::vector<int> labels;
    std::vector<double> p;
    double weighted = 0.0, weights = 0.0;
    for (const CasePrediction& q : preds) {
      labels.push_back(q.label);
      p.push_back(q.p_hgg);
      weighted += class_weight_[q.label] * q.loss;
      weights += class_weight_[q.label];
    }
    return report::split_record_json(labels, p, weights > 0 ? weighted / weights : NAN);
  }

  json attention_diagnostics(const std::vector<CasePrediction>& preds) const {
    if (preds.empty()) return nullptr;
    double entropy = 0, entropy_norm = 0, top1 = 0, neff = 0;
    std::vector<double> confidence;
    int tumour_bags = 0, bags_with_seg = 0;
    for (const CasePrediction& p : preds) {
      entropy += p.entropy;
      entropy_norm += p.attention.size() > 1 ? p.entropy / std::log(static_cast<double>(p.attention.size())) : 0.0;
      top1 += p.top1;
      neff += p.neff;
      const size_t critical = std::max_element(p.selection.begin(), p.selection.end()) - p.selection.begin();
      confidence.push_back(1.0 / (1.0 + std::exp(-std::fabs(p.margins[critical]))));
      const data::CaseVolume& c = cohort_[p.case_index];
      if (c.has_seg()) {
        ++bags_with_seg;
        tumour_bags += data::slab_holds_tumour(c, p.starts[critical], c_.slab_depth);
      }
    }
    const double n = static_cast<double>(preds.size());
    std::sort(confidence.begin(), confidence.end());
    auto quantile = [&](double q) { return confidence[static_cast<size_t>(q * (confidence.size() - 1) + 0.5)]; };
    double mean_conf = 0;
    for (double v : confidence) mean_conf += v / n;
    return {{"entropy", entropy / n},
            {"entropy_norm", entropy_norm / n},
            {"top1", top1 / n},
            {"neff", neff / n},
            {"selection_confidence", {{"mean", mean_conf}, {"p10", quantile(0.1)}, {"p50", quantile(0.5)}, {"p90", quantile(0.9)}}},
            {"critical_tumour_share", bags_with_seg ? json(static_cast<double>(tumour_bags) / bags_with_seg) : json(nullptr)}};
  }

  Candidate candidate_of(const json& val, int epoch) const {
    const double value = monitor_value(c_.monitor, val);
    return {value, monitor_score(c_.monitor, value), val["auc"].is_null() ? -INFINITY : val["auc"].get<double>(), epoch};
  }

  // The best raw and EMA models wait in host memory and reach disk inside last.ckpt: one file commits the
  // state, so a run killed anywhere resumes to weights, best models and records of one epoch. With no
  // candidate yet, any epoch is best (a monitor undefined on every epoch still selects a model).
  void track_best(int epoch, const json& record) {
    const Candidate raw = candidate_of(record["val"], epoch + 1);
    if (best_raw_.epoch == 0 || best_raw_.beaten_by(raw)) {
      best_raw_ = raw;
      best_raw_weights_ = snapshot(model_, epoch + 1);
    }
    if (ema_) {
      const Candidate ema = candidate_of(record["val_ema"], epoch + 1);
      if (best_ema_.epoch == 0 || best_ema_.beaten_by(ema)) {
        best_ema_ = ema;
        best_ema_weights_ = snapshot(ema_model_, epoch + 1);
      }
    }
  }

  bool best_is_ema() const { return ema_ && best_raw_.beaten_by(best_ema_); }
  const Candidate& best_overall() const { return best_is_ema() ? best_ema_ : best_raw_; }

  json metadata(int epoch) const {
    return {{"format", "dsmil3d checkpoint"}, {"epoch", epoch}, {"repeat", plan_.repeat}, {"fold", plan_.fold},
            {"config", config_to_toml(c_)}, {"provenance", provenance_}};
  }

  // A model's weights and statistics at `epoch`, on the host, in the format of best.ckpt.
  nn::Checkpoint snapshot(mil::DualStreamMIL& model, int epoch) const {
    nn::Checkpoint ckpt;
    ckpt.metadata = metadata(epoch).dump();
    nn::add_parameters(ckpt, "model.", model.parameters());
    nn::add_state(ckpt, "model.", model.buffers());
    return ckpt;
  }

  void save_last(int epochs_done) {
    nn::Checkpoint ckpt;
    json meta = metadata(epochs_done);
    meta["optimizer_steps"] = optimizer_->steps();
    meta["ema_updates"] = ema_ ? ema_->updates() : 0;
    auto number = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
    meta["best_raw"] = {number(best_raw_.value), number(best_raw_.auc), best_raw_.epoch};
    meta["best_ema"] = {number(best_ema_.value), number(best_ema_.auc), best_ema_.epoch};
    meta["learning_since"] = learning_since_;
    meta["stopped_early"] = stopped_early_;
    ckpt.metadata = meta.dump();
    nn::add_parameters(ckpt, "model.", model_.parameters());
    nn::add_state(ckpt, "model.", model_.buffers());
    nn::add_state(ckpt, "optimizer.", optimizer_->state());
    if (ema_) nn::add_state(ckpt, "", ema_->state());
    for (const auto& [prefix, best] : {std::pair{kBestRaw, &best_raw_weights_}, std::pair{kBestEma, &best_ema_weights_}})
      for (const nn::CheckpointTensor& t : best->tensors) ckpt.tensors.push_back({prefix + t.name, t.value});
    nn::save_checkpoint((dir_ / "last.ckpt").string(), ckpt);
    saved_epochs_ = epochs_done;
    last_save_ = std::chrono::steady_clock::now();
    fault_point("checkpoint_saved");
    if (stopped_early_) fault_point("stop_saved");
  }

  // The tensors of `ckpt` named prefix + name, under their names, with the metadata of `epoch`.
  nn::Checkpoint best_weights(const nn::Checkpoint& ckpt, const std::string& prefix, int epoch) const {
    nn::Checkpoint best;
    best.metadata = metadata(epoch).dump();
    for (const nn::CheckpointTensor& t : ckpt.tensors)
      if (t.name.starts_with(prefix)) best.tensors.push_back({t.name.substr(prefix.size()), t.value});
    return best;
  }

  // Returns the number of epochs already done.
  int restore_last() {
    const nn::Checkpoint ckpt = nn::load_checkpoint((dir_ / "last.ckpt").string());
    const json meta = json::parse(ckpt.metadata);
    if (meta.value("config", "") != config_to_toml(c_))
      throw Error(fmt::format("--resume: {} was written with another config", (dir_ / "last.ckpt").string()));
    nn::restore_parameters(ckpt, "model.", model_.parameters());
    nn::restore_state(ckpt, "model.", model_.buffers());
    nn::restore_state(ckpt, "optimizer.", optimizer_->state());
    optimizer_->set_steps(meta["optimizer_steps"].get<int64_t>());
    if (ema_) {
      nn::restore_state(ckpt, "", ema_->state());
      ema_->set_updates(meta["ema_updates"].get<int64_t>());
    }
    auto candidate = [this](const json& j) {
      const double value = j[0].is_null() ? NAN : j[0].get<double>();
      return Candidate{value, monitor_score(c_.monitor, value), j[1].is_null() ? -INFINITY : j[1].get<double>(),
                       j[2].get<int>()};
    };
    best_raw_ = candidate(meta["best_raw"]);
    best_ema_ = candidate(meta["best_ema"]);
    best_raw_weights_ = best_weights(ckpt, kBestRaw, best_raw_.epoch);
    best_ema_weights_ = best_weights(ckpt, kBestEma, best_ema_.epoch);
    learning_since_ = meta.value("learning_since", 0);
    stopped_early_ = meta.value("stopped_early", false);
    const int done = meta["epoch"].get<int>();
    epochs_run_ = saved_epochs_ = done;
    if (!writer_) return done;
    // Keep exactly the epochs the checkpoint holds: a killed run may have logged one more.
    std::vector<std::string> lines;
    std::ifstream in(dir_ / "metrics.jsonl");
    for (std::string line; std::getline(in, line) && static_cast<int>(lines.size()) < done;) lines.push_back(line);
    std::ofstream out(dir_ / "metrics.jsonl", std::ios::trunc);
    for (const std::string& line : lines) out << line << "\n";
    logging::line(fmt::format("{} resumed after epoch {}", tag(), done));
    return done;
  }

  // One best model restored and calibrated: its predictions of the calibration set (the inner validation
  // split; the test fold under select_on_test) and the threshold they give.
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
    out.predictions = predict(model, c_.select_on_test ? plan_.test : plan_.val, tau_at(best.epoch - 1));
    std::vector<int> labels;
    std::vector<double> p;
    for (const CasePrediction& q : out.predictions) labels.push_back(q.label), p.push_back(q.p_hgg);
    out.both_classes = report::has_both_classes(labels);
    out.method = out.both_classes ? c_.threshold : "0.5";
    out.threshold = report::choose_threshold(labels, p, report::parse_threshold_method(out.method));
    return out;
  }

  // best.ckpt / best_ema.ckpt: the weights with the threshold calibrated for them and the bags it was
  // calibrated on, which `eval` and `predict` apply.
  void save_best(const std::string& name, nn::Checkpoint weights, const Calibrated& calibrated) const {
    json meta = json::parse(weights.metadata);
    meta["threshold"] = calibrated.threshold;
    meta["threshold_method"] = calibrated.method;
    meta["threshold_bags"] = {{"sampling", "fixed"}, {"instances", c_.eval_instances}, {"slab_depth", c_.slab_depth}};
    weights.metadata = meta.dump();
    nn::save_checkpoint((dir_ / name).string(), weights);
  }

  void finish() {
    const bool use_ema = best_is_ema();
    const Candidate& best = best_overall();
    const std::string chosen = use_ema ? "ema" : "raw";
    // Each saved model gets its own threshold; the chosen one is calibrated last, so that it stays in place.
    Calibrated raw, ema;
    if (ema_ && !use_ema) ema = calibrate(ema_model_, best_ema_weights_, best_ema_);
    raw = calibrate(model_, best_raw_weights_, best_raw_);
    if (ema_ && use_ema) ema = calibrate(ema_model_, best_ema_weights_, best_ema_);
    save_best("best.ckpt", best_raw_weights_, raw);
    if (ema_) save_best("best_ema.ckpt", best_ema_weights_, ema);
    fault_point("best_saved");
    mil::DualStreamMIL& model = use_ema ? ema_model_ : model_;
    const Calibrated& calibrated = use_ema ? ema : raw;
    const std::vector<CasePrediction>& calibration = calibrated.predictions;
    const std::string& method = calibrated.method;
    const double threshold = calibrated.threshold;
    const bool can_calibrate = calibrated.both_classes;
    const std::vector<CasePrediction> test =
        c_.select_on_test ? calibration : predict(model, plan_.test, tau_at(best.epoch - 1));

    std::vector<report::PredictionRow> rows;
    std::vector<report::AttentionRow> attention;
    for (const CasePrediction& q : test) {
      const std::string& id = cohort_[q.case_index].case_id;
      rows.push_back(report::prediction_row(id, q.label, q.p_hgg, threshold, "test", chosen));
      const size_t critical = std::max_element(q.selection.begin(), q.selection.end()) - q.selection.begin();
      for (size_t i = 0; i < q.starts.size(); ++i)
        attention.push_back({id, static_cast<int>(i), q.starts[i], q.attention[i], q.selection[i] > 0 && i == critical});
    }
    if (!c_.select_on_test)
      for (const CasePrediction& q : calibration)
        rows.push_back(report::prediction_row(cohort_[q.case_index].case_id, q.label, q.p_hgg, threshold, "val", chosen));
    report::write_predictions_csv(dir_ / "predictions.csv", rows);
    report::write_attention_csv(dir_ / "attention.csv", attention);
    fault_point("predictions_written");

    report::FoldInfo info;
    info.fold = plan_.fold;
    info.repeat = plan_.repeat;
    info.best_epoch = best.epoch;
    info.chosen_model = chosen;
    info.monitor = c_.monitor;
    info.monitor_value = best.value;
    info.threshold_method = method;
    info.threshold = threshold;
    info.stopped_early = stopped_early_;
    info.epochs_run = epochs_run_;
    info.protocol = c_.select_on_test ? "select_on_test" : "nested";
    info.n_train = static_cast<int>(plan_.train.size());
    info.n_val = static_cast<int>(plan_.val.size());
    info.n_test = static_cast<int>(plan_.test.size());
    report::write_fold_json(dir_ / "fold.json", info);
    logging::line(fmt::format("{} done: best epoch {} ({} model), threshold {:.3f} ({}{})", tag(), best.epoch, chosen,
                              threshold, method, can_calibrate ? "" : ": the calibration set lacks a class"));
  }

  const RunConfig& c_;
  const std::vector<data::CaseVolume>& cohort_;
  Device device_;
  GatherTarget gather_;
  dist::Communicator* ranks_;
  bool writer_;  // rank 0 (or the only process): validates and writes the fold's files
  FoldPlan plan_;
  fs::path dir_;
  mil::DualStreamMIL model_, ema_model_;
  std::unique_ptr<nn::AdamW> optimizer_;
  std::unique_ptr<nn::Ema> ema_;
  std::unique_ptr<nn::GradientReducer> reducer_;  // data-parallel runs only
  float class_weight_[2] = {1.0f, 1.0f};
  int64_t steps_per_epoch_ = 0;
  Candidate best_raw_, best_ema_;
  nn::Checkpoint best_raw_weights_, best_ema_weights_;
  int saved_epochs_ = 0;  // the epochs last.ckpt holds
  std::chrono::steady_clock::time_point last_save_, fold_start_;
  int first_epoch_ = 0;  // the epoch this process started the fold at (after a resume: the saved epochs)
  bool stopped_early_ = false;
  int epochs_run_ = 0;
  int last_warning_epoch_ = 0;
  // What writes the checkpoints: a snapshot of this process's build, device and command (the command-line
  // and device queries run once, not at every checkpoint).
  json provenance_ = [this] {
    Provenance p = current_provenance();
    p.config_sha256 = sha256_hex(config_to_toml(c_));
    return p.to_json();
  }();
  int learning_since_ = 0;  // the first epoch whose training AUC reached train.selection_train_auc (0: none yet)
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
