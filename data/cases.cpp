// Discovery of BraTS-style datasets and manifests (lists of CaseFiles), and reading one case's
// four modality volumes + optional seg in the canonical voxel order, with the cross-file checks (shape, voxel
// size, orientation, origin).
#include "data/cases.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <iterator>
#include <map>

#include <fmt/format.h>

#include "data/orientation.h"

namespace dsmil::data {

namespace fs = std::filesystem;

std::string SkippedCase::message() const { return fmt::format("case {}: {}: {}", case_id, file.string(), reason); }

CaseError::CaseError(SkippedCase detail) : FormatError(detail.message()), detail_(std::move(detail)) {}

BadCasePolicy parse_bad_case_policy(std::string_view text) {
  if (text == "fail") return BadCasePolicy::fail;
  if (text == "skip") return BadCasePolicy::skip;
  throw Error(fmt::format("--on-bad-case: '{}' is not fail or skip", text));
}

std::string_view bad_case_policy_name(BadCasePolicy policy) { return policy == BadCasePolicy::fail ? "fail" : "skip"; }

std::string_view layout_name(DatasetLayout layout) {
  switch (layout) {
    case DatasetLayout::brats2018:
      return "BraTS 2018/2019 (HGG/LGG folders)";
    case DatasetLayout::brats2020:
      return "BraTS 2020 (name_mapping.csv)";
    case DatasetLayout::manifest:
      return "manifest CSV";
  }
  return "unknown";
}

namespace {

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::string trim(std::string_view text) {
  size_t begin = 0;
  size_t end = text.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(text[begin]))) ++begin;
  while (end > begin && std::isspace(static_cast<unsigned char>(text[end - 1]))) --end;
  return std::string(text.substr(begin, end - begin));
}

struct CsvTable {
  std::vector<std::string> header;  // lower-cased
  std::vector<std::vector<std::string>> rows;
  int column(std::string_view name) const {
    const auto it = std::find(header.begin(), header.end(), name);
    return it == header.end() ? -1 : static_cast<int>(it - header.begin());
  }
};

// Splits CSV text into records the way pandas does: records end at \n, \r\n or \r; a field that opens
// with a double quote runs to the closing one ("" is a quote) and keeps commas, line breaks and spaces;
// a quote inside an unquoted field is a character; blank lines are skipped. Unquoted fields are trimmed.
class CsvParser {
 public:
  std::vector<std::vector<std::string>> parse(const fs::path& path, std::string_view text) {
    for (size_t i = 0; i < text.size(); ++i) {
      const char c = text[i];
      if (in_quotes_ && c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field_ += '"';
        ++i;
      } else if (in_quotes_ && c == '"') {
        in_quotes_ = false;
      } else if (in_quotes_) {
        field_ += c;
      } else if (c == '"' && !quoted_ && trim(field_).empty()) {
        field_.clear();
        quoted_ = in_quotes_ = true;
        quote_at_ = i;
      } else if (c == ',') {
        end_field();
      } else if (c == '\n' || c == '\r') {
        i += c == '\r' && i + 1 < text.size() && text[i + 1] == '\n' ? 1 : 0;
        end_record();
      } else {
        field_ += c;
      }
    }
    if (in_quotes_) {
      throw FormatError(fmt::format("{}: the quoted field opened on line {} is never closed", path.string(),
                                    1 + std::count(text.begin(), text.begin() + quote_at_, '\n')));
    }
    end_record();
    return std::move(records_);
  }

 private:
  void end_field() {
    record_.push_back(quoted_ ? std::move(field_) : trim(field_));
    field_.clear();
    quoted_ = false;
  }
  void end_record() {
    const bool blank = record_.empty() && !quoted_ && trim(field_).empty();
    end_field();
    if (!blank) records_.push_back(std::move(record_));
    record_.clear();
  }

  std::vector<std::vector<std::string>> records_;
  std::vector<std::string> record_;
  std::string field_;
  bool quoted_ = false;     // the field being read opened with a quote
  bool in_quotes_ = false;  // between its quotes
  size_t quote_at_ = 0;
};

