// Folds: partition, stratification, grouping by patient, inner split share, determinism, and the
// splits.json round trip with its refusals.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <set>

#include "data/splits.h"
#include "base/error.h"
#include "test_helpers.h"

namespace dsmil::data::test {

namespace {

struct Cohort {
  std::vector<int> labels;
  std::vector<std::string> ids, patients;
};

Cohort make_cohort(int n, int positives, int scans_per_patient, uint64_t seed) {
  Cohort c;
  std::mt19937_64 rng(seed);
  for (int i = 0; i < n; ++i) {
    c.ids.push_back("case" + std::to_string(i));
    c.labels.push_back(i < positives ? 1 : 0);
    // patients hold consecutive cases of one label; some patients have several scans
    const int patient = scans_per_patient > 1 && rng() % 2 ? i / scans_per_patient : 1000 + i;
    c.patients.push_back("P" + std::to_string(patient) + (i < positives ? "h" : "l"));
  }
  return c;
}

void check_properties(const Cohort& c, const Splits& s, bool grouped) {
  const int n = static_cast<int>(c.labels.size());
  std::vector<int> tested(n, 0);
  for (const Fold& f : s.folds) {
    std::vector<int> side(n, -1);
    for (auto [set, id] : {std::pair{&f.train, 0}, std::pair{&f.inner_val, 1}, std::pair{&f.test, 2}}) {
      CHECK(std::is_sorted(set->begin(), set->end()));
      for (int i : *set) {
        CHECK(side[i] == -1);  // disjoint
        side[i] = id;
      }
    }
    CHECK(std::count(side.begin(), side.end(), -1) == 0);  // complete
    for (int i : f.test) ++tested[i];
    if (grouped) {
      std::map<std::string, int> side_of_patient;
      for (int i = 0; i < n; ++i) {
        auto [it, inserted] = side_of_patient.emplace(c.patients[i], side[i]);
        CHECK(it->second == side[i]);  // no patient on two sides
      }
    }
  }
  CHECK(std::all_of(tested.begin(), tested.end(), [](int t) { return t == 1; }));  // test sets partition
}

}  // namespace

TEST_CASE("splits: stratified K-fold partitions the cases with balanced classes") {
  const Cohort c = make_cohort(285, 210, 1, 1);
  const Splits s = make_splits(c.labels, c.ids, {5, 0.15, 42});
  REQUIRE(s.folds.size() == 5);
  check_properties(c, s, false);
  for (const Fold& f : s.folds) {
    const auto positives = std::count_if(f.test.begin(), f.test.end(), [&](int i) { return c.labels[i] == 1; });
    CHECK(positives == 42);      // 210 / 5 exactly
    CHECK(f.test.size() == 57);  // 75 / 5 = 15 negatives
    const auto inner_pos =
        std::count_if(f.inner_val.begin(), f.inner_val.end(), [&](int i) { return c.labels[i] == 1; });
    CHECK(inner_pos == 25);                                        // round(0.15 * 168)
    CHECK(static_cast<int>(f.inner_val.size()) - inner_pos == 9);  // round(0.15 * 60)
  }
}

TEST_CASE("splits: uneven class sizes differ by at most one case per fold") {
  const Cohort c = make_cohort(37, 26, 1, 2);
  const Splits s = make_splits(c.labels, c.ids, {5, 0.15, 3});
  check_properties(c, s, false);
  std::vector<int> pos, neg;
  for (const Fold& f : s.folds) {
    const auto p = std::count_if(f.test.begin(), f.test.end(), [&](int i) { return c.labels[i] == 1; });
    pos.push_back(static_cast<int>(p));
    neg.push_back(static_cast<int>(f.test.size() - p));
  }
  CHECK(*std::max_element(pos.begin(), pos.end()) - *std::min_element(pos.begin(), pos.end()) <= 1);
  CHECK(*std::max_element(neg.begin(), neg.end()) - *std::min_element(neg.begin(), neg.end()) <= 1);
}

TEST_CASE("splits: patients never straddle a split") {
  const Cohort c = make_cohort(120, 80, 3, 4);
  REQUIRE(std::set<std::string>(c.patients.begin(), c.patients.end()).size() < 120);
  const Splits s = make_splits(c.labels, c.patients, {5, 0.2, 9});
  check_properties(c, s, true);
  for (const Fold& f : s.folds) {
    CHECK(f.test.size() >= 18);
    CHECK(f.test.size() <= 30);
    CHECK(!f.inner_val.empty());
  }
}

TEST_CASE("splits: the same seed gives the same splits and another seed other splits") {
  const Cohort c = make_cohort(60, 40, 1, 5);
  const Splits a = make_splits(c.labels, c.ids, {5, 0.15, 11});
  const Splits b = make_splits(c.labels, c.ids, {5, 0.15, 11});
  const Splits other = make_splits(c.labels, c.ids, {5, 0.15, 12});
  for (int k = 0; k < 5; ++k) {
    CHECK(a.folds[k].test == b.folds[k].test);
    CHECK(a.folds[k].inner_val == b.folds[k].inner_val);
  }
  bool differs = false;
  for (int k = 0; k < 5; ++k) differs = differs || a.folds[k].test != other.folds[k].test;
  CHECK(differs);
  const Splits no_inner = make_splits(c.labels, c.ids, {4, 0.0, 11});
  for (const Fold& f : no_inner.folds) CHECK(f.inner_val.empty());
  CHECK_THROWS_AS(make_splits(std::vector<int>{1, 0, 1}, std::vector<std::string>{"a", "b", "c"}, {5, 0.1, 1}), Error);
}

TEST_CASE("splits: splits.json round trip and refusals") {
  TempDir dir;
  const Cohort c = make_cohort(40, 30, 1, 6);
  const Splits s = make_splits(c.labels, c.ids, {5, 0.15, 13});
  write_splits_json(dir / "splits.json", s, c.ids);
  const Splits back = read_splits_json(dir / "splits.json", c.ids);
  CHECK(back.options.folds == 5);
  CHECK(back.options.seed == 13);
  for (int k = 0; k < 5; ++k) {
    CHECK(back.folds[k].train == s.folds[k].train);
    CHECK(back.folds[k].inner_val == s.folds[k].inner_val);
    CHECK(back.folds[k].test == s.folds[k].test);
  }
  auto fewer = c.ids;
  fewer.pop_back();
  CHECK_THROWS_AS(read_splits_json(dir / "splits.json", fewer), FormatError);  // names an unknown case
  auto more = c.ids;
  more.push_back("extra");
  CHECK_THROWS_AS(read_splits_json(dir / "splits.json", more), FormatError);  // misses a case
  std::ofstream(dir / "bad.json") << "{\"folds\": 5, \"splits\": [";
  CHECK_THROWS_AS(read_splits_json(dir / "bad.json", c.ids), FormatError);
}

}  // namespace dsmil::data::test
