// `dsmil bench`: times the full training step (forward, backward, clipping, AdamW, EMA) of the model on
// random bags at a given shape (default DESIGN section 11: 2 bags x 32 slabs of 4x4x128x128, ResNet18-3D
// width 64), on rotating input sets so that no step sees a warm cache of its inputs, and prints the
// median and best step time, bags/s, peak device memory and the loss over the steps (it must fall: the
// model is fitting the few input sets).
// `dsmil bench --kernel NAME|all|list` times each hand-written kernel alone instead (apps/kernel_bench/).
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/command_registry.h"
#include "apps/kernel_bench/kernel_bench.h"
#include "apps/train/config.h"
#include "apps/train/graph_step.h"
#include "apps/train/trainer.h"
#include "base/thread_usage.h"
#include "nn/optim.h"
#include "tensor/device.h"

namespace dsmil::app {
namespace {

struct BenchArgs {
  std::string config = "recommended-v2";
  std::vector<std::string> overrides;
  std::string device = "auto";
  int bags = 2, instances = 32, slab = 4, size = 128, width = 64, depth = 18;
  int steps = 30, warmup = 5, input_sets = 3;
  bool profile = false, memory_timeline = false;
  std::string json_out;
  // --kernel mode
  std::string kernel, variant = "both", kernel_dtype = "all", shape;
  int reps = 100;
  uint64_t seed = 0;
  bool seed_given = false;
};

// The config that --config and --set give, with the shape flags' depth, width and slab, validated.
RunConfig bench_config(const BenchArgs& a, Device device) {
  RunConfig config = load_config(find_config_file(a.config));
  for (const std::string& o : a.overrides) apply_override(config, o);
  config.depth = a.depth;
  config.width = a.width;
  config.slab_depth = a.slab;
  validate_config(config);
  resolve_precision(config, device);
  return config;
}

// Memory of the device's tensors over the benchmark, in GiB (CUDA: the pool; CPU: the host block cache): the peak
// of the timed steps alone (the figure PyTorch's twin reports: max_memory_allocated after reset_peak_memory_stats
// following its warm-up), the peak with the warm-up (cuDNN's algorithm searches borrow up to 1 GiB there), the
// memory held between steps, and the memory in use once the last timed step's forward pass and loss are queued.
class DeviceMemory {
 public:
  explicit DeviceMemory(Device device) : device_(device) {}
  double peak_gib = 0, peak_with_warmup_gib = 0, between_steps_gib = 0, after_forward_gib = 0;

  void start_timed_steps() {
    warmup_peak_ = device::memory_usage(device_).peak_used;
    device::reset_memory_peak(device_);
  }
  void after_forward() { after_forward_gib = gib(device::memory_usage(device_).used); }
  void finish() {
    const device::MemoryUsage usage = device::memory_usage(device_);
    peak_gib = gib(usage.peak_used);
    peak_with_warmup_gib = gib(std::max(usage.peak_used, warmup_peak_));
    between_steps_gib = gib(usage.used);
  }

