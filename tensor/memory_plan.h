// Where each buffer of a recorded sequence of allocations goes in one address range, planned once the whole sequence
// is known (the memory of a CUDA graph's recording, tensor/cuda/runtime.cpp): the largest buffers placed first, each
// at the lowest offset clear of every placed buffer alive at the same time, as the memory planners of inference
// runtimes do. Planned offline, the range comes close to the most bytes alive at once; placing buffers as they come
// (the pool, best fit) leaves holes that the DESIGN shape's step measured at 0.12-0.22 GiB.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <unordered_map>
#include <vector>

namespace dsmil {

// One buffer of a trace: its bytes (rounded up to kPlanAlignment) and the events that took it and gave it back,
// counted over the trace's takes and give-backs together; kKeptPast for one still alive when the trace ends.
struct BufferLifetime {
  static constexpr size_t kKeptPast = std::numeric_limits<size_t>::max();
  size_t bytes = 0;
  size_t taken = 0;
  size_t given_back = kKeptPast;
  bool operator==(const BufferLifetime&) const = default;
};

constexpr size_t kPlanAlignment = 256;  // what cudaMalloc guarantees, and the vectorised kernels assume

// What a plan gives an allocation of `bytes`: rounded up to kPlanAlignment, 0 counted as 1.
constexpr size_t planned_bytes(size_t bytes) {
  return ((bytes == 0 ? 1 : bytes) + kPlanAlignment - 1) / kPlanAlignment * kPlanAlignment;
}

// The takes and give-backs of a sequence, as buffers in the order they were taken; addresses name the buffers while
// they are alive (a later buffer may reuse one).
class AllocationTrace {
 public:
  size_t take(size_t bytes, uintptr_t address);        // the buffer's index
  std::optional<size_t> give_back(uintptr_t address);  // the buffer's index; nullopt where no alive buffer has it
  const std::vector<BufferLifetime>& buffers() const { return buffers_; }
  std::vector<uintptr_t> alive() const;  // the addresses of the buffers not given back

 private:
  std::vector<BufferLifetime> buffers_;
  std::unordered_map<uintptr_t, size_t> alive_;
  size_t events_ = 0;
};

struct MemoryPlan {
  std::vector<size_t> offsets;  // one a buffer, multiples of kPlanAlignment
  size_t extent = 0;            // the end of the furthest buffer
  size_t most_alive = 0;        // the most bytes alive at once: no plan's extent is below it
};

// No two buffers alive at the same time overlap.
MemoryPlan plan_memory(const std::vector<BufferLifetime>& buffers);

}  // namespace dsmil
