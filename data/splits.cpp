// Stratified, patient-grouped K-fold splits with a stratified inner validation split per fold, and
// their splits.json form.
#include "data/splits.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <numeric>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "data/rng.h"
#include "base/error.h"

namespace dsmil::data {

namespace {

struct Group {
  std::vector<int> cases;
  int label = 0;
};

void shuffle(std::vector<int>& items, Rng& rng) {
  for (size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[uniform_index(rng, i)]);
}

}  // namespace

Splits make_splits(std::span<const int> labels, std::span<const std::string> groups, const SplitOptions& options) {
  if (labels.size() != groups.size()) {
    throw Error(fmt::format("make_splits: {} labels but {} group names", labels.size(), groups.size()));
  }
  if (options.folds < 2) throw Error(fmt::format("make_splits: {} folds (need at least 2)", options.folds));
  if (!(options.inner_val_fraction >= 0.0 && options.inner_val_fraction < 1.0)) {
    throw Error(fmt::format("make_splits: inner validation fraction {} not in [0, 1)", options.inner_val_fraction));
  }
  std::map<std::string, int> group_index;
  std::vector<Group> all_groups;
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] != 0 && labels[i] != 1) throw Error(fmt::format("make_splits: label {} is not 0 or 1", labels[i]));
    auto [it, inserted] = group_index.emplace(groups[i], static_cast<int>(all_groups.size()));
    if (inserted) all_groups.emplace_back();
    all_groups[it->second].cases.push_back(static_cast<int>(i));
  }
  if (static_cast<int>(all_groups.size()) < options.folds) {
    throw Error(fmt::format("make_splits: {} patients/cases cannot fill {} folds", all_groups.size(), options.folds));
  }
  for (auto& g : all_groups) {
    const auto positives = std::count_if(g.cases.begin(), g.cases.end(), [&](int i) { return labels[i] == 1; });
    g.label = 2 * positives >= static_cast<int64_t>(g.cases.size()) ? 1 : 0;
  }

  // Assign groups to test folds, per class, largest first, each to the fold with the fewest cases of
  // that class (then fewest cases overall, then lowest index).
  const int K = options.folds;
  std::vector<int> fold_of_group(all_groups.size(), 0);
  std::vector<std::array<int, 2>> class_count(K, {0, 0});
  std::vector<int> total_count(K, 0);
  Rng rng = make_rng(options.seed, {0xF01Du});
  for (int cls : {1, 0}) {
    std::vector<int> members;
    for (int g = 0; g < static_cast<int>(all_groups.size()); ++g) {
      if (all_groups[g].label == cls) members.push_back(g);
    }
    shuffle(members, rng);
    std::stable_sort(members.begin(), members.end(),
                     [&](int a, int b) { return all_groups[a].cases.size() > all_groups[b].cases.size(); });
    for (int g : members) {
      int best = 0;
      for (int f = 1; f < K; ++f) {
        if (std::tie(class_count[f][cls], total_count[f]) < std::tie(class_count[best][cls], total_count[best]))
          best = f;
      }
      fold_of_group[g] = best;
      class_count[best][cls] += static_cast<int>(all_groups[g].cases.size());
      total_count[best] += static_cast<int>(all_groups[g].cases.size());
    }
  }

  Splits splits;
  splits.options = options;
  for (int k = 0; k < K; ++k) {
    Fold fold;
    Rng inner_rng = make_rng(options.seed, {0x1AAEu, static_cast<uint64_t>(k)});
    for (int cls : {1, 0}) {
      std::vector<int> training_groups;
      int class_cases = 0;
      for (int g = 0; g < static_cast<int>(all_groups.size()); ++g) {
        if (all_groups[g].label != cls) continue;
        if (fold_of_group[g] == k) {
          fold.test.insert(fold.test.end(), all_groups[g].cases.begin(), all_groups[g].cases.end());
        } else {
          training_groups.push_back(g);
          class_cases += static_cast<int>(all_groups[g].cases.size());
        }
      }
      shuffle(training_groups, inner_rng);
      const auto target = static_cast<int>(std::lround(options.inner_val_fraction * class_cases));
      int taken = 0;
      for (size_t j = 0; j < training_groups.size(); ++j) {
        const auto& cases = all_groups[training_groups[j]].cases;
        const bool wanted = taken < target || (taken == 0 && options.inner_val_fraction > 0.0);
        const bool last_group = j + 1 == training_groups.size();  // one group always stays in training
        auto& side = wanted && !last_group ? fold.inner_val : fold.train;
        side.insert(side.end(), cases.begin(), cases.end());
        if (&side == &fold.inner_val) taken += static_cast<int>(cases.size());
      }
    }
    std::sort(fold.train.begin(), fold.train.end());
    std::sort(fold.inner_val.begin(), fold.inner_val.end());
    std::sort(fold.test.begin(), fold.test.end());
    splits.folds.push_back(std::move(fold));
  }
  return splits;
}

