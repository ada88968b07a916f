// The synthetic cohort: per case a labelled tissue volume (analytic phantom or a given anatomy,
// warped per subject), vessels and a tumour whose phenotype follows a latent grade score, rendered
// into FLAIR/T1/T1ce/T2 int16 [z][y][x] with gain, bias field and noise; seg uint8 [z][y][x].
#include "data/cohort.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <numbers>

#include <Eigen/Dense>
#include <fmt/format.h>

#include "data/cases.h"
#include "data/nifti_io.h"
#include "data/parallel.h"
#include "data/progress.h"
#include "data/rng.h"
#include "data/splits.h"
#include "base/error.h"

namespace dsmil::data {

namespace fs = std::filesystem;

namespace {

// Voxel classes of the phantom; tumour classes override tissue inside the lesion.
enum Tissue : uint8_t {
  kBackground = 0,
  kCSF,
  kGrey,
  kWhite,
  kDeepGrey,
  kChoroid,
  kVessel,
  kOedema,
  kNonEnhancing,
  kNecrosis,
  kEnhancing,
  kTissueCount
};

// Mean intensity of each class relative to white matter, per modality (FLAIR, T1, T1ce, T2); the
// enhancing T1ce value is scaled per case by the enhancement strength.
constexpr float kRelativeIntensity[kTissueCount][kModalities] = {
    {0.00f, 0.00f, 0.00f, 0.00f},  // background
    {0.30f, 0.35f, 0.35f, 2.10f},  // CSF
    {1.10f, 0.70f, 0.72f, 1.30f},  // grey matter
    {0.85f, 1.00f, 1.00f, 0.80f},  // white matter
    {1.00f, 0.80f, 0.82f, 1.10f},  // deep grey matter
    {0.90f, 0.70f, 1.50f, 1.60f},  // choroid plexus (enhances)
    {0.60f, 0.70f, 1.70f, 0.45f},  // vessel (bright on T1ce, flow void on T2)
    {1.55f, 0.62f, 0.64f, 1.65f},  // oedema
    {1.45f, 0.55f, 0.60f, 1.75f},  // non-enhancing tumour
    {0.95f, 0.35f, 0.40f, 1.95f},  // necrosis
    {1.35f, 0.65f, 1.55f, 1.45f},  // enhancing tumour
};
constexpr std::array<float, kModalities> kBaseWhiteLevel{300.0f, 420.0f, 480.0f, 350.0f};

constexpr uint8_t kSegNecroticCore = 1, kSegOedema = 2, kSegEnhancing = 4;

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct Volume {
  int64_t nx, ny, nz;
  int64_t voxels() const { return nx * ny * nz; }
  int64_t index(int64_t x, int64_t y, int64_t z) const { return (z * ny + y) * nx + x; }
};

// A smooth random 1-D profile: a + sum of two cosines of random phase over [0, n).
std::vector<float> smooth_profile(int64_t n, double amplitude, Rng& rng) {
  std::vector<float> p(n);
  const double f1 = uniform(rng, 0.5, 1.2), f2 = uniform(rng, 1.2, 2.5);
  const double ph1 = uniform(rng, 0, 2 * std::numbers::pi), ph2 = uniform(rng, 0, 2 * std::numbers::pi);
  const double a1 = amplitude * standard_normal(rng), a2 = 0.5 * amplitude * standard_normal(rng);
  for (int64_t i = 0; i < n; ++i) {
    const double t = static_cast<double>(i) / n * std::numbers::pi;
    p[i] = static_cast<float>(a1 * std::cos(f1 * t + ph1) + a2 * std::cos(f2 * t + ph2));
  }
  return p;
}

// ---- Anatomy --------------------------------------------------------------------------------

// The analytic phantom: a warped ellipsoid brain with cortex, sulci, a midline fissure,
// lateral ventricles with choroid plexus and deep grey nuclei, all varied per subject.
std::vector<uint8_t> analytic_brain(const Volume& v, Rng& rng) {
  const double ax = 0.285 * v.nx * (1 + 0.05 * standard_normal(rng));
  const double ay = 0.355 * v.ny * (1 + 0.05 * standard_normal(rng));
  const double az = 0.40 * v.nz * (1 + 0.04 * standard_normal(rng));
  const double cx = v.nx / 2.0 + 0.015 * v.nx * standard_normal(rng);
  const double cy = v.ny / 2.0 + 0.015 * v.ny * standard_normal(rng);
  const double cz = 0.47 * v.nz + 0.01 * v.nz * standard_normal(rng);
  const double ventricle_scale = std::exp(0.25 * standard_normal(rng));
  const double gyral_period = uniform(rng, 0.10, 0.14);
  const double fissure_half_width = std::max(0.5, 0.006 * v.nx);

  std::vector<float> u2(v.nx), v2(v.ny), w(v.nz), gyri_x(v.nx), gyri_y(v.ny), gyri_z(v.nz);
  std::array<std::vector<float>, 3> warp_x, warp_y, warp_z;
  for (int k = 0; k < 3; ++k) {
    warp_x[k] = smooth_profile(v.nx, 1.0, rng);
    warp_y[k] = smooth_profile(v.ny, 1.0, rng);
    warp_z[k] = smooth_profile(v.nz, 1.0, rng);
  }
  const double phase[3] = {uniform(rng, 0, 6.3), uniform(rng, 0, 6.3), uniform(rng, 0, 6.3)};
  for (int64_t x = 0; x < v.nx; ++x) {
    const double u = (x - cx) / ax;
    u2[x] = static_cast<float>(u * u);
    gyri_x[x] = static_cast<float>(std::sin(2 * std::numbers::pi * u / (gyral_period * 2) + phase[0]));
  }
  for (int64_t y = 0; y < v.ny; ++y) {
    const double t = (y - cy) / ay;
    v2[y] = static_cast<float>(t * t);
    gyri_y[y] = static_cast<float>(std::sin(2 * std::numbers::pi * t / (gyral_period * 2) + phase[1]));
  }
  for (int64_t z = 0; z < v.nz; ++z) {
    w[z] = static_cast<float>((z - cz) / az);
    gyri_z[z] = static_cast<float>(std::sin(2 * std::numbers::pi * w[z] / (gyral_period * 2.5) + phase[2]));
  }

  struct Ellipsoid {
    double x, y, z, rx, ry, rz;
    bool contains(double px, double py, double pz) const {
      const double a = (px - x) / rx, b = (py - y) / ry, c = (pz - z) / rz;
      return a * a + b * b + c * c <= 1.0;
    }
  };
  std::vector<std::pair<Ellipsoid, Tissue>> structures;  // later entries win
  for (int side : {-1, 1}) {
    const double vx = cx + side * 0.10 * ax, vy = cy + 0.02 * ay, vz = cz + 0.12 * az;
    structures.push_back(
        {{cx + side * 0.22 * ax, cy - 0.02 * ay, cz - 0.02 * az, 0.16 * ax, 0.20 * ay, 0.16 * az}, kDeepGrey});
    structures.push_back(
        {{vx, vy, vz, 0.07 * ax * ventricle_scale, 0.32 * ay, 0.15 * az * std::sqrt(ventricle_scale)}, kCSF});
    structures.push_back({{vx, vy - 0.18 * ay, vz, 0.035 * ax * ventricle_scale, 0.05 * ay, 0.05 * az}, kChoroid});
  }

  std::vector<uint8_t> tissue(v.voxels(), kBackground);
  for (int64_t z = 0; z < v.nz; ++z) {
    const double taper = 1.0 + 0.6 * std::max(0.0, -w[z] - 0.25);  // narrower towards the skull base
    for (int64_t y = 0; y < v.ny; ++y) {
      for (int64_t x = 0; x < v.nx; ++x) {
        double warp = 0;
        for (int k = 0; k < 3; ++k) warp += warp_x[k][x] * warp_y[k][y] * warp_z[k][z];
        const double f = u2[x] * taper + v2[y] + w[z] * w[z] + 0.08 * warp;
        if (f >= 1.0) continue;
        const double r = std::sqrt(f);
        const double gyri = gyri_x[x] * gyri_y[y] * gyri_z[z];
        Tissue t = kWhite;
        if (r > 0.80 + 0.07 * gyri) t = kGrey;
        if (r > 0.90 && gyri > 0.40) t = kCSF;
        if (std::abs(x - cx) < fissure_half_width && w[z] > -0.2 && r > 0.35) t = kCSF;
        for (const auto& [shape, label] : structures) {
          if (shape.contains(static_cast<double>(x), static_cast<double>(y), static_cast<double>(z))) t = label;
        }
        tissue[v.index(x, y, z)] = t;
      }
    }
  }
  return tissue;
}

// A given skull-stripped T1 as the anatomy: its brain box is fitted to the phantom's, warped per
// subject, and its voxels classed CSF / grey / white by intensity quantiles within the brain.
struct AnatomyTemplate {
  Image3D t1;
  std::array<int64_t, 3> box_begin{}, box_end{};
  float csf_below = 0, grey_below = 0;
};

AnatomyTemplate load_anatomy(const fs::path& path) {
  AnatomyTemplate a;
  a.t1 = read_nifti(path);
  const auto& d = a.t1.dims;
  a.box_begin = d;
  std::vector<float> brain;
  for (int64_t z = 0; z < d[2]; ++z)
    for (int64_t y = 0; y < d[1]; ++y)
      for (int64_t x = 0; x < d[0]; ++x) {
        const float value = a.t1.at(x, y, z);
        if (value <= 0) continue;
        brain.push_back(value);
        const int64_t p[3] = {x, y, z};
        for (int k = 0; k < 3; ++k) {
          a.box_begin[k] = std::min(a.box_begin[k], p[k]);
          a.box_end[k] = std::max(a.box_end[k], p[k] + 1);
        }
      }
  if (brain.size() < 1000)
    throw FormatError(fmt::format("{}: --anatomy needs a skull-stripped T1 (too few brain voxels)", path.string()));
  std::sort(brain.begin(), brain.end());
  a.csf_below = brain[brain.size() * 18 / 100];
  a.grey_below = brain[brain.size() * 55 / 100];
  return a;
}

std::vector<uint8_t> anatomy_brain(const Volume& v, const AnatomyTemplate& a, Rng& rng) {
  const double target_half[3] = {0.285 * v.nx, 0.355 * v.ny, 0.40 * v.nz};
  const double target_centre[3] = {v.nx / 2.0, v.ny / 2.0, 0.47 * v.nz};
  double scale[3], origin[3];
  for (int k = 0; k < 3; ++k) {
    const double source_size = static_cast<double>(a.box_end[k] - a.box_begin[k]);
    scale[k] = source_size / (2 * target_half[k]) * (1 + 0.05 * standard_normal(rng));
    origin[k] = a.box_begin[k] + source_size / 2 - scale[k] * target_centre[k];
  }
  std::array<std::vector<float>, 3> warp{smooth_profile(v.nx, 0.02 * v.nx, rng), smooth_profile(v.ny, 0.02 * v.ny, rng),
                                         smooth_profile(v.nz, 0.02 * v.nz, rng)};
  std::vector<uint8_t> tissue(v.voxels(), kBackground);
  const auto& d = a.t1.dims;
  for (int64_t z = 0; z < v.nz; ++z)
    for (int64_t y = 0; y < v.ny; ++y)
      for (int64_t x = 0; x < v.nx; ++x) {
        const auto sx = std::lround(origin[0] + scale[0] * x + warp[1][y]);
        const auto sy = std::lround(origin[1] + scale[1] * y + warp[2][z]);
        const auto sz = std::lround(origin[2] + scale[2] * z + warp[0][x]);
        if (sx < 0 || sy < 0 || sz < 0 || sx >= d[0] || sy >= d[1] || sz >= d[2]) continue;
        const float value = a.t1.at(sx, sy, sz);
        if (value <= 0) continue;
        tissue[v.index(x, y, z)] = value < a.csf_below ? kCSF : value < a.grey_below ? kGrey : kWhite;
      }
  return tissue;
}

// Thin tortuous vessels (random walks) over the brain: bright on T1ce in every subject, in a
// widely varying amount, so that a bright T1ce tail says nothing about the grade.
void add_vessels(const Volume& v, std::vector<uint8_t>& tissue, double size_factor, Rng& rng) {
  const int count = static_cast<int>(std::lround(std::exp(uniform(rng, std::log(4.0), std::log(48.0)))));
  const double radius = std::max(0.55, 0.9 * size_factor);
  const double step = std::max(0.5, 1.5 * size_factor);
  for (int n = 0; n < count; ++n) {
    double p[3];
    do {  // start inside the brain
      p[0] = uniform(rng, 0, v.nx - 1);
      p[1] = uniform(rng, 0, v.ny - 1);
      p[2] = uniform(rng, 0, v.nz - 1);
    } while (tissue[v.index(std::lround(p[0]), std::lround(p[1]), std::lround(p[2]))] == kBackground);
    double dir[3] = {standard_normal(rng), standard_normal(rng), standard_normal(rng)};
    const int steps = 15 + static_cast<int>(uniform_index(rng, 40));
    for (int s = 0; s < steps; ++s) {
      double norm = 0;
      for (int k = 0; k < 3; ++k) {
        dir[k] += 0.45 * standard_normal(rng);
        norm += dir[k] * dir[k];
      }
      norm = std::sqrt(norm) + 1e-9;
      for (int k = 0; k < 3; ++k) p[k] += step * dir[k] / norm;
      const int64_t r = static_cast<int64_t>(std::ceil(radius));
      for (int64_t dz = -r; dz <= r; ++dz)
        for (int64_t dy = -r; dy <= r; ++dy)
          for (int64_t dx = -r; dx <= r; ++dx) {
            const int64_t x = std::lround(p[0]) + dx, y = std::lround(p[1]) + dy, z = std::lround(p[2]) + dz;
            if (x < 0 || y < 0 || z < 0 || x >= v.nx || y >= v.ny || z >= v.nz) continue;
            if (dx * dx + dy * dy + dz * dz > radius * radius + 0.25) continue;
            uint8_t& t = tissue[v.index(x, y, z)];
            if (t != kBackground && t != kCSF) t = kVessel;
          }
    }
  }
}

// ---- Tumour ---------------------------------------------------------------------------------

// The tumour's phenotype as a function of the latent grade score s (HGG around +1, LGG around -1)
// plus nuisance variation that does not depend on the grade.
struct TumourPhenotype {
  double centre[3];
  double outer_radius;       // oedema boundary, voxels
  double core_fraction;      // core radius / outer radius: larger for LGG (less oedema)
  double rim_fraction;       // enhancing rim thickness / core radius
  double necrosis_fraction;  // necrotic radius / core radius: large for HGG, ~0 for LGG
  double enhancement;        // 0..1: share of the rim that enhances and how strongly
  std::array<std::array<double, 4>, 3> core_shape, oedema_shape, patches;  // direction x,y,z + phase
  std::array<double, 3> core_amplitude, oedema_amplitude;
};

TumourPhenotype draw_phenotype(double s, double size_factor, double difficulty, Rng& rng) {
  TumourPhenotype t{};
  const double brain_scale = 70.0 * size_factor;  // mean brain semi-axis in voxels
  t.outer_radius = brain_scale * uniform(rng, 0.22, 0.40);
  const double nuisance = 0.35 * std::sqrt(difficulty);
  t.core_fraction = std::clamp(0.62 - 0.16 * std::tanh(s) + 0.07 * standard_normal(rng), 0.30, 0.88);
  t.rim_fraction = uniform(rng, 0.18, 0.32);
  t.necrosis_fraction = 0.72 * sigmoid(2.4 * s - 1.2 + nuisance * standard_normal(rng));
  t.enhancement = sigmoid(2.2 * s - 0.3 + nuisance * standard_normal(rng));
  auto random_lobes = [&](std::array<std::array<double, 4>, 3>& lobes, double frequency) {
    for (auto& lobe : lobes) {
      double d[3] = {standard_normal(rng), standard_normal(rng), standard_normal(rng)};
      const double norm = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]) + 1e-9;
      for (int k = 0; k < 3; ++k) lobe[k] = frequency * d[k] / norm;
      lobe[3] = uniform(rng, 0, 2 * std::numbers::pi);
    }
  };
  random_lobes(t.core_shape, uniform(rng, 1.5, 3.0));
  random_lobes(t.oedema_shape, uniform(rng, 2.0, 4.0));
  random_lobes(t.patches, 2 * std::numbers::pi / std::max(2.0, 0.5 * t.outer_radius * t.core_fraction));
  for (int k = 0; k < 3; ++k) {
    t.core_amplitude[k] = uniform(rng, 0.03, 0.10);
    t.oedema_amplitude[k] = uniform(rng, 0.05, 0.15);
  }
  return t;
}

