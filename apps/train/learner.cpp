// The fold's learner: the training steps of an epoch.
#include "apps/train/learner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include <fmt/format.h>

#include "apps/report/run_dir.h"
#include "apps/train/health.h"
#include "apps/train/trainer.h"
#include "base/thread_usage.h"
#include "data/rng.h"
#include "logging/log.h"
#include "tensor/device.h"

namespace dsmil::app {

using json = nlohmann::json;

namespace {

// Purposes of the derived random streams.
enum Stream : uint64_t { kCaseOrder = 1, kTrainBag = 2, kStepMasks = 3, kInit = 4 };

}  // namespace

double hgg_probability(float y0, float y1) { return 1.0 / (1.0 + std::exp(static_cast<double>(y0) - y1)); }

Learner::Learner(const RunConfig& config, const std::vector<data::CaseVolume>& cohort, Device device,
                 const GatherTarget& gather, dist::Communicator* ranks, const FoldPlan& plan, bool writer,
                 std::string tag)
    : c_(config),
      cohort_(cohort),
      device_(device),
      gather_(gather),
      ranks_(ranks),
      plan_(plan),
      writer_(writer),
      tag_(std::move(tag)),
      model_(config.model_config(), stream_seed(kInit, 0, 0)),
      ema_model_(config.model_config(), stream_seed(kInit, 0, 0)) {
  model_.to(device);
  ema_model_.to(device);
  model_.set_math_mode(c_.math());
  ema_model_.set_math_mode(c_.math());
  ema_model_.set_training(false);
  optimizer_ = std::make_unique<nn::AdamW>(model_.parameters(), c_.optimizer_config());
  if (c_.ema_decay > 0) ema_ = std::make_unique<nn::Ema>(model_, static_cast<float>(c_.ema_decay));
  if (ranks_) {
    reducer_ = std::make_unique<nn::GradientReducer>(model_.parameters(), *ranks_);
    if (c_.sync_batchnorm) nn::synchronise_batchnorm(model_, ranks_);
  }
  // Data-parallel steps reduce their gradients across processes mid-step: queued as they are.
  if (records_steps(c_, device_) && !ranks_)
    graph_step_ = std::make_unique<GraphStep>(model_, *optimizer_, ema_.get(), c_.loss_config());
  class_weights_ = app::class_weights(c_, cohort, plan.train);
  steps_per_epoch_ = (static_cast<int64_t>(plan.train.size()) + c_.bags_per_step - 1) / c_.bags_per_step;
}

uint64_t Learner::stream_seed(uint64_t purpose, uint64_t a, uint64_t b) const {
  return data::derive_seed(static_cast<uint64_t>(c_.seed),
                           {static_cast<uint64_t>(plan_.repeat), static_cast<uint64_t>(plan_.fold), purpose, a, b});
}

mil::DualStreamMIL& Learner::refreshed_ema_model() {
  ema_->copy_to(ema_model_);
  return ema_model_;
}

void Learner::save_state(nn::Checkpoint& ckpt, json& meta) {
  meta["optimizer_steps"] = optimizer_->steps();
  meta["ema_updates"] = ema_ ? ema_->updates() : 0;
  nn::add_parameters(ckpt, "model.", model_.parameters());
  nn::add_state(ckpt, "model.", model_.buffers());
  nn::add_state(ckpt, "optimizer.", optimizer_->state());
  if (ema_) nn::add_state(ckpt, "", ema_->state());
}

void Learner::restore_state(const nn::Checkpoint& ckpt, const json& meta) {
  nn::restore_parameters(ckpt, "model.", model_.parameters());
  nn::restore_state(ckpt, "model.", model_.buffers());
  nn::restore_state(ckpt, "optimizer.", optimizer_->state());
  optimizer_->set_steps(meta.at("optimizer_steps").get<int64_t>());
  if (ema_) {
    nn::restore_state(ckpt, "", ema_->state());
    ema_->set_updates(meta.at("ema_updates").get<int64_t>());
  }
}

json Learner::train_epoch(int epoch) {
  model_.set_training(true);
  std::vector<int> labels;
  for (int i : plan_.train) labels.push_back(cohort_[i].label);
  data::Rng order_rng(stream_seed(kCaseOrder, epoch, 0));
  const std::vector<int> order = data::epoch_case_order(labels, c_.case_sampling, order_rng);
  const float tau = soft_pooling_tau(c_, epoch);
  const BagSpec spec = training_bag_spec(c_, cohort_.front().grid);
  const int64_t total_steps = steps_per_epoch_ * c_.epochs;
  const int64_t warmup = static_cast<int64_t>(c_.warmup_epochs * steps_per_epoch_);
  std::vector<int> seen_labels;
  std::vector<double> seen_p;
  double loss_sum = 0.0, batch_seconds = 0.0, readback_seconds = 0.0;
  // Host time queuing the steps, split where the step's host work changes kind: the forward pass and the loss, the
  // backward pass, the update (optimizer, EMA, and the diagnostic step's measurements); the device's time over the
  // same parts (marks 0-3: the queue's start and each part's end), and what the queuing cost the host thread.
  double forward_seconds = 0.0, backward_seconds = 0.0, update_seconds = 0.0;
  std::array<double, 3> device_seconds{};
  device::DeviceClock device_clock(device_, 4);
  ThreadUsage queue_usage;
  // The steps run as the recorded CUDA graph (run.cuda_graph): their count, host time (writing the inputs, recording
  // where needed, launching) and device time; the split above is of the steps queued as they are.
  int64_t graph_steps = 0;
  double graph_queue_seconds = 0.0, graph_device_seconds = 0.0;
  device::DeviceClock graph_clock(device_, 2);
  const int recordings_before = graph_step_ ? graph_step_->recordings() : 0;
  const double recording_seconds_before = graph_step_ ? graph_step_->recording_seconds() : 0.0;
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
    const Batch batch = make_batch(cohort_, cases, seeds, spec, gather_);
    batch_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - batch_start).count();
    nn::StepRandom random{stream_seed(kStepMasks, epoch, step), 0};
    mil::StepShare share;
    if (ranks_) {
      random.first_bag = first;
      random.local_bags = end - first;
      random.global_bags = step_bags;
      for (int i : step_cases) share.weight_sum += class_weights_[cohort_[i].label];
      share.bags = step_bags;
    }
    const bool diagnose = writer_ && step == diagnostic_step;
    lr = nn::warmup_cosine_lr(static_cast<float>(c_.lr), epoch * steps_per_epoch_ + step, warmup, total_steps);
    const auto queue_start = std::chrono::steady_clock::now();
    const ThreadUsage usage_at_start = ThreadUsage::now();
    model_.encoder().set_record_last_stage(diagnose);
    // The step's loss and logits, on the device until read back.
    Tensor step_loss, step_y;
    std::optional<GraphStep::Outputs> graphed;
    if (graph_step_ && !diagnose && graph_step_->takes(batch)) {
      graph_clock.mark(0);
      graphed = graph_step_->run(batch, class_weights_.data(), random, tau, lr);
      graph_clock.mark(1);
      if (!graphed)
        logging::line(
            fmt::format("{}: the training step cannot be recorded as a CUDA graph ({}); every step is queued "
                        "as it is",
                        tag_, graph_step_->failure()));
    }
    if (graphed) {
      step_loss = graphed->loss;
      step_y = graphed->y;
      ++graph_steps;
      graph_queue_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - queue_start).count();
    } else {
      device_clock.mark(0);
      const mil::LossTargets targets = mil::loss_targets(batch.target, class_weights_.data(), device_);
      const mil::MilOutput out = model_.forward(Variable(batch.x.to(device_)), batch.mask, tau, random);
      const Tensor last_stage = model_.encoder().last_stage_output();
      Variable loss = mil::mil_loss(out, targets, c_.loss_config(), share);
      const auto forward_done = std::chrono::steady_clock::now();
      device_clock.mark(1);
      loss.backward();
      if (reducer_) reducer_->finish();
      const auto backward_done = std::chrono::steady_clock::now();
      device_clock.mark(2);
      if (diagnose) health.weights_before_step(model_.parameters());
      optimizer_->step(lr);
      if (diagnose) {
        health.weights_after_step(model_.parameters());
        health.last_stage(last_stage);
      }
      optimizer_->zero_grad();
      if (ema_) ema_->update(model_);
      device_clock.mark(3);
      step_loss = loss.value();
      step_y = out.y.value();
      const auto update_done = std::chrono::steady_clock::now();
      forward_seconds += std::chrono::duration<double>(forward_done - queue_start).count();
      backward_seconds += std::chrono::duration<double>(backward_done - forward_done).count();
      update_seconds += std::chrono::duration<double>(update_done - backward_done).count();
      if (graph_step_) graph_step_->saw_eager_step(batch.x.shape());
    }
    const auto readback_start = std::chrono::steady_clock::now();
    queue_usage += ThreadUsage::now() - usage_at_start;
    // The global gradient norm before clipping, read once the step is queued whole; the first step's goes
    // in the record alone too: one process and the ranks of a data-parallel job must agree on it at the
    // same weights.
    const float grad_norm = optimizer_->last_grad_norm();
    if (!first_grad_norm) first_grad_norm = grad_norm;
    health.add_step(grad_norm);
    // The host reads the step once it is queued whole: the loss and every bag's logits (summed over ranks:
    // each rank fills its own bags' places). A diverged step ends the fold before its update is saved.
    std::vector<double> step_values(1 + 2 * step_bags, 0.0);
    step_values[0] = step_loss.item();
    const std::vector<float> y = step_y.to_vector();
    for (size_t v = 0; v < y.size(); ++v) step_values[1 + 2 * first + v] = y[v];
    if (ranks_) step_values = ranks_->sum(step_values);
    readback_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - readback_start).count();
    if (graphed) {
      graph_device_seconds += graph_clock.seconds(0, 1);
    } else {
      for (size_t part = 0; part < device_seconds.size(); ++part)
        device_seconds[part] += device_clock.seconds(part, part + 1);
    }
    const double loss_value = step_values[0];
    if (!std::isfinite(loss_value))
      throw Error(
          fmt::format("fold {} epoch {} step {}: the loss is {} (diverged)", plan_.fold, epoch + 1, step, loss_value));
    for (int64_t b = 0; b < step_bags; ++b) {
      seen_labels.push_back(cohort_[step_cases[b]].label);
      seen_p.push_back(
          hgg_probability(static_cast<float>(step_values[1 + 2 * b]), static_cast<float>(step_values[2 + 2 * b])));
      health.add_bag_margin(step_values[2 + 2 * b] - step_values[1 + 2 * b]);
    }
    loss_sum += loss_value * step_bags;
    if (!writer_) continue;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    logging::status(fmt::format("{} epoch {}/{} step {}/{} loss {:.4f} lr {:.2e} | {:.1f} bags/s | ETA epoch {:.0f}s",
                                tag_, epoch + 1, c_.epochs, step + 1, steps_per_epoch_, loss_value, lr,
                                seen_p.size() / elapsed, elapsed / (step + 1) * (steps_per_epoch_ - step - 1)));
  }
  json record = {
      {"epoch", epoch + 1},
      {"lr", lr},
      {"tau", tau},
      {"batch_assembly_s", batch_seconds},
      {"step_queue_s", forward_seconds + backward_seconds + update_seconds},
      {"step_queue_split_s",
       {{"forward", forward_seconds}, {"backward", backward_seconds}, {"update", update_seconds}}},
      {"step_device_split_s",
       {{"forward", device_seconds[0]}, {"backward", device_seconds[1]}, {"update", device_seconds[2]}}},
      {"step_queue_thread",
       {{"cpu_s", queue_usage.cpu_seconds},
        {"minor_faults", queue_usage.minor_faults},
        {"major_faults", queue_usage.major_faults},
        {"voluntary_switches", queue_usage.voluntary_switches},
        {"involuntary_switches", queue_usage.involuntary_switches}}},
      {"step_readback_s", readback_seconds},
      {"train", report::split_record_json(seen_labels, seen_p, loss_sum / std::max<size_t>(seen_p.size(), 1))}};
  if (graph_step_)
    record["step_graph"] = {{"steps", graph_steps},
                            {"queue_s", graph_queue_seconds},
                            {"device_s", graph_device_seconds},
                            {"recordings", graph_step_->recordings() - recordings_before},
                            {"recording_s", graph_step_->recording_seconds() - recording_seconds_before},
                            {"failure", graph_step_->failure().empty() ? json() : json(graph_step_->failure())}};
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

}  // namespace dsmil::app
