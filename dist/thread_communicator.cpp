// Thread-group collectives: every rank deposits its vector, all wait, each reads all, all wait again
// (so that no slot is overwritten by the next collective while a slower rank still reads it).
#include "dist/thread_communicator.h"

#include <fmt/format.h>

#include "base/error.h"

namespace dsmil::dist {

ThreadGroup::ThreadGroup(int world_size) : slots_(world_size), barrier_(world_size) {
  if (world_size < 1) throw Error(fmt::format("ThreadGroup: world size {} (must be at least 1)", world_size));
}

std::vector<std::vector<double>> ThreadGroup::exchange(int rank, std::vector<double> values) {
  slots_[rank] = std::move(values);
  barrier_.arrive_and_wait();
  std::vector<std::vector<double>> all = slots_;
  barrier_.arrive_and_wait();
  for (const std::vector<double>& v : all)
    if (v.size() != all[0].size())
      throw ShapeError(fmt::format("ThreadGroup: ranks passed vectors of {} and {} values", all[0].size(), v.size()));
  return all;
}

ThreadCommunicator::ThreadCommunicator(std::shared_ptr<ThreadGroup> group, int rank)
    : group_(std::move(group)), rank_(rank) {
  if (rank < 0 || rank >= group_->world_size())
    throw Error(fmt::format("ThreadCommunicator: rank {} outside a group of {}", rank, group_->world_size()));
}

std::vector<double> ThreadCommunicator::sum(const std::vector<double>& values) {
  const std::vector<std::vector<double>> all = group_->exchange(rank_, values);
  std::vector<double> total(values.size(), 0.0);
  for (const std::vector<double>& v : all)
    for (size_t i = 0; i < v.size(); ++i) total[i] += v[i];
  return total;
}

std::vector<double> ThreadCommunicator::gather(const std::vector<double>& values) {
  std::vector<double> out;
  for (const std::vector<double>& v : group_->exchange(rank_, values)) out.insert(out.end(), v.begin(), v.end());
  return out;
}

void ThreadCommunicator::sum_in_background(Tensor& t) {
  if (t.device() != Device::CPU || t.dtype() != DType::F32)
    throw Error(fmt::format("ThreadCommunicator::sum_in_background: CPU F32 tensors only, got {}", t.describe()));
  const std::vector<double> total = sum(std::vector<double>(t.f32(), t.f32() + t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = static_cast<float>(total[i]);
}

}  // namespace dsmil::dist
