// The best-fit offset arena: free blocks indexed by offset (to merge neighbours) and by size (to pick the best fit).
#include "tensor/best_fit_arena.h"

#include <fmt/format.h>

#include <algorithm>

#include "base/error.h"

namespace dsmil {

BestFitArena::BestFitArena(size_t capacity) : capacity_(capacity / kAlignment * kAlignment) {
  if (capacity_ > 0) add_free(0, capacity_);
}

std::optional<size_t> BestFitArena::take(size_t bytes) {
  const size_t rounded = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  const auto best = free_by_size_.lower_bound({rounded, 0});
  if (best == free_by_size_.end()) return std::nullopt;
  const auto [block_bytes, offset] = *best;
  remove_free(free_by_offset_.find(offset));
  if (block_bytes > rounded) add_free(offset + rounded, block_bytes - rounded);
  taken_.emplace(offset, rounded);
  taken_bytes_ += rounded;
  high_water_ = std::max(high_water_, offset + rounded);
  return offset;
}

void BestFitArena::give_back(size_t offset) {
  const auto taken = taken_.find(offset);
  if (taken == taken_.end())
    throw Error(fmt::format("BestFitArena::give_back: offset {} was not taken (or was given back already)", offset));
  size_t start = offset, bytes = taken->second;
  taken_bytes_ -= bytes;
  taken_.erase(taken);
  auto after = free_by_offset_.lower_bound(offset);
  if (after != free_by_offset_.end() && after->first == offset + bytes) {
    bytes += after->second;
    after = std::next(after);
    remove_free(std::prev(after));
  }
  if (after != free_by_offset_.begin()) {
    const auto before = std::prev(after);
    if (before->first + before->second == start) {
      start = before->first;
      bytes += before->second;
      remove_free(before);
    }
  }
  add_free(start, bytes);
}

void BestFitArena::add_free(size_t offset, size_t bytes) {
  free_by_offset_.emplace(offset, bytes);
  free_by_size_.emplace(bytes, offset);
}

void BestFitArena::remove_free(std::map<size_t, size_t>::iterator block) {
  free_by_size_.erase({block->second, block->first});
  free_by_offset_.erase(block);
}

}  // namespace dsmil
