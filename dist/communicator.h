// The collectives a data-parallel training step needs, behind one interface: NCCL between GPU processes
// (dist/nccl_communicator.h), threads of one process for the CPU tests (dist/thread_communicator.h).
#pragma once

#include <vector>

#include "tensor/tensor.h"

namespace dsmil::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Sums the F32 tensor `t` over ranks in place. Queued after the work already issued on t's device and
  // overlapped with what follows; t must stay alive and untouched until wait_for_sums() is called. Every
  // rank issues the same sums in the same order.
  virtual void sum_in_background(Tensor& t) = 0;
  // Work issued after this call (device work, and the host's reads through copies) sees every sum issued
  // by sum_in_background so far.
  virtual void wait_for_sums() = 0;

  // Blocking collectives of small host vectors (statistics, flags, per-step logits); every rank passes
  // the same length. sum: elementwise over ranks. gather: the ranks' vectors concatenated in rank order.
  virtual std::vector<double> sum(const std::vector<double>& values) = 0;
  virtual std::vector<double> gather(const std::vector<double>& values) = 0;
};

}  // namespace dsmil::dist
