// Shared helpers of the data tests: a temporary folder, random volumes, small BraTS case folders, a case
// stored in another axis order.
#pragma once

#include <doctest/doctest.h>
#include <stdlib.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "data/cases.h"
#include "data/nifti_io.h"

namespace dsmil::data::test {

namespace fs = std::filesystem;

// A fresh folder under the system temp dir, removed with its content at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "dsmil-data-test-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

inline std::vector<char> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const fs::path& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// What read_case_images says of a bad case (its CaseError naming that case), or "(no error)".
inline std::string case_error_of(const CaseFiles& files) {
  try {
    read_case_images(files);
  } catch (const CaseError& e) {
    CHECK(e.detail().case_id == files.case_id);
    return e.what();
  }
  return "(no error)";
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A brain-like int16 volume: random positive values inside an ellipsoid, 0 outside.
inline std::vector<int16_t> random_brain(std::array<int64_t, 3> dims, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> value(50, 900);
  std::vector<int16_t> v(dims[0] * dims[1] * dims[2], 0);
  for (int64_t z = 0, i = 0; z < dims[2]; ++z)
    for (int64_t y = 0; y < dims[1]; ++y)
      for (int64_t x = 0; x < dims[0]; ++x, ++i) {
        const double a = (x - dims[0] / 2.0) / (0.4 * dims[0]), b = (y - dims[1] / 2.0) / (0.4 * dims[1]),
                     c = (z - dims[2] / 2.0) / (0.4 * dims[2]);
        if (a * a + b * b + c * c < 1.0) v[i] = static_cast<int16_t>(value(rng));
      }
  return v;
}

// Writes CASE_{flair,t1,t1ce,t2,seg}.nii.gz for one case into `folder`; returns its CaseFiles.
inline CaseFiles write_case_folder(const fs::path& folder, const std::string& id, int label,
                                   std::array<int64_t, 3> dims, uint64_t seed) {
  fs::create_directories(folder);
  std::mt19937_64 rng(seed);
  CaseFiles files;
  files.case_id = id;
  files.patient_id = id;
  files.label = label;
  const auto brain = random_brain(dims, rng);
  for (int m = 0; m < kModalities; ++m) {
    std::vector<int16_t> v = brain;
    for (auto& x : v) x = static_cast<int16_t>(x == 0 ? 0 : x + 37 * m + static_cast<int>(rng() % 50));
    files.modalities[m] = folder / (id + "_" + std::string(kModalityNames[m]) + ".nii.gz");
    write_nifti<int16_t>(files.modalities[m], dims, v);
  }
  std::vector<uint8_t> seg(brain.size(), 0);
  for (size_t i = 0; i < seg.size(); ++i) {
    if (brain[i] > 800) seg[i] = static_cast<uint8_t>(std::array{1, 2, 4}[rng() % 3]);
  }
  files.seg = folder / (id + "_seg.nii.gz");
  write_nifti<uint8_t>(files.seg, dims, seg);
  return files;
}

// `lps`, an image in the canonical LPS order, stored in the axis order named by `letters` (e.g. "SRA": stored x
// runs toward Superior, y toward Right, z toward Anterior): each voxel keeps its value and world position. Written
// from the letters alone, independently of data/orientation.h.
inline Image3D stored_as(const Image3D& lps, std::string_view letters) {
  std::array<int, 3> axis{};       // the LPS axis each stored axis runs along
  std::array<bool, 3> reversed{};  // ... against its LPS direction
  for (int s = 0; s < 3; ++s) {
    const auto at = std::string_view("LPSRAI").find(letters[s]);
    axis[s] = static_cast<int>(at % 3);
    reversed[s] = at >= 3;
  }
  Image3D stored;
  stored.oriented = lps.oriented;
  for (int s = 0; s < 3; ++s) {
    stored.dims[s] = lps.dims[axis[s]];
    stored.spacing[s] = lps.spacing[axis[s]];
  }
  stored.voxel_to_world = lps.voxel_to_world;
  for (int r = 0; r < 3; ++r) {
    for (int s = 0; s < 3; ++s) stored.voxel_to_world[r][s] = (reversed[s] ? -1 : 1) * lps.voxel_to_world[r][axis[s]];
    for (int s = 0; s < 3; ++s) {
      if (reversed[s]) stored.voxel_to_world[r][3] += lps.voxel_to_world[r][axis[s]] * double(lps.dims[axis[s]] - 1);
    }
  }
  stored.values.resize(lps.values.size());
  for (int64_t k = 0, i = 0; k < stored.dims[2]; ++k)
    for (int64_t j = 0; j < stored.dims[1]; ++j)
      for (int64_t l = 0; l < stored.dims[0]; ++l, ++i) {
        const int64_t t[3] = {l, j, k};
        int64_t c[3] = {};
        for (int s = 0; s < 3; ++s) c[axis[s]] = reversed[s] ? lps.dims[axis[s]] - 1 - t[s] : t[s];
        stored.values[i] = lps.at(c[0], c[1], c[2]);
      }
  return stored;
}

// Writes `image` as float32 with its own voxel-to-world map.
inline void write_image(const fs::path& path, const Image3D& image) {
  NiftiWriteOptions options;
  options.spacing = image.spacing;
  options.voxel_to_world = image.voxel_to_world;
  write_nifti<float>(path, image.dims, image.values, options);
}

// The files of a case (stored as LPS) rewritten into `folder` in the axis order `letters`; returns their CaseFiles.
inline CaseFiles write_case_stored_as(const CaseFiles& lps, const fs::path& folder, std::string_view letters) {
  fs::create_directories(folder);
  CaseFiles files = lps;
  auto rewrite = [&](const fs::path& from) {
    const fs::path to = folder / from.filename();
    write_image(to, stored_as(read_nifti(from), letters));
    return to;
  };
  for (int m = 0; m < kModalities; ++m) files.modalities[m] = rewrite(lps.modalities[m]);
  if (!lps.seg.empty()) files.seg = rewrite(lps.seg);
  return files;
}

}  // namespace dsmil::data::test
