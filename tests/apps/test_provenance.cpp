// CPU tests of apps/provenance.h: the record's fields with the commit of the checkout this test was built
// from, SHA-256 against the FIPS 180-2 examples (of a text, of pieces, of a file), and the build's git lookup
// (apps/git_revision.cmake) on a scratch repository.
#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "apps/provenance.h"
#include "base/error.h"
#include "tests/apps/subprocess.h"

using namespace dsmil;
namespace fs = std::filesystem;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("provenance records the build, this process and the commit of the checkout it was built from") {
  app::Provenance provenance = app::current_provenance();
  const nlohmann::json j = provenance.to_json();
  CAPTURE(j.dump(2));
  for (const char* key : {"version", "commit", "dirty", "build_type", "compiler", "cuda_backend", "cuda_toolkit",
                          "cuda_headers", "cuda", "command_line", "config_sha256"})
    CHECK(j.contains(key));
  CHECK(j["version"] == DSMIL_VERSION);
  CHECK_FALSE(j["build_type"].get<std::string>().empty());
  CHECK_FALSE(j["compiler"].get<std::string>().empty());
#ifdef DSMIL_WITH_CUDA
  CHECK(j["cuda_backend"] == true);
  CHECK(j["cuda_toolkit"].is_string());
  for (const char* key : {"cudnn", "cublas"}) CHECK_FALSE(j["cuda_headers"][key].get<std::string>().empty());
  if (j["cuda"].is_object())
    for (const char* key : {"gpu", "driver", "runtime", "cudnn", "cublas", "cudnn_file"})
      CHECK_FALSE(j["cuda"][key].get<std::string>().empty());
#else
  CHECK(j["cuda_backend"] == false);
  CHECK(j["cuda_toolkit"].is_null());
  CHECK(j["cuda_headers"].is_null());
  CHECK(j["cuda"].is_null());
#endif
  REQUIRE_FALSE(j["command_line"].empty());
  CHECK(fs::path(j["command_line"][0].get<std::string>()).filename() == fs::read_symlink("/proc/self/exe").filename());
  CHECK(j["config_sha256"].is_null());
  provenance.config_sha256 = app::sha256_hex("[train]\nlr = 1e-4\n");
  CHECK(provenance.to_json()["config_sha256"] == *provenance.config_sha256);

  if (const auto head = test::git_head(DSMIL_SOURCE_DIR)) {
    CHECK(j["commit"] == *head);
    CHECK(j["dirty"].is_boolean());
  }
}

TEST_CASE("sha256_hex gives the digests of the FIPS 180-2 examples") {
  CHECK(app::sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(app::sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(app::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(app::sha256_hex(std::string(1000000, 'a')) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("sha256 of byte ranges is the digest of their concatenation, and of a file its bytes' digest") {
  const std::string a = "abcdbcdecdefdefgefghfghighij", b = "hijkijkljklmklmnlmnomnopnopq";
  const auto bytes = [](const std::string& text) {
    return std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  };
  CHECK(app::sha256_hex({bytes(a), bytes(b)}) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // Larger than one read chunk (1 MiB), so that the file is hashed in several pieces.
  const fs::path file = test::scratch("hashed") / "a_million_and_more";
  const std::string text(3u << 20, 'a');
  std::ofstream(file, std::ios::binary) << text;
  CHECK(app::sha256_file_hex(file) == app::sha256_hex(text));
  CHECK_THROWS_AS(app::sha256_file_hex(test::scratch("hashed") / "absent"), Error);
}

TEST_CASE("the build's git lookup follows commits and edits, and rewrites its header only when it changes") {
  const fs::path repo = test::scratch("repo");
  const fs::path header = test::scratch("generated") / "git_revision.h";
  const auto generate = [&](const fs::path& source) {
    const test::Finished cmake =
        test::run_program({CMAKE_COMMAND, "-DSOURCE_DIR=" + source.string(), "-DOUTPUT=" + header.string(), "-P",
                           DSMIL_SOURCE_DIR "/apps/git_revision.cmake"});
    CAPTURE(cmake.err);
    REQUIRE(cmake.status == 0);
    return test::file_text(header);
  };
  const auto git = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"git", "-C", repo.string(), "-c", "user.name=test", "-c", "user.email=test@example.org",
                               "-c", "commit.gpgsign=false"});
    return test::run_program(args).status;
  };
  const auto write = [&](const std::string& name, const std::string& text) { std::ofstream(repo / name) << text; };

  std::string text = generate(repo);
  CHECK(contains(text, "DSMIL_GIT_COMMIT \"unknown\""));
  CHECK(contains(text, "DSMIL_GIT_DIRTY -1"));
  if (git({"init", "-q"}) == 127) {
    MESSAGE("git is not installed: the lookup in a checkout is not tested");
    return;
  }
  write("a.txt", "one\n");
  REQUIRE(git({"add", "a.txt"}) == 0);
  REQUIRE(git({"commit", "-q", "-m", "one"}) == 0);
  const auto first = test::git_head(repo.string());
  REQUIRE(first);
  text = generate(repo);
  CHECK(contains(text, "DSMIL_GIT_COMMIT \"" + *first + "\""));
  CHECK(contains(text, "DSMIL_GIT_DIRTY 0"));

  // Unchanged, the header keeps its time stamp, so that nothing that includes it is rebuilt.
  const auto long_ago = fs::file_time_type::clock::now() - std::chrono::hours(24);
  fs::last_write_time(header, long_ago);
  CHECK(generate(repo) == text);
  CHECK(fs::last_write_time(header) == long_ago);

  write("untracked.txt", "not in the commit\n");
  CHECK(contains(generate(repo), "DSMIL_GIT_DIRTY 0"));
  write("a.txt", "two\n");
  CHECK(contains(generate(repo), "DSMIL_GIT_DIRTY 1"));

  REQUIRE(git({"commit", "-q", "-a", "-m", "two"}) == 0);
  const auto second = test::git_head(repo.string());
  REQUIRE(second);
  CHECK(*second != *first);
  text = generate(repo);
  CHECK(contains(text, "DSMIL_GIT_COMMIT \"" + *second + "\""));
  CHECK(contains(text, "DSMIL_GIT_DIRTY 0"));

  // A folder inside a checkout is not the checkout of the source it holds.
  fs::create_directories(repo / "inner");
  CHECK(contains(generate(repo / "inner"), "DSMIL_GIT_COMMIT \"unknown\""));
}
