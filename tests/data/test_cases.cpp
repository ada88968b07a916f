// Discovery (BraTS 2018 folders, BraTS 2020 name_mapping.csv, manifests) and per-case checks:
// every bad input yields one message naming the case, the file and the reason.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "data/cases.h"
#include "test_helpers.h"

namespace dsmil::data::test {

namespace {

constexpr std::array<int64_t, 3> kDims{20, 18, 16};

}  // namespace

TEST_CASE("cases: BraTS 2018 layout is discovered with labels and seg in a stable order") {
  TempDir dir;
  write_case_folder(dir / "HGG/Brats18_B", "Brats18_B", kLabelHGG, kDims, 1);
  write_case_folder(dir / "HGG/Brats18_A", "Brats18_A", kLabelHGG, kDims, 2);
  write_case_folder(dir / "LGG/Brats18_C", "Brats18_C", kLabelLGG, kDims, 3);
  const Discovery found = discover_dataset(dir.path(), BadCasePolicy::fail);
  CHECK(found.layout == DatasetLayout::brats2018);
  REQUIRE(found.cases.size() == 3);
  CHECK(found.cases[0].case_id == "Brats18_A");
  CHECK(found.cases[1].case_id == "Brats18_B");
  CHECK(found.cases[2].case_id == "Brats18_C");
  CHECK(found.cases[2].label == kLabelLGG);
  CHECK(found.cases[0].modalities[2].filename() == "Brats18_A_t1ce.nii.gz");
  CHECK(found.cases[0].modalities[1].filename() == "Brats18_A_t1.nii.gz");
  CHECK(found.cases[0].seg.filename() == "Brats18_A_seg.nii.gz");
  CHECK(found.skipped.empty());
  const CaseImages images = read_case_images(found.cases[0]);
  CHECK(images.seg.has_value());
  CHECK(images.modalities[3].dims == kDims);
}

TEST_CASE("cases: a missing modality fails or is skipped with its reason") {
  TempDir dir;
  write_case_folder(dir / "HGG/good", "good", kLabelHGG, kDims, 1);
  const CaseFiles bad = write_case_folder(dir / "LGG/bad", "bad", kLabelLGG, kDims, 2);
  fs::remove(bad.modalities[2]);
  try {
    discover_dataset(dir.path(), BadCasePolicy::fail);
    FAIL("expected a CaseError");
  } catch (const CaseError& e) {
    CHECK(contains(e.what(), "case bad: "));
    CHECK(contains(e.what(), "missing modality t1ce (no *_t1ce.nii[.gz] file)"));
  }
  const Discovery found = discover_dataset(dir.path(), BadCasePolicy::skip);
  REQUIRE(found.cases.size() == 1);
  REQUIRE(found.skipped.size() == 1);
  CHECK(found.skipped[0].case_id == "bad");
  CHECK(found.skipped[0].file == dir / "LGG/bad");
}

TEST_CASE("cases: duplicate case ids are all left out with the places named") {
  TempDir dir;
  write_case_folder(dir / "HGG/same", "same", kLabelHGG, kDims, 1);
  write_case_folder(dir / "LGG/same", "same", kLabelLGG, kDims, 2);
  write_case_folder(dir / "LGG/other", "other", kLabelLGG, kDims, 3);
  const Discovery found = discover_dataset(dir.path(), BadCasePolicy::skip);
  REQUIRE(found.cases.size() == 1);
  CHECK(found.cases[0].case_id == "other");
  REQUIRE(found.skipped.size() == 1);
  CHECK(contains(found.skipped[0].message(), "duplicate case id: 2 entries"));
  CHECK_THROWS_AS(discover_dataset(dir.path(), BadCasePolicy::fail), CaseError);
}

TEST_CASE("cases: manifest with patients and relative paths and a bad label") {
  TempDir dir;
  const CaseFiles a = write_case_folder(dir / "imgs/a", "a", kLabelHGG, kDims, 1);
  const CaseFiles b = write_case_folder(dir / "imgs/b", "b", kLabelLGG, kDims, 2);
  std::ofstream csv(dir / "manifest.csv");
  csv << "case_id,label,flair,t1,t1ce,t2,seg,patient_id\n";
  auto row = [&](const std::string& id, const std::string& label, const CaseFiles& f, const std::string& patient) {
    csv << id << ',' << label;
    for (const auto& p : f.modalities) csv << ',' << fs::relative(p, dir.path()).string();
    csv << ',' << fs::relative(f.seg, dir.path()).string() << ',' << patient << '\n';
  };
  row("a1", "HGG", a, "P1");
  row("a2", "hgg", a, "P1");
  row("b1", "LGG", b, "");
  row("c1", "GBM", b, "P3");
  csv.close();
  const Discovery found = read_manifest(dir / "manifest.csv", BadCasePolicy::skip);
  REQUIRE(found.cases.size() == 3);
  CHECK(found.cases[0].patient_id == "P1");
  CHECK(found.cases[1].patient_id == "P1");
  CHECK(found.cases[2].patient_id == "b1");  // no patient: the case is its own
  CHECK(found.cases[2].label == kLabelLGG);
  CHECK(found.cases[0].modalities[0] == dir / "imgs/a/a_flair.nii.gz");
  REQUIRE(found.skipped.size() == 1);
  CHECK(found.skipped[0].message() ==
        fmt::format("case c1: {}: label 'GBM' is not HGG or LGG", (dir / "manifest.csv").string()));
  CHECK(discover_dataset(dir / "manifest.csv", BadCasePolicy::skip).layout == DatasetLayout::manifest);
}

TEST_CASE("cases: a manifest with a byte-order mark, CRLF line ends and quoted fields reads as in pandas") {
  TempDir dir;
  const CaseFiles a = write_case_folder(dir / "imgs/a, \"first\"", "a", kLabelHGG, kDims, 1);
  const CaseFiles b = write_case_folder(dir / "imgs/b", "b", kLabelLGG, kDims, 2);
  auto quoted = [&](const fs::path& p) {
    std::string text = fs::relative(p, dir.path()).string();
    for (size_t at = text.find('"'); at != std::string::npos; at = text.find('"', at + 2)) text.insert(at, "\"");
    return "\"" + text + "\"";
  };
  // what a spreadsheet's "CSV UTF-8" export writes; a quoted line break stays in its field, as in pandas
  std::string csv = "\xEF\xBB\xBF\"case_id\",label,flair,t1,t1ce,t2,patient_id\r\n";
  csv += "\"a,1\",\"HGG\"";
  for (const auto& p : a.modalities) csv += "," + quoted(p);
  csv += ",\"P\r\n1\"\r\n\r\n";
  csv += "b1,LGG";
  for (const auto& p : b.modalities) csv += "," + quoted(p);
  csv += ",\"\"";  // the last record without a line end
  write_bytes(dir / "manifest.csv", {csv.begin(), csv.end()});
  const Discovery found = read_manifest(dir / "manifest.csv", BadCasePolicy::fail);
  REQUIRE(found.cases.size() == 2);
  CHECK(found.cases[0].case_id == "a,1");
  CHECK(found.cases[0].label == kLabelHGG);
  CHECK(found.cases[0].patient_id == "P\r\n1");
  CHECK(found.cases[0].modalities[2] == a.modalities[2]);
  CHECK(found.cases[1].case_id == "b1");
  CHECK(found.cases[1].patient_id == "b1");  // an empty quoted field is empty
  CHECK(found.cases[1].modalities[3] == b.modalities[3]);

  std::ofstream(dir / "open.csv")
      << "case_id,label,flair,t1,t1ce,t2\n\"a,HGG,f,t1,t1ce,t2\n";  // pandas: EOF inside string
  CHECK_THROWS_WITH_AS(read_manifest(dir / "open.csv", BadCasePolicy::skip),
                       doctest::Contains("open.csv: the quoted field opened on line 2 is never closed"), FormatError);
}

TEST_CASE("cases: a dataset without a usable case is one clear error") {
  TempDir dir;
  auto error_of = [](const fs::path& root, BadCasePolicy policy) {
    try {
      discover_dataset(root, policy);
    } catch (const CaseError& e) {
      return std::string("CaseError: ") + e.what();
    } catch (const FormatError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  fs::create_directories(dir / "brats18/HGG");
  fs::create_directories(dir / "brats18/LGG");
  CHECK(error_of(dir / "brats18", BadCasePolicy::fail) ==
        (dir / "brats18").string() + ": no case found in this BraTS 2018/2019 (HGG/LGG folders) dataset");
  fs::create_directories(dir / "brats20");
  std::ofstream(dir / "brats20/name_mapping.csv") << "Grade,BraTS_2020_subject_ID\nHGG,BraTS20_Training_001\n";
  CHECK(contains(error_of(dir / "brats20", BadCasePolicy::skip), ": no case found in this BraTS 2020"));
  std::ofstream(dir / "empty.csv") << "case_id,label,flair,t1,t1ce,t2\n\n";
  CHECK(contains(error_of(dir / "empty.csv", BadCasePolicy::skip),
                 "empty.csv: no case found in this manifest CSV dataset"));

  const CaseFiles bad = write_case_folder(dir / "brats18/LGG/bad", "bad", kLabelLGG, kDims, 2);
  fs::remove(bad.modalities[1]);
  CHECK(error_of(dir / "brats18", BadCasePolicy::skip) ==
        (dir / "brats18").string() + ": no usable case: 1 found, all left out (first: case bad: " +
            (dir / "brats18/LGG/bad").string() + ": missing modality t1 (no *_t1.nii[.gz] file))");
  CHECK(contains(error_of(dir / "brats18", BadCasePolicy::fail), "CaseError: case bad: "));
}

TEST_CASE("cases: BraTS 2020 layout takes grades from name_mapping.csv") {
  TempDir dir;
  write_case_folder(dir / "BraTS20_Training_001", "BraTS20_Training_001", kLabelHGG, kDims, 1);
  write_case_folder(dir / "BraTS20_Training_002", "BraTS20_Training_002", kLabelLGG, kDims, 2);
  write_case_folder(dir / "BraTS20_Training_003", "BraTS20_Training_003", kLabelLGG, kDims, 3);
  std::ofstream(dir / "name_mapping.csv") << "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,"
                                             "BraTS_2019_subject_ID,BraTS_2020_subject_ID\n"
                                          << "HGG,x,x,x,x,BraTS20_Training_001\nLGG,x,x,x,x,BraTS20_Training_002\n";
  const Discovery found = discover_dataset(dir.path(), BadCasePolicy::skip);
  CHECK(found.layout == DatasetLayout::brats2020);
  REQUIRE(found.cases.size() == 2);
  CHECK(found.cases[0].label == kLabelHGG);
  CHECK(found.cases[1].label == kLabelLGG);
  REQUIRE(found.skipped.size() == 1);
  CHECK(contains(found.skipped[0].message(), "BraTS20_Training_003"));
  CHECK(contains(found.skipped[0].message(), "no row in name_mapping.csv"));
}

TEST_CASE("cases: per-case checks name the case and the file and the reason") {
  TempDir dir;
  std::mt19937_64 rng(5);

  SUBCASE("mismatched shape") {
    CaseFiles f = write_case_folder(dir / "x", "x", kLabelHGG, kDims, 1);
    write_nifti<int16_t>(f.modalities[2], {20, 18, 15}, random_brain({20, 18, 15}, rng));
    const std::string message = case_error_of(f);
    CHECK(contains(message, "case x: " + f.modalities[2].string() + ": mismatched shape: 20x18x15 but flair " +
                                f.modalities[0].string() + " is 20x18x16"));
  }
  SUBCASE("mismatched voxel size") {
    CaseFiles f = write_case_folder(dir / "x", "x", kLabelHGG, kDims, 1);
    NiftiWriteOptions options;
    options.spacing = {1.0, 1.0, 1.2};
    write_nifti<int16_t>(f.modalities[1], kDims, random_brain(kDims, rng), options);
    CHECK(contains(case_error_of(f), "mismatched voxel size"));
  }
  SUBCASE("mismatched orientation") {
    CaseFiles f = write_case_folder(dir / "x", "x", kLabelHGG, kDims, 1);
    NiftiWriteOptions options;
    Affine affine = standard_affine(kDims, {1, 1, 1});
    affine[0][0] = 1.0;  // x axis not flipped: same voxel size, other orientation
    options.voxel_to_world = affine;
    write_nifti<int16_t>(f.modalities[3], kDims, random_brain(kDims, rng), options);
    CHECK(contains(case_error_of(f), f.modalities[3].string() + ": mismatched orientation/origin"));
  }
  SUBCASE("seg of another shape") {
    CaseFiles f = write_case_folder(dir / "x", "x", kLabelHGG, kDims, 1);
    write_nifti<uint8_t>(f.seg, {20, 18, 17}, std::vector<uint8_t>(20 * 18 * 17, 0));
    CHECK(contains(case_error_of(f), f.seg.string() + ": mismatched shape"));
  }
  SUBCASE("non-finite values") {
    CaseFiles f = write_case_folder(dir / "x", "x", kLabelHGG, kDims, 1);
    std::vector<float> values(20 * 18 * 16, 3.0f);
    values[100] = std::nanf("");
    f.modalities[0] = dir / "x/x_flair_float.nii";
    write_nifti<float>(f.modalities[0], kDims, values);
    CHECK(contains(case_error_of(f), "case x: " + f.modalities[0].string() + ": non-finite values"));
  }
  SUBCASE("values that overflow float32 after scaling") {
    CaseFiles f = write_case_folder(dir / "x", "x", kLabelHGG, kDims, 1);
    NiftiWriteOptions options;
    options.scl_slope = 1e36;  // a stored 1000 means 1e39, beyond float32
    write_nifti<int16_t>(f.modalities[2], kDims, std::vector<int16_t>(20 * 18 * 16, 1000), options);
    CHECK(contains(case_error_of(f), "case x: " + f.modalities[2].string() +
                                         ": non-finite values (NaN/inf) in 5760 "
                                         "voxels after scaling to float32"));
  }
  SUBCASE("truncated file") {
    CaseFiles f = write_case_folder(dir / "x", "x", kLabelHGG, kDims, 1);
    auto bytes = read_bytes(f.modalities[1]);
    bytes.resize(bytes.size() / 3);
    write_bytes(f.modalities[1], bytes);
    CHECK(contains(case_error_of(f), "case x: " + f.modalities[1].string() + ": truncated"));
  }
  SUBCASE("wrong dimensionality") {
    CaseFiles f = write_case_folder(dir / "x", "x", kLabelHGG, kDims, 1);
    f.modalities[0] = dir / "x/x_flair_2d.nii";  // plain file: dim[0] patched to 2
    write_nifti<int16_t>(f.modalities[0], {20, 18, 1}, std::vector<int16_t>(20 * 18, 5));
    auto bytes = read_bytes(f.modalities[0]);
    const int16_t two = 2;
    std::memcpy(bytes.data() + 40, &two, 2);
    write_bytes(f.modalities[0], bytes);
    CHECK(contains(case_error_of(f), "wrong dimensionality: 2-D image of size 20x18"));
  }
  SUBCASE("empty brain mask") {
    CaseFiles f = write_case_folder(dir / "x", "x", kLabelHGG, kDims, 1);
    for (const auto& p : f.modalities) write_nifti<int16_t>(p, kDims, std::vector<int16_t>(20 * 18 * 16, 0));
    CHECK(case_error_of(f) ==
          "case x: " + (dir / "x").string() + ": empty brain mask: all four modalities are zero everywhere");
  }
  SUBCASE("unreadable file") {
    CaseFiles f = write_case_folder(dir / "x", "x", kLabelHGG, kDims, 1);
    write_bytes(f.modalities[2], std::vector<char>(500, 'z'));
    CHECK(contains(case_error_of(f), "case x: " + f.modalities[2].string() + ": not a NIfTI file"));
  }
}

}  // namespace dsmil::data::test
