// The training set resident on the GPU (each case's fp16 image [4][D][H][W] and brain mask [D][H][W], uploaded
// once) and the gather of a batch of augmented bags from it in one launch: x[B*n, S, H, W, 4] f32 or bf16.
// Built only with the CUDA backend (library dsmil_device_data); the CPU twin is data::gather_bag.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data/preprocess.h"
#include "data/sampling.h"
#include "tensor/tensor.h"

namespace dsmil::data {

class DeviceCohort {
 public:
  // Uploads every case into one device allocation (synchronous). All cases must share one grid
  // (ShapeError otherwise); DeviceError names the bytes wanted and free when the device lacks memory.
  explicit DeviceCohort(std::span<const CaseVolume> cases);

  int size() const { return static_cast<int>(cases_.size()); }
  const GridShape& grid() const { return grid_; }
  size_t bytes() const { return bytes_; }  // device memory held, alignment padding included
  const std::string& case_id(int index) const { return cases_.at(index).case_id; }
  const uint16_t* image(int index) const { return cases_.at(index).image; }  // device [4][D][H][W] half bits
  const uint8_t* mask(int index) const { return cases_.at(index).mask; }     // device [D][H][W]

 private:
  struct ResidentCase {
    std::string case_id;
    const uint16_t* image = nullptr;
    const uint8_t* mask = nullptr;
  };
  struct FreeDeviceMemory {
    void operator()(void* memory) const noexcept;
  };
  GridShape grid_;
  size_t bytes_ = 0;
  std::unique_ptr<void, FreeDeviceMemory> arena_;
  std::vector<ResidentCase> cases_;
};

// Bag b holds slabs starts[b] (each 0 <= start <= D - slab_depth, at most instances_per_bag of them) of
// case case_indices[b], augmented by augmentations[b]; returns a CUDA tensor [bags * n, S, H, W, 4] of
// dtype `out` (F32 or BF16) on the library stream, row b * n + i = instance i of bag b, rows past a bag's
// slabs zero. F32 is bit-identical to data::gather_bag; BF16 is that value rounded to nearest even.
Tensor gather_batch_on_device(const DeviceCohort& cohort, std::span<const int> case_indices,
                              std::span<const std::vector<int>> starts, std::span<const BagAugmentation> augmentations,
                              int instances_per_bag, int slab_depth, DType out);

}  // namespace dsmil::data
