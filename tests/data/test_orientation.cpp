// Orientation: every axis order and flip of small random volumes reaches the canonical LPS order and comes back;
// one case stored in several axis orders reads and preprocesses to the same arrays; oblique files are read in
// their nearest order with a warning or refused beyond kMaxObliqueDegrees; modalities on different grids are
// refused naming both files.
#include <doctest/doctest.h>

#include <nifti2_io.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numbers>

#include "data/orientation.h"
#include "data/preprocess.h"
#include "test_helpers.h"

namespace dsmil::data::test {

namespace {

constexpr std::array<int64_t, 3> kDims{20, 18, 16};

// A random nonzero volume in LPS order with voxel size and origin of its own.
Image3D random_lps_image(std::array<int64_t, 3> dims, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> value(1.0f, 100.0f);
  std::uniform_real_distribution<double> size(0.7, 1.6), shift(-30.0, 30.0);
  Image3D image;
  image.dims = dims;
  image.spacing = {size(rng), size(rng), size(rng)};
  image.voxel_to_world = standard_affine(dims, image.spacing);
  for (int r = 0; r < 3; ++r) image.voxel_to_world[r][3] += shift(rng);
  image.values.resize(dims[0] * dims[1] * dims[2]);
  for (float& v : image.values) v = value(rng);
  return image;
}

// The 48 axis orders: 6 permutations of L/R, P/A, S/I, each letter either way.
std::vector<std::string> all_axis_orders() {
  std::vector<std::string> orders;
  std::string axes = "LPS";
  do {
    for (int flips = 0; flips < 8; ++flips) {
      std::string order = axes;
      for (int s = 0; s < 3; ++s) {
        if (flips >> s & 1) order[s] = "RAI"[std::string_view("LPS").find(axes[s])];
      }
      orders.push_back(order);
    }
  } while (std::next_permutation(axes.begin(), axes.end()));
  return orders;
}

// `affine` turned by `degrees` about the world z axis (its voxel axes then lie off the world axes).
Affine rotated_about_z(const Affine& affine, double degrees) {
  const double t = degrees * std::numbers::pi / 180.0;
  const double rotation[3][3] = {{std::cos(t), -std::sin(t), 0}, {std::sin(t), std::cos(t), 0}, {0, 0, 1}};
  Affine out = affine;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) {
      out[r][c] = 0;
      for (int k = 0; k < 3; ++k) out[r][c] += rotation[r][k] * affine[k][c];
    }
  return out;
}

void check_same_arrays(const CaseImages& got, const CaseImages& want) {
  for (int m = 0; m < kModalities; ++m) {
    CHECK(got.modalities[m].dims == want.modalities[m].dims);
    CHECK(got.modalities[m].values == want.modalities[m].values);
  }
  REQUIRE(got.seg.has_value() == want.seg.has_value());
  if (got.seg) CHECK(got.seg->values == want.seg->values);
}

}  // namespace

TEST_CASE("orientation: random volumes in each of the 48 axis orders reach LPS exactly and go back to their order") {
  std::mt19937_64 rng(41);
  for (const std::string& order : all_axis_orders()) {
    CAPTURE(order);
    const Image3D lps = random_lps_image({5, 4, 3}, rng);
    const Image3D stored = stored_as(lps, order);
    CHECK(axis_letters(stored.voxel_to_world) == order);
    const AxisReorder reorder = canonical_reorder(stored);
    CHECK(reorder.stored_axes() == order);
    CHECK(reorder.is_identity() == (order == "LPS"));
    CHECK(reorder.oblique_degrees < 1e-6);
    const Image3D canonical = reorder_to_canonical(stored, reorder);
    CHECK(canonical.dims == lps.dims);
    CHECK(canonical.values == lps.values);
    for (int a = 0; a < 3; ++a) CHECK(canonical.spacing[a] == doctest::Approx(lps.spacing[a]));
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 4; ++c) CHECK(canonical.voxel_to_world[r][c] == doctest::Approx(lps.voxel_to_world[r][c]));
    CHECK(reorder_to_stored(canonical.values, stored.dims, reorder) == stored.values);
  }
}