CsvTable read_csv(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError(fmt::format("{}: cannot open", path.string()));
  const std::string content{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::string_view text = content;
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);  // a UTF-8 byte-order mark, as spreadsheets write
  auto records = CsvParser().parse(path, text);
  if (records.empty()) throw FormatError(fmt::format("{}: empty CSV file", path.string()));
  CsvTable table;
  for (const auto& f : records.front()) table.header.push_back(lower(f));
  for (size_t r = 1; r < records.size(); ++r) {
    records[r].resize(std::max(records[r].size(), table.header.size()));
    table.rows.push_back(std::move(records[r]));
  }
  return table;
}

std::optional<int> parse_label(std::string_view text) {
  const std::string t = lower(trim(text));
  if (t == "hgg" || t == "1") return kLabelHGG;
  if (t == "lgg" || t == "0") return kLabelLGG;
  return std::nullopt;
}

// Collects bad cases according to the policy: fail throws at once, skip lists them.
class BadCaseSink {
 public:
  BadCaseSink(BadCasePolicy policy, std::vector<SkippedCase>& out) : policy_(policy), out_(out) {}
  void report(SkippedCase bad) {
    if (policy_ == BadCasePolicy::fail) throw CaseError(std::move(bad));
    out_.push_back(std::move(bad));
  }

 private:
  BadCasePolicy policy_;
  std::vector<SkippedCase>& out_;
};

std::string strip_nifti_extension(const std::string& name) {
  for (std::string_view ext : {".nii.gz", ".nii"}) {
    if (name.size() > ext.size() && lower(name.substr(name.size() - ext.size())) == ext) {
      return name.substr(0, name.size() - ext.size());
    }
  }
  return {};
}

// Fills the modality and seg paths of a BraTS case folder from files named *_<modality>.nii[.gz]
// (a seg may also be any NIfTI whose name holds "seg", as one BraTS 2020 case has). Returns the
// reason the folder is unusable, or nothing.
std::optional<SkippedCase> scan_case_folder(const fs::path& folder, CaseFiles& files) {
  std::vector<fs::path> seg_candidates;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (!entry.is_regular_file()) continue;
    const std::string stem = strip_nifti_extension(entry.path().filename().string());
    if (stem.empty()) continue;
    const std::string suffix = lower(stem.substr(stem.rfind('_') + 1));
    const auto modality = std::find(kModalityNames.begin(), kModalityNames.end(), suffix);
    if (modality != kModalityNames.end()) {
      auto& slot = files.modalities[modality - kModalityNames.begin()];
      if (!slot.empty()) {
        return SkippedCase{files.case_id, entry.path(),
                           fmt::format("two {} files in the case folder (also {})", suffix, slot.string())};
      }
      slot = entry.path();
    } else if (lower(stem).find("seg") != std::string::npos) {
      seg_candidates.push_back(entry.path());
    }
  }
  for (int m = 0; m < kModalities; ++m) {
    if (files.modalities[m].empty()) {
      return SkippedCase{
          files.case_id, folder,
          fmt::format("missing modality {} (no *_{}.nii[.gz] file)", kModalityNames[m], kModalityNames[m])};
    }
  }
  if (seg_candidates.size() > 1) {
    std::sort(seg_candidates.begin(), seg_candidates.end());
    return SkippedCase{files.case_id, folder,
                       fmt::format("several segmentation files ({}, {})", seg_candidates[0].filename().string(),
                                   seg_candidates[1].filename().string())};
  }
  if (!seg_candidates.empty()) files.seg = seg_candidates.front();
  return std::nullopt;
}

std::vector<fs::path> sorted_subfolders(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_directory()) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Removes every case whose id occurs more than once, naming all its places.
void drop_duplicate_ids(std::vector<CaseFiles>& cases, BadCaseSink& sink) {
  std::map<std::string, std::vector<size_t>> where;
  for (size_t i = 0; i < cases.size(); ++i) where[cases[i].case_id].push_back(i);
  std::vector<bool> drop(cases.size(), false);
  for (const auto& [id, places] : where) {
    if (places.size() < 2) continue;
    std::string list;
    for (size_t i : places) list += fmt::format("{}{}", list.empty() ? "" : ", ", cases[i].modalities[0].string());
    for (size_t i : places) drop[i] = true;
    sink.report(
        {id, cases[places[1]].modalities[0], fmt::format("duplicate case id: {} entries ({})", places.size(), list)});
  }
  size_t kept = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    if (drop[i]) continue;
    if (kept != i) cases[kept] = std::move(cases[i]);
    ++kept;
  }
  cases.resize(kept);
}

