// A fold's training step recorded once as a CUDA graph and replayed (run.cuda_graph): the forward pass, the loss, the
// backward pass, AdamW and the EMA update, whose host work (some 250 launches, 64 convolution plans and 440
// allocations a step at the CV's shape) then costs one launch. Each step first writes what changes into the
// recording's own tensors: the bags, the head's mask, the targets and class weights, the step's seed, AdamW's and
// the EMA's constants. A recording holds for one input shape and soft-pooling temperature; a step of another
// shape is the learner's to queue as it is, a new temperature is recorded anew.
#pragma once

#include <optional>
#include <string>

#include "apps/train/batches.h"
#include "apps/train/config.h"
#include "mil/dual_stream.h"
#include "nn/optim.h"
#include "tensor/device.h"

namespace dsmil::app {

// Whether a run of `config` on `device` records its training steps: run.cuda_graph on a GPU, without the
// attention-entropy term (it reads the attention back within the step, which a recording cannot hold).
bool records_steps(const RunConfig& config, Device device);

class GraphStep {
 public:
  GraphStep(mil::DualStreamMIL& model, nn::AdamW& optimizer, nn::Ema* ema, const mil::LossConfig& loss);
  ~GraphStep();
  GraphStep(const GraphStep&) = delete;
  GraphStep& operator=(const GraphStep&) = delete;

  // After a step queued as it is: its shape's convolution plans and the optimizer's tables exist, so that a recording
  // of that shape only replays them (recording cannot time plans or upload tables).
  void saw_eager_step(const Shape& x_shape);
  // Whether run() takes a step of these bags: recorded already, or recordable (a step of that shape ran as it is,
  // and no recording failed).
  bool takes(const Batch& batch) const;

  struct Outputs {
    Tensor loss, y;  // the recording's: valid until the next launch
  };
  // One training step of `batch` (class weights per label, `random` fresh for the step and left so, AdamW's learning
  // rate lr): records first where needed, then launches. nullopt where the recording failed: nothing of the step ran,
  // and failure() says why; the learner queues the step as it is, with `random` as it was given.
  std::optional<Outputs> run(const Batch& batch, const float class_weight[2], const nn::StepRandom& random, float tau,
                             float lr);
  const std::string& failure() const { return failure_; }
  // The memory of the step's recording (device::CudaGraph::planned_memory); nullopt while none is recorded.
  std::optional<device::CudaGraph::PlannedMemory> planned_memory() const;
  int recordings() const { return recordings_; }
  double recording_seconds() const { return recording_seconds_; }

 private:
  struct Recording;
  // Writes the step's inputs into the recording's tensors (made for this batch's shapes where there are none).
  void write_inputs(const Batch& batch, const float class_weight[2], const Tensor& head_mask, uint64_t seed, float lr);
  bool record(const Tensor& head_mask, const nn::StepRandom& random, float tau);

  mil::DualStreamMIL& model_;
  nn::AdamW& optimizer_;
  nn::Ema* ema_;
  mil::LossConfig loss_;
  std::vector<Shape> warmed_shapes_;
  std::unique_ptr<Recording> recording_;
  std::string failure_;
  int recordings_ = 0;
  double recording_seconds_ = 0.0;
};

}  // namespace dsmil::app
