// Slab positions against brute force; instance samplers (random, stratified, fixed, all) and
// epoch case orders (weighted, shuffle) by their properties; bag gather + augmentation against an
// independent per-voxel reference.
#include <doctest/doctest.h>

#include <algorithm>
#include <set>

#include "base/half.h"
#include "data/device_cohort.h"
#include "data/sampling.h"
#include "test_helpers.h"

namespace dsmil::data::test {

namespace {

std::vector<int> brute_force_starts(const std::vector<uint8_t>& has_brain, int slab) {
  std::vector<int> starts;
  for (int z = 0; z + slab <= static_cast<int>(has_brain.size()); ++z) {
    bool any = false;
    for (int k = z; k < z + slab; ++k) any = any || has_brain[k];
    if (any) starts.push_back(z);
  }
  return starts;
}

std::vector<int> range(int begin, int end) {
  std::vector<int> v;
  for (int i = begin; i < end; ++i) v.push_back(i);
  return v;
}

}  // namespace

TEST_CASE("sampling: slab starts are the windows holding brain") {
  std::mt19937_64 rng(31);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<uint8_t> has_brain(1 + rng() % 40);
    for (auto& b : has_brain) b = rng() % 3 == 0;
    const int slab = 1 + static_cast<int>(rng() % 6);
    CHECK(brain_slab_starts(has_brain, slab) == brute_force_starts(has_brain, slab));
  }
  CHECK(brain_slab_starts(std::vector<uint8_t>(3, 1), 4).empty());  // slab deeper than the volume
}

TEST_CASE("sampling: random draws n distinct positions uniformly and reproducibly") {
  const auto positions = range(10, 60);
  Rng rng = make_rng(1);
  std::vector<int> hits(60, 0);
  for (int trial = 0; trial < 2000; ++trial) {
    const auto picked = sample_instances(positions, 8, InstanceSampling::random, rng);
    REQUIRE(picked.size() == 8);
    CHECK(std::is_sorted(picked.begin(), picked.end()));
    CHECK(std::set<int>(picked.begin(), picked.end()).size() == 8);
    for (int p : picked) {
      CHECK(p >= 10);
      ++hits[p];
    }
  }
  // each position is expected 2000 * 8 / 50 = 320 times; binomial sd ~ 16.6
  for (int p = 10; p < 60; ++p) CHECK(std::abs(hits[p] - 320) < 90);
  Rng a = make_rng(7), b = make_rng(7);
  CHECK(sample_instances(positions, 8, InstanceSampling::random, a) ==
        sample_instances(positions, 8, InstanceSampling::random, b));
}

TEST_CASE("sampling: stratified draws one position per equal segment of the extent") {
  const auto positions = range(20, 100);  // extent 80, n = 8: segments of 10
  Rng rng = make_rng(2);
  std::set<int> seen;
  for (int trial = 0; trial < 300; ++trial) {
    const auto picked = sample_instances(positions, 8, InstanceSampling::stratified, rng);
    REQUIRE(picked.size() == 8);
    for (int s = 0; s < 8; ++s) {
      CHECK(picked[s] >= 20 + 10 * s);
      CHECK(picked[s] < 30 + 10 * s);
      seen.insert(picked[s]);
    }
  }
  CHECK(seen.size() == 80);  // every position reachable
  // a gap with no positions: its segment gives nothing, so fewer than n come back
  std::vector<int> gapped = range(0, 10);
  for (int p : range(30, 40)) gapped.push_back(p);
  const auto picked = sample_instances(gapped, 4, InstanceSampling::stratified, rng);
  CHECK(picked.size() == 2);
  CHECK(picked[0] < 10);
  CHECK(picked[1] >= 30);
}

TEST_CASE("sampling: fixed is evenly spaced and deterministic and all or short lists return everything") {
  const auto positions = range(5, 50);  // 45 positions
  Rng rng = make_rng(3);
  const auto fixed = sample_instances(positions, 5, InstanceSampling::fixed, rng);
  CHECK(fixed == std::vector<int>{5, 16, 27, 38, 49});
  Rng other = make_rng(99);
  CHECK(sample_instances(positions, 5, InstanceSampling::fixed, other) == fixed);
  CHECK(sample_instances(positions, 1, InstanceSampling::fixed, rng) == std::vector<int>{27});
  CHECK(sample_instances(positions, 3, InstanceSampling::all, rng) == positions);
  const auto few = range(0, 6);
  for (auto sampling : {InstanceSampling::random, InstanceSampling::stratified, InstanceSampling::fixed}) {
    CHECK(sample_instances(few, 16, sampling, rng) == few);
  }
}