Discovery discover_brats2018(const fs::path& root, BadCasePolicy policy) {
  Discovery found;
  found.layout = DatasetLayout::brats2018;
  BadCaseSink sink(policy, found.skipped);
  for (const auto& [grade, label] : {std::pair{"HGG", kLabelHGG}, std::pair{"LGG", kLabelLGG}}) {
    if (!fs::is_directory(root / grade)) continue;
    for (const auto& folder : sorted_subfolders(root / grade)) {
      CaseFiles files;
      files.case_id = folder.filename().string();
      files.patient_id = files.case_id;
      files.label = label;
      if (auto bad = scan_case_folder(folder, files)) {
        sink.report(std::move(*bad));
        continue;
      }
      found.cases.push_back(std::move(files));
    }
  }
  drop_duplicate_ids(found.cases, sink);
  std::stable_sort(found.cases.begin(), found.cases.end(),
                   [](const auto& a, const auto& b) { return a.case_id < b.case_id; });
  return found;
}

Discovery discover_brats2020(const fs::path& root, BadCasePolicy policy) {
  Discovery found;
  found.layout = DatasetLayout::brats2020;
  BadCaseSink sink(policy, found.skipped);
  const fs::path mapping_path = root / "name_mapping.csv";
  const CsvTable mapping = read_csv(mapping_path);
  const int grade_col = mapping.column("grade");
  int id_col = mapping.column("brats_2020_subject_id");
  if (id_col < 0) id_col = mapping.column("brats_2019_subject_id");
  if (grade_col < 0 || id_col < 0) {
    throw FormatError(fmt::format("{}: needs columns Grade and BraTS_2020_subject_ID", mapping_path.string()));
  }
  std::map<std::string, std::string> grade_of;
  for (const auto& row : mapping.rows) grade_of[row[id_col]] = row[grade_col];
  for (const auto& folder : sorted_subfolders(root)) {
    CaseFiles files;
    files.case_id = folder.filename().string();
    files.patient_id = files.case_id;
    const auto grade = grade_of.find(files.case_id);
    if (grade == grade_of.end()) {
      sink.report({files.case_id, mapping_path, "case folder has no row in name_mapping.csv"});
      continue;
    }
    const auto label = parse_label(grade->second);
    if (!label) {
      sink.report({files.case_id, mapping_path, fmt::format("grade '{}' is not HGG or LGG", grade->second)});
      continue;
    }
    files.label = *label;
    if (auto bad = scan_case_folder(folder, files)) {
      sink.report(std::move(*bad));
      continue;
    }
    found.cases.push_back(std::move(files));
  }
  drop_duplicate_ids(found.cases, sink);
  return found;
}

}  // namespace

FormatError no_usable_case(std::string_view source, const std::vector<SkippedCase>& skipped) {
  return FormatError(fmt::format("{}: no usable case: {} found, all left out (first: {})", source, skipped.size(),
                                 skipped.front().message()));
}

namespace {

// A discovery that found no usable case is refused: a dataset without cases is a mistake (a wrong
// folder, an empty manifest) that would otherwise surface far from its cause.
Discovery require_cases(Discovery found, const fs::path& source) {
  if (!found.cases.empty()) return found;
  if (found.skipped.empty()) {
    throw FormatError(fmt::format("{}: no case found in this {} dataset", source.string(), layout_name(found.layout)));
  }
  throw no_usable_case(source.string(), found.skipped);
}

}  // namespace

