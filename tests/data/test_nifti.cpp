// NIfTI reading/writing: round trips in five datatypes and both file forms (scaling applied),
// other byte order, and every refusal (NaN, truncated, wrong dims, crafted headers, not NIfTI).
#include <doctest/doctest.h>

#include <nifti2_io.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

#include "data/nifti_io.h"
#include "test_helpers.h"

// The largest single allocation while tracking is on: proves refusals happen before allocating.
// (GCC flags malloc/free inside a replaced operator new/delete as mismatched; here it is the point.)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<bool> g_track_allocations{false};
static std::atomic<size_t> g_largest_allocation{0};

void* operator new(size_t size) {
  if (g_track_allocations) {
    size_t seen = g_largest_allocation;
    while (size > seen && !g_largest_allocation.compare_exchange_weak(seen, size)) {
    }
  }
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace dsmil::data::test {

namespace {

template <class T>
std::vector<T> random_values(size_t n, std::mt19937_64& rng) {
  std::vector<T> v(n);
  for (auto& x : v) {
    if constexpr (std::is_floating_point_v<T>) {
      x = static_cast<T>(std::uniform_real_distribution<double>(-1000, 1000)(rng));
    } else {
      x = static_cast<T>(rng() % 250);  // fits every integer type tested, including uint8
    }
  }
  return v;
}

std::string error_of(const fs::path& path) {
  try {
    read_nifti(path);
  } catch (const NiftiError& e) {
    return e.what();
  }
  return "(no error)";
}

// Patches bytes of an uncompressed NIfTI-1 header in place.
template <class T>
void patch(const fs::path& path, size_t offset, T value) {
  auto bytes = read_bytes(path);
  std::memcpy(bytes.data() + offset, &value, sizeof value);
  write_bytes(path, bytes);
}

constexpr size_t kDimOffset = 40, kDatatypeOffset = 70, kBitpixOffset = 72;

template <class T>
void check_round_trip(const TempDir& dir, const std::string& ext, double slope, double inter) {
  std::mt19937_64 rng(std::hash<std::string>{}(ext) + sizeof(T));
  const std::array<int64_t, 3> dims{7, 5, 6};
  const auto values = random_values<T>(7 * 5 * 6, rng);
  NiftiWriteOptions options;
  options.spacing = {1.0, 1.5, 2.0};
  options.scl_slope = slope;
  options.scl_inter = inter;
  const fs::path path = dir / ("image" + std::to_string(sizeof(T)) + ext);
  write_nifti<T>(path, dims, values, options);
  const Image3D image = read_nifti(path);
  CHECK(image.dims == dims);
  CHECK(image.spacing == std::array<double, 3>{1.0, 1.5, 2.0});
  const Affine expected = standard_affine(dims, options.spacing);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) CHECK(image.voxel_to_world[r][c] == doctest::Approx(expected[r][c]).epsilon(1e-6));
  REQUIRE(image.values.size() == values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const double want = slope * static_cast<double>(values[i]) + inter;
    CHECK(image.values[i] == doctest::Approx(want).epsilon(1e-6));
  }
}

}  // namespace

TEST_CASE("nifti: round trip of uint8/int16/int32/float32/float64 as .nii and .nii.gz with scaling") {
  TempDir dir;
  for (const std::string ext : {".nii", ".nii.gz"}) {
    CAPTURE(ext);
    check_round_trip<uint8_t>(dir, ext, 0.5, 3.0);
    check_round_trip<int16_t>(dir, ext, 2.0, -7.0);
    check_round_trip<int32_t>(dir, ext, 1.0, 0.0);
    check_round_trip<float>(dir, ext, 1.0, 0.0);
    check_round_trip<double>(dir, ext, 0.25, 1.0);
  }
}

TEST_CASE("nifti: a custom affine is written and read back and pixdim follows it") {
  TempDir dir;
  const Affine affine{{{0, -1.2, 0, 10}, {0.9, 0, 0, -20}, {0, 0, 3.0, 5}, {0, 0, 0, 1}}};
  NiftiWriteOptions options;
  options.voxel_to_world = affine;
  const std::vector<float> values(4 * 3 * 2, 1.5f);
  write_nifti<float>(dir / "rotated.nii", {4, 3, 2}, values, options);
  const Image3D image = read_nifti(dir / "rotated.nii");
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) CHECK(image.voxel_to_world[r][c] == doctest::Approx(affine[r][c]).epsilon(1e-5));
  CHECK(image.spacing[0] == doctest::Approx(0.9));
  CHECK(image.spacing[1] == doctest::Approx(1.2));
  CHECK(image.spacing[2] == doctest::Approx(3.0));
}