// Places the tumour centre in white matter of one hemisphere, away from the brain's top and bottom.
void place_tumour(const Volume& v, const std::vector<uint8_t>& tissue, TumourPhenotype& t, Rng& rng) {
  int64_t z_begin = v.nz, z_end = 0;
  for (int64_t z = 0; z < v.nz; ++z) {
    const auto first = tissue.begin() + v.index(0, 0, z);
    if (std::any_of(first, first + v.nx * v.ny, [](uint8_t c) { return c != kBackground; })) {
      z_begin = std::min(z_begin, z);
      z_end = z + 1;
    }
  }
  const double z_lo = z_begin + 0.30 * (z_end - z_begin), z_hi = z_begin + 0.78 * (z_end - z_begin);
  for (int attempt = 0;; ++attempt) {
    const double p[3] = {uniform(rng, 0, v.nx - 1), uniform(rng, 0, v.ny - 1), uniform(rng, z_lo, z_hi)};
    const uint8_t c = tissue[v.index(std::lround(p[0]), std::lround(p[1]), std::lround(p[2]))];
    if (c == kWhite || (attempt > 10000 && c != kBackground)) {
      std::copy(p, p + 3, t.centre);
      return;
    }
  }
}

// Radial modulation of a lesion boundary along unit direction d: 1 + sum_k a_k cos(<f_k, d> + phi_k).
double lobe_modulation(const std::array<std::array<double, 4>, 3>& lobes, const std::array<double, 3>& amplitude,
                       const double d[3]) {
  double m = 1.0;
  for (int k = 0; k < 3; ++k) {
    m += amplitude[k] * std::cos(lobes[k][0] * d[0] + lobes[k][1] * d[1] + lobes[k][2] * d[2] + lobes[k][3]);
  }
  return m;
}

