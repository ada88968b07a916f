// The training step as one CUDA graph: the recording's inputs, its recording and its launches.
#include "apps/train/graph_step.h"

#include <algorithm>
#include <chrono>

namespace dsmil::app {

// One recording and the tensors it reads and writes. The inputs exist before the recording (pool memory, written
// before every launch); `out` and `loss` are the recording's own memory, released before the graph (members go in
// reverse order).
struct GraphStep::Recording {
  // The inputs, made for the step that records (their shapes and dtypes are the ones the recording holds for).
  Recording(const Batch& batch, const Tensor& drawn_mask, float step_tau, uint64_t step_counters)
      : tau(step_tau),
        counters_after_mask(step_counters),
        x(Tensor::empty(batch.x.shape(), batch.x.dtype(), Device::CUDA)),
        head_mask(Tensor::empty(drawn_mask.shape(), DType::I32, Device::CUDA)),
        target(Tensor::empty(batch.target.shape(), DType::I32, Device::CUDA)),
        weight(Tensor::empty(batch.target.shape(), DType::F32, Device::CUDA)),
        seed(Tensor::empty({2}, DType::I32, Device::CUDA)) {}
  // Whether a step of these bags, this drawn mask, temperature and random counters replays this recording.
  bool holds(const Batch& batch, const Tensor& drawn_mask, float step_tau, uint64_t step_counters) const {
    return graph.ready() && x.shape() == batch.x.shape() && x.dtype() == batch.x.dtype() &&
           head_mask.shape() == drawn_mask.shape() && tau == step_tau && counters_after_mask == step_counters;
  }
  float tau;
  uint64_t counters_after_mask;               // the step's random counters taken by the head's mask
  Tensor x, head_mask, target, weight, seed;  // seed: I32 [2], the u64 the masks read (low word first)
  device::CudaGraph graph;
  mil::MilOutput out;
  Variable loss;
};

bool records_steps(const RunConfig& config, Device device) {
  return config.cuda_graph && device == Device::CUDA && config.entropy_weight <= 0;
}

GraphStep::GraphStep(mil::DualStreamMIL& model, nn::AdamW& optimizer, nn::Ema* ema, const mil::LossConfig& loss)
    : model_(model), optimizer_(optimizer), ema_(ema), loss_(loss) {}

GraphStep::~GraphStep() = default;

std::optional<device::CudaGraph::PlannedMemory> GraphStep::planned_memory() const {
  if (!recording_ || !recording_->graph.ready()) return std::nullopt;
  return recording_->graph.planned_memory();
}

void GraphStep::saw_eager_step(const Shape& x_shape) {
  if (std::find(warmed_shapes_.begin(), warmed_shapes_.end(), x_shape) == warmed_shapes_.end())
    warmed_shapes_.push_back(x_shape);
}

bool GraphStep::takes(const Batch& batch) const {
  if (!failure_.empty()) return false;
  if (recording_ && recording_->x.shape() == batch.x.shape()) return true;
  return std::find(warmed_shapes_.begin(), warmed_shapes_.end(), batch.x.shape()) != warmed_shapes_.end();
}

void GraphStep::write_inputs(const Batch& batch, const float class_weight[2], const Tensor& head_mask, uint64_t seed,
                             float lr) {
  Recording& r = *recording_;
  r.x.copy_from(batch.x);
  r.head_mask.copy_from(head_mask);
  const mil::LossTargets targets = mil::loss_targets(batch.target, class_weight, Device::CPU);
  r.target.copy_from(targets.target);
  r.weight.copy_from(targets.weight);
  r.seed.copy_from(
      Tensor::from_ints({2}, {static_cast<int32_t>(seed & 0xffffffffu), static_cast<int32_t>(seed >> 32)}));
  optimizer_.prepare_step(lr);
  if (ema_) ema_->prepare_update();
}

bool GraphStep::record(const Tensor& head_mask, const nn::StepRandom& random, float tau) {
  const auto start = std::chrono::steady_clock::now();
  Recording& r = *recording_;
  nn::StepRandom recorded = random;
  recorded.seed_on_device = static_cast<const uint64_t*>(r.seed.raw());
  try {
    r.graph.record([&] {
      const mil::LossTargets targets{r.target, r.weight, 0.0};
      nn::StepRandom drawn = recorded;  // each recording draws from the same counters
      mil::MilOutput out = model_.forward_drawn(Variable(r.x), head_mask, r.head_mask, tau, drawn);
      Variable loss = mil::mil_loss(out, targets, loss_);
      loss.backward();
      optimizer_.queue_step();
      optimizer_.zero_grad();
      if (ema_) ema_->queue_update(model_);
      r.out = std::move(out);
      r.loss = std::move(loss);
    });
  } catch (const Error& e) {
    optimizer_.zero_grad();
    failure_ = e.what();
    return false;
  }
  ++recordings_;
  recording_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return true;
}

std::optional<GraphStep::Outputs> GraphStep::run(const Batch& batch, const float class_weight[2],
                                                 const nn::StepRandom& random, float tau, float lr) {
  nn::StepRandom step_random = random;
  const Tensor head_mask = model_.draw_head_mask(batch.mask, step_random);
  const bool recorded = recording_ && recording_->holds(batch, head_mask, tau, step_random.next);
  if (!recorded) {
    recording_.reset();
    recording_ = std::make_unique<Recording>(batch, head_mask, tau, step_random.next);
  }
  write_inputs(batch, class_weight, head_mask, step_random.seed, lr);
  if (!recorded && !record(head_mask, step_random, tau)) {
    // Nothing of the step ran: the counts prepare_step and prepare_update advanced go back.
    optimizer_.set_steps(optimizer_.steps() - 1);
    if (ema_) ema_->set_updates(ema_->updates() - 1);
    recording_.reset();
    return std::nullopt;
  }
  recording_->graph.launch();
  return Outputs{recording_->loss.value(), recording_->out.y.value()};
}

}  // namespace dsmil::app
