// Bench entry of the data path: the bag gather with augmentation, out[B*n, S, H, W, 4] f32 or bf16 from a
// resident cohort of synthetic cases (fp16 image [4][D][H][W], u8 brain mask [D][H][W]), D = max(H, 3S, 24).
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>
#include <span>

#include "apps/kernel_bench/registry.h"
#include "base/counter_rng.h"
#include "base/half.h"
#include "data/device_cohort.h"
#include "data/sampling.h"

namespace dsmil::kernel_bench {

namespace {

// The op reads a cohort of cases, not tensors, so the problem carries the cases as I32 tensors holding
// their bytes (two fp16 values, or four mask bytes, per word: the runner's count of input bytes is then
// the cohort's size, which decides whether it must evict L2), the bags' descriptors as small I32 / F32
// tensors, and the output dtype (the reference rounds to it). No input is converted to the bench dtype.
enum Input { kImages, kMasks, kBagCases, kStarts, kFlipShift, kScaleOffset, kOutDtype, kInputCount };

// Enough cases for 160 MiB, over three times the 50 MB L2 of an H100 (9 cases of 18 MiB at the model's
// 128^3 grid); small grids stop at 32 cases, where the runner evicts L2 instead.
constexpr int64_t kCohortBytes = int64_t{160} << 20;
constexpr int64_t kMinCases = 4, kMaxCases = 32;
// What one voxel of a case holds: four fp16 modalities and the mask byte.
constexpr int64_t kCaseBytesPerVoxel = data::kModalities * sizeof(uint16_t) + sizeof(uint8_t);

struct Geometry {
  int64_t bags = 0, instances = 0, slab = 0, cases = 0;
  data::GridShape grid;
  Shape output() const { return {bags * instances, slab, grid.height, grid.width, data::kModalities}; }
};

// --shape B,n,S,H,W: the cases are as deep as they are high (the model's grid is a cube), deep enough for
// three slabs and at least 24 slices.
Geometry geometry_of(const Shape& s) {
  Geometry g;
  g.bags = s[0];
  g.instances = s[1];
  g.slab = s[2];
  g.grid = {static_cast<int>(std::max({s[3], 3 * s[2], int64_t{24}})), static_cast<int>(s[3]), static_cast<int>(s[4])};
  const int64_t case_bytes = kCaseBytesPerVoxel * g.grid.voxels();
  g.cases = std::clamp((kCohortBytes + case_bytes - 1) / case_bytes, kMinCases, kMaxCases);
  return g;
}

int64_t image_words(const Geometry& g) { return data::kModalities * g.grid.voxels() / 2; }
int64_t mask_words(const Geometry& g) { return (g.grid.voxels() + 3) / 4; }

// A brain: the ellipsoid inscribed in the grid, shrunk by up to 15%, with 5% of its voxels dropped at
// random so that the mask is applied voxel by voxel.
std::vector<uint8_t> brain_mask(const data::GridShape& grid, uint64_t seed) {
  const double shrink = 1.0 - 0.15 * counter_uniform(seed, 0);
  const auto normalised = [&](int i, int size) { return (i + 0.5 - 0.5 * size) / (0.5 * size * shrink); };
  std::vector<uint8_t> mask(static_cast<size_t>(grid.voxels()));
  size_t v = 0;
  for (int z = 0; z < grid.depth; ++z)
    for (int y = 0; y < grid.height; ++y)
      for (int x = 0; x < grid.width; ++x, ++v) {
        const double dz = normalised(z, grid.depth), dy = normalised(y, grid.height), dx = normalised(x, grid.width);
        mask[v] = dz * dz + dy * dy + dx * dx <= 1.0 && counter_uniform(seed, v + 1) >= 0.05f;
      }
  return mask;
}

// Cases with fp16 intensities uniform in (-4, 4) (z-scored, as preprocessing leaves them), random bags:
// starts anywhere in [0, D - S], every bag full, the augmentation of data::draw_augmentation (shifts of
// at most a quarter of the image) with flips alternating, so that every problem of two bags checks both.
Problem draw_gather(const Shape& s, DType dtype, uint64_t seed) {
  const Geometry g = geometry_of(s);
  const int64_t voxels = g.grid.voxels();
  Tensor images = Tensor::empty({g.cases, image_words(g)}, DType::I32);
  Tensor masks = Tensor::zeros({g.cases, mask_words(g)}, DType::I32);
  std::vector<uint16_t> halves(static_cast<size_t>(data::kModalities * voxels));
  for (int64_t c = 0; c < g.cases; ++c) {
    const Tensor values = uniform_tensor({data::kModalities * voxels}, -4.0f, 4.0f, stream_seed(seed, c));
    std::transform(values.f32(), values.f32() + values.numel(), halves.begin(), float_to_half);
    std::memcpy(images.i32() + c * image_words(g), halves.data(), halves.size() * sizeof(uint16_t));
    const std::vector<uint8_t> brain = brain_mask(g.grid, stream_seed(seed, kMaxCases + c));
    std::memcpy(masks.i32() + c * mask_words(g), brain.data(), brain.size());
  }

  const uint64_t bag_seed = stream_seed(seed, 2 * kMaxCases);
  data::AugmentParams params;
  params.max_shift = std::min(params.max_shift, std::min(g.grid.height, g.grid.width) / 4);
  std::vector<int32_t> flip_shift;
  std::vector<float> scale_offset;
  for (int64_t b = 0; b < g.bags; ++b) {
    const data::BagAugmentation a = data::draw_augmentation(params, stream_seed(bag_seed, 2 + b));
    flip_shift.insert(flip_shift.end(), {static_cast<int32_t>(b % 2), a.shift_y, a.shift_x});
    scale_offset.insert(scale_offset.end(), a.scale.begin(), a.scale.end());
    scale_offset.insert(scale_offset.end(), a.offset.begin(), a.offset.end());
  }
  Problem p;
  p.add(std::move(images), false);
  p.add(std::move(masks), false);
  p.add(random_ints({g.bags}, static_cast<int32_t>(g.cases), stream_seed(bag_seed, 0)), false);
  p.add(random_ints({g.bags, g.instances}, g.grid.depth - static_cast<int32_t>(g.slab) + 1, stream_seed(bag_seed, 1)),
        false);
  p.add(Tensor::from_ints({g.bags, 3}, flip_shift), false);
  p.add(Tensor::from_vector({g.bags, 2 * data::kModalities}, scale_offset), false);
  p.add(Tensor::from_ints({1}, {dtype == DType::BF16 ? 1 : 0}), false);
  return p;
}

void check_inputs(const std::vector<Tensor>& in, const Geometry& g) {
  if (in.size() != kInputCount || in[kImages].shape() != Shape{g.cases, image_words(g)} ||
      in[kStarts].shape() != Shape{g.bags, g.instances})
    throw ShapeError(
        fmt::format("gather_bag bench: {} inputs (images {}) are not those of {} cases of {}x{}x{} and "
                    "{} bags of {}",
                    in.size(), in.empty() ? "none" : in[kImages].describe(), g.cases, g.grid.depth, g.grid.height,
                    g.grid.width, g.bags, g.instances));
}

// The cases of CPU inputs, each owning copies of its arrays.
std::vector<data::CaseVolume> decode_cases(const std::vector<Tensor>& in, const Geometry& g) {
  struct CaseArrays {
    std::vector<uint16_t> image;
    std::vector<uint8_t> mask;
  };
  const auto voxels = static_cast<size_t>(g.grid.voxels());
  std::vector<data::CaseVolume> cases;
  for (int64_t c = 0; c < g.cases; ++c) {
    auto arrays = std::make_shared<CaseArrays>();
    arrays->image.resize(data::kModalities * voxels);
    arrays->mask.resize(voxels);
    std::memcpy(arrays->image.data(), in[kImages].i32() + c * image_words(g), arrays->image.size() * sizeof(uint16_t));
    std::memcpy(arrays->mask.data(), in[kMasks].i32() + c * mask_words(g), voxels);
    data::CaseVolume v;
    v.case_id = fmt::format("synthetic-{}", c);
    v.grid = g.grid;
    v.image = arrays->image;
    v.brain_mask = arrays->mask;
    v.storage = std::move(arrays);
    cases.push_back(std::move(v));
  }
  return cases;
}

// What gather_batch_on_device takes from the host for each bag.
struct Bags {
  std::vector<int> cases;
  std::vector<std::vector<int>> starts;
  std::vector<data::BagAugmentation> augmentations;
};

Bags decode_bags(const std::vector<Tensor>& in, const Geometry& g) {
  Bags bags;
  const int32_t* starts = in[kStarts].i32();
  const int32_t* flip_shift = in[kFlipShift].i32();
  const float* scale_offset = in[kScaleOffset].f32();
  for (int64_t b = 0; b < g.bags; ++b) {
    bags.cases.push_back(in[kBagCases].i32()[b]);
    bags.starts.emplace_back(starts + b * g.instances, starts + (b + 1) * g.instances);
    data::BagAugmentation a;
    a.flip = flip_shift[3 * b] != 0;
    a.shift_y = flip_shift[3 * b + 1];
    a.shift_x = flip_shift[3 * b + 2];
    const float* so = scale_offset + 2 * data::kModalities * b;
    std::copy(so, so + data::kModalities, a.scale.begin());
    std::copy(so + data::kModalities, so + 2 * data::kModalities, a.offset.begin());
    bags.augmentations.push_back(a);
  }
  return bags;
}

// The output compared for equality, as the launcher promises (f32 bit-identical to the CPU's gather, bf16
// that value rounded to nearest even): each value's f32 bits as two 16-bit halves in an I32 [..., 2]
// (I32 outputs are compared exactly, through floats, which hold 16-bit integers exactly).
Tensor bit_halves(std::span<const float> values, Shape shape) {
  shape.push_back(2);
  Tensor bits = Tensor::empty(shape, DType::I32);
  int32_t* out = bits.i32();
  for (size_t i = 0; i < values.size(); ++i) {
    const auto u = std::bit_cast<uint32_t>(values[i]);
    out[2 * i] = static_cast<int32_t>(u >> 16);
    out[2 * i + 1] = static_cast<int32_t>(u & 0xFFFFu);
  }
  return bits;
}

// The CPU twin: the same gather on the host (f32), rounded to bf16 where the bench runs in bf16.
std::vector<Tensor> gather_on_cpu(const std::vector<Tensor>& in, const Shape& s) {
  const Geometry g = geometry_of(s);
  check_inputs(in, g);
  const std::vector<data::CaseVolume> cases = decode_cases(in, g);
  const Bags bags = decode_bags(in, g);
  std::vector<float> out = data::gather_batch_on_host(cases, bags.cases, bags.starts, bags.augmentations,
                                                      static_cast<int>(g.instances), static_cast<int>(g.slab))
                               .to_vector();
  if (in[kOutDtype].i32()[0] == 1) std::transform(out.begin(), out.end(), out.begin(), round_to_bf16);
  return {bit_halves(out, g.output())};
}

#ifdef DSMIL_WITH_CUDA
// The device side of the problem checked last: its cases uploaded once into a data::DeviceCohort and the
// bags' host descriptors. The runner checks a problem (`run`, which builds this from the inputs) before
// it times it (`timed_fast`, which only gathers), so the upload is never inside the timed region; the
// timed calls rotate the bags over the cases, so that no repetition finds the slabs of the one before.
class ResidentCohort {
 public:
  void build(const std::vector<Tensor>& inputs, const Shape& shape) {
    std::vector<Tensor> host;
    for (const Tensor& t : inputs) host.push_back(t.to(Device::CPU));
    const Geometry g = geometry_of(shape);
    check_inputs(host, g);
    cohort_.reset();  // frees the previous cohort before the next one is allocated
    cohort_ = std::make_unique<data::DeviceCohort>(decode_cases(host, g));
    bags_ = decode_bags(host, g);
    shape_ = shape;
    timed_calls_ = 0;
  }
  bool holds(const Shape& shape) const { return cohort_ && shape_ == shape; }