TEST_CASE("orientation: an oblique map keeps its nearest axis order and reports its angle, a singular one is refused") {
  std::mt19937_64 rng(42);
  const Image3D lps = random_lps_image({6, 5, 4}, rng);
  for (const std::string order : {"LPS", "SRA", "ILP"}) {
    CAPTURE(order);
    Image3D stored = stored_as(lps, order);
    stored.voxel_to_world = rotated_about_z(stored.voxel_to_world, 12.0);
    const AxisReorder reorder = canonical_reorder(stored);
    CHECK(reorder.stored_axes() == order);
    CHECK(reorder.oblique_degrees == doctest::Approx(12.0).epsilon(1e-9));
    CHECK(reorder_to_canonical(stored, reorder).values == lps.values);
  }
  Image3D without_orientation = stored_as(lps, "RAS");
  without_orientation.oriented = false;
  CHECK(canonical_reorder(without_orientation).is_identity());
  Image3D singular = lps;
  for (int r = 0; r < 3; ++r) singular.voxel_to_world[r][1] = 0.0;
  CHECK(axis_letters(singular.voxel_to_world).empty());
  CHECK_THROWS_AS(canonical_reorder(singular), FormatError);
  CHECK_THROWS_AS(reorder_to_stored(lps.values, {6, 5, 5}, AxisReorder{}), ShapeError);
}

TEST_CASE("orientation: one case stored as LPS, SRA and RAS reads and preprocesses to the same arrays") {
  TempDir dir;
  const CaseFiles lps = write_case_folder(dir / "lps", "x", kLabelHGG, kDims, 7);
  const CaseImages want = read_case_images(lps);
  CHECK(want.warnings.empty());
  const CaseVolume want_volume = preprocess_images(lps, want, {{8, 10, 12}});
  for (const std::string order : {"SRA", "RAS", "PIL"}) {
    CAPTURE(order);
    const CaseFiles files = write_case_stored_as(lps, dir / order, order);
    REQUIRE(axis_letters(read_nifti(files.modalities[0]).voxel_to_world) == order);  // really stored so on disk
    const CaseImages got = read_case_images(files);
    CHECK(got.warnings.empty());
    check_same_arrays(got, want);
    const CaseVolume volume = preprocess_images(files, got, {{8, 10, 12}});
    CHECK(std::vector<uint16_t>(volume.image.begin(), volume.image.end()) ==
          std::vector<uint16_t>(want_volume.image.begin(), want_volume.image.end()));
    CHECK(std::vector<uint8_t>(volume.seg.begin(), volume.seg.end()) ==
          std::vector<uint8_t>(want_volume.seg.begin(), want_volume.seg.end()));
    CHECK(volume.source_box.begin == want_volume.source_box.begin);
    CHECK(volume.source_box.end == want_volume.source_box.end);
  }
  SUBCASE("modalities stored in different axis orders of one grid read as one case") {
    CaseFiles mixed = lps;
    mixed.modalities[1] = write_case_stored_as(lps, dir / "SRA", "SRA").modalities[1];
    mixed.modalities[3] = write_case_stored_as(lps, dir / "RAS", "RAS").modalities[3];
    check_same_arrays(read_case_images(mixed), want);
  }
}