 private:
  static double gib(uint64_t bytes) { return bytes / double(uint64_t{1} << 30); }
  Device device_;
  uint64_t warmup_peak_ = 0;
};

// Runs `step` once more (untimed) with the pool's peak started afresh, following the device memory through
// its backward pass node by node (set_backward_observer): where the step's peak is reached, and the nodes
// after which the most memory is in use.
template <typename Step>
void print_memory_timeline(Device device, Step&& step) {
  struct Point {
    std::string node;
    uint64_t used, peak;
  };
  std::vector<Point> points;
  device::reset_memory_peak(device);
  set_backward_observer([&](const Shape& shape, DType dtype) {
    const device::MemoryUsage usage = device::memory_usage(device);
    points.push_back({std::string(dtype_name(dtype)) + shape_str(shape), usage.used, usage.peak_used});
  });
  step();
  set_backward_observer({});
  const double gib = double(uint64_t{1} << 30);
  const uint64_t step_peak = device::memory_usage(device).peak_used;
  std::printf("memory timeline (one more step, GiB): peak %.2f; %zu backward nodes\n", step_peak / gib, points.size());
  if (points.empty()) return;
  const auto first_at_peak =
      std::find_if(points.begin(), points.end(), [&](const Point& p) { return p.peak == points.back().peak; });
  std::printf("  the backward pass's peak %.2f first reached by node %td, %s (in use after it %.2f)\n",
              first_at_peak->peak / gib, first_at_peak - points.begin(), first_at_peak->node.c_str(),
              first_at_peak->used / gib);
  std::vector<size_t> order(points.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t i, size_t j) { return points[i].used > points[j].used; });
  for (size_t k = 0; k < std::min<size_t>(order.size(), 8); ++k)
    std::printf("  in use %.2f after node %zu, %s\n", points[order[k]].used / gib, order[k],
                points[order[k]].node.c_str());
}

void run_bench(const BenchArgs& a) {
  const Device device = resolve_device(a.device);
  const RunConfig config = bench_config(a, device);

  mil::DualStreamMIL model(config.model_config(), 1);
  model.set_math_mode(config.math());
  model.to(device);
  nn::AdamW optimizer(model.parameters(), config.optimizer_config());
  nn::Ema ema(model, static_cast<float>(config.ema_decay));
  const float class_weight[2] = {1.0f, 1.0f};

  std::mt19937_64 engine(std::random_device{}());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const Shape x_shape{int64_t{a.bags} * a.instances, a.slab, a.size, a.size, 4};
  std::vector<Tensor> inputs;
  for (int s = 0; s < a.input_sets; ++s) {
    std::vector<float> values(shape_numel(x_shape));
    for (float& v : values) v = normal(engine);
    inputs.push_back(Tensor::from_vector(x_shape, values).to(device));
  }
  std::vector<int32_t> labels(a.bags);
  for (int b = 0; b < a.bags; ++b) labels[b] = b % 2;
  const Tensor target = Tensor::from_ints({a.bags}, labels);
  const Tensor mask = Tensor::from_ints({a.bags, a.instances}, std::vector<int32_t>(a.bags * a.instances, 1));

  DeviceMemory memory(device);
  // Host milliseconds of the last step's queuing (forward to EMA update): where it nears the step's time, the device
  // waits for the host. By part, as a CV fold's metrics.jsonl splits it: forward pass and loss, backward pass, update;
  // the device's time over the same parts (marks 0-3) and what the queuing cost the host thread.
  std::array<double, 3> last_queue_ms{};
  device::DeviceClock device_clock(device, 4);
  ThreadUsage last_queue_usage;
  // run.cuda_graph (CUDA): after a first step queued as it is (its plans chosen, the optimizer's tables made), the
  // steps replay the step recorded once as a CUDA graph (apps/train/graph_step.h), as a CV fold's do.
  std::unique_ptr<GraphStep> graph;
  if (records_steps(config, device)) graph = std::make_unique<GraphStep>(model, optimizer, &ema, config.loss_config());
  std::vector<Batch> batches;
  for (const Tensor& x : inputs) batches.push_back({x, mask, target, {}, {}});
  bool last_step_replayed = false;
  // Forward, loss, backward, AdamW, EMA; returns the loss (read after the whole step is queued). eager_only: queued
  // as it is even where a recording would replay it.
  const auto train_step = [&](int step, bool eager_only) {
    const auto queue_start = std::chrono::steady_clock::now();
    const ThreadUsage usage_at_start = ThreadUsage::now();
    device_clock.mark(0);
    const Batch& batch = batches[step % a.input_sets];
    last_step_replayed = false;
    if (graph && !eager_only && graph->takes(batch)) {
      const std::optional<GraphStep::Outputs> outputs = graph->run(
          batch, class_weight, nn::StepRandom{static_cast<uint64_t>(step), 0}, 1.0f, static_cast<float>(config.lr));
      device_clock.mark(1);
      if (outputs) {
        last_step_replayed = true;
        last_queue_usage = ThreadUsage::now() - usage_at_start;
        last_queue_ms = {
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - queue_start).count(), 0.0,
            0.0};
        return outputs->loss.item();  // synchronises
      }
      std::printf("note: the step cannot be recorded as a CUDA graph (%s): each step is queued as it is\n",
                  graph->failure().c_str());
    }
    nn::StepRandom random{static_cast<uint64_t>(step), 0};
    const mil::LossTargets targets = mil::loss_targets(target, class_weight, device);
    const mil::MilOutput out = model.forward(Variable(batch.x), mask, 1.0f, random);
    Variable loss = mil::mil_loss(out, targets, config.loss_config());
    memory.after_forward();
    const auto forward_done = std::chrono::steady_clock::now();
    device_clock.mark(1);
    loss.backward();
    const auto backward_done = std::chrono::steady_clock::now();
    device_clock.mark(2);
    optimizer.step(static_cast<float>(config.lr));
    optimizer.zero_grad();
    ema.update(model);
    device_clock.mark(3);
    last_queue_usage = ThreadUsage::now() - usage_at_start;
    using Ms = std::chrono::duration<double, std::milli>;
    last_queue_ms = {Ms(forward_done - queue_start).count(), Ms(backward_done - forward_done).count(),
                     Ms(std::chrono::steady_clock::now() - backward_done).count()};
    if (graph) graph->saw_eager_step(batch.x.shape());
    return loss.value().item();  // synchronises
  };