  // The gather of the bags as drawn.
  Tensor gather_drawn(DType out) const { return gather(bags_.cases, out); }
  // The k-th timed call's gather: bag b from case (k B + b) mod cases.
  void gather_next(DType out) {
    std::vector<int> cases(bags_.cases.size());
    for (size_t b = 0; b < cases.size(); ++b)
      cases[b] = static_cast<int>((timed_calls_ * static_cast<int64_t>(cases.size()) + static_cast<int64_t>(b)) %
                                  cohort_->size());
    ++timed_calls_;
    gather(cases, out);
  }

 private:
  Tensor gather(std::span<const int> cases, DType out) const {
    return data::gather_batch_on_device(*cohort_, cases, bags_.starts, bags_.augmentations, static_cast<int>(shape_[1]),
                                        static_cast<int>(shape_[2]), out);
  }

  Shape shape_;
  std::unique_ptr<data::DeviceCohort> cohort_;
  Bags bags_;
  int64_t timed_calls_ = 0;
};

std::vector<Tensor> gather_on_device(ResidentCohort& resident, const std::vector<Tensor>& in, const Shape& s,
                                     DType dtype) {
  resident.build(in, s);
  Tensor x = resident.gather_drawn(dtype);
  if (x.dtype() != DType::F32) x = x.to_dtype(DType::F32);  // bf16 widens exactly (on the device: CUDA only)
  const std::vector<float> values = x.to(Device::CPU).to_vector();
  return {bit_halves(values, x.shape())};
}
#endif

KernelBench gather_bag_bench() {
  KernelBench b;
  b.name = "gather_bag";
  b.file = "gather_bags.cu";
  b.launchers = {"gather_bags"};
  b.shape_meaning = "B,n,S,H,W";
  b.bytes_meaning =
      "per voxel of out[B,n,S,H,W,4]: at most 9 B read (fp16 x4 + u8 mask, cases rotate: cold), 16 B f32 / 8 B "
      "bf16 written";
  b.shape_rank = 5;
  b.dtypes = {DType::F32, DType::BF16};
  b.model_shape = [](const ModelShapes& m) { return Shape{m.bags, m.instances, m.input[1], m.input[2], m.input[3]}; };
  b.tiny_shape = {2, 3, 2, 8, 8};
  // Masked-out and shifted-out voxels read less; the bags' descriptors (a few hundred bytes) are not counted.
  b.bytes = [](const Shape& s, DType d) {
    return shape_numel(s) * (kCaseBytesPerVoxel + data::kModalities * static_cast<int64_t>(dtype_size(d)));
  };
  b.draw = draw_gather;
  b.run = [](std::vector<Tensor>& in, const Shape& s, DType) { return gather_on_cpu(in, s); };
#ifdef DSMIL_WITH_CUDA
  // The cohort lives beside the entry, shared by its closures: built by the check, reused by the timing.
  auto resident = std::make_shared<ResidentCohort>();
  b.run = [resident](std::vector<Tensor>& in, const Shape& s, DType dtype) {
    return in.at(kImages).device() == Device::CPU ? gather_on_cpu(in, s) : gather_on_device(*resident, in, s, dtype);
  };
  b.timed_fast = [resident](std::vector<Tensor>& in, const Shape& s, DType dtype) {
    if (!resident->holds(s)) resident->build(in, s);
    resident->gather_next(dtype);
  };
  // As kernels/gather_bags.cu launches it: a block row per output slice, 256 threads of 4 voxels each.
  b.launch_fast = [](const Shape& s, DType) {
    const int64_t slices = s[0] * s[1] * s[2], per_slice = std::min<int64_t>((s[3] * s[4] + 1023) / 1024, 65535);
    return fmt::format("2 H2D descriptor copies + {} x {} x 256 (slice x voxel blocks)", slices, per_slice);
  };
#endif
  return b;
}

}  // namespace

void add_data_path_benches(std::vector<KernelBench>& list) { list.push_back(gather_bag_bench()); }

}  // namespace dsmil::kernel_bench
