// The offline memory plan of a CUDA graph's recording (tensor/memory_plan.h): the trace of takes and give-backs, a
// hand-checked plan, and random traces whose plans are checked pair by pair for overlaps between buffers alive at the
// same time, and measured against the most bytes alive at once.
#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "tensor/memory_plan.h"

using namespace dsmil;

namespace {

constexpr size_t A = kPlanAlignment;

// Every pair of buffers alive at the same time lies apart, every offset is aligned, and the extent is the furthest
// end; returns the pairs that overlap.
size_t overlapping_pairs(const std::vector<BufferLifetime>& buffers, const MemoryPlan& plan) {
  size_t overlaps = 0, furthest = 0;
  for (size_t i = 0; i < buffers.size(); ++i) {
    CHECK(plan.offsets[i] % A == 0);
    furthest = std::max(furthest, plan.offsets[i] + buffers[i].bytes);
    for (size_t j = i + 1; j < buffers.size(); ++j) {
      const bool together = buffers[i].taken < buffers[j].given_back && buffers[j].taken < buffers[i].given_back;
      const bool apart = plan.offsets[i] + buffers[i].bytes <= plan.offsets[j] ||
                         plan.offsets[j] + buffers[j].bytes <= plan.offsets[i];
      overlaps += together && !apart;
    }
  }
  CHECK(plan.extent == furthest);
  return overlaps;
}

// A training step's shape of trace: a forward pass keeping an activation a layer and freeing a temporary, a backward
// pass in reverse freeing each activation after a gradient of its size, a few outputs kept past the end.
AllocationTrace step_like_trace(std::mt19937& rng, int layers) {
  AllocationTrace trace;
  uintptr_t next_address = 1;
  std::vector<uintptr_t> activations;
  std::vector<size_t> sizes;
  for (int layer = 0; layer < layers; ++layer) {
    const size_t bytes = (1 + rng() % 64) * A * 16 + rng() % A;
    const uintptr_t temporary = next_address++;
    trace.take(bytes / 2 + 1, temporary);
    activations.push_back(next_address);
    sizes.push_back(bytes);
    trace.take(bytes, next_address++);
    trace.give_back(temporary);
  }
  trace.take(A, next_address++);  // the loss, kept
  uintptr_t gradient = 0;
  for (int layer = layers - 1; layer >= 0; --layer) {
    const uintptr_t input_gradient = next_address++;
    trace.take(sizes[static_cast<size_t>(layer)], input_gradient);
    if (gradient) trace.give_back(gradient);
    trace.give_back(activations[static_cast<size_t>(layer)]);
    gradient = input_gradient;
  }
  return trace;  // the last gradient is kept too
}

}  // namespace

TEST_CASE("AllocationTrace: buffers rounded to the alignment, lifetimes in events, addresses reused once given back") {
  AllocationTrace trace;
  CHECK(trace.take(0, 0x100) == 0u);  // 0 bytes still take one aligned block
  CHECK(trace.take(A + 1, 0x200) == 1u);
  CHECK(trace.give_back(0x100) == 0u);
  CHECK_FALSE(trace.give_back(0x100).has_value());  // given back already
  CHECK_FALSE(trace.give_back(0x999).has_value());  // never taken
  CHECK(trace.take(A, 0x100) == 2u);                // the address names a new buffer
  CHECK(trace.give_back(0x100) == 2u);
  const std::vector<BufferLifetime> expected = {{A, 0, 2}, {2 * A, 1, BufferLifetime::kKeptPast}, {A, 3, 4}};
  CHECK(trace.buffers() == expected);
  CHECK(trace.alive() == std::vector<uintptr_t>{0x200});
}

TEST_CASE("plan_memory: largest first, each at the lowest offset clear of the buffers it lives with") {
  // a: 4 blocks over events [0, 3); b: 2 blocks over [1, 4); c: 2 blocks over [4, 5); d: 3 blocks from 5 on.
  const std::vector<BufferLifetime> buffers = {
      {4 * A, 0, 3}, {2 * A, 1, 4}, {2 * A, 4, 5}, {3 * A, 5, BufferLifetime::kKeptPast}};
  const MemoryPlan plan = plan_memory(buffers);
  CHECK(plan.offsets == std::vector<size_t>{0, 4 * A, 0, 0});  // c and d reuse a's place, not b's
  CHECK(plan.extent == 6 * A);
  CHECK(plan.most_alive == 6 * A);
  CHECK(overlapping_pairs(buffers, plan) == 0);
  CHECK(plan_memory({}).extent == 0);
}

TEST_CASE("plan_memory: random traces keep buffers alive together apart, and come close to the most alive at once") {
  std::mt19937 rng(20261206);
  for (int round = 0; round < 20; ++round) {
    // Random sizes and lifetimes: any order of takes and give-backs.
    AllocationTrace random;
    std::vector<uintptr_t> alive;
    for (uintptr_t address = 1; address < 400; ++address) {
      random.take(1 + rng() % (32 * A), address);
      alive.push_back(address);
      while (!alive.empty() && rng() % 3 == 0) {
        const size_t victim = rng() % alive.size();
        random.give_back(alive[victim]);
        alive.erase(alive.begin() + static_cast<std::ptrdiff_t>(victim));
      }
    }
    const MemoryPlan random_plan = plan_memory(random.buffers());
    REQUIRE(overlapping_pairs(random.buffers(), random_plan) == 0);
    CHECK(random_plan.extent >= random_plan.most_alive);

    const AllocationTrace step = step_like_trace(rng, 40);
    const MemoryPlan step_plan = plan_memory(step.buffers());
    REQUIRE(overlapping_pairs(step.buffers(), step_plan) == 0);
    const double step_ratio = double(step_plan.extent) / double(step_plan.most_alive);
    CHECK_MESSAGE(step_ratio <= 1.10, "a step-like trace planned at " << step_ratio << "x its most alive at once");
    if (round == 0)
      MESSAGE("extent / most alive at once: random " << double(random_plan.extent) / double(random_plan.most_alive)
                                                     << ", step-like " << step_ratio);
  }
  // Buffers of one size: the plan is an interval colouring, exactly as large as the most alive at once.
  AllocationTrace same_size;
  for (uintptr_t address = 1; address < 300; ++address) {
    same_size.take(A, address);
    if (address % 3 != 0) same_size.give_back(address - rng() % std::min<uintptr_t>(address, 5));
  }
  const MemoryPlan same_plan = plan_memory(same_size.buffers());
  CHECK(overlapping_pairs(same_size.buffers(), same_plan) == 0);
  CHECK(same_plan.extent == same_plan.most_alive);
}
