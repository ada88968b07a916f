// NCCL collectives between GPU processes, one per GPU (built with the CUDA backend when NCCL is found).
// Gradient buckets are summed on a stream of their own, overlapped with the backward pass; the small
// blocking collectives use a second communicator split from the first, so that the two never interleave.
#pragma once

#include <memory>

#include "dist/communicator.h"
#include "dist/ranks.h"

namespace dsmil::dist {

class NcclCommunicator final : public Communicator {
 public:
  // Selects GPU local_rank % (visible GPUs) for this process (before any other CUDA work), then joins the
  // job through the rendezvous file. Throws dsmil::DeviceError naming the NCCL call that failed.
  explicit NcclCommunicator(const RankInfo& ranks);
  ~NcclCommunicator() override;
  int rank() const override;
  int world_size() const override;
  void sum_in_background(Tensor& t) override;
  void wait_for_sums() override;
  std::vector<double> sum(const std::vector<double>& values) override;
  std::vector<double> gather(const std::vector<double>& values) override;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace dsmil::dist