Discovery read_manifest(const fs::path& csv, BadCasePolicy policy) {
  Discovery found;
  found.layout = DatasetLayout::manifest;
  BadCaseSink sink(policy, found.skipped);
  const CsvTable table = read_csv(csv);
  std::array<int, kModalities> modality_col{};
  for (int m = 0; m < kModalities; ++m) modality_col[m] = table.column(kModalityNames[m]);
  const int id_col = table.column("case_id");
  const int label_col = table.column("label");
  if (id_col < 0 || label_col < 0 || *std::min_element(modality_col.begin(), modality_col.end()) < 0) {
    throw FormatError(fmt::format("{}: the header must name case_id,label,flair,t1,t1ce,t2 (optional seg, patient_id)",
                                  csv.string()));
  }
  const int seg_col = table.column("seg");
  const int patient_col = table.column("patient_id");
  const fs::path base = csv.parent_path();
  auto resolve = [&](const std::string& p) {
    return p.empty() ? fs::path{} : fs::path(p).is_absolute() ? fs::path(p) : base / p;
  };

  for (const auto& row : table.rows) {
    CaseFiles files;
    files.case_id = row[id_col];
    files.patient_id = patient_col >= 0 && !row[patient_col].empty() ? row[patient_col] : files.case_id;
    if (files.case_id.empty()) {
      sink.report({"(no id)", csv, "a row has an empty case_id"});
      continue;
    }
    const auto label = parse_label(row[label_col]);
    if (!label) {
      sink.report({files.case_id, csv, fmt::format("label '{}' is not HGG or LGG", row[label_col])});
      continue;
    }
    files.label = *label;
    std::optional<SkippedCase> bad;
    for (int m = 0; m < kModalities && !bad; ++m) {
      files.modalities[m] = resolve(row[modality_col[m]]);
      if (files.modalities[m].empty()) {
        bad = SkippedCase{files.case_id, csv, fmt::format("missing modality {} (empty column)", kModalityNames[m])};
      } else if (!fs::is_regular_file(files.modalities[m])) {
        bad = SkippedCase{files.case_id, files.modalities[m],
                          fmt::format("missing modality {} (no such file)", kModalityNames[m])};
      }
    }
    if (!bad && seg_col >= 0) {
      files.seg = resolve(row[seg_col]);
      if (!files.seg.empty() && !fs::is_regular_file(files.seg)) {
        bad = SkippedCase{files.case_id, files.seg, "segmentation file does not exist"};
      }
    }
    if (bad) {
      sink.report(std::move(*bad));
      continue;
    }
    found.cases.push_back(std::move(files));
  }
  drop_duplicate_ids(found.cases, sink);
  return require_cases(std::move(found), csv);
}

Discovery discover_dataset(const fs::path& root, BadCasePolicy policy) {
  if (fs::is_regular_file(root) && lower(root.extension().string()) == ".csv") return read_manifest(root, policy);
  if (!fs::is_directory(root)) throw FormatError(fmt::format("{}: no such dataset folder or manifest", root.string()));
  if (fs::is_directory(root / "HGG") || fs::is_directory(root / "LGG")) {
    return require_cases(discover_brats2018(root, policy), root);
  }
  if (fs::is_regular_file(root / "name_mapping.csv")) return require_cases(discover_brats2020(root, policy), root);
  throw FormatError(fmt::format(
      "{}: unknown dataset layout (expected HGG/ and LGG/ folders, a name_mapping.csv, or a manifest .csv file)",
      root.string()));
}

namespace {

std::string shape_text(const Image3D& image) {
  return fmt::format("{}x{}x{}", image.dims[0], image.dims[1], image.dims[2]);
}

// One file of a case in canonical order, with how its stored axes were reordered.
struct CanonicalImage {
  Image3D image;
  AxisReorder stored_order;
};

// Why `file` does not lie on the grid of `reference` (both in canonical order), or nothing when it does.
// `reference_name` names the reference's role and file.
std::optional<std::string> geometry_mismatch(const CanonicalImage& file, const CanonicalImage& reference,
                                             std::string_view reference_name) {
  const Image3D& image = file.image;
  const Image3D& other = reference.image;
  if (image.dims != other.dims) {
    return fmt::format("mismatched shape: {} but {} is {}", shape_text(image), reference_name, shape_text(other));
  }
  for (int a = 0; a < 3; ++a) {
    if (std::abs(image.spacing[a] - other.spacing[a]) > 1e-3) {
      return fmt::format("mismatched voxel size: {:.4g}x{:.4g}x{:.4g} mm but {} has {:.4g}x{:.4g}x{:.4g} mm",
                         image.spacing[0], image.spacing[1], image.spacing[2], reference_name, other.spacing[0],
                         other.spacing[1], other.spacing[2]);
    }
  }
  if (image.oriented != other.oriented) {
    return fmt::format("mismatched orientation: {} but {} {}",
                       image.oriented ? "has an sform/qform" : "has no sform/qform", reference_name,
                       other.oriented ? "has one" : "has none");
  }
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 4; ++c) {
      const double tolerance = c == 3 ? 1e-2 : 1e-4;  // mm for the origin, unit-free for directions
      const auto& row = image.voxel_to_world[r];
      const auto& other_row = other.voxel_to_world[r];
      if (std::abs(row[c] - other_row[c]) > tolerance) {
        return fmt::format(
            "mismatched orientation/origin: stored as {}, in {} order its affine row {} is ({:.4g}, "
            "{:.4g}, {:.4g}, {:.4g}) but {} (stored as {}) has ({:.4g}, {:.4g}, {:.4g}, {:.4g})",
            file.stored_order.stored_axes(), kCanonicalAxes, r, row[0], row[1], row[2], row[3], reference_name,
            reference.stored_order.stored_axes(), other_row[0], other_row[1], other_row[2], other_row[3]);
      }
    }
  }
  return std::nullopt;
}

