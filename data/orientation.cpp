// Orientation codes from nifticlib, and the axis permutation/reversal that brings a volume to LPS and back.
#include "data/orientation.h"

#include <nifti2_io.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <optional>

#include <fmt/format.h>

namespace dsmil::data {

namespace {

// The letter of the direction an index runs toward, by nifticlib orientation code (NIFTI_L2R = 1 runs from
// Left to Right, toward R; ... NIFTI_S2I = 6 toward I).
constexpr std::array<char, 7> kTowardLetter{'?', 'R', 'L', 'A', 'P', 'S', 'I'};
// The code of each canonical axis (x, y, z) when it runs the canonical way: R2L, A2P, I2S.
constexpr std::array<int, 3> kCanonicalCode{NIFTI_R2L, NIFTI_A2P, NIFTI_I2S};
constexpr std::array<char, 3> kReversedLetter{'R', 'A', 'I'};

// Whether the 3x3 part of `a` is singular, relative to its column lengths (a zero column is singular).
// nifticlib would replace a zero k column by i x j (its fix for 2-D images), hiding a damaged map.
bool singular(const Affine& a) {
  const double det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) -
                     a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
                     a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
  double lengths = 1.0;
  for (int c = 0; c < 3; ++c) lengths *= std::hypot(a[0][c], a[1][c], a[2][c]);
  return !(std::abs(det) > 1e-9 * lengths);
}

// nifticlib's orientation code of each voxel axis, or nothing for a singular map.
std::optional<std::array<int, 3>> orientation_codes(const Affine& a) {
  if (singular(a)) return std::nullopt;
  nifti_dmat44 m{};
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) m.m[r][c] = a[r][c];
  std::array<int, 3> codes{};
  nifti_dmat44_to_orientation(m, &codes[0], &codes[1], &codes[2]);
  auto known = [](int code) { return code >= NIFTI_L2R && code <= NIFTI_S2I; };
  if (!std::all_of(codes.begin(), codes.end(), known)) return std::nullopt;
  return codes;
}

// Visits every canonical voxel in canonical order (x fastest) with its canonical and its stored linear index.
template <class Visit>
void for_each_voxel_pair(std::array<int64_t, 3> stored_dims, const AxisReorder& reorder, Visit visit) {
  const std::array<int64_t, 3> stored_stride{1, stored_dims[0], stored_dims[0] * stored_dims[1]};
  std::array<int64_t, 3> step{};
  int64_t first = 0;
  for (int a = 0; a < 3; ++a) {
    const int s = reorder.stored_axis[a];
    step[a] = reorder.reversed[a] ? -stored_stride[s] : stored_stride[s];
    if (reorder.reversed[a]) first += (stored_dims[s] - 1) * stored_stride[s];
  }
  const auto dims = reorder.canonical_dims(stored_dims);
  int64_t canonical = 0;
  for (int64_t z = 0; z < dims[2]; ++z)
    for (int64_t y = 0; y < dims[1]; ++y)
      for (int64_t x = 0, stored = first + z * step[2] + y * step[1]; x < dims[0]; ++x, stored += step[0])
        visit(canonical++, stored);
}

}  // namespace

bool AxisReorder::is_identity() const {
  return stored_axis == std::array<int, 3>{0, 1, 2} && reversed == std::array<bool, 3>{};
}

std::array<int64_t, 3> AxisReorder::canonical_dims(std::array<int64_t, 3> stored_dims) const {
  return {stored_dims[stored_axis[0]], stored_dims[stored_axis[1]], stored_dims[stored_axis[2]]};
}

std::string AxisReorder::stored_axes() const {
  std::string letters(3, '?');
  for (int a = 0; a < 3; ++a) letters[stored_axis[a]] = reversed[a] ? kReversedLetter[a] : kCanonicalAxes[a];
  return letters;
}

std::string axis_letters(const Affine& voxel_to_world) {
  const auto codes = orientation_codes(voxel_to_world);
  if (!codes) return {};
  return {kTowardLetter[(*codes)[0]], kTowardLetter[(*codes)[1]], kTowardLetter[(*codes)[2]]};
}

AxisReorder canonical_reorder(const Image3D& stored) {
  AxisReorder reorder;
  if (!stored.oriented) return reorder;
  const Affine& m = stored.voxel_to_world;
  const auto codes = orientation_codes(m);
  if (!codes) throw FormatError("voxel-to-world map is singular: the voxel axes have no world direction");
  for (int s = 0; s < 3; ++s) {
    const int code = (*codes)[s];
    const int a = (code - 1) / 2;  // codes 1,2 name the x axis, 3,4 y, 5,6 z
    reorder.stored_axis[a] = s;
    reorder.reversed[a] = code != kCanonicalCode[a];
    const double length = std::hypot(m[0][s], m[1][s], m[2][s]);
    const double cosine = std::min(1.0, std::abs(m[a][s]) / length);
    reorder.oblique_degrees = std::max(reorder.oblique_degrees, std::acos(cosine) * 180.0 / std::numbers::pi);
  }
  return reorder;
}

Image3D reorder_to_canonical(const Image3D& stored, const AxisReorder& reorder) {
  Image3D canonical;
  canonical.dims = reorder.canonical_dims(stored.dims);
  canonical.oriented = stored.oriented;
  canonical.values.resize(stored.values.size());
  for_each_voxel_pair(stored.dims, reorder, [&](int64_t c, int64_t s) { canonical.values[c] = stored.values[s]; });
  // canonical voxel index c is stored index t = Q c + q; its world position stays stored.voxel_to_world * t
  const Affine& m = stored.voxel_to_world;
  canonical.voxel_to_world = m;
  for (int a = 0; a < 3; ++a) {
    const int s = reorder.stored_axis[a];
    canonical.spacing[a] = stored.spacing[s];
    const double sign = reorder.reversed[a] ? -1.0 : 1.0;
    for (int r = 0; r < 4; ++r) canonical.voxel_to_world[r][a] = sign * m[r][s];
    if (reorder.reversed[a]) {
      for (int r = 0; r < 3; ++r) canonical.voxel_to_world[r][3] += m[r][s] * static_cast<double>(stored.dims[s] - 1);
    }
  }
  return canonical;
}

std::vector<float> reorder_to_stored(std::span<const float> canonical, std::array<int64_t, 3> stored_dims,
                                     const AxisReorder& reorder) {
  const int64_t voxels = stored_dims[0] * stored_dims[1] * stored_dims[2];
  if (static_cast<int64_t>(canonical.size()) != voxels) {
    throw ShapeError(fmt::format("reorder_to_stored: {} values for an image of {}x{}x{}", canonical.size(),
                                 stored_dims[0], stored_dims[1], stored_dims[2]));
  }
  std::vector<float> stored(canonical.size());
  for_each_voxel_pair(stored_dims, reorder, [&](int64_t c, int64_t s) { stored[s] = canonical[c]; });
  return stored;
}

}  // namespace dsmil::data
