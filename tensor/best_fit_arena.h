// Offsets in one contiguous range handed out best-fit and coalesced when given back: the layout of the memory a
// CUDA graph's recording takes (tensor/cuda/runtime.cpp), planned on the host while the recording runs, so that the
// physical memory behind it is exactly what the recording held at its fullest (high_water()).
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

namespace dsmil {

class BestFitArena {
 public:
  static constexpr size_t kAlignment = 256;  // what cudaMalloc guarantees, and the vectorised kernels assume
  explicit BestFitArena(size_t capacity);

  // The lowest offset of the smallest free block that holds `bytes` (rounded up to kAlignment; 0 counts as 1);
  // nullopt where no free block does.
  std::optional<size_t> take(size_t bytes);
  // Gives back what take() returned at `offset`, merged with the free blocks beside it. Throws Error for an offset
  // not taken (or given back already).
  void give_back(size_t offset);

  size_t capacity() const { return capacity_; }
  size_t high_water() const { return high_water_; }  // the end of the furthest block ever taken
  size_t taken_bytes() const { return taken_bytes_; }
  size_t taken_blocks() const { return taken_.size(); }
  bool owns(size_t offset) const { return taken_.count(offset) > 0; }

 private:
  void add_free(size_t offset, size_t bytes);
  void remove_free(std::map<size_t, size_t>::iterator block);

  size_t capacity_;
  std::map<size_t, size_t> free_by_offset_;           // offset -> bytes
  std::set<std::pair<size_t, size_t>> free_by_size_;  // (bytes, offset)
  std::unordered_map<size_t, size_t> taken_;          // offset -> bytes
  size_t high_water_ = 0;
  size_t taken_bytes_ = 0;
};

}  // namespace dsmil