// Reads one file of a case and brings it to the canonical order; an oblique file beyond kMaxObliqueDegrees
// is refused (see there why).
CanonicalImage read_case_file(const CaseFiles& files, const fs::path& path) {
  Image3D stored;
  try {
    stored = read_nifti(path);
  } catch (const NiftiError& e) {
    throw CaseError({files.case_id, path, e.reason()});
  }
  const AxisReorder order = canonical_reorder(stored);
  if (order.oblique_degrees > kMaxObliqueDegrees) {
    throw CaseError({files.case_id, path,
                     fmt::format("oblique voxel axes: {:.1f}° off the world axes (nearest axis order {}), beyond "
                                 "the {}° up to which an oblique image is read in its nearest axis order; resample "
                                 "it to an axis-aligned grid first",
                                 order.oblique_degrees, order.stored_axes(), kMaxObliqueDegrees)});
  }
  return {reorder_to_canonical(stored, order), order};
}

// The warning for a case whose FLAIR is oblique (within kMaxObliqueDegrees) or has no orientation; none for an
// axis-aligned one.
std::optional<std::string> orientation_warning(const CaseFiles& files, const CanonicalImage& flair) {
  const std::string where = fmt::format("case {}: {}", files.case_id, files.modalities[0].string());
  if (!flair.image.oriented) {
    return fmt::format("{}: no sform or qform: orientation unknown, voxels used in their stored order as {}", where,
                       kCanonicalAxes);
  }
  if (flair.stored_order.oblique_degrees <= kAlignedDegrees) return std::nullopt;
  return fmt::format(
      "{}: oblique voxel axes, {:.1f}° off the world axes: read in their nearest axis order ({}, "
      "brought to {}) without resampling, so the model sees the head tilted by that angle",
      where, flair.stored_order.oblique_degrees, flair.stored_order.stored_axes(), kCanonicalAxes);
}

}  // namespace

CaseImages read_case_images(const CaseFiles& files) {
  CaseImages images;
  const CanonicalImage flair = read_case_file(files, files.modalities[0]);
  const std::string flair_name = fmt::format("{} {}", kModalityNames[0], files.modalities[0].string());
  if (auto warning = orientation_warning(files, flair)) images.warnings.push_back(*warning);
  images.modalities[0] = flair.image;
  for (int m = 1; m < kModalities; ++m) {
    CanonicalImage image = read_case_file(files, files.modalities[m]);
    if (auto mismatch = geometry_mismatch(image, flair, flair_name)) {
      throw CaseError({files.case_id, files.modalities[m], *mismatch});
    }
    images.modalities[m] = std::move(image.image);
  }
  if (!files.seg.empty()) {
    CanonicalImage seg = read_case_file(files, files.seg);
    if (auto mismatch = geometry_mismatch(seg, flair, flair_name)) {
      throw CaseError({files.case_id, files.seg, *mismatch});
    }
    images.seg = std::move(seg.image);
    for (float v : images.seg->values) {
      if (v < 0.0f || v > 255.0f || v != std::floor(v)) {
        throw CaseError(
            {files.case_id, files.seg, fmt::format("segmentation value {} is not an integer label in 0..255", v)});
      }
    }
  }
  const auto& reference = images.modalities[0].values;
  bool any_brain = false;
  for (size_t i = 0; i < reference.size() && !any_brain; ++i) {
    for (int m = 0; m < kModalities && !any_brain; ++m) any_brain = images.modalities[m].values[i] != 0.0f;
  }
  if (!any_brain) {
    throw CaseError({files.case_id, files.modalities[0].parent_path(),
                     "empty brain mask: all four modalities are zero everywhere"});
  }
  return images;
}

}  // namespace dsmil::data
