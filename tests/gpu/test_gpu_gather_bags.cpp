// GPU test of the bag gather (ops::gather_bags) [B*n, S, H, W, 4] from the resident cohort against the same gather on
// the host: f32 bit-exact, bf16 within its rounding, over random fp16 cases, slab starts at the depth's edges, flips
// and shifts past the border; the same errors from both.
#include <cmath>
#include <cstring>
#include <memory>
#include <random>

#include <fmt/format.h>

#include "data/device_cohort.h"
#include "base/half.h"
#include "tests/gpu/gpu_compare.h"

using namespace dsmil;
using namespace dsmil::gpu_test;

namespace {

// bf16 keeps 8 significant bits: rounding to nearest moves a normal value by at most 2^-8 of itself.
constexpr double kTolBF16Rounding = 1.0 / (1 << 8);

// Mostly z-score-like values; every tenth is any finite half (subnormals, -0 and up to 65504 included).
uint16_t random_half(std::mt19937_64& rng) {
  if (rng() % 10 != 0) return float_to_half(std::uniform_real_distribution<float>(-4.0f, 4.0f)(rng));
  const auto sign = static_cast<uint16_t>(rng() % 2 << 15), exponent = static_cast<uint16_t>(rng() % 31 << 10);
  return static_cast<uint16_t>(sign | exponent | rng() % 1024);
}

// A case on the heap: random half image, a mask with a quarter of the voxels and some whole slices outside.
data::CaseVolume random_case(const data::GridShape& grid, int number, std::mt19937_64& rng) {
  const auto voxels = static_cast<size_t>(grid.voxels());
  auto storage = std::make_shared<std::vector<uint16_t>>(data::kModalities * voxels + (voxels + 1) / 2);
  uint16_t* image = storage->data();
  auto* mask = reinterpret_cast<uint8_t*>(storage->data() + data::kModalities * voxels);
  for (size_t i = 0; i < data::kModalities * voxels; ++i) image[i] = random_half(rng);
  const size_t slice = static_cast<size_t>(grid.height) * grid.width;
  for (size_t z = 0; z < static_cast<size_t>(grid.depth); ++z) {
    const bool empty_slice = rng() % 6 == 0;
    for (size_t v = z * slice; v < (z + 1) * slice; ++v) mask[v] = !empty_slice && rng() % 4 != 0;
  }
  data::CaseVolume c;
  c.case_id = "random-" + std::to_string(number);
  c.grid = grid;
  c.image = {image, data::kModalities * voxels};
  c.brain_mask = {mask, voxels};
  c.storage = storage;
  return c;
}

// In-plane shifts near and past the borders (a shift of the whole extent leaves nothing) and small ones.
int random_shift(int extent, std::mt19937_64& rng) {
  const int edges[] = {0, 1, -1, extent - 1, 1 - extent, extent, -extent, extent + 2, -extent - 2};
  if (rng() % 2 == 0) return edges[rng() % std::size(edges)];
  return static_cast<int>(rng() % 17) - 8;
}

struct Batch {
  std::vector<int> case_indices;
  std::vector<std::vector<int>> starts;
  std::vector<data::BagAugmentation> augmentations;
};

// Bag 0: full, slabs at both ends of the depth, no augmentation. Bag 1: no slab at all. Odd bags: fewer
// slabs than n. Flips alternate; starts repeat sometimes, as `all` and small cases allow.
Batch random_batch(int bags, int n, int slab_depth, int cases, const data::GridShape& grid, std::mt19937_64& rng) {
  Batch batch;
  std::uniform_real_distribution<float> scale(0.9f, 1.1f), offset(-0.1f, 0.1f);
  for (int b = 0; b < bags; ++b) {
    batch.case_indices.push_back(static_cast<int>(rng() % cases));
    const int count = b == 1 ? 0 : b % 2 == 1 ? 1 + static_cast<int>(rng() % (n - 1)) : n;
    std::vector<int> starts;
    for (int i = 0; i < count; ++i) starts.push_back(static_cast<int>(rng() % (grid.depth - slab_depth + 1)));
    data::BagAugmentation a;
    if (b == 0) {
      starts.front() = 0;
      starts.back() = grid.depth - slab_depth;
    } else {
      a.flip = b % 2 == 0;
      a.shift_y = random_shift(grid.height, rng);
      a.shift_x = random_shift(grid.width, rng);
      for (int c = 0; c < data::kModalities; ++c) {
        a.scale[c] = scale(rng);
        a.offset[c] = offset(rng);
      }
    }
    batch.starts.push_back(std::move(starts));
    batch.augmentations.push_back(a);
  }
  return batch;
}

// The same batch gathered on the host, as the CPU make_batch does.
std::vector<float> cpu_reference(const std::vector<data::CaseVolume>& cases, const Batch& batch, int n,
                                 int slab_depth) {
  return data::gather_batch_on_host(cases, batch.case_indices, batch.starts, batch.augmentations, n, slab_depth)
      .to_vector();
}

void check_bit_exact(const std::string& what, const Tensor& got, const std::vector<float>& ref) {
  const std::vector<float> values = got.to_vector();
  REQUIRE(values.size() == ref.size());
  size_t mismatches = 0;
  double worst = 0.0;
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t got_bits = 0, ref_bits = 0;
    std::memcpy(&got_bits, &values[i], sizeof(float));
    std::memcpy(&ref_bits, &ref[i], sizeof(float));
    if (got_bits == ref_bits) continue;
    ++mismatches;
    const double err = std::fabs(static_cast<double>(values[i]) - ref[i]);
    worst = std::isfinite(err) ? std::max(worst, err) : INFINITY;
  }
  std::printf("[gpu-check] %-58s max abs err %.3e, %zu of %zu differ in bits %s\n", what.c_str(), worst, mismatches,
              values.size(), mismatches == 0 ? "PASS" : "FAIL");
  CHECK_MESSAGE(mismatches == 0, what << ": " << mismatches << " values differ from the CPU, max error " << worst);
}