// Writes the tumour classes into `tissue` (inside the brain only) and the BraTS labels into `seg`.
void render_tumour(const Volume& v, const TumourPhenotype& t, std::vector<uint8_t>& tissue, std::vector<uint8_t>& seg) {
  const double reach = t.outer_radius * 1.4;
  int64_t lo[3], hi[3];
  const int64_t n[3] = {v.nx, v.ny, v.nz};
  for (int k = 0; k < 3; ++k) {
    lo[k] = std::max<int64_t>(0, static_cast<int64_t>(std::floor(t.centre[k] - reach)));
    hi[k] = std::min<int64_t>(n[k], static_cast<int64_t>(std::ceil(t.centre[k] + reach)) + 1);
  }
  const double core_radius = t.outer_radius * t.core_fraction;
  for (int64_t z = lo[2]; z < hi[2]; ++z)
    for (int64_t y = lo[1]; y < hi[1]; ++y)
      for (int64_t x = lo[0]; x < hi[0]; ++x) {
        const int64_t i = v.index(x, y, z);
        if (tissue[i] == kBackground) continue;
        const double p[3] = {x - t.centre[0], y - t.centre[1], z - t.centre[2]};
        const double r = std::sqrt(p[0] * p[0] + p[1] * p[1] + p[2] * p[2]);
        if (r > reach) continue;
        const double d[3] = {p[0] / (r + 1e-9), p[1] / (r + 1e-9), p[2] / (r + 1e-9)};
        if (r > t.outer_radius * lobe_modulation(t.oedema_shape, t.oedema_amplitude, d)) continue;
        const double q =
            r / (core_radius * lobe_modulation(t.core_shape, t.core_amplitude, d));  // 0 centre, 1 core edge
        if (q > 1.0) {
          if (tissue[i] == kCSF) continue;  // oedema spares CSF spaces
          tissue[i] = kOedema;
          seg[i] = kSegOedema;
        } else if (q > 1.0 - t.rim_fraction) {
          double patch = 0;  // smooth pattern in [-1, 1]: the share of the rim that enhances
          for (const auto& f : t.patches) patch += std::cos(f[0] * p[0] + f[1] * p[1] + f[2] * p[2] + f[3]) / 3.0;
          const bool enhancing = (patch + 1.0) / 2.0 < t.enhancement;
          tissue[i] = enhancing ? kEnhancing : kNonEnhancing;
          seg[i] = enhancing ? kSegEnhancing : kSegNecroticCore;
        } else {
          tissue[i] = q < t.necrosis_fraction ? kNecrosis : kNonEnhancing;
          seg[i] = kSegNecroticCore;
        }
      }
}