  std::vector<double> step_ms, queue_ms, losses;
  std::array<std::vector<double>, 3> queue_part_ms, device_part_ms;  // queue_ms and these: the steps queued as they are
  std::vector<double> replay_queue_ms, replay_device_ms;             // of the steps replayed as a CUDA graph
  ThreadUsage timed_queue_usage;
  for (int step = 0; step < a.warmup + a.steps; ++step) {
    device::synchronize(device);
    if (step == a.warmup) memory.start_timed_steps();
    const bool profiled = a.profile && step == a.warmup + a.steps - 1;
    if (profiled) device::profiler_start();
    const auto t0 = std::chrono::steady_clock::now();
    const float loss_value = train_step(step, false);
    device::synchronize(device);
    if (profiled) device::profiler_stop();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    losses.push_back(loss_value);
    if (step >= a.warmup) {
      step_ms.push_back(ms);
      if (last_step_replayed) {
        replay_queue_ms.push_back(last_queue_ms[0]);
        replay_device_ms.push_back(1000.0 * device_clock.seconds(0, 1));
      } else {
        queue_ms.push_back(last_queue_ms[0] + last_queue_ms[1] + last_queue_ms[2]);
        for (size_t part = 0; part < 3; ++part) {
          queue_part_ms[part].push_back(last_queue_ms[part]);
          device_part_ms[part].push_back(1000.0 * device_clock.seconds(part, part + 1));
        }
      }
      timed_queue_usage += last_queue_usage;
    }
  }
  const auto median_of = [](std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values[values.size() / 2];
  };
  const double median = median_of(step_ms), best = *std::min_element(step_ms.begin(), step_ms.end());
  memory.finish();
  const std::string versions = device == Device::CUDA ? device::backend_versions() : "cpu";
  auto mean_of = [&](size_t first, size_t count) {
    double s = 0;
    for (size_t i = first; i < first + count; ++i) s += losses[i];
    return s / count;
  };
  const size_t window = std::min<size_t>(5, losses.size() / 2);
  const double loss_first = mean_of(0, window), loss_last = mean_of(losses.size() - window, window);
  std::printf("device: %s\n", versions.c_str());
  std::printf("model: ResNet%d-3D width %d, %s pooling, %s attention; input %s (bags x slabs, S, H, W, C), %s%s\n",
              a.depth, a.width, app::choice_name(config.pooling).c_str(), app::choice_name(config.attention).c_str(),
              shape_str(x_shape).c_str(), app::choice_name(config.precision).c_str(),
              config.precision == app::Precision::bf16 ? " mixed"
              : config.strict_fp32                     ? " strict"
                                                       : " (TF32 allowed)");
  std::printf("train step: median %.2f ms, best %.2f ms over %d steps (%d warm-up); %.1f bags/s\n", median, best,
              a.steps, a.warmup, a.bags * 1000.0 / median);
  if (device == Device::CUDA) {
    if (!queue_ms.empty()) {
      std::printf("host: queuing a step took a median %.2f ms of it (forward %.2f, backward %.2f, update %.2f)\n",
                  median_of(queue_ms), median_of(queue_part_ms[0]), median_of(queue_part_ms[1]),
                  median_of(queue_part_ms[2]));
      std::printf(
          "device time: the same parts took a median forward %.2f, backward %.2f, update %.2f ms (waits for the host "
          "included)\n",
          median_of(device_part_ms[0]), median_of(device_part_ms[1]), median_of(device_part_ms[2]));
    }
    if (!replay_queue_ms.empty())
      std::printf(
          "host: %zu of the %d timed steps replayed the step recorded as a CUDA graph: queuing one (writing its "
          "inputs, launching) took a median %.2f ms\ndevice time: a replayed step took a median %.2f ms\n",
          replay_queue_ms.size(), a.steps, median_of(replay_queue_ms), median_of(replay_device_ms));
    if (const auto planned = graph ? graph->planned_memory() : std::nullopt)
      std::printf("graph memory: the recorded step's range %.3f GiB, planned from its work's %.3f GiB alive at most\n",
                  static_cast<double>(planned->bytes) / (1 << 30),
                  static_cast<double>(planned->most_alive) / (1 << 30));
    std::printf(
        "host thread while queuing, a step: CPU %.2f ms, %.1f page faults, %.1f voluntary and %.1f involuntary "
        "context switches (means)\n",
        1000.0 * timed_queue_usage.cpu_seconds / a.steps,
        static_cast<double>(timed_queue_usage.minor_faults + timed_queue_usage.major_faults) / a.steps,
        static_cast<double>(timed_queue_usage.voluntary_switches) / a.steps,
        static_cast<double>(timed_queue_usage.involuntary_switches) / a.steps);
  }
  std::printf(
      "%s memory (%s, GiB): peak %.2f in the timed steps (%.2f with the warm-up's algorithm searches); "
      "%.2f held between steps (weights, optimizer and EMA state, inputs), %.2f after a forward pass%s "
      "(+ what the backward pass keeps)\n",
      device == Device::CUDA ? "device" : "host",
      device == Device::CUDA ? (replay_queue_ms.empty() ? "pool" : "pool and CUDA graph, peaks added")
                             : "tensor block cache",
      memory.peak_gib, memory.peak_with_warmup_gib, memory.between_steps_gib, memory.after_forward_gib,
      replay_queue_ms.empty() ? "" : " of a step queued as it is");
  if (device == Device::CUDA) {
    for (const std::string& line : device::convolution_measurements())
      std::printf("measured choice, %s\n", line.c_str());
    const std::vector<device::ConvolutionChoice> choices = device::convolution_choices();
    for (size_t i = 0; i < choices.size(); ++i)
      if (i < 5 || choices[i].traded) std::printf("%s\n", device::choice_line(choices[i]).c_str());
  }
  std::printf("loss: mean of first %zu steps %.4f -> mean of last %zu steps %.4f (%s)\n", window, loss_first, window,
              loss_last, loss_last < loss_first ? "falls" : "does NOT fall");
  if (!a.json_out.empty()) {
    nlohmann::json j = {{"device", versions},
                        {"depth", a.depth},
                        {"width", a.width},
                        {"input", x_shape},
                        {"median_ms", median},
                        {"best_ms", best},
                        {"step_ms", step_ms},
                        {"peak_gib", memory.peak_gib},
                        {"losses", losses},
                        {"peak_with_warmup_gib", memory.peak_with_warmup_gib},
                        {"between_steps_gib", memory.between_steps_gib},
                        {"after_forward_gib", memory.after_forward_gib},
                        {"precision", app::choice_name(config.precision)},
                        {"strict_fp32", config.strict_fp32},
                        {"replayed_steps", replay_queue_ms.size()}};
    j["convolution_choices"] = device::convolution_report();
    std::ofstream(a.json_out) << j.dump(1) << "\n";
  }
  // Last, so that the figures above are the timed steps' alone.
  if (a.memory_timeline) print_memory_timeline(device, [&] { train_step(a.warmup + a.steps, true); });
}