// Every element within bf16 rounding of the f32 reference, relative to itself (zeros must stay zero).
void check_bf16_rounding(const std::string& what, const Tensor& got, const std::vector<float>& ref) {
  const std::vector<float> values = got.to_vector();
  REQUIRE(values.size() == ref.size());
  size_t failures = 0;
  double worst = 0.0;
  for (size_t i = 0; i < values.size(); ++i) {
    const double err = std::fabs(static_cast<double>(values[i]) - ref[i]),
                 size = std::fabs(static_cast<double>(ref[i]));
    const double relative = err == 0.0 ? 0.0 : size > 0.0 && std::isfinite(err) ? err / size : INFINITY;
    worst = std::max(worst, relative);
    failures += !(relative <= kTolBF16Rounding);
  }
  std::printf("[gpu-check] %-58s err %.3e tol %.1e %s\n", what.c_str(), worst, kTolBF16Rounding,
              failures == 0 ? "PASS" : "FAIL");
  CHECK_MESSAGE(failures == 0, what << ": " << failures << " values off by more than bf16 rounding, worst " << worst);
}

struct GatherShape {
  data::GridShape grid;
  int slab_depth, instances, bags;
};

}  // namespace

TEST_CASE("gpu gather_batch_on_device matches the host's gather bit-exactly in f32 and within rounding in bf16") {
  if (skip_without_gpu()) return;
  auto& rng = test::rng();
  // The model's layout on small grids: even sizes, odd sizes (flip and shift off any vector width), one slice.
  const std::vector<GatherShape> shapes = {{{20, 24, 32}, 3, 5, 7}, {{13, 17, 23}, 4, 6, 6}, {{9, 11, 7}, 1, 3, 5}};
  for (const GatherShape& shape : shapes) {
    std::vector<data::CaseVolume> cases;
    for (int i = 0; i < 3; ++i) cases.push_back(random_case(shape.grid, i, rng));
    const data::DeviceCohort cohort(cases);
    const Batch batch = random_batch(shape.bags, shape.instances, shape.slab_depth, cohort.size(), shape.grid, rng);
    const std::vector<float> ref = cpu_reference(cases, batch, shape.instances, shape.slab_depth);
    const Shape expected{int64_t{shape.bags} * shape.instances, shape.slab_depth, shape.grid.height, shape.grid.width,
                         data::kModalities};
    const std::string where = fmt::format(" grid {}x{}x{} S={} n={} B={}", shape.grid.depth, shape.grid.height,
                                          shape.grid.width, shape.slab_depth, shape.instances, shape.bags);
    for (const DType dtype : {DType::F32, DType::BF16}) {
      guarded("gather_batch_on_device" + where, [&] {
        const auto runs = run_poisoned([&] {
          return data::gather_batch_on_device(cohort, batch.case_indices, batch.starts, batch.augmentations,
                                              shape.instances, shape.slab_depth, dtype);
        });
        for (size_t r = 0; r < runs.size(); ++r) {
          const std::string what = "gather_bags" + where + (r == 0 ? " (NaN poison)" : " (huge poison)");
          REQUIRE(runs[r].shape() == expected);
          REQUIRE(runs[r].device() == Device::CUDA);
          REQUIRE(runs[r].dtype() == dtype);
          if (dtype == DType::F32)
            check_bit_exact(what + " [f32]", runs[r], ref);
          else
            check_bf16_rounding(what + " [bf16]", runs[r], ref);
        }
      });
    }
  }
}

