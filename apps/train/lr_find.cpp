// The learning-rate range test.
#include "apps/train/lr_find.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include <fmt/format.h>

#include "apps/report/plots.h"
#include "apps/train/trainer.h"
#include "data/rng.h"
#include "logging/log.h"
#include "nn/optim.h"

namespace dsmil::app {

namespace {

// Purposes of the test's random streams (the fold trainer's are its own).
enum Stream : uint64_t { kInit = 11, kCaseOrder = 12, kBag = 13, kMasks = 14 };

// Steps at the start of the range where a high smoothed loss only means the average is still young.
constexpr int kWarmSteps = 10;

}  // namespace

LrFindResult lr_find(const RunConfig& config, const std::vector<data::CaseVolume>& cohort,
                     const std::vector<int>& train, Device device, const LrFindOptions& options,
                     const GatherTarget& gather) {
  if (train.empty()) throw Error("lr-find: no training case");
  if (!(options.lr_min > 0 && options.lr_max > options.lr_min && options.steps >= 2))
    throw Error(fmt::format("lr-find: needs 0 < lr_min < lr_max and 2 or more steps (got {:g}, {:g}, {})",
                            options.lr_min, options.lr_max, options.steps));
  const uint64_t seed = static_cast<uint64_t>(config.seed);
  mil::DualStreamMIL model(config.model_config(), data::derive_seed(seed, {kInit}));
  model.set_math_mode(config.math());
  model.to(device);
  model.set_training(true);
  nn::AdamW optimizer(model.parameters(), config.optimizer_config());
  const std::array<float, 2> weights = class_weights(config, cohort, train);
  const BagSpec spec = training_bag_spec(config, cohort.front().grid);
  std::vector<int> labels;
  for (int i : train) labels.push_back(cohort[i].label);

  LrFindResult result;
  std::vector<int> order;
  size_t next = 0;
  double average = 0.0, best = INFINITY;
  for (int step = 0; step < options.steps; ++step) {
    const double lr = options.lr_min * std::pow(options.lr_max / options.lr_min, step / double(options.steps - 1));
    std::vector<int> cases;
    std::vector<uint64_t> seeds;
    for (int b = 0; b < config.bags_per_step; ++b) {
      if (next == order.size()) {
        data::Rng rng = data::make_rng(seed, {kCaseOrder, static_cast<uint64_t>(step)});
        order = data::epoch_case_order(labels, config.case_sampling, rng);
        next = 0;
      }
      cases.push_back(train[order[next++]]);
      seeds.push_back(data::derive_seed(seed, {kBag, static_cast<uint64_t>(step), static_cast<uint64_t>(b)}));
    }
    const Batch batch = make_batch(cohort, cases, seeds, spec, gather);
    nn::StepRandom random{data::derive_seed(seed, {kMasks, static_cast<uint64_t>(step)}), 0};
    const mil::LossTargets targets = mil::loss_targets(batch.target, weights.data(), device);
    const mil::MilOutput out =
        model.forward(Variable(batch.x.to(device)), batch.mask, static_cast<float>(config.tau_start), random);
    Variable loss = mil::mil_loss(out, targets, config.loss_config());
    loss.backward();
    optimizer.step(static_cast<float>(lr));
    optimizer.zero_grad();
    const double value = loss.value().item();
    average = options.smoothing * average + (1.0 - options.smoothing) * value;
    const double smoothed = average / (1.0 - std::pow(options.smoothing, step + 1));
    result.points.push_back({lr, value, smoothed});
    logging::status(fmt::format("lr-find step {}/{} lr {:.2e} loss {:.4f} smoothed {:.4f}", step + 1, options.steps, lr,
                                value, smoothed));
    if (!std::isfinite(value) || (step >= kWarmSteps && smoothed > options.divergence * best)) {
      result.diverged = true;
      break;
    }
    if (step >= kWarmSteps) best = std::min(best, smoothed);
  }
  suggest_lr(result);
  return result;
}

void suggest_lr(LrFindResult& result) {
  const std::vector<LrFindPoint>& p = result.points;
  if (p.size() < 3) throw Error(fmt::format("lr-find: {} points are too few to suggest a learning rate", p.size()));
  const auto first = p.begin() + p.size() / 10, last = p.end() - p.size() / 10;
  result.suggested_lr = std::min_element(first, last, [](const LrFindPoint& a, const LrFindPoint& b) {
                          return a.smoothed < b.smoothed;
                        })->lr;
}

std::filesystem::path write_lr_find(const LrFindResult& result, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  std::ofstream csv(dir / "lr_find.csv");
  csv << "step,lr,loss,smoothed\n";
  report::Series raw{"loss", {}, {}, false, true}, smoothed{"smoothed loss", {}, {}};
  for (size_t i = 0; i < result.points.size(); ++i) {
    const LrFindPoint& q = result.points[i];
    csv << fmt::format("{},{:.9g},{:.9g},{:.9g}\n", i, q.lr, q.loss, q.smoothed);
    raw.x.push_back(std::log10(q.lr));
    raw.y.push_back(q.loss);
    smoothed.x.push_back(std::log10(q.lr));
    smoothed.y.push_back(q.smoothed);
  }
  double y_max = 0.0;
  for (const LrFindPoint& q : result.points) y_max = std::max(y_max, q.smoothed);
  const report::Series suggestion{fmt::format("suggested lr {:.1e}", result.suggested_lr),
                                  {std::log10(result.suggested_lr), std::log10(result.suggested_lr)},
                                  {0.0, 1.5 * y_max},
                                  true};
  report::ChartSpec spec;
  spec.title =
      fmt::format("learning-rate range test ({} steps{})", result.points.size(), result.diverged ? ", diverged" : "");
  spec.x_label = "log10 learning rate";
  spec.y_label = "training loss";
  spec.y_min = 0.0;
  spec.y_max = 1.5 * y_max;
  const std::filesystem::path svg = dir / "lr_find.svg";
  std::ofstream(svg) << report::svg_line_chart(spec, {raw, smoothed, suggestion});
  return svg;
}

}  // namespace dsmil::app
