// Preprocessing of a case (brain mask, crop, per-modality z-score, trilinear resampling to a fixed
// grid) and the on-disk cache of preprocessed cases, memory-mapped on later runs.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "data/cases.h"
#include "logging/log.h"

namespace dsmil::data {

class ProgressReporter;

// The preprocessing grid: depth is the axial axis (the slowest), then height, width.
struct GridShape {
  int depth = 128;
  int height = 128;
  int width = 128;
  int64_t voxels() const { return int64_t{depth} * height * width; }
  bool operator==(const GridShape&) const = default;
};
GridShape parse_grid(std::string_view text);  // "D,H,W"

struct PreprocessParams {
  GridShape grid;
};

// Where the grid came from in the source image: the brain box [begin, end) in the source's voxel
// coordinates (x, y, z) in canonical order (data/orientation.h), and the source dims in that order; maps grid
// positions back (e.g. attention maps: canonical_reorder of the file then takes them onto its own grid).
struct SourceBox {
  std::array<int64_t, 3> begin{};
  std::array<int64_t, 3> end{};
  std::array<int64_t, 3> source_dims{};
};

// One preprocessed case. Arrays are row-major over [D][H][W] (D axial, H = source y, W = source x, in canonical
// LPS order whatever the files' axis order).
// `image` holds IEEE float16 values (see base/half.h): per-modality z-scores over the brain mask, 0
// outside it, channel order FLAIR, T1, T1ce, T2; all finite (a case whose z-scores overflow float16
// is refused with a CaseError). The arrays live in `storage` (a memory-mapped cache entry or a heap
// buffer); copies of a CaseVolume share it.
struct CaseVolume {
  std::string case_id;
  std::string patient_id;
  int label = -1;  // kLabelHGG = 1, kLabelLGG = 0
  GridShape grid;
  std::span<const uint16_t> image;      // [4][D][H][W] float16
  std::span<const uint8_t> brain_mask;  // [D][H][W], 0/1
  std::span<const uint8_t> seg;         // [D][H][W] BraTS labels 0/1/2/4; empty when the case has none
  int brain_z_begin = 0;                // axial slices [begin, end) hold brain
  int brain_z_end = 0;
  std::vector<uint8_t> slice_has_brain;   // [D], 1 when the slice has mask voxels
  std::vector<uint8_t> slice_has_tumour;  // [D], 1 when the slice has seg > 0 (all 0 without seg)
  SourceBox source_box;
  std::shared_ptr<const void> storage;

  bool has_seg() const { return !seg.empty(); }
  // The image as float32 [4][D][H][W]; out.size() must be 4 * grid.voxels().
  void copy_image(std::span<float> out) const;
};

// Preprocesses a case that has been read and checked (read_case_images); result on the heap. Throws
// CaseError when a z-score is not finite in float16.
CaseVolume preprocess_images(const CaseFiles& files, const CaseImages& images, const PreprocessParams& params);

// Reads, checks and preprocesses one case without a cache (e.g. `dsmil predict`); throws CaseError. The reader's
// warnings (CaseImages::warnings) go to `warn`, one line each.
CaseVolume preprocess_case(const CaseFiles& files, const PreprocessParams& params,
                           const std::function<void(std::string_view line)>& warn = logging::line);

struct PreprocessOptions {
  std::filesystem::path cache_dir;  // empty: no cache, every case is kept on the heap
  PreprocessParams params;
  BadCasePolicy on_bad_case = BadCasePolicy::fail;
  int threads = 2;
  ProgressReporter* progress = nullptr;  // optional
  // Says that a damaged cache entry was rebuilt, and the reader's warnings of a case read from its files (called
  // from the worker threads; not empty).
  std::function<void(std::string_view line)> warn = logging::line;
};

struct PreprocessedCohort {
  std::vector<CaseVolume> cases;     // in input order, bad cases left out
  std::vector<SkippedCase> skipped;  // under BadCasePolicy::skip
  int cache_hits = 0;                // entries that were valid and mapped
  int cache_builds = 0;              // entries (re)built: new, changed input/params, or damaged
  double seconds = 0.0;
};

// Preprocesses every case (in parallel), through the cache when cache_dir is set. A cache entry
// is keyed by the case's input paths, sizes and modification times and by the parameters; it is
// written to a temporary file and renamed, so an interrupted write is never used. It carries a
// checksum of its header and arrays, verified the first time this process maps the file. An entry
// that is missing is built; one that is damaged (short, a header that does not match, a checksum
// mismatch) is rebuilt from the case's source with a line to options.warn, or, when the source
// cannot be read, the case fails with a CaseError naming the entry. Under BadCasePolicy::fail the
// first bad case (in input order) throws its CaseError after the workers stop. No case given, or
// none left under BadCasePolicy::skip, throws FormatError.
PreprocessedCohort preprocess_cohort(std::span<const CaseFiles> cases, const PreprocessOptions& options);

// The cache entry file a case would use (for tests and diagnostics).
std::filesystem::path cache_entry_path(const std::filesystem::path& cache_dir, const CaseFiles& files,
                                       const PreprocessParams& params);

}  // namespace dsmil::data
