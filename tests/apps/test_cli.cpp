// CPU tests of the `dsmil` command line as a user meets it: usage errors exit with status 2 and one line on
// stderr, a mistyped subcommand is answered with the nearest names, `--version` describes the build, and
// no help text cites a document that is not in the clone.
#include <doctest/doctest.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "tests/apps/subprocess.h"

using namespace dsmil;

namespace {

test::Finished run_dsmil(std::vector<std::string> args) {
  args.insert(args.begin(), DSMIL_BINARY);
  return test::run_program(args);
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("usage errors exit with status 2 and one line on stderr naming the problem, errors while running with 1") {
  struct Case {
    std::vector<std::string> args;
    std::string named;
  };
  const std::vector<Case> cases = {
      {{"lr-find", "--bogus"}, "dsmil lr-find: The following argument was not expected: --bogus"},
      {{"lr-find", "--steps", "1"}, "--steps"},     // out of its range
      {{"lr-find", "--steps", "many"}, "--steps"},  // not a number
      {{"lr-find", "--steps"}, "--steps"},          // no value
      {{"eval", "--data", "cases"}, "dsmil eval: --checkpoint is required"},
      {{"export", DSMIL_SOURCE_DIR "/README.md", "--format", "onnx"},
       "dsmil export: --format: onnx not in {safetensors}"},
      {{"export", DSMIL_SOURCE_DIR "/README.md"}, "dsmil export: --format is required"},
      {{"export", "missing.ckpt", "--format", "safetensors"},
       "dsmil export: checkpoint: Path does not exist: missing.ckpt"},
      {{}, "subcommand"},
      {{"tran"}, "dsmil: unknown subcommand 'tran' (did you mean train?)"},
      {{"tarin", "--fold", "1"}, "dsmil: unknown subcommand 'tarin' (did you mean train?)"},
      {{"xyzzy"}, "dsmil: unknown subcommand 'xyzzy' (the subcommands: cohort, preprocess, train, cv,"},
      {{"cv", "--config", "tiny", "--data", ".", "--folds", "1a"}, "--folds '1a': expected fold numbers"},
      {{"reproduce", ".", "--folds", "abc"}, "--folds 'abc': expected fold numbers"},
      {{"reproduce", ".", "--folds", "0,-1"}, "--folds '0,-1': expected fold numbers"},
  };
  for (const Case& c : cases) {
    const test::Finished run = run_dsmil(c.args);
    CAPTURE(c.named);
    CAPTURE(run.err);
    CHECK(run.status == 2);
    CHECK(run.out.empty());
    CHECK(lines_of(run.err).size() == 1);
    CHECK(contains(run.err, c.named));
  }

  const test::Finished running = run_dsmil({"compare", test::scratch("a").string(), test::scratch("b").string()});
  CAPTURE(running.err);
  CHECK(running.status == 1);
  CHECK(lines_of(running.err).size() == 1);
  CHECK(running.err.rfind("dsmil: error: ", 0) == 0);
}

TEST_CASE("dsmil --version prints the version, the commit, the build, the CUDA backend, its libraries and device") {
  const test::Finished run = run_dsmil({"--version"});
  CAPTURE(run.out);
  CAPTURE(run.err);
  CHECK(run.status == 0);
  CHECK(run.err.empty());
  const std::vector<std::string> lines = lines_of(run.out);
#ifdef DSMIL_WITH_CUDA
  // The libraries load without a device, so their line is there on a machine without a GPU too.
  REQUIRE(lines.size() == 6);
  CHECK(lines[3].rfind("CUDA backend: built with CUDA ", 0) == 0);
  CHECK(contains(lines[3], ", cuDNN "));
  CHECK(lines[4].rfind("CUDA libraries loaded: runtime ", 0) == 0);
  CHECK(contains(lines[4], "/libcudnn.so"));
  CHECK(contains(lines[4], "/libcublas.so"));
#else
  REQUIRE(lines.size() == 5);
  CHECK(lines[3] == "CUDA backend: not built (CPU only)");
#endif
  CHECK(lines[0] == "dsmil " DSMIL_VERSION);
  CHECK(lines[1].rfind("commit: ", 0) == 0);
  CHECK(lines[2].rfind("build: ", 0) == 0);
  CHECK(lines.back().rfind("GPU: ", 0) == 0);
  if (const auto head = test::git_head(DSMIL_SOURCE_DIR)) CHECK(lines[1].rfind("commit: " + *head, 0) == 0);
}

TEST_CASE("help texts cite nothing outside the clone and list --version") {
  const test::Finished root = run_dsmil({"--help"});
  REQUIRE(root.status == 0);
  CHECK(contains(root.out, "--version"));
  std::vector<std::string> names, helps = {root.out};
  const std::vector<std::string> lines = lines_of(root.out);
  const auto first = std::find(lines.begin(), lines.end(), "Subcommands:");
  REQUIRE(first != lines.end());
  for (auto line = first + 1; line != lines.end() && line->rfind("  ", 0) == 0; ++line)
    names.push_back(line->substr(2, line->find(' ', 2) - 2));
  CHECK(std::find(names.begin(), names.end(), "bench") != names.end());
  for (const std::string& name : names) {
    const test::Finished sub = run_dsmil({name, "--help"});
    CAPTURE(name);
    CHECK(sub.status == 0);
    helps.push_back(sub.out);
  }
  for (const std::string& help : helps) {
    CAPTURE(help);
    CHECK_FALSE(contains(help, "DESIGN"));
  }
}

TEST_CASE("a cohort of one grade says its AUC is undefined rather than printing nan") {
  const std::string out = (test::scratch("one_grade_cohort") / "cohort").string();
  const test::Finished cohort =
      run_dsmil({"cohort", "--out", out, "--cases", "4", "--dims", "32,32,24", "--hgg-fraction", "1.0"});
  CAPTURE(cohort.out);
  CHECK(cohort.status == 0);
  CHECK(contains(cohort.out, "latent grade score AUC: undefined, the cohort holds one grade only"));
  CHECK_FALSE(contains(cohort.out, "nan"));
}