// The kernel benchmarks at the shapes of the model that --config, --set and the shape flags describe.
void run_kernel_bench_command(const BenchArgs& a) {
  const RunConfig config = bench_config(a, resolve_device(a.device));
  const mil::ModelConfig model = config.model_config();
  kernel_bench::Options options;
  options.kernel = a.kernel;
  options.variant = a.variant;
  options.dtype = a.kernel_dtype;
  options.shape = a.shape;
  options.reps = a.reps;
  options.warmup = a.warmup;
  if (a.seed_given) options.seed = a.seed;
  options.json_out = a.json_out;
  options.model.bags = a.bags;
  options.model.instances = a.instances;
  options.model.slab = a.slab;
  options.model.size = a.size;
  options.model.in_channels = model.encoder.in_channels;
  options.model.width = model.encoder.width;
  options.model.topk = model.head.pooling == mil::Pooling::Max ? 1 : model.head.topk;
  const int failed = kernel_bench::run_kernel_bench(options);
  if (failed > 0) throw Error(fmt::format("dsmil bench --kernel: {} check(s) against the CPU twin failed", failed));
}

const RegisterCommand bench_command{
    "bench", 80, [](CLI::App& root) {
      auto args = std::make_shared<BenchArgs>();
      CLI::App* cmd = root.add_subcommand("bench",
                                          "time the training step on random bags (by default 2 bags x 32 slabs of "
                                          "4x4x128x128, ResNet18-3D width 64), or with --kernel each "
                                          "hand-written kernel alone");
      cmd->add_option("--config", args->config, "config for the head, loss and optimizer")->capture_default_str();
      cmd->add_option("--set", args->overrides, "override a config key: section.key=value (repeatable)");
      cmd->add_option("--device", args->device, "cpu | cuda | auto")->capture_default_str();
      cmd->add_option("--bags", args->bags, "bags per step")->capture_default_str()->check(CLI::PositiveNumber);
      cmd->add_option("--instances", args->instances, "slabs per bag")
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
      cmd->add_option("--slab", args->slab, "slices per slab (S)")->capture_default_str()->check(CLI::PositiveNumber);
      cmd->add_option("--size", args->size, "slab height and width")->capture_default_str()->check(CLI::PositiveNumber);
      cmd->add_option("--width", args->width, "ResNet width w")->capture_default_str()->check(CLI::PositiveNumber);
      cmd->add_option("--depth", args->depth, "ResNet depth: 10, 18 or 34")->capture_default_str();
      cmd->add_option("--steps", args->steps, "timed steps")->capture_default_str()->check(CLI::PositiveNumber);
      cmd->add_option("--warmup", args->warmup, "untimed steps (kernel calls with --kernel) first")
          ->capture_default_str()
          ->check(CLI::NonNegativeNumber);
      cmd->add_option("--input-sets", args->input_sets, "random input sets rotated over the steps")
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
      cmd->add_option("--json-out", args->json_out, "also write the numbers as JSON");
      cmd->add_flag("--profile", args->profile,
                    "the last step alone is the capture range of a profiler run with --profile-from-start off "
                    "(ncu: kernels/README.md)");
      cmd->add_flag("--memory-timeline", args->memory_timeline,
                    "after the timed steps, one more step following the device memory through the backward pass "
                    "node by node: where the peak is reached and what is in use (GPU pool; CPU: host block cache)");
      cmd->add_option("--kernel", args->kernel,
                      "time one hand-written kernel alone (checked against its CPU twin): NAME, all, or list");
      cmd->add_option("--variant", args->variant, "with --kernel: fast, plain or both (where a plain version exists)")
          ->capture_default_str();
      cmd->add_option("--dtype", args->kernel_dtype, "with --kernel: f32, bf16 or all (of those the kernel takes)")
          ->capture_default_str();
      cmd->add_option("--shape", args->shape,
                      "with --kernel NAME: sizes, e.g. 64,4,64,64,64 (--kernel list says what they mean); "
                      "default: the model's shape for that kernel");
      cmd->add_option("--reps", args->reps, "with --kernel: timed repetitions per kernel")
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
      CLI::Option* seed =
          cmd->add_option("--seed", args->seed, "with --kernel: seed of the random inputs (default: fresh, printed)");
      cmd->callback([args, seed] {
        args->seed_given = seed->count() > 0;
        if (args->kernel.empty())
          run_bench(*args);
        else
          run_kernel_bench_command(*args);
      });
    }};

}  // namespace
}  // namespace dsmil::app
