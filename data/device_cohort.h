// A batch of augmented bags, x[B*n, S, H, W, 4], gathered in one call of ops::gather_bags: from the training set
// resident on the GPU (each case's fp16 image [4][D][H][W] and brain mask [D][H][W], uploaded once into a
// DeviceCohort), or from the cases in host memory. Both give the same f32 values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "data/preprocess.h"
#include "data/sampling.h"
#include "tensor/device.h"
#include "tensor/tensor.h"

namespace dsmil::data {

class DeviceCohort {
 public:
  // Uploads every case into one allocation of device memory outside the tensor pool (synchronous). All cases
  // must share one grid (ShapeError otherwise); DeviceError names the bytes wanted and free when the device lacks
  // memory, and without a CUDA device.
  explicit DeviceCohort(std::span<const CaseVolume> cases);

  int size() const { return static_cast<int>(cases_.size()); }
  const GridShape& grid() const { return grid_; }
  size_t bytes() const { return memory_.bytes(); }  // device memory held, alignment padding included
  const std::string& case_id(int index) const { return cases_.at(index).case_id; }
  const uint16_t* image(int index) const { return cases_.at(index).image; }  // device [4][D][H][W] half bits
  const uint8_t* mask(int index) const { return cases_.at(index).mask; }     // device [D][H][W]

 private:
  struct ResidentCase {
    std::string case_id;
    const uint16_t* image = nullptr;
    const uint8_t* mask = nullptr;
  };
  GridShape grid_;
  device::DeviceMemory memory_;
  std::vector<ResidentCase> cases_;
};

// Bag b holds slabs starts[b] (each 0 <= start <= D - slab_depth, at most instances_per_bag of them) of case
// case_indices[b], augmented by augmentations[b]; row b * n + i = instance i of bag b, rows past a bag's slabs
// zero. On the device: a CUDA tensor of dtype `out` (F32 or BF16) on the library stream; on the host: F32 on the
// CPU, the same values.
Tensor gather_batch_on_device(const DeviceCohort& cohort, std::span<const int> case_indices,
                              std::span<const std::vector<int>> starts, std::span<const BagAugmentation> augmentations,
                              int instances_per_bag, int slab_depth, DType out);
Tensor gather_batch_on_host(std::span<const CaseVolume> cohort, std::span<const int> case_indices,
                            std::span<const std::vector<int>> starts, std::span<const BagAugmentation> augmentations,
                            int instances_per_bag, int slab_depth);

}  // namespace dsmil::data
