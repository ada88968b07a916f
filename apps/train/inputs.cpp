// Hashes of a run's inputs. The source files are hashed when a run starts, right after the preprocessing pass
// (their pages are then in the OS cache when that pass has just read them); the arrays are hashed from the
// memory that training reads.
#include "apps/train/inputs.h"

#include <map>
#include <set>

#include <fmt/format.h>

#include "apps/provenance.h"
#include "data/parallel.h"

namespace dsmil::app {

namespace fs = std::filesystem;

namespace {

template <class T>
std::span<const uint8_t> bytes_of(std::span<const T> values) {
  return {reinterpret_cast<const uint8_t*>(values.data()), values.size_bytes()};
}

// (role, file) of a case's sources: the four modalities, then the segmentation when it has one.
std::vector<std::pair<std::string, fs::path>> source_files(const data::CaseFiles& files) {
  std::vector<std::pair<std::string, fs::path>> out;
  for (int m = 0; m < data::kModalities; ++m) out.emplace_back(data::kModalityNames[m], files.modalities[m]);
  if (!files.seg.empty()) out.emplace_back("seg", files.seg);
  return out;
}

// SHA-256 of every source file of `cases`, one map role -> digest per case, hashed in parallel.
std::vector<std::map<std::string, std::string>> hash_sources(const std::vector<const data::CaseFiles*>& cases,
                                                             int threads) {
  std::vector<std::map<std::string, std::string>> digests(cases.size());
  data::parallel_for(cases.size(), threads, [&](size_t i) {
    for (const auto& [role, path] : source_files(*cases[i])) digests[i][role] = sha256_file_hex(path);
  });
  return digests;
}

std::map<std::string, const data::CaseFiles*> by_case_id(std::span<const data::CaseFiles> sources) {
  std::map<std::string, const data::CaseFiles*> index;
  for (const data::CaseFiles& files : sources) index[files.case_id] = &files;
  return index;
}

}  // namespace

std::string arrays_sha256(const data::CaseVolume& volume) {
  return sha256_hex({bytes_of(volume.image), bytes_of(volume.brain_mask), bytes_of(volume.seg)});
}

nlohmann::json inputs_json(const RunConfig& config, std::span<const data::CaseFiles> sources,
                           std::span<const data::CaseVolume> cases, std::span<const data::SkippedCase> skipped,
                           int threads) {
  const auto index = by_case_id(sources);
  std::vector<const data::CaseFiles*> files;
  for (const data::CaseVolume& volume : cases) {
    const auto found = index.find(volume.case_id);
    if (found == index.end())
      throw Error(
          fmt::format("inputs.json: case {} was preprocessed but is not among the discovered cases", volume.case_id));
    files.push_back(found->second);
  }
  const auto digests = hash_sources(files, threads);
  std::vector<std::string> arrays(cases.size());
  data::parallel_for(cases.size(), threads, [&](size_t i) { arrays[i] = arrays_sha256(cases[i]); });

  std::vector<int64_t> seeds;
  for (int repeat = 0; repeat < config.repeats; ++repeat) seeds.push_back(config.seed + repeat);
  const data::GridShape grid = data::parse_grid(config.grid);
  nlohmann::json out = {{"format", 1},
                        {"hash", "sha256"},
                        {"data_root", config.data_root},
                        {"preprocess", {{"grid", {grid.depth, grid.height, grid.width}}, {"image_dtype", "float16"}}},
                        {"splits",
                         {{"seed", config.seed},
                          {"repeat_seeds", seeds},
                          {"folds", config.folds},
                          {"inner_val", config.inner_val},
                          {"select_on_test", config.select_on_test}}},
                        {"cases", nlohmann::json::array()},
                        {"skipped", nlohmann::json::array()}};
  for (size_t i = 0; i < cases.size(); ++i) {
    nlohmann::json record = {{"case_id", cases[i].case_id},
                             {"label", cases[i].label},
                             {"files", nlohmann::json::object()},
                             {"arrays_sha256", arrays[i]}};
    for (const auto& [role, path] : source_files(*files[i]))
      record["files"][role] = {{"path", path.string()}, {"sha256", digests[i].at(role)}};
    out["cases"].push_back(std::move(record));
  }
  for (const data::SkippedCase& s : skipped)
    out["skipped"].push_back({{"case_id", s.case_id}, {"file", s.file.string()}, {"reason", s.reason}});
  return out;
}

void check_source_files(const nlohmann::json& recorded, std::span<const data::CaseFiles> sources, int threads) {
  const auto index = by_case_id(sources);
  std::set<std::string> known;
  for (const nlohmann::json& s : recorded.at("skipped")) known.insert(s.at("case_id").get<std::string>());
  std::vector<const data::CaseFiles*> files;
  for (const nlohmann::json& record : recorded.at("cases")) {
    const std::string case_id = record.at("case_id").get<std::string>();
    known.insert(case_id);
    const auto found = index.find(case_id);
    if (found == index.end())
      throw InputChanged(case_id, {},
                         fmt::format("case {}: recorded in inputs.json, but the data holds no such case now", case_id));
    files.push_back(found->second);
  }
  for (const data::CaseFiles& files_now : sources)
    if (!known.count(files_now.case_id))
      throw InputChanged(files_now.case_id, files_now.modalities[0].parent_path(),
                         fmt::format("case {}: in the data now ({}), but not among the run's recorded cases",
                                     files_now.case_id, files_now.modalities[0].parent_path().string()));
  const auto digests = hash_sources(files, threads);
  for (size_t i = 0; i < files.size(); ++i) {
    const nlohmann::json& record = recorded.at("cases")[i];
    const std::string case_id = record.at("case_id").get<std::string>();
    const auto& files_recorded = record.at("files");
    for (const auto& [role, path] : source_files(*files[i])) {
      if (!files_recorded.contains(role))
        throw InputChanged(case_id, path,
                           fmt::format("case {}: {} ({}) was not among the run's files", case_id, role, path.string()));
      const std::string digest_then = files_recorded.at(role).at("sha256").get<std::string>();
      if (digests[i].at(role) != digest_then)
        throw InputChanged(case_id, path,
                           fmt::format("case {}: {} file {} has changed since the run (SHA-256 recorded {}, now {})",
                                       case_id, role, path.string(), digest_then, digests[i].at(role)));
    }
    if (files_recorded.size() != source_files(*files[i]).size())
      throw InputChanged(case_id, files[i]->modalities[0].parent_path(),
                         fmt::format("case {}: the run had {} files, the data holds {} now", case_id,
                                     files_recorded.size(), source_files(*files[i]).size()));
  }
}

std::vector<std::string> array_differences(const nlohmann::json& recorded, const nlohmann::json& now) {
  std::map<std::string, std::string> arrays_now;
  for (const nlohmann::json& record : now.at("cases"))
    arrays_now[record.at("case_id").get<std::string>()] = record.at("arrays_sha256").get<std::string>();
  std::vector<std::string> differences;
  for (const nlohmann::json& record : recorded.at("cases")) {
    const std::string case_id = record.at("case_id").get<std::string>();
    const std::string then = record.at("arrays_sha256").get<std::string>();
    const auto found = arrays_now.find(case_id);
    if (found == arrays_now.end())
      differences.push_back(fmt::format("{}: not preprocessed now", case_id));
    else if (found->second != then)
      differences.push_back(fmt::format("{}: recorded {}, now {}", case_id, then, found->second));
  }
  return differences;
}

}  // namespace dsmil::app
