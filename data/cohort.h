// The synthetic BraTS-2018-like cohort (DESIGN section 7): per case four int16 modality volumes and
// a uint8 seg in ROOT/{HGG,LGG}/CASE/CASE_{flair,t1,t1ce,t2,seg}.nii[.gz], plus truth.csv.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace dsmil::data {

class ProgressReporter;

struct CohortOptions {
  std::filesystem::path out;  // dataset root (created)
  int cases = 285;
  double hgg_fraction = 210.0 / 285.0;  // HGG count = round(cases * hgg_fraction)
  uint64_t seed = 1;
  std::array<int64_t, 3> dims{240, 240, 155};  // x, y, z (z axial), 1 mm voxels
  double difficulty = 1.0;                     // > 1: more overlap of the grades and more noise
  std::filesystem::path anatomy;               // optional skull-stripped T1 to build every brain on
  int threads = 2;
  bool gzip = true;  // .nii.gz (deterministic, no timestamp) or .nii
  int gzip_level = 1;
  ProgressReporter* progress = nullptr;  // optional
};

// What the generator knows about a case (written to truth.csv).
struct CohortCaseTruth {
  std::string case_id;
  int label = 0;                     // 1 = HGG
  double grade_score = 0.0;          // latent grade; the images are a function of it plus nuisance
  double whole_tumour_ml = 0;        // seg > 0
  double core_ml = 0;                // seg 1 or 4
  double enhancing_ml = 0;           // seg 4
  double tumour_slice_fraction = 0;  // axial slices with tumour / slices with brain
};

// Writes the cohort and truth.csv; the same options give byte-identical files (any thread count).
std::vector<CohortCaseTruth> write_cohort(const CohortOptions& options);

// A small, fast cohort for tests (e.g. 24-40 cases of 64x64x48 in a few seconds): write_cohort
// with these dims, .nii.gz at level 1, the default HGG share unless given.
std::vector<CohortCaseTruth> write_small_cohort(const std::filesystem::path& out, int cases, uint64_t seed,
                                                std::array<int64_t, 3> dims = {64, 64, 48},
                                                double hgg_fraction = 210.0 / 285.0);

// AUC of scores against 0/1 labels, ties counted half (used for the cohort's own checks).
double score_auc(std::span<const double> scores, std::span<const int> labels);

// Whether the grade can be read from trivial cues. For the cohort at `root` (as written by
// write_cohort, with truth.csv): out-of-fold AUCs (5-fold stratified CV) of an L2 logistic
// regression on whole-volume intensity statistics of the four modalities (mean, std, percentiles,
// max, brain voxel count, and their logs and ratios), and of one on the five file sizes, next to
// the AUC of the latent grade score.
struct CueCheck {
  int cases = 0;
  double latent_auc = 0;
  double intensity_stats_auc = 0;
  double file_size_auc = 0;
  double tumour_present_fraction = 0;  // cases whose seg has tumour (should be 1 for both grades)
};
CueCheck check_trivial_cues(const std::filesystem::path& root, int threads = 2);

}  // namespace dsmil::data