TEST_CASE("nifti: big-endian files are read (header and data swapped)") {
  TempDir dir;
  std::mt19937_64 rng(11);
  const auto values = random_values<int16_t>(6 * 4 * 3, rng);
  write_nifti<int16_t>(dir / "native.nii", {6, 4, 3}, values);
  auto bytes = read_bytes(dir / "native.nii");
  nifti_swap_as_nifti1(reinterpret_cast<nifti_1_header*>(bytes.data()));
  nifti_swap_2bytes(static_cast<int64_t>(values.size()), bytes.data() + 352);
  write_bytes(dir / "swapped.nii", bytes);
  const Image3D image = read_nifti(dir / "swapped.nii");
  CHECK(image.dims == std::array<int64_t, 3>{6, 4, 3});
  for (size_t i = 0; i < values.size(); ++i) CHECK(image.values[i] == values[i]);
}

TEST_CASE("nifti: NaN and inf are found in the raw block (nifticlib would zero them)") {
  TempDir dir;
  std::mt19937_64 rng(12);
  for (const std::string ext : {".nii", ".nii.gz"}) {
    auto values = random_values<float>(5 * 4 * 3, rng);
    values[2 + 5 * (1 + 4 * 2)] = std::numeric_limits<float>::quiet_NaN();  // (x,y,z) = (2,1,2)
    values[7] = std::numeric_limits<float>::infinity();
    write_nifti<float>(dir / ("nan" + ext), {5, 4, 3}, values);
    const std::string message = error_of(dir / ("nan" + ext));
    CAPTURE(message);
    CHECK(message.find("non-finite values (NaN/inf) in 2 voxels") != std::string::npos);
    CHECK(message.find("first at (x,y,z) = (2,1,0)") != std::string::npos);  // index 7 comes first
  }
  std::vector<double> doubles(8, 1.0);
  doubles[5] = -std::numeric_limits<double>::infinity();
  write_nifti<double>(dir / "inf.nii", {2, 2, 2}, doubles);
  CHECK(error_of(dir / "inf.nii").find("non-finite") != std::string::npos);
}

TEST_CASE("nifti: values that become non-finite when scaled to float32 are refused") {
  TempDir dir;
  std::vector<int16_t> stored(5 * 4 * 3, 100);  // 100 x 1e36 = 1e38 still fits float32
  stored[3 + 5 * 2] = 1000;                     // (x,y,z) = (3,2,0)
  stored[40] = -1000;
  NiftiWriteOptions scaled;
  scaled.scl_slope = 1e36;
  for (const std::string ext : {".nii", ".nii.gz"}) {
    write_nifti<int16_t>(dir / ("slope" + ext), {5, 4, 3}, stored, scaled);
    const std::string message = error_of(dir / ("slope" + ext));
    CAPTURE(message);
    CHECK(message.find("non-finite values (NaN/inf) in 2 voxels after scaling to float32, first at (x,y,z) = "
                       "(3,2,0): stored value 1000 x scl_slope 1e+36 + scl_inter 0") != std::string::npos);
  }
  NiftiWriteOptions times_1e37;
  times_1e37.scl_slope = 1e37;
  write_nifti<double>(dir / "double.nii", {2, 2, 2}, std::vector<double>(8, 100.0), times_1e37);
  CHECK(error_of(dir / "double.nii").find("in 8 voxels after scaling to float32") != std::string::npos);
  std::vector<double> wide(8, 1.0);
  wide[6] = 1e39;  // finite as stored, beyond float32
  write_nifti<double>(dir / "wide.nii", {2, 2, 2}, wide);
  CHECK(error_of(dir / "wide.nii")
            .find("in 1 voxels after scaling to float32, first at (x,y,z) = (0,1,1): stored "
                  "value 1e+39 x scl_slope 1 + scl_inter 0") != std::string::npos);
}

