// Cross-validation splits: stratified K-fold over cases (grouped by patient), with a stratified
// inner validation split inside each training fold; splits.json reading and writing.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace dsmil::data {

struct SplitOptions {
  int folds = 5;                     // K >= 2
  double inner_val_fraction = 0.15;  // share of each training fold held out for validation; 0 = none
  uint64_t seed = 0;
};

// Indices into the case list, each sorted ascending. train, inner_val and test are disjoint and
// together hold every case; the test sets of the K folds partition the cases.
struct Fold {
  std::vector<int> train;
  std::vector<int> inner_val;
  std::vector<int> test;
};

struct Splits {
  SplitOptions options;
  std::vector<Fold> folds;
};

// labels[i] in {0, 1}; groups[i] is the patient of case i (cases of one patient always land on the
// same side of every split); pass case ids as groups when there are no patients. A group counts
// for the class most of its cases have. Folds balance each class's cases (greedy, largest groups
// first, ties broken by the seeded shuffle); the inner split takes, per class, whole groups
// until round(fraction * class size) cases are reached (at least one group per class when the
// class has two or more groups in the training fold, never all of them). Throws when there are
// fewer groups than folds or a label is not 0/1.
Splits make_splits(std::span<const int> labels, std::span<const std::string> groups, const SplitOptions& options);

// splits.json: {"folds": K, "inner_val_fraction": f, "seed": s, "cases": N,
//               "splits": [{"fold": k, "train": [ids], "inner_val": [ids], "test": [ids]}, ...]}
// Case ids are stored (not indices) so that the file stays meaningful on its own.
void write_splits_json(const std::filesystem::path& path, const Splits& splits, std::span<const std::string> case_ids);

// Reads splits.json and maps ids back to indices of `case_ids`; throws FormatError when the file is
// malformed, names an unknown case, or does not cover every case exactly once per fold.
Splits read_splits_json(const std::filesystem::path& path, std::span<const std::string> case_ids);

}  // namespace dsmil::data
