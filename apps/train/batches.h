// Bags of preprocessed cases as model input: instance sampling, gather (+ augmentation) into one
// channels-last tensor x[B*n, S, H, W, 4], the instance mask [B, n] and the labels [B].
#pragma once

#include <string>
#include <vector>

#include "data/preprocess.h"
#include "data/sampling.h"
#include "tensor/tensor.h"

namespace dsmil::data {
class DeviceCohort;
}

namespace dsmil::app {

struct Batch {
  Tensor x;                // [B*n, S, H, W, 4] on the CPU, or on the GPU when gathered from a DeviceCohort
  Tensor mask;             // [B, n] I32: 1 for a real instance, 0 for padding
  Tensor target;           // [B] I32
  std::vector<int> cases;  // index of each bag's case in the cohort
  std::vector<std::vector<int>> starts;  // slab start of each real instance
};

struct BagSpec {
  int instances = 16;  // n per bag; under `all` sampling every slab position, the bags as wide as the longest
  int slab_depth = 3;
  data::InstanceSampling sampling = data::InstanceSampling::fixed;
  bool augment = false;
  data::AugmentParams augment_params;
};

// Where x is gathered: on the host (F32), or on the GPU from the resident cohort (its indices are the
// cohort's) in `dtype`; one ops::gather_bags call per batch either way, with the same values.
struct GatherTarget {
  const data::DeviceCohort* resident = nullptr;
  DType dtype = DType::F32;
};

// A note naming how many cases cannot fill a bag of spec.instances slabs (fewer slab positions hold brain), so
// that their bags are padded with zero slabs: the MIL head masks those, but in training they take part in the
// encoder's batch-norm statistics. Empty when every case fills its bag, and under `all` sampling (whose bags are
// padded to the batch's widest by design, for evaluation, where batch norm uses its running statistics).
std::string padded_bags_note(const std::vector<data::CaseVolume>& cases, const BagSpec& spec);

// The bags of `case_indices` (one bag per case); `seeds[b]` drives bag b's instance draw and
// augmentation, so a bag is a function of its seed alone.
Batch make_batch(const std::vector<data::CaseVolume>& cohort, const std::vector<int>& case_indices,
                 const std::vector<uint64_t>& seeds, const BagSpec& spec, const GatherTarget& target = {});

}  // namespace dsmil::app