// ---- Rendering and writing ------------------------------------------------------------------

std::string case_id_of(int index) { return fmt::format("Brats18_SYN_{:04d}", index + 1); }

// Fast standard normals in pairs (Box-Muller with both outputs) for the per-voxel noise.
class NormalPairs {
 public:
  explicit NormalPairs(uint64_t seed) : rng_(seed) {}
  float next() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    const double radius = std::sqrt(-2.0 * std::log(1.0 - uniform01(rng_)));
    const double angle = 2 * std::numbers::pi * uniform01(rng_);
    spare_ = static_cast<float>(radius * std::sin(angle));
    have_spare_ = true;
    return static_cast<float>(radius * std::cos(angle));
  }

 private:
  Rng rng_;
  float spare_ = 0;
  bool have_spare_ = false;
};

struct CaseJob {
  int index;
  int label;
  double grade_score;
};

CohortCaseTruth write_case(const CohortOptions& options, const CaseJob& job, const AnatomyTemplate* anatomy) {
  const Volume v{options.dims[0], options.dims[1], options.dims[2]};
  const double size_factor = (0.285 * v.nx + 0.355 * v.ny + 0.40 * v.nz) / 3.0 / 70.0;
  Rng shape_rng = make_rng(options.seed, {1, static_cast<uint64_t>(job.index)});
  std::vector<uint8_t> tissue = anatomy ? anatomy_brain(v, *anatomy, shape_rng) : analytic_brain(v, shape_rng);
  add_vessels(v, tissue, size_factor, shape_rng);

  Rng tumour_rng = make_rng(options.seed, {2, static_cast<uint64_t>(job.index)});
  TumourPhenotype phenotype = draw_phenotype(job.grade_score, size_factor, options.difficulty, tumour_rng);
  place_tumour(v, tissue, phenotype, tumour_rng);
  std::vector<uint8_t> seg(v.voxels(), 0);
  render_tumour(v, phenotype, tissue, seg);

  const std::string id = case_id_of(job.index);
  const fs::path folder = options.out / (job.label == kLabelHGG ? "HGG" : "LGG") / id;
  fs::create_directories(folder);
  const std::string ext = options.gzip ? ".nii.gz" : ".nii";
  NiftiWriteOptions write_options;
  write_options.gzip_level = options.gzip_level;

  Rng scanner_rng = make_rng(options.seed, {3, static_cast<uint64_t>(job.index)});
  const double noise_level = uniform(scanner_rng, 0.02, 0.05) * std::sqrt(options.difficulty);
  const float enhancing_t1ce =
      static_cast<float>(kRelativeIntensity[kNonEnhancing][2] +
                         (kRelativeIntensity[kEnhancing][2] - kRelativeIntensity[kNonEnhancing][2]) *
                             (0.55 + 0.45 * phenotype.enhancement));
  std::vector<int16_t> image(v.voxels());
  for (int m = 0; m < kModalities; ++m) {
    const float gain = static_cast<float>(kBaseWhiteLevel[m] * std::exp(0.25 * standard_normal(scanner_rng)));
    const auto bias_x = smooth_profile(v.nx, 0.06, scanner_rng);
    const auto bias_y = smooth_profile(v.ny, 0.06, scanner_rng);
    const auto bias_z = smooth_profile(v.nz, 0.06, scanner_rng);
    std::array<float, kTissueCount> level{};
    for (int c = 0; c < kTissueCount; ++c) level[c] = gain * kRelativeIntensity[c][m];
    if (m == 2) level[kEnhancing] = gain * enhancing_t1ce;
    const float sigma = static_cast<float>(noise_level) * gain;
    NormalPairs noise(derive_seed(options.seed, {4, static_cast<uint64_t>(job.index), static_cast<uint64_t>(m)}));
    for (int64_t z = 0; z < v.nz; ++z)
      for (int64_t y = 0; y < v.ny; ++y) {
        const float bias_yz = std::exp(bias_y[y] + bias_z[z]);
        for (int64_t x = 0; x < v.nx; ++x) {
          const int64_t i = v.index(x, y, z);
          if (tissue[i] == kBackground) {
            image[i] = 0;
            continue;
          }
          const float value = level[tissue[i]] * bias_yz * (1.0f + bias_x[x]) + sigma * noise.next();
          image[i] = static_cast<int16_t>(std::clamp(std::lround(value), 1l, 32767l));  // brain stays nonzero
        }
      }
    write_nifti<int16_t>(folder / (id + "_" + std::string(kModalityNames[m]) + ext), options.dims, image,
                         write_options);
  }
  write_nifti<uint8_t>(folder / (id + "_seg" + ext), options.dims, seg, write_options);

  CohortCaseTruth truth;
  truth.case_id = id;
  truth.label = job.label;
  truth.grade_score = job.grade_score;
  int64_t whole = 0, core = 0, enhancing = 0, brain_slices = 0, tumour_slices = 0;
  for (int64_t z = 0; z < v.nz; ++z) {
    bool brain = false, tumour = false;
    for (int64_t i = v.index(0, 0, z); i < v.index(0, 0, z + 1); ++i) {
      brain = brain || tissue[i] != kBackground;
      tumour = tumour || seg[i] != 0;
      whole += seg[i] != 0;
      core += seg[i] == kSegNecroticCore || seg[i] == kSegEnhancing;
      enhancing += seg[i] == kSegEnhancing;
    }
    brain_slices += brain;
    tumour_slices += tumour;
  }
  truth.whole_tumour_ml = whole / 1000.0;
  truth.core_ml = core / 1000.0;
  truth.enhancing_ml = enhancing / 1000.0;
  truth.tumour_slice_fraction = brain_slices ? static_cast<double>(tumour_slices) / brain_slices : 0.0;
  return truth;
}

