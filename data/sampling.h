// Bag sampling for MIL training: which slabs (S consecutive axial slices) of a case form a bag, which cases an
// epoch visits, and each bag's augmentation (the gather that applies it: ops::gather_bags, data/device_cohort.h).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "data/preprocess.h"
#include "data/rng.h"

namespace dsmil::data {

// Slab start positions z (0 <= z <= D - S, ascending) whose slices [z, z + S) hold brain in at
// least one slice. slice_has_brain is CaseVolume::slice_has_brain.
std::vector<int> brain_slab_starts(std::span<const uint8_t> slice_has_brain, int slab_depth);

// True when one of the slab's slices holds tumour (seg > 0); false for cases without seg.
bool slab_holds_tumour(const CaseVolume& c, int start, int slab_depth);

// The config spells these (apps/train/config.cpp): train.instance_sampling, train.case_sampling.
enum class InstanceSampling { random, stratified, fixed, all };

// Picks up to n of `positions` (ascending, as from brain_slab_starts), returned ascending:
//  random     n distinct positions, uniformly;
//  stratified the span [first, last] of positions cut into n equal segments, one position drawn
//             from each segment that has any (so fewer when segments are empty);
//  fixed      n evenly spaced positions, first and last included; no randomness;
//  all        every position (n ignored).
// With n >= positions.size() every sampler returns all positions (fewer than n: callers mask the
// missing instances of a bag). rng is used by random and stratified only.
std::vector<int> sample_instances(std::span<const int> positions, int n, InstanceSampling sampling, Rng& rng);

enum class CaseSampling { weighted, balanced, shuffle };

// The case order of one epoch over a training set with these labels (0/1); its length is
// labels.size(). weighted: drawn with replacement with probability 1/(count of the case's class),
// so both classes are equally likely per draw (like torch's WeightedRandomSampler with those
// weights); balanced: drawn alike, but in pairs of one case of each class (the first's class at
// random), so that a step of an even number of consecutive bags holds as many of each class;
// shuffle: a permutation. Returns indices into labels.
std::vector<int> epoch_case_order(std::span<const int> labels, CaseSampling sampling, Rng& rng);

// Augmentation of a bag (all its instances alike). Defaults are on; `enabled = false` turns all off.
struct AugmentParams {
  bool enabled = true;
  double flip_probability = 0.5;  // left-right flip (W axis)
  int max_shift = 8;              // in-plane integer shift, uniform in [-max_shift, max_shift] (H and W)
  double intensity_scale = 0.1;   // per modality: v * U(1 - s, 1 + s) ...
  double intensity_shift = 0.1;   // ... + U(-t, t), applied inside the brain mask only
};

// One bag's drawn augmentation, as ops::gather_bags applies it on either device: output (y, x) comes from source
// row y - shift_y and column u = x - shift_x (or W-1-u when flipped): a flip, then a shift of the flipped image;
// each modality's value in the brain becomes v * scale[c] + offset[c].
struct BagAugmentation {
  bool flip = false;
  int shift_y = 0;
  int shift_x = 0;
  std::array<float, 4> scale{1, 1, 1, 1};
  std::array<float, 4> offset{0, 0, 0, 0};
};
BagAugmentation draw_augmentation(const AugmentParams& params, uint64_t seed);

}  // namespace dsmil::data
