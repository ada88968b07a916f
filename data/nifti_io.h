// NIfTI reading and writing through nifticlib: 3-D scalar images of any stored datatype in,
// NIfTI-1 single files (.nii or .nii.gz) of uint8/int16/int32/float32/float64 out.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/error.h"

namespace dsmil::data {

using Affine = std::array<std::array<double, 4>, 4>;  // voxel (i,j,k,1) -> world (x,y,z,1), mm

// A 3-D scalar image: x fastest, then y, then z. read_nifti gives the file's voxel order; data/orientation.h
// brings it to the canonical one (z axial), which read_case_images does for every case.
struct Image3D {
  std::array<int64_t, 3> dims{};    // nx, ny, nz
  std::array<double, 3> spacing{};  // voxel size in mm (|pixdim[1..3]|)
  Affine voxel_to_world{};          // sform if set, else qform, else diag(spacing)
  bool oriented = true;             // false: the header sets neither sform nor qform (orientation unknown)
  std::vector<float> values;        // nx*ny*nz values, scl_slope/scl_inter applied

  int64_t voxel_count() const { return dims[0] * dims[1] * dims[2]; }
  float at(int64_t x, int64_t y, int64_t z) const { return values[(z * dims[1] + y) * dims[0] + x]; }
};

// A file that is not a readable 3-D NIfTI image. what() = "<path>: <reason>"; reason() alone lets
// callers name the case and file their own way.
class NiftiError : public FormatError {
 public:
  NiftiError(std::filesystem::path path, std::string reason);
  const std::filesystem::path& path() const { return path_; }
  const std::string& reason() const { return reason_; }

 private:
  std::filesystem::path path_;
  std::string reason_;
};

// The largest voxel data block one image may claim; a header claiming more is refused before
// anything is allocated (nifticlib would allocate whatever a header claims).
inline constexpr int64_t kMaxImageBytes = int64_t{2} << 30;

// Reads a NIfTI-1 or NIfTI-2 single-file image (.nii / .nii.gz, either byte order, any scalar
// datatype). Refuses: crafted or damaged headers (bad dim[0], dims < 1, a data size beyond the
// file or kMaxImageBytes, a non-finite or singular voxel size or qform/sform, a qform and an sform that
// order the voxel axes differently), non-3-D images (4-D with more
// than one volume, 2-D), non-scalar types, truncated data, and non-finite values: NaN/inf as
// stored, or after scl_slope/scl_inter and the conversion to float32 (a finite int16 times
// scl_slope 1e36 is inf). Every refusal is a NiftiError.
Image3D read_nifti(const std::filesystem::path& path);

struct NiftiWriteOptions {
  std::array<double, 3> spacing{1.0, 1.0, 1.0};  // mm
  double scl_slope = 1.0;                        // readers map a stored value v to scl_slope * v + scl_inter
  double scl_inter = 0.0;
  int gzip_level = 6;  // for .nii.gz (1 = fastest); output has no timestamp: same data, same bytes
  // qform = sform written to the file; unset: standard_affine(dims, spacing). Set it to the
  // source's voxel_to_world to write a map aligned with an input image (rotation + scaling only).
  std::optional<Affine> voxel_to_world;
};

// The orientation files are written with by default (qform = sform, code "scanner anatomical"): LPS
// storage like BraTS (x and y axes flipped against RAS+), world origin at the volume's centre.
Affine standard_affine(std::array<int64_t, 3> dims, std::array<double, 3> spacing);

// Writes a NIfTI-1 single file; the extension (.nii or .nii.gz) picks compression. T is one of
// uint8_t, int16_t, int32_t, float, double. values.size() must equal nx*ny*nz.
template <class T>
void write_nifti(const std::filesystem::path& path, std::array<int64_t, 3> dims, std::span<const T> values,
                 const NiftiWriteOptions& options = {});

}  // namespace dsmil::data