void write_truth_csv(const fs::path& path, const std::vector<CohortCaseTruth>& truths) {
  std::ofstream out(path);
  out << "case_id,label,grade_score,whole_tumour_ml,core_ml,enhancing_ml,tumour_slice_fraction\n";
  for (const auto& t : truths) {
    out << fmt::format("{},{},{:.6f},{:.3f},{:.3f},{:.3f},{:.4f}\n", t.case_id, t.label == kLabelHGG ? "HGG" : "LGG",
                       t.grade_score, t.whole_tumour_ml, t.core_ml, t.enhancing_ml, t.tumour_slice_fraction);
  }
  if (!out) throw FormatError(fmt::format("{}: cannot write", path.string()));
}

}  // namespace

std::vector<CohortCaseTruth> write_cohort(const CohortOptions& options) {
  if (options.cases < 1) throw Error(fmt::format("cohort: {} cases (need at least 1)", options.cases));
  if (!(options.hgg_fraction >= 0.0 && options.hgg_fraction <= 1.0)) {
    throw Error(fmt::format("cohort: HGG fraction {} not in [0, 1]", options.hgg_fraction));
  }
  if (!(options.difficulty > 0.0)) throw Error(fmt::format("cohort: difficulty {} must be > 0", options.difficulty));
  if (*std::min_element(options.dims.begin(), options.dims.end()) < 16) {
    throw Error(fmt::format("cohort: dims {}x{}x{} too small (at least 16 per axis)", options.dims[0], options.dims[1],
                            options.dims[2]));
  }
  std::optional<AnatomyTemplate> anatomy;
  if (!options.anatomy.empty()) anatomy = load_anatomy(options.anatomy);
  fs::create_directories(options.out);

  // Labels: a seeded choice of which cases are HGG; latent score s ~ N(+-1, sigma) with sigma set so
  // that the score's AUC is about 0.95 at difficulty 1 (the grading task's ceiling).
  const int hgg_count = static_cast<int>(std::lround(options.cases * options.hgg_fraction));
  std::vector<int> order(options.cases);
  for (int i = 0; i < options.cases; ++i) order[i] = i;
  Rng label_rng = make_rng(options.seed, {0});
  for (int i = options.cases - 1; i > 0; --i) std::swap(order[i], order[uniform_index(label_rng, i + 1)]);
  std::vector<CaseJob> jobs(options.cases);
  const double sigma = 0.85 * options.difficulty;
  for (int rank = 0; rank < options.cases; ++rank) {
    const int index = order[rank];
    const int label = rank < hgg_count ? kLabelHGG : kLabelLGG;
    Rng score_rng = make_rng(options.seed, {5, static_cast<uint64_t>(index)});
    jobs[index] = {index, label, (label == kLabelHGG ? 1.0 : -1.0) + sigma * standard_normal(score_rng)};
  }

  std::vector<CohortCaseTruth> truths(options.cases);
  parallel_for(truths.size(), options.threads, [&](size_t i) {
    truths[i] = write_case(options, jobs[i], anatomy ? &*anatomy : nullptr);
    if (options.progress) options.progress->advance(truths[i].case_id);
  });
  if (options.progress) options.progress->finish();
  write_truth_csv(options.out / "truth.csv", truths);
  return truths;
}