void write_splits_json(const std::filesystem::path& path, const Splits& splits, std::span<const std::string> case_ids) {
  auto ids = [&](const std::vector<int>& indices) {
    nlohmann::json list = nlohmann::json::array();
    for (int i : indices) list.push_back(case_ids[i]);
    return list;
  };
  nlohmann::json doc;
  doc["folds"] = splits.options.folds;
  doc["inner_val_fraction"] = splits.options.inner_val_fraction;
  doc["seed"] = splits.options.seed;
  doc["cases"] = case_ids.size();
  doc["splits"] = nlohmann::json::array();
  for (size_t k = 0; k < splits.folds.size(); ++k) {
    const Fold& f = splits.folds[k];
    doc["splits"].push_back(
        {{"fold", k}, {"train", ids(f.train)}, {"inner_val", ids(f.inner_val)}, {"test", ids(f.test)}});
  }
  std::ofstream out(path);
  out << doc.dump(1) << '\n';
  if (!out) throw FormatError(fmt::format("{}: cannot write", path.string()));
}

Splits read_splits_json(const std::filesystem::path& path, std::span<const std::string> case_ids) {
  std::ifstream in(path);
  if (!in) throw FormatError(fmt::format("{}: cannot open", path.string()));
  std::map<std::string, int> index_of;
  for (size_t i = 0; i < case_ids.size(); ++i) index_of[case_ids[i]] = static_cast<int>(i);
  try {
    const nlohmann::json doc = nlohmann::json::parse(in);
    Splits splits;
    splits.options.folds = doc.at("folds").get<int>();
    splits.options.inner_val_fraction = doc.at("inner_val_fraction").get<double>();
    splits.options.seed = doc.at("seed").get<uint64_t>();
    for (const auto& entry : doc.at("splits")) {
      Fold fold;
      std::vector<int> seen(case_ids.size(), 0);
      for (auto [name, target] :
           {std::pair{"train", &fold.train}, std::pair{"inner_val", &fold.inner_val}, std::pair{"test", &fold.test}}) {
        for (const auto& id : entry.at(name)) {
          const auto it = index_of.find(id.get<std::string>());
          if (it == index_of.end()) {
            throw FormatError(fmt::format("{}: fold {} names case '{}', which is not in the dataset", path.string(),
                                          splits.folds.size(), id.get<std::string>()));
          }
          target->push_back(it->second);
          ++seen[it->second];
        }
        std::sort(target->begin(), target->end());
      }
      for (size_t i = 0; i < seen.size(); ++i) {
        if (seen[i] != 1) {
          throw FormatError(fmt::format("{}: fold {} has case '{}' {} times (must be exactly once)", path.string(),
                                        splits.folds.size(), case_ids[i], seen[i]));
        }
      }
      splits.folds.push_back(std::move(fold));
    }
    if (static_cast<int>(splits.folds.size()) != splits.options.folds) {
      throw FormatError(
          fmt::format("{}: {} folds listed, header says {}", path.string(), splits.folds.size(), splits.options.folds));
    }
    return splits;
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}: malformed splits file: {}", path.string(), e.what()));
  }
}

}  // namespace dsmil::data
