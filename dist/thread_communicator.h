// Communicators between the threads of one process: the data-parallel code path run and tested on the
// CPU (no GPU, no NCCL). Sums are formed in rank order in double, so results do not depend on timing.
#pragma once

#include <barrier>
#include <memory>
#include <vector>

#include "dist/communicator.h"

namespace dsmil::dist {

// What the threads of one group share: one slot per rank and a barrier.
class ThreadGroup {
 public:
  explicit ThreadGroup(int world_size);
  int world_size() const { return static_cast<int>(slots_.size()); }
  // Every rank's vector, in rank order; blocks until all ranks called it.
  std::vector<std::vector<double>> exchange(int rank, std::vector<double> values);

 private:
  std::vector<std::vector<double>> slots_;
  std::barrier<> barrier_;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<ThreadGroup> group, int rank);
  int rank() const override { return rank_; }
  int world_size() const override { return group_->world_size(); }
  void sum_in_background(Tensor& t) override;  // CPU F32 tensors; done at once (threads need no overlap)
  void wait_for_sums() override {}
  std::vector<double> sum(const std::vector<double>& values) override;
  std::vector<double> gather(const std::vector<double>& values) override;

 private:
  std::shared_ptr<ThreadGroup> group_;
  int rank_;
};

}  // namespace dsmil::dist
