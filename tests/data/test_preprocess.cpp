// Preprocessing against independent references (z-score over the mask, crop, trilinear resampling
// of linear fields, nearest-neighbour seg), z-scores that overflow float16, and the cache rules (hit,
// rebuild on change, a damaged entry rebuilt with a warning or refused when its source is unreadable).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <functional>

#include <fmt/format.h>

#include "base/half.h"
#include "data/preprocess.h"
#include "test_helpers.h"

namespace dsmil::data::test {

namespace {

constexpr std::array<int64_t, 3> kDims{12, 10, 8};
constexpr std::array<int64_t, 3> kBoxBegin{2, 1, 1}, kBoxEnd{10, 9, 7};  // brain box: 8 x 8 x 6

bool in_box(int64_t x, int64_t y, int64_t z) {
  return x >= kBoxBegin[0] && x < kBoxEnd[0] && y >= kBoxBegin[1] && y < kBoxEnd[1] && z >= kBoxBegin[2] &&
         z < kBoxEnd[2];
}

// Four modalities filled by value(m, x, y, z) inside the box, 0 outside; a seg with labels inside.
CaseImages box_images(const std::function<float(int, int64_t, int64_t, int64_t)>& value, std::mt19937_64& rng) {
  CaseImages images;
  Image3D seg;
  seg.dims = kDims;
  seg.values.assign(kDims[0] * kDims[1] * kDims[2], 0.0f);
  for (int m = 0; m < kModalities; ++m) {
    Image3D& image = images.modalities[m];
    image.dims = kDims;
    image.spacing = {1, 1, 1};
    image.values.assign(seg.values.size(), 0.0f);
    for (int64_t z = 0, i = 0; z < kDims[2]; ++z)
      for (int64_t y = 0; y < kDims[1]; ++y)
        for (int64_t x = 0; x < kDims[0]; ++x, ++i) {
          if (!in_box(x, y, z)) continue;
          image.values[i] = value(m, x, y, z);
          if (m == 0) seg.values[i] = static_cast<float>(std::array{0, 1, 2, 4}[rng() % 4]);
        }
  }
  images.seg = seg;
  return images;
}

struct Moments {
  double mean, stddev;
};
Moments box_moments(const Image3D& image) {
  double sum = 0, sum_sq = 0;
  int64_t n = 0;
  for (int64_t z = 0, i = 0; z < kDims[2]; ++z)
    for (int64_t y = 0; y < kDims[1]; ++y)
      for (int64_t x = 0; x < kDims[0]; ++x, ++i) {
        if (!in_box(x, y, z)) continue;
        sum += image.values[i];
        sum_sq += double(image.values[i]) * image.values[i];
        ++n;
      }
  const double mean = sum / n;
  return {mean, std::sqrt(sum_sq / n - mean * mean)};
}

CaseFiles dummy_files(const std::string& id) {
  CaseFiles f;
  f.case_id = id;
  f.patient_id = "patient-" + id;
  f.label = kLabelHGG;
  return f;
}

// Half precision: relative 2^-11 plus an absolute floor for values near 0.
void check_half_close(float got, double want) { CHECK(std::abs(got - want) <= 1e-3 * std::abs(want) + 1e-3); }

std::vector<uint16_t> image_bits(const CaseVolume& c) { return {c.image.begin(), c.image.end()}; }

}  // namespace

TEST_CASE("preprocess: crop to the brain box and z-score per modality (identity grid)") {
  std::mt19937_64 rng(21);
  std::uniform_real_distribution<float> value(10.0f, 900.0f);
  const CaseImages images = box_images([&](int, int64_t, int64_t, int64_t) { return value(rng); }, rng);
  const GridShape grid{6, 8, 8};  // exactly the box: no interpolation
  const CaseVolume c = preprocess_images(dummy_files("id"), images, {grid});
  CHECK(c.case_id == "id");
  CHECK(c.patient_id == "patient-id");
  CHECK(c.grid == grid);
  CHECK(c.source_box.begin == kBoxBegin);
  CHECK(c.source_box.end == kBoxEnd);
  CHECK(c.brain_z_begin == 0);
  CHECK(c.brain_z_end == 6);
  std::vector<float> decoded(4 * grid.voxels());
  c.copy_image(decoded);
  for (int m = 0; m < kModalities; ++m) {
    const Moments moments = box_moments(images.modalities[m]);
    for (int d = 0; d < 6; ++d)
      for (int h = 0; h < 8; ++h)
        for (int w = 0; w < 8; ++w) {
          const int64_t o = (d * 8 + h) * 8 + w;
          const float source = images.modalities[m].at(w + kBoxBegin[0], h + kBoxBegin[1], d + kBoxBegin[2]);
          check_half_close(decoded[m * grid.voxels() + o], (source - moments.mean) / moments.stddev);
          if (m == 0) {
            CHECK(c.brain_mask[o] == 1);
            CHECK(c.seg[o] == images.seg->at(w + kBoxBegin[0], h + kBoxBegin[1], d + kBoxBegin[2]));
          }
        }
  }
}

TEST_CASE("preprocess: trilinear resampling reproduces linear fields at the mapped positions") {
  std::mt19937_64 rng(22);
  std::array<std::array<double, 4>, kModalities> coefficient{};
  for (auto& c : coefficient) c = {500.0 + rng() % 100, 3.0 + rng() % 5, -2.0 - rng() % 4, 7.0 + rng() % 3};
  auto field = [&](int m, double x, double y, double z) {
    return coefficient[m][0] + coefficient[m][1] * x + coefficient[m][2] * y + coefficient[m][3] * z;
  };
  const CaseImages images =
      box_images([&](int m, int64_t x, int64_t y,
                     int64_t z) { return static_cast<float>(field(m, double(x), double(y), double(z))); },
                 rng);
  const GridShape grid{4, 5, 3};  // smaller than the box on every axis: sample positions stay inside
  const CaseVolume c = preprocess_images(dummy_files("lin"), images, {grid});
  const int64_t box[3] = {8, 8, 6};
  auto source_position = [&](int o, int axis, int out) { return kBoxBegin[axis] + (o + 0.5) * box[axis] / out - 0.5; };
  for (int m = 0; m < kModalities; ++m) {
    const Moments moments = box_moments(images.modalities[m]);
    for (int d = 0; d < grid.depth; ++d)
      for (int h = 0; h < grid.height; ++h)
        for (int w = 0; w < grid.width; ++w) {
          const double want = (field(m, source_position(w, 0, grid.width), source_position(h, 1, grid.height),
                                     source_position(d, 2, grid.depth)) -
                               moments.mean) /
                              moments.stddev;
          const int64_t o = (d * grid.height + h) * grid.width + w;
          check_half_close(half_to_float(c.image[m * grid.voxels() + o]), want);
        }
  }
}

TEST_CASE("preprocess: slices without brain inside the box are marked") {
  std::mt19937_64 rng(23);
  const CaseImages images =
      box_images([&](int, int64_t, int64_t, int64_t z) { return z == 3 || z == 4 ? 0.0f : 100.0f + rng() % 50; }, rng);
  const CaseVolume c = preprocess_images(dummy_files("gap"), images, {GridShape{6, 8, 8}});
  CHECK(c.slice_has_brain == std::vector<uint8_t>{1, 1, 0, 0, 1, 1});
  CHECK(c.brain_z_begin == 0);
  CHECK(c.brain_z_end == 6);
  for (int64_t i = 2 * 64; i < 4 * 64; ++i) CHECK(c.image[i] == 0);  // outside the mask: exactly 0
}

namespace {

std::vector<CaseFiles> write_cases(const TempDir& dir, int n) {
  std::vector<CaseFiles> cases;
  for (int i = 0; i < n; ++i) {
    const std::string id = "case" + std::to_string(i);
    cases.push_back(write_case_folder(dir / ("data/" + id), id, i % 2, {20, 18, 16}, 100 + i));
  }
  return cases;
}

PreprocessOptions cache_options(const TempDir& dir, GridShape grid) {
  PreprocessOptions options;
  options.cache_dir = dir / "cache";
  options.params.grid = grid;
  options.threads = 2;
  return options;
}

// Replaces a cache entry by a copy with one bit changed at `offset`, as a copy from elsewhere would
// arrive: a new file, which this process has not checked yet.
void damage_entry(const fs::path& entry, size_t offset) {
  auto bytes = read_bytes(entry);
  bytes.at(offset) ^= 0x10;
  write_bytes(entry.string() + ".damaged", bytes);
  fs::rename(entry.string() + ".damaged", entry);
}

// Preprocesses under BadCasePolicy::skip, expecting one case to be left out, and returns why.
SkippedCase the_skipped_case(const std::vector<CaseFiles>& cases, PreprocessOptions options) {
  options.on_bad_case = BadCasePolicy::skip;
  const PreprocessedCohort cohort = preprocess_cohort(cases, options);
  CHECK(cohort.cases.size() == cases.size() - 1);
  REQUIRE(cohort.skipped.size() == 1);
  return cohort.skipped[0];
}

// What has been written to `file`.
std::string text_of(std::FILE* file) {
  std::string text(static_cast<size_t>(std::ftell(file)), '\0');
  std::rewind(file);
  text.resize(std::fread(text.data(), 1, text.size(), file));
  return text;
}

}  // namespace

TEST_CASE("preprocess cache: second run maps every entry and a changed parameter rebuilds") {
  TempDir dir;
  const auto cases = write_cases(dir, 4);
  const auto options = cache_options(dir, {8, 12, 10});
  const PreprocessedCohort first = preprocess_cohort(cases, options);
  CHECK(first.cache_builds == 4);
  CHECK(first.cache_hits == 0);
  const PreprocessedCohort second = preprocess_cohort(cases, options);
  CHECK(second.cache_builds == 0);
  CHECK(second.cache_hits == 4);
  REQUIRE(second.cases.size() == 4);
  for (int i = 0; i < 4; ++i) {
    CHECK(second.cases[i].case_id == cases[i].case_id);
    CHECK(second.cases[i].label == cases[i].label);
    CHECK(image_bits(second.cases[i]) == image_bits(first.cases[i]));
    CHECK(std::vector<uint8_t>(second.cases[i].seg.begin(), second.cases[i].seg.end()) ==
          std::vector<uint8_t>(first.cases[i].seg.begin(), first.cases[i].seg.end()));
  }
  // without a cache, and with one thread, the same bits
  const CaseVolume direct = preprocess_case(cases[2], options.params);
  CHECK(image_bits(direct) == image_bits(second.cases[2]));
  auto single = options;
  single.threads = 1;
  CHECK(image_bits(preprocess_cohort(cases, single).cases[3]) == image_bits(first.cases[3]));

  const auto other_grid = cache_options(dir, {8, 12, 12});
  const PreprocessedCohort regridded = preprocess_cohort(cases, other_grid);
  CHECK(regridded.cache_builds == 4);
  CHECK(regridded.cases[0].grid == GridShape{8, 12, 12});
  CHECK(preprocess_cohort(cases, options).cache_hits == 4);  // the old entries are still there
}

TEST_CASE("preprocess cache: a changed input rebuilds only that case") {
  TempDir dir;
  const auto cases = write_cases(dir, 4);
  const auto options = cache_options(dir, {8, 12, 10});
  const PreprocessedCohort first = preprocess_cohort(cases, options);
  std::mt19937_64 rng(99);
  write_nifti<int16_t>(cases[1].modalities[3], {20, 18, 16}, random_brain({20, 18, 16}, rng));
  fs::last_write_time(cases[1].modalities[3], fs::last_write_time(cases[1].modalities[3]) + std::chrono::seconds(5));
  const PreprocessedCohort second = preprocess_cohort(cases, options);
  CHECK(second.cache_builds == 1);
  CHECK(second.cache_hits == 3);
  CHECK(image_bits(second.cases[1]) != image_bits(first.cases[1]));
  CHECK(image_bits(second.cases[0]) == image_bits(first.cases[0]));
}

TEST_CASE("preprocess cache: a half-written or damaged entry is never used") {
  TempDir dir;
  const auto cases = write_cases(dir, 3);
  auto options = cache_options(dir, {8, 12, 10});
  std::FILE* warnings = std::tmpfile();
  options.warn = [warnings](std::string_view line) { fmt::print(warnings, "{}\n", line); };
  // copied out: the test damages the entry file in place, under the first run's mapping
  const auto first_bits = image_bits(preprocess_cohort(cases, options).cases[0]);
  const fs::path entry = cache_entry_path(options.cache_dir, cases[0], options.params);
  REQUIRE(fs::exists(entry));
  auto bytes = read_bytes(entry);
  bytes.resize(bytes.size() / 2);  // as if the writer died mid-file at the final name
  write_bytes(entry, bytes);
  write_bytes(entry.string() + ".tmp.1234.0", bytes);  // a leftover temporary file
  const PreprocessedCohort second = preprocess_cohort(cases, options);
  CHECK(second.cache_builds == 1);
  CHECK(second.cache_hits == 2);
  CHECK(image_bits(second.cases[0]) == first_bits);

  auto damaged = read_bytes(entry);
  damaged[0] = 'X';  // wrong magic
  write_bytes(entry, damaged);
  CHECK(preprocess_cohort(cases, options).cache_builds == 1);
  const std::string warned = text_of(warnings);
  std::fclose(warnings);
  CHECK(warned == fmt::format("warning: case case0: cache entry {0} was damaged (4928 bytes where its grid needs "
                              "9856); rebuilt from its source\nwarning: case case0: cache entry {0} was damaged (not "
                              "a cache entry of this version); rebuilt from its source\n",
                              entry.string()));
}

TEST_CASE("preprocess cache: an entry whose arrays or header changed is rebuilt with a warning") {
  TempDir dir;
  const auto cases = write_cases(dir, 3);
  auto options = cache_options(dir, {8, 12, 10});
  const auto first_bits = image_bits(preprocess_cohort(cases, options).cases[1]);
  const fs::path entry = cache_entry_path(options.cache_dir, cases[1], options.params);
  // 960 grid voxels: header 256 bytes, image 4 x 960 float16, then the mask and the seg, 64-byte aligned
  const size_t voxels = 960, mask_offset = 256 + 8 * voxels, seg_offset = mask_offset + voxels;
  const std::pair<std::string, size_t> places[] = {
      {"image", 256 + 1000}, {"mask", mask_offset + 500}, {"seg", seg_offset + voxels - 1}, {"brain box", 64}};
  for (const auto& [what, offset] : places) {
    CAPTURE(what);
    damage_entry(entry, offset);
    std::FILE* warnings = std::tmpfile();
    options.warn = [warnings](std::string_view line) { fmt::print(warnings, "{}\n", line); };
    const PreprocessedCohort second = preprocess_cohort(cases, options);
    const std::string warned = text_of(warnings);
    std::fclose(warnings);
    CHECK(second.cache_builds == 1);
    CHECK(second.cache_hits == 2);
    CHECK(image_bits(second.cases[1]) == first_bits);
    CHECK(warned == fmt::format("warning: case case1: cache entry {} was damaged (checksum mismatch); rebuilt from "
                                "its source\n",
                                entry.string()));
  }
}

TEST_CASE("preprocess cache: a damaged entry whose source is unreadable or gone is refused") {
  TempDir dir;
  auto cases = write_cases(dir, 2);
  auto options = cache_options(dir, {8, 12, 10});
  preprocess_cohort(cases, options);
  const fs::path entry = cache_entry_path(options.cache_dir, cases[0], options.params);
  damage_entry(entry, 300);
  // the source unreadable but of the same size and time, so that the entry is still the one it keys
  const fs::path flair = cases[0].modalities[0];
  const auto written = fs::last_write_time(flair);
  write_bytes(flair, std::vector<char>(fs::file_size(flair), 'z'));
  fs::last_write_time(flair, written);
  REQUIRE(cache_entry_path(options.cache_dir, cases[0], options.params) == entry);
  try {
    preprocess_cohort(cases, options);
    FAIL("expected a CaseError");
  } catch (const CaseError& e) {
    CHECK(e.detail().case_id == "case0");
    CHECK(e.detail().file == entry);
    CHECK(e.detail().reason == fmt::format("cache entry damaged (checksum mismatch) and cannot be rebuilt: {}: not a "
                                           "NIfTI file (header unreadable, too short or of unknown size)",
                                           flair.string()));
  }
  fs::remove(flair);  // gone: the inputs no longer key this entry, and the case names the missing file
  const SkippedCase skipped = the_skipped_case(cases, options);
  CHECK(skipped.file == flair);
  CHECK(skipped.reason.find("cannot open") != std::string::npos);
}

TEST_CASE("preprocess: z-scores that are not finite in float16 are refused naming the case and the file") {
  TempDir dir;
  auto cases = write_cases(dir, 2);
  // finite float32 values whose differences overflow it: +3e38 in the brain but -3e38 in a fifth of it
  const Image3D flair = read_nifti(cases[1].modalities[0]);
  std::vector<float> extreme(flair.values.size(), 0.0f);
  for (size_t i = 0; i < extreme.size(); ++i) {
    if (flair.values[i] != 0.0f) extreme[i] = i % 5 == 0 ? -3e38f : 3e38f;
  }
  cases[1].modalities[2] = dir / "data/case1/case1_t1ce_extreme.nii";
  write_nifti<float>(cases[1].modalities[2], flair.dims, extreme);
  const SkippedCase skipped = the_skipped_case(cases, cache_options(dir, {8, 12, 10}));
  CHECK(skipped.case_id == "case1");
  CHECK(skipped.file == cases[1].modalities[2]);
  CHECK(skipped.reason.find("after z-scoring and conversion to float16") != std::string::npos);
}

TEST_CASE("preprocess: no case, or none left, is one clear error") {
  TempDir dir;
  auto cases = write_cases(dir, 1);
  auto options = cache_options(dir, {8, 12, 10});
  options.on_bad_case = BadCasePolicy::skip;
  CHECK_THROWS_WITH_AS(preprocess_cohort({}, options), "preprocess: no case given", FormatError);
  fs::remove(cases[0].modalities[3]);
  CHECK_THROWS_WITH_AS(preprocess_cohort(cases, options),
                       doctest::Contains("preprocess: no usable case: 1 found, all left out (first: case case0: "),
                       FormatError);
}

TEST_CASE("preprocess: bad cases are skipped with their reason or stop the run") {
  TempDir dir;
  auto cases = write_cases(dir, 4);
  std::vector<float> values(20 * 18 * 16, 5.0f);
  values[17] = std::numeric_limits<float>::infinity();
  cases[2].modalities[1] = dir / "data/case2/case2_t1_float.nii.gz";
  write_nifti<float>(cases[2].modalities[1], {20, 18, 16}, values);
  auto options = cache_options(dir, {8, 12, 10});
  const SkippedCase skipped = the_skipped_case(cases, options);
  CHECK(skipped.case_id == "case2");
  CHECK(skipped.message().find("non-finite values") != std::string::npos);
  try {
    preprocess_cohort(cases, options);
    FAIL("expected a CaseError");
  } catch (const CaseError& e) {
    CHECK(e.detail().case_id == "case2");
  }
}

TEST_CASE("preprocess: grid parsing") {
  CHECK(parse_grid("128,96,64") == GridShape{128, 96, 64});
  CHECK_THROWS_AS(parse_grid("128,96"), Error);
  CHECK_THROWS_AS(parse_grid("128,0,5"), Error);
  CHECK_THROWS_AS(parse_grid("1,2,3,4"), Error);
  CHECK_THROWS_AS(parse_grid("a,b,c"), Error);
}

}  // namespace dsmil::data::test