std::vector<CohortCaseTruth> write_small_cohort(const fs::path& out, int cases, uint64_t seed,
                                                std::array<int64_t, 3> dims, double hgg_fraction) {
  CohortOptions options;
  options.out = out;
  options.cases = cases;
  options.seed = seed;
  options.dims = dims;
  options.hgg_fraction = hgg_fraction;
  return write_cohort(options);
}

double score_auc(std::span<const double> scores, std::span<const int> labels) {
  double wins = 0;
  int64_t positives = 0, negatives = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (labels[i] != 1) continue;
    ++positives;
    for (size_t j = 0; j < scores.size(); ++j) {
      if (labels[j] != 0) continue;
      wins += scores[i] > scores[j] ? 1.0 : scores[i] == scores[j] ? 0.5 : 0.0;
    }
  }
  for (int l : labels) negatives += l == 0;
  if (positives == 0 || negatives == 0) return std::numeric_limits<double>::quiet_NaN();
  return wins / (static_cast<double>(positives) * negatives);
}

namespace {

// Whole-volume statistics of the four modalities of a case: nothing that knows where the tumour is.
std::vector<double> whole_volume_features(const CaseFiles& files) {
  std::vector<double> features;
  for (int m = 0; m < kModalities; ++m) {
    const Image3D image = read_nifti(files.modalities[m]);
    std::vector<float> brain;
    for (float value : image.values) {
      if (value != 0.0f) brain.push_back(value);
    }
    std::sort(brain.begin(), brain.end());
    double sum = 0, sum_sq = 0;
    for (float value : brain) {
      sum += value;
      sum_sq += static_cast<double>(value) * value;
    }
    const double n = static_cast<double>(brain.size());
    const double mean = sum / n;
    const double std_dev = std::sqrt(std::max(0.0, sum_sq / n - mean * mean));
    auto quantile = [&](double q) { return static_cast<double>(brain[static_cast<size_t>(q * (n - 1))]); };
    const double p1 = quantile(0.01), p50 = quantile(0.5), p95 = quantile(0.95), p99 = quantile(0.99),
                 p999 = quantile(0.999), max = brain.back();
    for (double f : {mean, std_dev, p1, p50, p95, p99, p999, max}) features.push_back(std::log(std::max(f, 1.0)));
    for (double f : {std_dev / mean, p95 / p50, p99 / p50, p999 / p50, max / p50, p1 / p50}) features.push_back(f);
    if (m == 0) features.push_back(std::log(n));
  }
  return features;
}

// Out-of-fold probabilities of an L2-regularised logistic regression (Newton steps) under
// stratified 5-fold CV; features are standardised on each training fold.
std::vector<double> logistic_oof(const std::vector<std::vector<double>>& rows, std::span<const int> labels,
                                 std::span<const std::string> ids) {
  const int n = static_cast<int>(rows.size());
  const int d = static_cast<int>(rows[0].size());
  const Splits splits = make_splits(labels, ids, {5, 0.0, 7});
  std::vector<double> oof(n, 0.5);
  for (const Fold& fold : splits.folds) {
    std::vector<int> train = fold.train;
    Eigen::VectorXd mean = Eigen::VectorXd::Zero(d), scale = Eigen::VectorXd::Zero(d);
    for (int i : train) mean += Eigen::Map<const Eigen::VectorXd>(rows[i].data(), d);
    mean /= static_cast<double>(train.size());
    for (int i : train) scale += (Eigen::Map<const Eigen::VectorXd>(rows[i].data(), d) - mean).cwiseAbs2();
    scale = (scale / static_cast<double>(train.size())).cwiseSqrt().cwiseMax(1e-12);
    auto design = [&](int i) {
      Eigen::VectorXd x(d + 1);
      x(0) = 1.0;
      x.tail(d) = (Eigen::Map<const Eigen::VectorXd>(rows[i].data(), d) - mean).cwiseQuotient(scale);
      return x;
    };
    Eigen::VectorXd w = Eigen::VectorXd::Zero(d + 1);
    const double lambda = 1.0;
    for (int iteration = 0; iteration < 30; ++iteration) {
      Eigen::VectorXd gradient = lambda * w;
      Eigen::MatrixXd hessian = lambda * Eigen::MatrixXd::Identity(d + 1, d + 1);
      gradient(0) = 0;
      hessian(0, 0) = 1e-6;
      for (int i : train) {
        const Eigen::VectorXd x = design(i);
        const double p = sigmoid(x.dot(w));
        gradient += (p - labels[i]) * x;
        hessian += p * (1 - p) * x * x.transpose();
      }
      const Eigen::VectorXd delta = hessian.ldlt().solve(gradient);
      w -= delta;
      if (delta.norm() < 1e-8) break;
    }
    for (int i : fold.test) oof[i] = sigmoid(design(i).dot(w));
  }
  return oof;
}

}  // namespace

