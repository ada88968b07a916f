// Voxel orientation: which way each stored voxel axis runs in the world (from the sform/qform, through
// nifticlib's nifti_dmat44_to_orientation), and the permutation and reversal of axes that bring an image to
// the one canonical voxel order every later step assumes. The canonical order is LPS, the order BraTS and
// `dsmil cohort` store: x (fastest) toward the patient's Left, y toward Posterior, z (slowest, axial) toward
// Superior. Axes are only permuted and reversed, never resampled: an image stored in LPS is used exactly as
// stored (its cache entry and p(HGG) are those of earlier versions), and a map in canonical order goes back
// onto the file's own grid voxel for voxel.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "data/nifti_io.h"

namespace dsmil::data {

inline constexpr std::string_view kCanonicalAxes = "LPS";

// Voxel axes within this angle of the world axes count as aligned and are read without a word: at 0.1° the
// farthest voxel of a 256 mm field of view lies 0.22 mm from where the axis order puts it, under a voxel.
inline constexpr double kAlignedDegrees = 0.1;

// Voxel axes up to this angle off the world axes (an oblique series) are read in their nearest axis order with
// a warning: nothing is resampled, so the model sees the head tilted by that angle, as in clinical axial series
// angled along the AC-PC line (commonly 10-25°). Beyond it the nearest order comes close to a tie (at 45° two
// orders are equally near) and the slabs would cut the brain along no plane the model was trained on; such an
// image is refused, to be resampled to an axis-aligned grid first.
inline constexpr double kMaxObliqueDegrees = 30.0;

// How a stored image's voxel axes map onto the canonical ones.
struct AxisReorder {
  std::array<int, 3> stored_axis{0, 1, 2};  // canonical axis a is the stored axis stored_axis[a] ...
  std::array<bool, 3> reversed{};           // ... run from its last index to its first when reversed[a]
  double oblique_degrees = 0.0;             // the largest angle between a stored voxel axis and its world axis

  bool is_identity() const;
  std::array<int64_t, 3> canonical_dims(std::array<int64_t, 3> stored_dims) const;
  // The stored axes by the world direction each runs toward, e.g. "SRA" for z, then reversed x, then reversed y.
  std::string stored_axes() const;
};

// The world directions the voxel axes of `voxel_to_world` run toward, e.g. "LPS" (nifticlib's nearest axis order
// for an oblique map); empty when the map is singular.
std::string axis_letters(const Affine& voxel_to_world);

// The reorder that brings `stored` to the canonical order: the identity for an image without orientation
// (neither sform nor qform: it is used as stored). Throws FormatError for a singular voxel-to-world map.
AxisReorder canonical_reorder(const Image3D& stored);

// `stored` in canonical order: values, dims and voxel size permuted, voxel_to_world mapping each voxel to the
// same world position as before.
Image3D reorder_to_canonical(const Image3D& stored, const AxisReorder& reorder);

// A volume in canonical order put back into the stored order of an image of `stored_dims` (the inverse of
// reorder_to_canonical's values). Throws ShapeError when `canonical` does not hold that many values.
std::vector<float> reorder_to_stored(std::span<const float> canonical, std::array<int64_t, 3> stored_dims,
                                     const AxisReorder& reorder);

}  // namespace dsmil::data