TEST_CASE("nifti: truncated files are refused compressed or not") {
  TempDir dir;
  std::mt19937_64 rng(13);
  const auto values = random_values<int16_t>(16 * 16 * 16, rng);
  write_nifti<int16_t>(dir / "full.nii", {16, 16, 16}, values);
  write_nifti<int16_t>(dir / "full.nii.gz", {16, 16, 16}, values);
  auto plain = read_bytes(dir / "full.nii");
  plain.resize(plain.size() - 100);
  write_bytes(dir / "cut.nii", plain);
  auto packed = read_bytes(dir / "full.nii.gz");
  packed.resize(packed.size() / 2);
  write_bytes(dir / "cut.nii.gz", packed);
  CHECK(error_of(dir / "cut.nii")
            .find("truncated: header claims 8192 data bytes at offset 352, the file has 8444 bytes") !=
        std::string::npos);
  CHECK(error_of(dir / "cut.nii.gz").find("truncated") != std::string::npos);
  auto header_only = plain;
  header_only.resize(200);
  write_bytes(dir / "stub.nii", header_only);
  CHECK(error_of(dir / "stub.nii").find("not a NIfTI file") != std::string::npos);
  CHECK(error_of(dir / "missing.nii").find("cannot open") != std::string::npos);
}

TEST_CASE("nifti: 2-D and 4-D images are refused as wrong dimensionality") {
  TempDir dir;
  const std::vector<int16_t> values(4 * 4 * 2, 7);
  write_nifti<int16_t>(dir / "four_d.nii", {4, 4, 2}, values);
  patch<int16_t>(dir / "four_d.nii", kDimOffset, 4);      // dim[0] = 4
  patch<int16_t>(dir / "four_d.nii", kDimOffset + 6, 1);  // dim[3] = 1
  patch<int16_t>(dir / "four_d.nii", kDimOffset + 8, 2);  // dim[4] = 2: two volumes
  CHECK(error_of(dir / "four_d.nii").find("wrong dimensionality: 4-D image of size 4x4x1x2") != std::string::npos);
  write_nifti<int16_t>(dir / "two_d.nii", {4, 4, 2}, values);
  patch<int16_t>(dir / "two_d.nii", kDimOffset, 2);
  CHECK(error_of(dir / "two_d.nii").find("wrong dimensionality: 2-D image") != std::string::npos);
  // a 4-D header with a single volume is a 3-D image
  write_nifti<int16_t>(dir / "single.nii", {4, 4, 2}, values);
  patch<int16_t>(dir / "single.nii", kDimOffset, 4);
  patch<int16_t>(dir / "single.nii", kDimOffset + 8, 1);
  CHECK(read_nifti(dir / "single.nii").dims == std::array<int64_t, 3>{4, 4, 2});
}