TEST_CASE("orientation: an oblique case is read in its nearest axis order with one warning, beyond 30° refused") {
  TempDir dir;
  const CaseFiles lps = write_case_folder(dir / "lps", "x", kLabelHGG, kDims, 8);
  const CaseImages aligned = read_case_images(lps);
  auto write_tilted = [&](const std::string& name, double degrees) {
    CaseFiles files = lps;
    fs::create_directories(dir / name);
    auto tilt = [&](const fs::path& from) {
      Image3D image = read_nifti(from);
      image.voxel_to_world = rotated_about_z(image.voxel_to_world, degrees);
      const fs::path to = dir / name / from.filename();
      write_image(to, image);
      return to;
    };
    for (auto& path : files.modalities) path = tilt(path);
    files.seg = tilt(files.seg);
    return files;
  };
  const CaseFiles tilted = write_tilted("tilted", 12.0);
  const CaseImages images = read_case_images(tilted);
  REQUIRE(images.warnings.size() == 1);
  CHECK(contains(images.warnings[0], "case x: " + tilted.modalities[0].string() + ": oblique voxel axes, 12.0°"));
  CHECK(contains(images.warnings[0], "read in their nearest axis order (LPS, brought to LPS) without resampling"));
  check_same_arrays(images, aligned);

  const CaseFiles tilted_far = write_tilted("tilted_far", 40.0);
  CHECK(case_error_of(tilted_far) == "case x: " + tilted_far.modalities[0].string() +
                                         ": oblique voxel axes: 40.0° off the world axes (nearest axis order LPS), "
                                         "beyond the 30° up to which an oblique image is read in its nearest axis "
                                         "order; resample it to an axis-aligned grid first");
  // the warning reaches the cohort's warning stream once, when the case is read from its files
  std::vector<std::string> warned;
  PreprocessOptions options;
  options.cache_dir = dir / "cache";
  options.params.grid = {8, 10, 12};
  options.warn = [&warned](std::string_view line) { warned.emplace_back(line); };
  const std::vector<CaseFiles> cohort{tilted};
  preprocess_cohort(cohort, options);
  preprocess_cohort(cohort, options);
  CHECK(warned == std::vector<std::string>{"warning: " + images.warnings[0]});
}

TEST_CASE("orientation: modalities whose grids disagree once in LPS are refused naming both files") {
  TempDir dir;
  std::mt19937_64 rng(9);
  const CaseFiles lps = write_case_folder(dir / "lps", "x", kLabelHGG, kDims, 10);
  SUBCASE("same data, another orientation claimed") {
    CaseFiles files = lps;
    Image3D t1 = read_nifti(lps.modalities[1]);
    t1.voxel_to_world = stored_as(t1, "SRA").voxel_to_world;  // SRA's map over LPS-ordered voxels
    files.modalities[1] = dir / "t1_sra_header.nii.gz";
    write_image(files.modalities[1], t1);
    const std::string message = case_error_of(files);
    CHECK(contains(message, "case x: " + files.modalities[1].string() + ": mismatched shape"));
    CHECK(contains(message, "but flair " + lps.modalities[0].string() + " is 20x18x16"));
  }
  SUBCASE("same axis order and shape, other origin") {
    CaseFiles files = lps;
    Image3D t2 = stored_as(read_nifti(lps.modalities[3]), "RAS");
    t2.voxel_to_world[0][3] += 5.0;
    files.modalities[3] = dir / "t2_shifted.nii.gz";
    write_image(files.modalities[3], t2);
    const std::string message = case_error_of(files);
    CHECK(contains(message, "case x: " + files.modalities[3].string() +
                                ": mismatched orientation/origin: stored as "
                                "RAS, in LPS order its affine row 0"));
    CHECK(contains(message, "but flair " + lps.modalities[0].string() + " (stored as LPS) has"));
  }
  SUBCASE("one file without orientation") {
    CaseFiles files = lps;
    files.modalities[2] = dir / "t1ce_no_xform.nii";
    write_nifti<int16_t>(files.modalities[2], kDims, random_brain(kDims, rng));
    auto bytes = read_bytes(files.modalities[2]);
    const int16_t unset = 0;
    std::memcpy(bytes.data() + offsetof(nifti_1_header, qform_code), &unset, 2);
    std::memcpy(bytes.data() + offsetof(nifti_1_header, sform_code), &unset, 2);
    write_bytes(files.modalities[2], bytes);
    CHECK(contains(case_error_of(files), files.modalities[2].string() +
                                             ": mismatched orientation: has no sform/qform "
                                             "but flair " +
                                             lps.modalities[0].string() + " has one"));
  }
}

}  // namespace dsmil::data::test
