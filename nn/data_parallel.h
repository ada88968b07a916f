// Data-parallel training's gradient sum: the parameters' gradients summed over ranks in buckets, each
// bucket's sum started as soon as its last gradient is final in the backward pass (Variable::on_grad_ready),
// so that communication overlaps the rest of the backward pass.
#pragma once

#include <cstddef>
#include <vector>

#include "dist/communicator.h"
#include "nn/module.h"

namespace dsmil::nn {

class GradientReducer {
 public:
  // Buckets of about bucket_bytes of fp32 gradients, filled in reverse parameter order (the order the
  // backward pass finishes them). Installs the parameters' gradient hooks.
  GradientReducer(std::vector<NamedParameter> params, dist::Communicator& comm, size_t bucket_bytes = size_t{25} << 20);
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;
  ~GradientReducer();

  // After backward(): starts the buckets still waiting (a parameter this rank gave no gradient counts as
  // zero), waits for every sum and makes each parameter's gradient its summed bucket slice.
  void finish();
  size_t bucket_count() const { return buckets_.size(); }
  // Of the last finish()ed step: the buckets whose sum the backward pass itself started (the rest waited
  // for finish()), the overlap achieved.
  size_t started_during_backward() const { return started_during_last_backward_; }

 private:
  struct Slot {
    size_t parameter, offset;
  };
  struct Bucket {
    Tensor values;  // F32, on the parameters' device
    std::vector<Slot> slots;
    size_t ready = 0;
  };
  void on_ready(size_t bucket, size_t slot);
  void start_ready_buckets();

  std::vector<NamedParameter> params_;
  dist::Communicator& comm_;
  std::vector<Bucket> buckets_;
  std::vector<bool> copied_;  // per parameter: its gradient is in its bucket for this step
  size_t next_to_start_ = 0;
  size_t started_during_last_backward_ = 0;
};

}  // namespace dsmil::nn