TEST_CASE("sampling: weighted case order balances the classes and shuffle is a permutation") {
  std::vector<int> labels(30, 1);
  for (int i = 0; i < 8; ++i) labels[3 * i] = 0;  // 22 HGG, 8 LGG
  Rng rng = make_rng(4);
  int positives = 0, draws = 0;
  std::vector<int> count(30, 0);
  for (int epoch = 0; epoch < 400; ++epoch) {
    const auto order = epoch_case_order(labels, CaseSampling::weighted, rng);
    REQUIRE(order.size() == 30);
    for (int i : order) {
      positives += labels[i];
      ++count[i];
      ++draws;
    }
  }
  CHECK(std::abs(static_cast<double>(positives) / draws - 0.5) < 0.02);  // sd ~ 0.0052
  // within a class, cases are drawn alike: LGG each 12000/2/8 = 750, HGG each ~273
  for (int i = 0; i < 30; ++i) CHECK(std::abs(count[i] - (labels[i] ? 6000.0 / 22 : 750.0)) < 100);
  const auto shuffled = epoch_case_order(labels, CaseSampling::shuffle, rng);
  auto sorted = shuffled;
  std::sort(sorted.begin(), sorted.end());
  CHECK(sorted == range(0, 30));
  CHECK(shuffled != range(0, 30));
  Rng a = make_rng(5), b = make_rng(5);
  CHECK(epoch_case_order(labels, CaseSampling::weighted, a) == epoch_case_order(labels, CaseSampling::weighted, b));
}

TEST_CASE("sampling: balanced case order pairs one case of each class, drawn as weighted draws them") {
  std::vector<int> labels(31, 1);
  for (int i = 0; i < 8; ++i) labels[3 * i] = 0;  // 23 HGG, 8 LGG; an odd length leaves a last draw unpaired
  Rng rng = make_rng(6);
  int mixed_pairs = 0, pairs = 0, first_positive = 0;
  std::vector<int> count(31, 0);
  for (int epoch = 0; epoch < 400; ++epoch) {
    const auto order = epoch_case_order(labels, CaseSampling::balanced, rng);
    REQUIRE(order.size() == 31);
    for (size_t i = 0; i + 1 < order.size(); i += 2) {
      mixed_pairs += labels[order[i]] != labels[order[i + 1]];
      first_positive += labels[order[i]];
      ++pairs;
    }
    for (int i : order) ++count[i];
  }
  CHECK(mixed_pairs == pairs);
  CHECK(std::abs(static_cast<double>(first_positive) / pairs - 0.5) < 0.02);  // which class leads: sd ~ 0.0056
  // within a class, cases are drawn alike: ~12400/2 draws a class, LGG each ~775, HGG each ~270
  for (int i = 0; i < 31; ++i) CHECK(std::abs(count[i] - (labels[i] ? 6200.0 / 23 : 775.0)) < 100);
  const std::vector<int> one_class(5, 1);
  Rng c = make_rng(7);
  for (int i : epoch_case_order(one_class, CaseSampling::balanced, c)) CHECK(one_class[i] == 1);
}

namespace {

// A case volume on the heap with random half values and a random mask.
CaseVolume random_case(GridShape grid, std::mt19937_64& rng) {
  auto storage = std::make_shared<std::vector<uint8_t>>(grid.voxels() * 4 * 2 + grid.voxels());
  auto* image = reinterpret_cast<uint16_t*>(storage->data());
  uint8_t* mask = storage->data() + grid.voxels() * 8;
  std::uniform_real_distribution<float> value(-3, 3);
  for (int64_t i = 0; i < grid.voxels() * 4; ++i) image[i] = float_to_half(value(rng));
  for (int64_t i = 0; i < grid.voxels(); ++i) mask[i] = rng() % 5 != 0;
  CaseVolume c;
  c.case_id = "random";
  c.grid = grid;
  c.image = {image, static_cast<size_t>(grid.voxels() * 4)};
  c.brain_mask = {mask, static_cast<size_t>(grid.voxels())};
  c.storage = storage;
  return c;
}

}  // namespace