TEST_CASE("nifti: crafted headers are refused before anything large is allocated") {
  TempDir dir;
  const std::vector<int16_t> values(4 * 4 * 4, 7);
  auto refused_small = [&](const fs::path& path, const std::string& expected) {
    g_largest_allocation = 0;
    g_track_allocations = true;
    const std::string message = error_of(path);
    g_track_allocations = false;
    CAPTURE(message);
    CHECK(message.find(expected) != std::string::npos);
    CHECK(g_largest_allocation < 64 * 1024);
  };
  write_nifti<int16_t>(dir / "huge.nii", {4, 4, 4}, values);
  for (int d = 1; d <= 3; ++d) patch<int16_t>(dir / "huge.nii", kDimOffset + 2 * d, 32767);
  refused_small(dir / "huge.nii", "beyond the 2147483648 byte limit");

  // 377 bytes of gzip cannot hold a 1 GB voxel block
  write_nifti<int16_t>(dir / "plain.nii", {4, 4, 4}, values);
  patch<int16_t>(dir / "plain.nii", kDimOffset + 2, 1024);
  patch<int16_t>(dir / "plain.nii", kDimOffset + 4, 1024);
  patch<int16_t>(dir / "plain.nii", kDimOffset + 6, 512);
  patch<int16_t>(dir / "plain.nii", kDatatypeOffset, DT_INT16);
  patch<int16_t>(dir / "plain.nii", kBitpixOffset, 16);
  const auto crafted = read_bytes(dir / "plain.nii");
  {  // recompress the crafted file
    const fs::path gz = dir / "crafted.nii.gz";
    gzFile out = gzopen(gz.c_str(), "wb9");
    gzwrite(out, crafted.data(), static_cast<unsigned>(crafted.size()));
    gzclose(out);
  }
  refused_small(dir / "crafted.nii.gz", "impossible for a");
  refused_small(dir / "plain.nii", "truncated: header claims 1073741824 data bytes");

  write_nifti<int16_t>(dir / "dim0.nii", {4, 4, 4}, values);
  patch<int16_t>(dir / "dim0.nii", kDimOffset, 9);
  refused_small(dir / "dim0.nii", "damaged header: dim[0] = 9 (must be 1..7)");
  write_nifti<int16_t>(dir / "negative.nii", {4, 4, 4}, values);
  patch<int16_t>(dir / "negative.nii", kDimOffset + 4, -3);
  refused_small(dir / "negative.nii", "damaged header: dim[2] = -3");
  write_nifti<int16_t>(dir / "rgb.nii", {4, 4, 4}, values);
  patch<int16_t>(dir / "rgb.nii", kDatatypeOffset, DT_RGB24);
  refused_small(dir / "rgb.nii", "unsupported datatype code 128");

  std::vector<char> noise(600);
  std::mt19937_64 rng(3);
  for (auto& c : noise) c = static_cast<char>(rng());
  write_bytes(dir / "noise.nii", noise);
  refused_small(dir / "noise.nii", "not a NIfTI");
}

TEST_CASE("nifti: a non-finite sform is refused (NaN would pass every geometry comparison)") {
  TempDir dir;
  write_nifti<int16_t>(dir / "sform.nii", {2, 2, 2}, std::vector<int16_t>(8, 1));
  patch<float>(dir / "sform.nii", offsetof(nifti_1_header, srow_y) + 4, std::numeric_limits<float>::quiet_NaN());
  CHECK(error_of(dir / "sform.nii") ==
        (dir / "sform.nii").string() + ": damaged header: non-finite sform (voxel-to-world row 1 is 0, nan, 0, 0.5)");
}

TEST_CASE("nifti: an sform and a qform that order the voxel axes differently, or a singular sform, are refused") {
  TempDir dir;
  std::mt19937_64 rng(12);
  std::vector<int16_t> values(3 * 4 * 5);
  for (auto& v : values) v = static_cast<int16_t>(1 + rng() % 500);
  write_nifti<int16_t>(dir / "both.nii", {3, 4, 5}, values);  // qform = sform = LPS
  CHECK(read_nifti(dir / "both.nii").values.size() == values.size());
  patch<float>(dir / "both.nii", offsetof(nifti_1_header, srow_x), 1.0f);  // sform's x axis now toward Right
  CHECK(error_of(dir / "both.nii") == (dir / "both.nii").string() +
                                          ": inconsistent header: the sform orders the voxel axes RPS but the qform "
                                          "LPS; tools disagree on which to use, so rewrite the file with one "
                                          "orientation");
  write_nifti<int16_t>(dir / "singular.nii", {3, 4, 5}, values);
  for (size_t row :
       {offsetof(nifti_1_header, srow_x), offsetof(nifti_1_header, srow_y), offsetof(nifti_1_header, srow_z)}) {
    patch<float>(dir / "singular.nii", row + 2 * sizeof(float), 0.0f);  // no z column
  }
  CHECK(error_of(dir / "singular.nii") == (dir / "singular.nii").string() +
                                              ": damaged header: singular sform (the voxel axes have no world "
                                              "direction)");
}

TEST_CASE("nifti: two-file and analyze headers are named as unsupported") {
  TempDir dir;
  const std::vector<int16_t> values(8, 1);
  write_nifti<int16_t>(dir / "pair.nii", {2, 2, 2}, values);
  auto bytes = read_bytes(dir / "pair.nii");
  std::memcpy(bytes.data() + 344, "ni1", 4);
  write_bytes(dir / "pair.nii", bytes);
  CHECK(error_of(dir / "pair.nii").find("two-file NIfTI") != std::string::npos);
}

}  // namespace dsmil::data::test
