// Finding the cases of a dataset (BraTS 2018/2019 folders, BraTS 2020 with name_mapping.csv, or a
// manifest CSV) and reading one case's four modalities (+ seg) with the checks that tie them together.
#pragma once

#include <array>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/nifti_io.h"
#include "base/error.h"

namespace dsmil::data {

inline constexpr int kModalities = 4;  // channel order everywhere: FLAIR, T1, T1ce, T2
inline constexpr std::array<std::string_view, kModalities> kModalityNames{"flair", "t1", "t1ce", "t2"};
inline constexpr int kLabelLGG = 0;
inline constexpr int kLabelHGG = 1;

struct CaseFiles {
  std::string case_id;
  std::string patient_id;                                     // the case id when the source names no patient
  int label = -1;                                             // kLabelHGG or kLabelLGG
  std::array<std::filesystem::path, kModalities> modalities;  // FLAIR, T1, T1ce, T2
  std::filesystem::path seg;                                  // empty when the case has no segmentation
};

enum class BadCasePolicy { fail, skip };
BadCasePolicy parse_bad_case_policy(std::string_view text);  // "fail" | "skip"
std::string_view bad_case_policy_name(BadCasePolicy policy);

// Why a case was left out: the case, the file at fault (or the case folder), the reason.
struct SkippedCase {
  std::string case_id;
  std::filesystem::path file;
  std::string reason;
  std::string message() const;  // "case <id>: <file>: <reason>"
};

// A case failed a check; what() is SkippedCase::message().
class CaseError : public FormatError {
 public:
  explicit CaseError(SkippedCase detail);
  const SkippedCase& detail() const { return detail_; }

 private:
  SkippedCase detail_;
};

enum class DatasetLayout { brats2018, brats2020, manifest };
std::string_view layout_name(DatasetLayout layout);

struct Discovery {
  DatasetLayout layout = DatasetLayout::brats2018;
  std::vector<CaseFiles> cases;      // in a stable order (sorted by case id for folder layouts)
  std::vector<SkippedCase> skipped;  // filled only under BadCasePolicy::skip
};

// Finds the cases under `root`: a folder with HGG/ and LGG/ (BraTS 2018/2019), a folder with
// name_mapping.csv (BraTS 2020), or a manifest .csv file. Checks what can be checked without
// reading images: missing modality files, duplicate case ids, labels other than HGG/LGG. Under
// BadCasePolicy::fail the first bad case throws CaseError; under skip it is listed in `skipped`.
// A dataset left without a case (none found, or all skipped) throws FormatError.
Discovery discover_dataset(const std::filesystem::path& root, BadCasePolicy policy);

// A manifest CSV with a header row: case_id,label,flair,t1,t1ce,t2 and optional seg, patient_id
// columns (any order). Labels HGG/LGG (any case) or 1/0; relative paths are relative to the CSV.
// Read as pandas reads it: a UTF-8 byte-order mark, CRLF line ends and quoted fields (holding commas,
// "" for a quote, line breaks) are fine; unquoted fields are also trimmed of spaces. A manifest
// without a usable case throws FormatError.
Discovery read_manifest(const std::filesystem::path& csv, BadCasePolicy policy);

// The error for a set of cases of which none is usable: how many were found and why the first was
// left out. `source` names the set (a dataset, a step); `skipped` is not empty.
FormatError no_usable_case(std::string_view source, const std::vector<SkippedCase>& skipped);

// One case's images in the canonical voxel order (data/orientation.h), all checked to be 3-D, finite, and on
// one grid: the same shape, voxel size, orientation and origin once in that order.
struct CaseImages {
  std::array<Image3D, kModalities> modalities;
  std::optional<Image3D> seg;
  // What the reader did that the user should know, one line each naming the case and the file: an oblique
  // series read in its nearest axis order, a file without orientation used as stored.
  std::vector<std::string> warnings;
};

// Reads and checks a case, each file brought to the canonical voxel order by permuting and reversing its axes
// as its sform/qform says (files of one case may be stored in different axis orders of one grid). Every failure
// is a CaseError naming the case, the file and the reason (unreadable, truncated, wrong dimensionality, a header
// whose sform and qform disagree, voxel axes more than kMaxObliqueDegrees off the world axes, a shape, voxel
// size, orientation or origin unlike the FLAIR's (naming both files), non-finite values, empty brain mask,
// segmentation labels that are not small integers).
CaseImages read_case_images(const CaseFiles& files);

}  // namespace dsmil::data