TEST_CASE("sampling: the host gather writes channels-last bags with flip, shift and intensity as specified") {
  std::mt19937_64 rng(41);
  const GridShape grid{10, 7, 9};
  const std::vector<CaseVolume> cases{random_case(grid, rng), random_case(grid, rng)};
  // Bag 0 (case 1) has three slabs, bag 1 (case 0) one: its other rows are padding, zero.
  const std::vector<std::vector<int>> starts{{0, 3, 7}, {5}};
  const std::vector<int> bag_cases{1, 0};
  const int slab = 3, n = 3;
  std::vector<std::vector<float>> images(cases.size(), std::vector<float>(4 * grid.voxels()));
  for (size_t i = 0; i < cases.size(); ++i) cases[i].copy_image(images[i]);

  int flips = 0;
  for (uint64_t seed : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u}) {
    AugmentParams params;
    params.max_shift = 3;
    params.flip_probability = 0.5;
    const std::vector<BagAugmentation> a{draw_augmentation(params, seed), draw_augmentation(params, seed + 100)};
    CHECK(std::abs(a[0].shift_x) <= 3);
    CHECK(std::abs(a[0].shift_y) <= 3);
    flips += a[0].flip;
    const Tensor x = gather_batch_on_host(cases, bag_cases, starts, a, n, slab);
    REQUIRE(x.shape() == Shape{2 * n, slab, 7, 9, 4});
    const std::vector<float> out = x.to_vector();
    size_t k = 0;
    for (int b = 0; b < 2; ++b)
      for (int i = 0; i < n; ++i)
        for (int s = 0; s < slab; ++s)
          for (int y = 0; y < 7; ++y)
            for (int x_ = 0; x_ < 9; ++x_)
              for (int ch = 0; ch < 4; ++ch, ++k) {
                float want = 0.0f;
                if (i < static_cast<int>(starts[b].size())) {
                  // reference: undo the shift, then the flip
                  const int z = starts[b][i] + s, unshifted_x = x_ - a[b].shift_x, sy = y - a[b].shift_y;
                  const int sx = a[b].flip ? 8 - unshifted_x : unshifted_x;
                  if (sx >= 0 && sx < 9 && sy >= 0 && sy < 7) {
                    const int64_t v = (int64_t{z} * 7 + sy) * 9 + sx;
                    if (cases[bag_cases[b]].brain_mask[v])
                      want = images[bag_cases[b]][ch * grid.voxels() + v] * a[b].scale[ch] + a[b].offset[ch];
                  }
                }
                CHECK(out[k] == want);
              }
  }
  CHECK(flips > 0);  // both branches were exercised
  CHECK(flips < 8);
  // the same seed draws the same augmentation; disabled is the identity
  const AugmentParams params;
  const BagAugmentation a = draw_augmentation(params, 77), b = draw_augmentation(params, 77);
  CHECK((a.flip == b.flip && a.shift_x == b.shift_x && a.shift_y == b.shift_y && a.scale == b.scale &&
         a.offset == b.offset));
  AugmentParams off;
  off.enabled = false;
  const BagAugmentation identity = draw_augmentation(off, 77);
  CHECK((!identity.flip && identity.shift_x == 0 && identity.shift_y == 0));
  const std::vector<BagAugmentation> identities{identity};
  const std::vector<float> out =
      gather_batch_on_host(cases, std::vector<int>{0}, std::vector<std::vector<int>>{{2}}, identities, 1, slab)
          .to_vector();
  const CaseVolume& c = cases[0];
  CHECK(out[4 * (2 * 9 + 5) + 1] ==
        (c.brain_mask[(2 * 7 + 2) * 9 + 5] ? images[0][grid.voxels() + (2 * 7 + 2) * 9 + 5] : 0.0f));
  // More slabs than instance rows, a slab past the last slice, a case not in the cohort.
  CHECK_THROWS_AS(
      gather_batch_on_host(cases, std::vector<int>{0}, std::vector<std::vector<int>>{{0, 3}}, identities, 1, slab),
      ShapeError);
  CHECK_THROWS_WITH_AS(
      gather_batch_on_host(cases, std::vector<int>{0}, std::vector<std::vector<int>>{{8}}, identities, 1, slab),
      "gather_bags: bag 0 slab 0: slices [8, 11) outside depth 10", ShapeError);
  CHECK_THROWS_AS(
      gather_batch_on_host(cases, std::vector<int>{2}, std::vector<std::vector<int>>{{0}}, identities, 1, slab),
      ShapeError);
}

TEST_CASE("sampling: slab_holds_tumour follows the seg slices") {
  CaseVolume c;
  c.grid = {6, 2, 2};
  c.slice_has_tumour = {0, 0, 1, 0, 0, 0};
  std::vector<uint8_t> seg(24, 0);
  c.seg = seg;  // non-empty: the case has a seg
  CHECK(!slab_holds_tumour(c, 0, 2));
  CHECK(slab_holds_tumour(c, 1, 2));
  CHECK(slab_holds_tumour(c, 2, 1));
  CHECK(!slab_holds_tumour(c, 3, 3));
}

}  // namespace dsmil::data::test
