// Shared helpers of the data tests: a temporary folder, random volumes, small BraTS case folders.
#pragma once

#include <stdlib.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
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

}  // namespace dsmil::data::test
