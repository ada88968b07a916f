// BestFitArena (the layout of a CUDA graph recording's memory): best fit and merging on small cases, then a long
// random sequence of takes and give-backs against a byte-level model of the range that recomputes the best fit.
#include <doctest/doctest.h>

#include <map>
#include <random>
#include <vector>

#include "base/error.h"
#include "tensor/best_fit_arena.h"

using namespace dsmil;

namespace {
constexpr size_t A = BestFitArena::kAlignment;
}

TEST_CASE("BestFitArena: sizes rounded to the alignment, the smallest hole that fits, neighbours merged") {
  BestFitArena arena(10 * A + 7);  // the odd tail is not usable
  CHECK(arena.capacity() == 10 * A);
  CHECK(arena.take(0) == 0u);     // 0 bytes still takes one aligned block
  CHECK(arena.take(A + 1) == A);  // 2 blocks
  CHECK(arena.take(A) == 3 * A);  // 1 block
  CHECK(arena.take(3 * A) == 4 * A);
  CHECK(arena.take(A) == 7 * A);
  CHECK(arena.high_water() == 8 * A);
  arena.give_back(A);      // hole of 2 at 1
  arena.give_back(4 * A);  // hole of 3 at 4
  CHECK(arena.taken_blocks() == 3);
  CHECK(arena.taken_bytes() == 3 * A);
  CHECK(arena.take(A) == A);          // the 2-block hole is the best fit, not the 3-block one or the tail
  CHECK(arena.take(3 * A) == 4 * A);  // the 3-block hole exactly
  CHECK(arena.take(2 * A) == 8 * A);  // only the tail holds 2 now
  CHECK(arena.high_water() == 10 * A);
  CHECK(arena.take(1) == 2 * A);  // the 1-block hole the first take left
  CHECK_FALSE(arena.take(1).has_value());
  for (size_t offset : {size_t{0}, A, 2 * A, 3 * A, 4 * A, 7 * A, 8 * A}) arena.give_back(offset);
  CHECK(arena.taken_blocks() == 0);
  CHECK(arena.take(10 * A) == 0u);  // every block merged back into one
  CHECK_THROWS_WITH_AS(arena.give_back(A), doctest::Contains("offset 256 was not taken"), Error);
  arena.give_back(0);
  CHECK_THROWS_AS(arena.give_back(0), Error);
}

TEST_CASE("BestFitArena: 4000 random takes and give-backs agree with a byte-level model's best fit") {
  constexpr size_t kBlocks = 512;
  BestFitArena arena(kBlocks * A);
  std::vector<bool> used(kBlocks, false);  // the model: which aligned blocks are taken
  std::map<size_t, size_t> live;           // offset -> blocks
  std::mt19937 rng(20261206);
  size_t high_water = 0, failures = 0;
  for (int i = 0; i < 4000; ++i) {
    if (!live.empty() && rng() % 5 < 2) {
      auto victim = live.begin();
      std::advance(victim, rng() % live.size());
      arena.give_back(victim->first * A);
      for (size_t b = 0; b < victim->second; ++b) used[victim->first + b] = false;
      live.erase(victim);
      continue;
    }
    const size_t bytes = 1 + rng() % (24 * A);
    const size_t blocks = (bytes + A - 1) / A;
    // The model's best fit: the smallest maximal run of free blocks that holds `blocks`, lowest offset on ties.
    std::optional<size_t> expected;
    size_t expected_run = 0;
    for (size_t start = 0; start < kBlocks;) {
      if (used[start]) {
        ++start;
        continue;
      }
      size_t end = start;
      while (end < kBlocks && !used[end]) ++end;
      if (end - start >= blocks && (!expected || end - start < expected_run)) {
        expected = start;
        expected_run = end - start;
      }
      start = end;
    }
    const std::optional<size_t> got = arena.take(bytes);
    REQUIRE(got.has_value() == expected.has_value());
    if (!got) {
      ++failures;
      continue;
    }
    REQUIRE(*got == *expected * A);
    for (size_t b = 0; b < blocks; ++b) used[*expected + b] = true;
    live.emplace(*expected, blocks);
    high_water = std::max(high_water, (*expected + blocks) * A);
    CHECK(arena.high_water() == high_water);
  }
  size_t taken = 0;
  for (const auto& [offset, blocks] : live) taken += blocks * A;
  CHECK(arena.taken_bytes() == taken);
  CHECK(arena.taken_blocks() == live.size());
  MESSAGE("takes that found no block: " << failures << ", high water " << high_water / A << " of " << kBlocks);
  CHECK(failures > 0);  // the sequence filled the range at times, so the refusals were compared too
}