CueCheck check_trivial_cues(const fs::path& root, int threads) {
  const Discovery found = discover_dataset(root, BadCasePolicy::fail);
  const int n = static_cast<int>(found.cases.size());
  std::vector<int> labels(n);
  std::vector<std::string> ids(n);
  for (int i = 0; i < n; ++i) {
    labels[i] = found.cases[i].label;
    ids[i] = found.cases[i].case_id;
  }
  std::vector<std::vector<double>> stats(n), sizes(n);
  std::vector<int> has_tumour(n, 0);
  parallel_for(n, threads, [&](size_t i) {
    stats[i] = whole_volume_features(found.cases[i]);
    for (const auto& p : found.cases[i].modalities) sizes[i].push_back(std::log(static_cast<double>(fs::file_size(p))));
    sizes[i].push_back(std::log(static_cast<double>(fs::file_size(found.cases[i].seg))));
    const Image3D seg = read_nifti(found.cases[i].seg);
    has_tumour[i] = std::any_of(seg.values.begin(), seg.values.end(), [](float v) { return v != 0; });
  });

  // The latent scores from truth.csv, matched by case id.
  std::map<std::string, double> score_of;
  std::ifstream truth(root / "truth.csv");
  std::string line;
  std::getline(truth, line);
  while (std::getline(truth, line)) {
    const auto first = line.find(','), second = line.find(',', first + 1), third = line.find(',', second + 1);
    if (third == std::string::npos) continue;
    score_of[line.substr(0, first)] = std::stod(line.substr(second + 1, third - second - 1));
  }
  std::vector<double> latent(n);
  for (int i = 0; i < n; ++i) {
    const auto it = score_of.find(ids[i]);
    if (it == score_of.end()) throw FormatError(fmt::format("{}: no truth.csv row for case {}", root.string(), ids[i]));
    latent[i] = it->second;
  }

  CueCheck check;
  check.cases = n;
  check.latent_auc = score_auc(latent, labels);
  check.intensity_stats_auc = score_auc(logistic_oof(stats, labels, ids), labels);
  check.file_size_auc = score_auc(logistic_oof(sizes, labels, ids), labels);
  check.tumour_present_fraction = static_cast<double>(std::count(has_tumour.begin(), has_tumour.end(), 1)) / n;
  return check;
}

}  // namespace dsmil::data