TEST_CASE("gpu DeviceCohort reports its bytes and refuses mixed grids and bad bags") {
  if (skip_without_gpu()) return;
  auto& rng = test::rng();
  const data::GridShape grid{10, 12, 14};
  std::vector<data::CaseVolume> cases;
  for (int i = 0; i < 2; ++i) cases.push_back(random_case(grid, i, rng));
  const data::DeviceCohort cohort(cases);
  const auto aligned = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
  const auto voxels = static_cast<size_t>(grid.voxels());
  CHECK(cohort.size() == 2);
  CHECK(cohort.bytes() == 2 * (aligned(voxels * data::kModalities * sizeof(uint16_t)) + aligned(voxels)));
  CHECK(cohort.case_id(1) == "random-1");

  std::vector<data::CaseVolume> mixed = cases;
  mixed.push_back(random_case({10, 12, 13}, 2, rng));
  CHECK_THROWS_AS(data::DeviceCohort{mixed}, ShapeError);

  const std::vector<data::BagAugmentation> one_augmentation(1);
  const auto gather = [&](int case_index, std::vector<int> starts, int n, int slab_depth) {
    const std::vector<std::vector<int>> bag_starts{std::move(starts)};
    return data::gather_batch_on_device(cohort, std::vector<int>{case_index}, bag_starts, one_augmentation, n,
                                        slab_depth, DType::F32);
  };
  CHECK(gather(1, {0, 7}, 2, 3).shape() == Shape{2, 3, 12, 14, 4});
  CHECK_THROWS_AS(gather(1, {8}, 2, 3), ShapeError);  // slab [8, 11) outside depth 10
  CHECK_THROWS_AS(gather(1, {-1}, 2, 3), ShapeError);
  CHECK_THROWS_AS(gather(1, {0, 1, 2}, 2, 3), ShapeError);  // more slabs than instances
  CHECK_THROWS_AS(gather(2, {0}, 2, 3), ShapeError);        // no such case
  CHECK_THROWS_AS(gather(0, {0}, 2, 11), ShapeError);       // slab deeper than the grid
  CHECK_THROWS_AS(data::gather_batch_on_device(cohort, std::vector<int>{0}, std::vector<std::vector<int>>{{0}},
                                               one_augmentation, 2, 3, DType::I32),
                  ShapeError);
  // The op's contract is checked in its dispatch: the host's gather refuses a bad slab with the same words.
  const std::vector<std::vector<int>> past_the_end{{8}};
  const std::string on_host = shape_error_words(
      [&] { data::gather_batch_on_host(cases, std::vector<int>{1}, past_the_end, one_augmentation, 2, 3); });
  CHECK(on_host == "gather_bags: bag 0 slab 0: slices [8, 11) outside depth 10");
  CHECK(shape_error_words([&] {
          data::gather_batch_on_device(cohort, std::vector<int>{1}, past_the_end, one_augmentation, 2, 3, DType::F32);
        }) == on_host);
}
