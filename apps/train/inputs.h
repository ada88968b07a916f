// RUN_DIR/inputs.json (apps/report/FORMAT.md): the content of a run's data, so that "the same data" is a
// checkable statement rather than a path: per case the SHA-256 of its source NIfTI files and of the
// preprocessed arrays the training used, with the preprocessing parameters and the split seeds.
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/train/config.h"
#include "data/cases.h"
#include "data/preprocess.h"
#include "base/error.h"

namespace dsmil::app {

// SHA-256 of a preprocessed case's arrays as training reads them: the float16 image [4][D][H][W], then the
// brain mask [D][H][W], then the segmentation [D][H][W] when the case has one (native little-endian bytes).
std::string arrays_sha256(const data::CaseVolume& volume);

// The inputs.json record of `cases` (preprocessed, in the run's order) whose sources are among `sources`
// (matched by case id), with `skipped` listed; the files are hashed on `threads` threads.
nlohmann::json inputs_json(const RunConfig& config, std::span<const data::CaseFiles> sources,
                           std::span<const data::CaseVolume> cases, std::span<const data::SkippedCase> skipped,
                           int threads);

// A recorded input that is not what the data holds now: a case's file whose content differs, a case
// that is gone, or a case the record does not know.
class InputChanged : public Error {
 public:
  InputChanged(std::string case_id, std::filesystem::path file, const std::string& what)
      : Error(what), case_id_(std::move(case_id)), file_(std::move(file)) {}
  const std::string& case_id() const { return case_id_; }
  const std::filesystem::path& file() const { return file_; }

 private:
  std::string case_id_;
  std::filesystem::path file_;
};

// Hashes the source files of `recorded` (an inputs.json) as `sources` (the dataset discovered now) holds
// them; throws InputChanged for the first case, in the record's order, whose files differ or that is
// missing, and for a case of `sources` neither recorded nor skipped by the run.
void check_source_files(const nlohmann::json& recorded, std::span<const data::CaseFiles> sources, int threads);

// Cases whose preprocessed arrays differ between two inputs.json records, as "case: recorded X, now Y".
std::vector<std::string> array_differences(const nlohmann::json& recorded, const nlohmann::json& now);

}  // namespace dsmil::app
