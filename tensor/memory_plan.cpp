// The offline memory plan: largest buffers first, each at the lowest offset clear of the placed buffers it lives with.
#include "tensor/memory_plan.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <utility>

namespace dsmil {

size_t AllocationTrace::take(size_t bytes, uintptr_t address) {
  buffers_.push_back({planned_bytes(bytes), events_++, BufferLifetime::kKeptPast});
  alive_[address] = buffers_.size() - 1;
  return buffers_.size() - 1;
}

std::optional<size_t> AllocationTrace::give_back(uintptr_t address) {
  const auto found = alive_.find(address);
  if (found == alive_.end()) return std::nullopt;
  const size_t index = found->second;
  alive_.erase(found);
  buffers_[index].given_back = events_++;
  return index;
}

std::vector<uintptr_t> AllocationTrace::alive() const {
  std::vector<uintptr_t> addresses;
  for (const auto& [address, index] : alive_) addresses.push_back(address);
  return addresses;
}

MemoryPlan plan_memory(const std::vector<BufferLifetime>& buffers) {
  MemoryPlan plan;
  plan.offsets.assign(buffers.size(), 0);
  std::vector<size_t> order(buffers.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return buffers[a].bytes > buffers[b].bytes; });
  const auto live_together = [&](const BufferLifetime& a, const BufferLifetime& b) {
    return a.taken < b.given_back && b.taken < a.given_back;
  };
  std::vector<size_t> placed;
  std::vector<std::pair<size_t, size_t>> in_the_way;  // [begin, end) of placed buffers alive with the next one
  for (const size_t next : order) {
    in_the_way.clear();
    for (const size_t other : placed)
      if (live_together(buffers[next], buffers[other]))
        in_the_way.emplace_back(plan.offsets[other], plan.offsets[other] + buffers[other].bytes);
    std::sort(in_the_way.begin(), in_the_way.end());
    size_t offset = 0;
    for (const auto& [begin, end] : in_the_way) {
      if (offset + buffers[next].bytes <= begin) break;
      offset = std::max(offset, end);
    }
    plan.offsets[next] = offset;
    plan.extent = std::max(plan.extent, offset + buffers[next].bytes);
    placed.push_back(next);
  }
  std::map<size_t, long long> change;  // event -> bytes taken (+) or given back (-)
  for (const BufferLifetime& buffer : buffers) {
    change[buffer.taken] += static_cast<long long>(buffer.bytes);
    if (buffer.given_back != BufferLifetime::kKeptPast)
      change[buffer.given_back] -= static_cast<long long>(buffer.bytes);
  }
  long long alive = 0;
  for (const auto& [event, bytes] : change) {
    alive += bytes;
    plan.most_alive = std::max(plan.most_alive, static_cast<size_t>(alive));
  }
  return plan;
}

}  // namespace dsmil
