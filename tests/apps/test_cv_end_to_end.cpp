// End to end on the CPU: the CPU demo's `dsmil cv` generalises to its first test fold, and every number
// of its cv_summary.json / AUDIT.md follows from its prediction files; a run killed mid-way and resumed ends
// with the same weights as an uninterrupted one; `predict` maps attention onto the input, `eval` predicts a
// dataset and `predict --run` predicts one through the folds' ensemble, skipping a broken case; one case stored in
// three axis orders gives one p(HGG); folds run apart merge into one audit; bad arguments give one error line and a
// non-zero exit.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "apps/provenance.h"
#include "apps/report/run_dir.h"
#include "apps/train/cv.h"
#include "apps/train/fault_points.h"
#include "data/cohort.h"
#include "data/nifti_io.h"
#include "nn/checkpoint.h"
#include "tests/data/test_helpers.h"
#include "tests/test_util.h"

using namespace dsmil;
namespace fs = std::filesystem;
using test::scratch;

namespace {

// One shared small cohort: 48 cases of 64x64x48 voxels (about 1 s to write).
const fs::path& cohort() {
  static const fs::path root = [] {
    const fs::path dir = scratch("cohort");
    data::write_small_cohort(dir, 48, 11);
    return dir;
  }();
  return root;
}

// The CPU demo's CV (scripts/demo.sh without a GPU): configs/tiny on 600 cases of 64x64x40 voxels at difficulty
// 0.45, seed 1. Its three folds take about 4 minutes of training on two idle cores; the test trains fold 0 alone
// (the demo reached test AUC 0.914 there, 0.950 and 0.843 on folds 1 and 2, pooled 0.869), so that the suite stays
// within its time on a loaded machine.
app::RunConfig demo_config(const fs::path& cache) {
  data::CohortOptions cohort_options;
  cohort_options.out = scratch("demo_cohort");
  cohort_options.cases = 600;
  cohort_options.dims = {64, 64, 40};
  cohort_options.difficulty = 0.45;
  cohort_options.seed = 1;
  data::write_cohort(cohort_options);
  app::RunConfig c = app::load_config(app::find_config_file("tiny"));
  c.data_root = cohort_options.out.string();
  c.cache_dir = cache.string();
  return c;
}

std::vector<std::string> lines_of(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The comma-separated cells of a CSV line (the files here quote nothing).
std::vector<std::string> cells_of(const std::string& line) {
  std::vector<std::string> cells;
  std::stringstream in(line);
  for (std::string cell; std::getline(in, cell, ',');) cells.push_back(cell);
  return cells;
}

// AUC by counting pairs, independent of apps/report.
double pair_auc(const std::vector<std::pair<int, double>>& rows) {
  double wins = 0, pairs = 0;
  for (const auto& [la, pa] : rows)
    for (const auto& [lb, pb] : rows)
      if (la == 1 && lb == 0) wins += pa > pb ? 1.0 : pa == pb ? 0.5 : 0.0, pairs += 1;
  return wins / pairs;
}

// Runs dsmil with `args`, DSMIL_FAULT set to `fault` when given (apps/train/fault_points.h); returns its exit
// status, or with `started` its pid at once.
int run_dsmil(const std::vector<std::string>& args, pid_t* started = nullptr, const std::string& fault = "") {
  const pid_t pid = fork();
  if (pid == 0) {
    if (!fault.empty()) setenv("DSMIL_FAULT", fault.c_str(), 1);
    std::vector<char*> argv{const_cast<char*>(DSMIL_BINARY)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(DSMIL_BINARY, argv.data());
    _exit(127);
  }
  if (started) {
    *started = pid;
    return 0;
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE("the CPU demo's cv generalises (fold 0's test AUC >= 0.75), and its reports agree with its predictions") {
  const fs::path out = scratch("runs");
  app::CvOptions options;
  options.runs_root = out;
  options.folds = {0};
  const app::CvResult result = app::run_cv(demo_config(scratch("cache")), options);
  REQUIRE(fs::exists(result.audit_md));
  CHECK(result.consistent);

  // Learning on the training fold: some epoch's training AUC reaches 0.70 (the audit's "no learning" rule).
  const auto history = lines_of(result.run_dir / "fold_0" / "metrics.jsonl");
  REQUIRE(history.size() >= 6);
  double best_train_auc = 0.0;
  for (const std::string& record : history)
    best_train_auc = std::max(best_train_auc, nlohmann::json::parse(record)["train"]["auc"].get<double>());
  std::printf("[e2e] fold 0: highest training AUC %.3f over %zu epochs\n", best_train_auc, history.size());
  CHECK(best_train_auc >= 0.70);
  std::vector<std::pair<int, double>> tested;
  const auto rows = lines_of(result.run_dir / "fold_0" / "predictions.csv");
  REQUIRE(rows.size() > 1);
  for (size_t i = 1; i < rows.size(); ++i) {
    const std::vector<std::string> cells = cells_of(rows[i]);
    if (cells[6] == "test") tested.emplace_back(std::stoi(cells[1]), std::stod(cells[2]));
  }
  CHECK(tested.size() == 200);
  // What made the run: this build, and the config it ran with by its SHA-256.
  const nlohmann::json made_by = nlohmann::json::parse(lines_of(result.run_dir / "provenance.jsonl").front());
  CHECK(made_by["config_sha256"] == app::sha256_hex(report::read_text_file(result.run_dir / "config.toml")));
  CHECK(!made_by["version"].get<std::string>().empty());
  const nlohmann::json summary = nlohmann::json::parse(std::ifstream(result.run_dir / "cv_summary.json"));
  const double reported = summary["pooled"][0]["auc"].get<double>();
  const double recomputed = pair_auc(tested);
  std::printf("[e2e] fold 0 test AUC %.4f (recomputed here %.4f)\n", reported, recomputed);
  CHECK(reported == doctest::Approx(recomputed).epsilon(1e-12));
  CHECK(recomputed >= 0.75);
  CHECK(summary["consistency"]["failed"].get<int>() == 0);
  CHECK(summary["consistency"]["checks"].get<int>() > 20);
  const auto audit = lines_of(result.audit_md);
  CHECK(std::any_of(audit.begin(), audit.end(),
                    [](const std::string& l) { return l.find("onsistency") != std::string::npos; }));
}

TEST_CASE("a run killed during training and resumed ends with the weights of an uninterrupted run") {
  const fs::path out = scratch("resume");
  const std::string cache = scratch("cache").string();
  const std::vector<std::string> common = {"--config", "tiny",
                                           "--data",   cohort().string(),
                                           "--set",    "data.cache=" + cache,
                                           "--set",    "train.epochs=5",
                                           "--set",    "train.min_epochs=5",
                                           "--set",    "cv.folds=3",
                                           "--folds",  "0",
                                           "--set",    "run.threads=1",
                                           "--set",    "run.checkpoint_seconds=0"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args{"cv"};
    args.insert(args.end(), common.begin(), common.end());
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  REQUIRE(run_dsmil(with({"--out", (out / "whole").string()})) == 0);

  pid_t pid = 0;
  run_dsmil(with({"--out", (out / "killed").string()}), &pid);
  fs::path run_dir;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(out / "killed"))
      for (const auto& entry : fs::directory_iterator(out / "killed")) run_dir = entry.path();
    if (!run_dir.empty() && lines_of(run_dir / "fold_0" / "metrics.jsonl").size() >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  REQUIRE(!run_dir.empty());
  CHECK_FALSE(fs::exists(run_dir / "fold_0" / "fold.json"));
  REQUIRE(run_dsmil(with({"--resume", run_dir.string()})) == 0);

  fs::path whole_dir;
  for (const auto& entry : fs::directory_iterator(out / "whole")) whole_dir = entry.path();
  const nn::Checkpoint a = nn::load_checkpoint((whole_dir / "fold_0" / "last.ckpt").string());
  const nn::Checkpoint b = nn::load_checkpoint((run_dir / "fold_0" / "last.ckpt").string());
  REQUIRE(a.tensors.size() == b.tensors.size());
  int differing = 0;
  for (size_t i = 0; i < a.tensors.size(); ++i)
    differing += a.tensors[i].value.to_vector() != b.tensors[i].value.to_vector();
  CHECK(differing == 0);
  CHECK(lines_of(whole_dir / "fold_0" / "predictions.csv") == lines_of(run_dir / "fold_0" / "predictions.csv"));
  CHECK(lines_of(whole_dir / "fold_0" / "metrics.jsonl").size() ==
        lines_of(run_dir / "fold_0" / "metrics.jsonl").size());
}

namespace {

// A checkpoint's tensors as bytes and its metadata without the provenance of the process that wrote it (a
// resumed run's command line differs from an uninterrupted one's).
std::string checkpoint_content(const fs::path& path) {
  const nn::Checkpoint ckpt = nn::load_checkpoint(path.string());
  nlohmann::json meta = nlohmann::json::parse(ckpt.metadata);
  meta.erase("provenance");
  std::string content = meta.dump();
  for (const nn::CheckpointTensor& t : ckpt.tensors)
    content += t.name + std::string(static_cast<const char*>(t.value.raw()), t.value.bytes());
  return content;
}

// What a run's folds end with, file by file: fold.json, predictions and attention as bytes, checkpoints by
// content; metrics.jsonl without its timings (they differ from run to run).
std::map<std::string, std::string> fold_outputs(const fs::path& run_dir) {
  std::map<std::string, std::string> files;
  for (const auto& fold : fs::directory_iterator(run_dir)) {
    if (fold.path().filename().string().rfind("fold_", 0) != 0) continue;
    const std::string name = fold.path().filename().string();
    for (const char* file : {"fold.json", "predictions.csv", "attention.csv"})
      files[name + "/" + file] = fs::exists(fold.path() / file) ? report::read_text_file(fold.path() / file) : "(none)";
    for (const char* file : {"best.ckpt", "best_ema.ckpt", "last.ckpt"})
      files[name + "/" + file] = fs::exists(fold.path() / file) ? checkpoint_content(fold.path() / file) : "(none)";
    std::string metrics;
    for (const std::string& line : lines_of(fold.path() / "metrics.jsonl")) {
      nlohmann::json record = nlohmann::json::parse(line);
      CHECK(record.at("eval_bags_per_s").get<double>() > 0);
      CHECK(record.at("step_queue_s").get<double>() > 0);
      CHECK(record.at("step_readback_s").get<double>() >= 0);
      const nlohmann::json& split = record.at("step_queue_split_s");
      CHECK(split.at("forward").get<double>() + split.at("backward").get<double>() + split.at("update").get<double>() ==
            doctest::Approx(record.at("step_queue_s").get<double>()));
      // On the CPU a part's device time is the host's clock between the same marks, taken a moment later.
      const nlohmann::json& device_split = record.at("step_device_split_s");
      for (const char* part : {"forward", "backward", "update"}) {
        CHECK(device_split.at(part).get<double>() > 0);
        CHECK(device_split.at(part).get<double>() <= record.at("epoch_time_s").get<double>());
      }
      const nlohmann::json& thread = record.at("step_queue_thread");
      CHECK(thread.at("cpu_s").get<double>() > 0);
      for (const char* count : {"minor_faults", "major_faults", "voluntary_switches", "involuntary_switches"})
        CHECK(thread.at(count).get<int64_t>() >= 0);
      for (const char* timing :
           {"epoch_time_s", "throughput_bags_per_s", "eval_bags_per_s", "batch_assembly_s", "step_queue_s",
            "step_queue_split_s", "step_device_split_s", "step_queue_thread", "step_readback_s"})
        record.erase(timing);
      metrics += record.dump() + "\n";
    }
    files[name + "/metrics.jsonl"] = metrics;
  }
  return files;
}

// The fault-injection runs: a tiny two-fold CV that stops early, saving last.ckpt every epoch.
struct FaultRuns {
  fs::path out;
  std::string cache = scratch("cache").string();
  std::vector<std::string> cv(const std::vector<std::string>& extra) const {
    std::vector<std::string> args{"cv",
                                  "--config",
                                  "tiny",
                                  "--data",
                                  cohort().string(),
                                  "--set",
                                  "data.cache=" + cache,
                                  "--set",
                                  "cv.folds=3",
                                  "--folds",
                                  "0,1",
                                  "--set",
                                  "train.epochs=8",
                                  "--set",
                                  "train.min_epochs=2",
                                  "--set",
                                  "train.patience=1",
                                  "--set",
                                  "train.selection_train_auc=0",
                                  "--set",
                                  "run.checkpoint_seconds=0",
                                  "--set",
                                  "run.threads=1",
                                  "--no-audit"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }
  fs::path only_run(const fs::path& root) const {
    std::vector<fs::path> runs;
    for (const auto& entry : fs::directory_iterator(root)) runs.push_back(entry.path());
    REQUIRE(runs.size() == 1);
    return runs.front();
  }
};

}  // namespace

TEST_CASE(
    "a fold killed in each window of its end (checkpoint, stopping epoch, best models, predictions) resumes to "
    "the files of an uninterrupted run") {
  const FaultRuns runs{scratch("fault_windows")};
  REQUIRE(run_dsmil(runs.cv({"--out", (runs.out / "whole").string()})) == 0);
  const fs::path whole = runs.only_run(runs.out / "whole");
  const auto expected = fold_outputs(whole);
  bool stopped = false;
  for (const char* fold : {"fold_0", "fold_1"})
    stopped |= nlohmann::json::parse(std::ifstream(whole / fold / "fold.json"))["stopped_early"].get<bool>();
  REQUIRE_MESSAGE(stopped, "no fold stopped early: the stopping window would go untested");
  for (const std::string fault :
       {"checkpoint_saved:3", "stop_saved", "best_saved", "predictions_written", "predictions_written:2"}) {
    CAPTURE(fault);
    const fs::path root = runs.out / ("fault_" + fault.substr(0, fault.find(':')) + fault.substr(fault.find(':') + 1));
    REQUIRE(run_dsmil(runs.cv({"--out", root.string()}), nullptr, fault) == app::kFaultExitCode);
    const fs::path run_dir = runs.only_run(root);
    REQUIRE(run_dsmil(runs.cv({"--resume", run_dir.string()})) == 0);
    const auto resumed = fold_outputs(run_dir);
    REQUIRE(resumed.size() == expected.size());
    for (const auto& [file, bytes] : expected) {
      CAPTURE(file);
      CHECK(resumed.at(file) == bytes);
    }
  }
}

TEST_CASE(
    "a CV killed again and again at random moments and resumed each time ends with the files of an "
    "uninterrupted run") {
  const FaultRuns runs{scratch("fault_chain")};
  REQUIRE(run_dsmil(runs.cv({"--out", (runs.out / "whole").string()})) == 0);
  const auto expected = fold_outputs(runs.only_run(runs.out / "whole"));
  // Kills come every 0.2 to 0.8 s, up to kMaxKills of them; then the last resume runs to its end.
  constexpr int kMaxKills = 30;
  std::uniform_int_distribution<int> pause_ms(200, 800);
  const fs::path root = runs.out / "killed";
  pid_t pid = 0;
  run_dsmil(runs.cv({"--out", root.string()}), &pid);
  fs::path run_dir;
  int kills = 0, status = 0;
  while (true) {
    if (kills == kMaxKills) {
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(test::rng())));
    if (waitpid(pid, &status, WNOHANG) == pid) break;
    // Until the run directory holds its config, a resume has nothing to continue: let it get there.
    if (run_dir.empty() && fs::exists(root))
      for (const auto& entry : fs::directory_iterator(root)) run_dir = entry.path();
    if (run_dir.empty() || !fs::exists(run_dir / "config.toml")) continue;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    ++kills;
    run_dsmil(runs.cv({"--resume", run_dir.string()}), &pid);
  }
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  std::printf("[faults] %d kills at random moments, each resumed; comparing %zu files\n", kills, expected.size());
  CHECK(kills >= 5);
  const auto resumed = fold_outputs(run_dir);
  REQUIRE(resumed.size() == expected.size());
  for (const auto& [file, bytes] : expected) {
    CAPTURE(file);
    CHECK(resumed.at(file) == bytes);
  }
}

TEST_CASE("runs started in the same second get directories of their own, created exclusively") {
  const fs::path out = scratch("same_second");
  const std::string cache = scratch("cache").string();
  // The names the next seconds would give are taken already: the run must not enter them.
  char stamp[32];
  std::vector<fs::path> taken;
  for (int ahead = 0; ahead < 4; ++ahead) {
    const std::time_t t = std::time(nullptr) + ahead;
    std::strftime(stamp, sizeof stamp, "%Y%m%d_%H%M%S", std::localtime(&t));
    taken.push_back(out / (std::string("tiny_") + stamp));
    fs::create_directories(taken.back());
  }
  const std::vector<std::string> args = {"cv",
                                         "--config",
                                         "tiny",
                                         "--data",
                                         cohort().string(),
                                         "--set",
                                         "data.cache=" + cache,
                                         "--set",
                                         "train.epochs=1",
                                         "--set",
                                         "train.min_epochs=1",
                                         "--set",
                                         "cv.folds=3",
                                         "--folds",
                                         "0",
                                         "--no-audit",
                                         "--out",
                                         out.string()};
  pid_t first = 0, second = 0;
  run_dsmil(args, &first);
  run_dsmil(args, &second);
  int status_first = 0, status_second = 0;
  waitpid(first, &status_first, 0);
  waitpid(second, &status_second, 0);
  CHECK(WEXITSTATUS(status_first) == 0);
  CHECK(WEXITSTATUS(status_second) == 0);
  for (const fs::path& dir : taken) CHECK(fs::is_empty(dir));
  int runs = 0;
  for (const auto& entry : fs::directory_iterator(out))
    if (!fs::is_empty(entry.path())) {
      ++runs;
      CHECK(entry.path().filename().string().find("_2") != std::string::npos);
      CHECK(fs::exists(entry.path() / "fold_0" / "fold.json"));
    }
  CHECK(runs == 2);
}

TEST_CASE("a dataset with one grade, or without data, is one clear error and leaves no run directory") {
  const fs::path out = scratch("one_grade");
  const fs::path all_hgg = scratch("all_hgg");
  data::write_small_cohort(all_hgg, 10, 5, {48, 48, 32}, 1.0);
  app::RunConfig c = app::load_config(app::find_config_file("tiny"));
  c.data_root = all_hgg.string();
  c.cache_dir = scratch("cache").string();
  app::CvOptions options;
  options.runs_root = out;
  std::string message = "(no error)";
  try {
    app::run_cv(c, options);
  } catch (const Error& e) {
    message = e.what();
  }
  CAPTURE(message);
  CHECK(message.find("0 LGG cases") != std::string::npos);
  CHECK(fs::is_empty(out));
  CHECK(run_dsmil({"cv", "--config", "tiny", "--data", "/no/such/folder", "--out", out.string()}) != 0);
  CHECK(fs::is_empty(out));
}

TEST_CASE("--resume RUN_DIR alone continues with the run's config and data, and a disagreeing setting is named") {
  const fs::path out = scratch("resume_alone");
  const std::string cache = scratch("cache").string();
  REQUIRE(run_dsmil({"cv", "--config", "tiny", "--data", cohort().string(), "--set", "data.cache=" + cache, "--set",
                     "train.epochs=1", "--set", "train.min_epochs=1", "--set", "cv.folds=3", "--folds", "0",
                     "--no-audit", "--out", out.string()}) == 0);
  const fs::path run_dir = fs::directory_iterator(out)->path();
  CHECK(run_dsmil({"cv", "--resume", run_dir.string(), "--folds", "1"}) == 0);
  CHECK(fs::exists(run_dir / "fold_1" / "fold.json"));
  CHECK(fs::exists(run_dir / "AUDIT.md"));

  app::RunConfig changed = app::load_config(run_dir / "config.toml");
  changed.lr = 0.5;
  app::CvOptions options;
  options.resume_dir = run_dir;
  std::string message = "(no error)";
  try {
    app::run_cv(changed, options);
  } catch (const Error& e) {
    message = e.what();
  }
  CAPTURE(message);
  CHECK(message.find("train.lr: 0.001 vs 0.5") != std::string::npos);
}

TEST_CASE("bad arguments and missing inputs: one error line, non-zero exit") {
  CHECK(run_dsmil({"cv", "--config", "no-such-config"}) != 0);
  CHECK(run_dsmil({"cv", "--config", "tiny", "--data", "/no/such/folder"}) != 0);
  CHECK(run_dsmil({"cv", "--config", "tiny", "--set", "model.pooling=median", "--data", cohort().string()}) != 0);
  CHECK(run_dsmil({"cv", "--config", "tiny", "--set", "train.no_such_key=1"}) != 0);
  CHECK(run_dsmil({"frobnicate"}) != 0);
}

namespace {

// The run directory of fold 0 of a 2-epoch `dsmil cv` on the shared cohort, trained once per test process.
const fs::path& two_epoch_run() {
  static const fs::path run_dir = [] {
    const fs::path runs = scratch("two_epoch_runs");
    REQUIRE(run_dsmil({"cv", "--config", "tiny", "--data", cohort().string(), "--set",
                       "data.cache=" + scratch("cache").string(), "--set", "train.epochs=2", "--set",
                       "train.min_epochs=2", "--set", "cv.folds=3", "--folds", "0", "--out", runs.string()}) == 0);
    fs::path found;
    for (const auto& entry : fs::directory_iterator(runs)) found = entry.path();
    return found;
  }();
  return run_dir;
}

}  // namespace

TEST_CASE(
    "predict and eval with a fold's checkpoint: probability, attention map on the input's grid, montage, predictions") {
  const fs::path out = scratch("predict");
  const std::string cache = scratch("cache").string();
  const fs::path run_dir = two_epoch_run();
  fs::path case_dir;
  for (const auto& entry : fs::directory_iterator(cohort() / "HGG")) case_dir = entry.path();
  const std::string id = case_dir.filename().string();
  auto file = [&](const char* modality) { return (case_dir / (id + "_" + modality + ".nii.gz")).string(); };
  REQUIRE(run_dsmil({"predict", "--checkpoint", (run_dir / "fold_0" / "best.ckpt").string(), "--flair", file("flair"),
                     "--t1", file("t1"), "--t1ce", file("t1ce"), "--t2", file("t2"), "--out", (out / "pred").string(),
                     "--case-id", id}) == 0);
  const data::Image3D input = data::read_nifti(file("flair"));
  const data::Image3D map = data::read_nifti(out / "pred" / (id + "_attention.nii.gz"));
  CHECK(map.dims == input.dims);
  CHECK(map.spacing == input.spacing);
  double inside_brain = 0.0, outside_brain = 0.0;
  for (int64_t v = 0; v < map.voxel_count(); ++v) {
    CHECK(map.values[v] >= 0.0f);
    CHECK(map.values[v] <= 1.0f);
    (input.values[v] != 0.0f ? inside_brain : outside_brain) += map.values[v];
  }
  CHECK(inside_brain > 0.0);
  CHECK(fs::file_size(out / "pred" / (id + "_montage.png")) > 100);
  REQUIRE(run_dsmil({"eval", "--checkpoint", (run_dir / "fold_0" / "best.ckpt").string(), "--data", cohort().string(),
                     "--cache", cache, "--out", (out / "eval").string()}) == 0);
  CHECK(lines_of(out / "eval" / "predictions.csv").size() == 48 + 1);
  // predict and eval build the case's bag alike and apply the threshold stored with the checkpoint.
  const std::vector<std::string> predicted = cells_of(lines_of(out / "pred" / "prediction.csv").at(1));
  for (const std::string& row : lines_of(out / "eval" / "predictions.csv"))
    if (row.rfind(id + ",", 0) == 0) {
      CHECK(std::stod(cells_of(row)[2]) == doctest::Approx(std::stod(predicted[1])).epsilon(1e-6));
      CHECK(std::stod(cells_of(row)[4]) == std::stod(predicted[2]));
    }
  CHECK_FALSE(predicted[2].empty());
  // --instances: the run's own count (tiny: 14) predicts as the default does; bags of 4 slabs see fewer slabs.
  const std::string best = (run_dir / "fold_0" / "best.ckpt").string();
  REQUIRE(run_dsmil({"eval", "--checkpoint", best, "--data", cohort().string(), "--cache", cache, "--instances", "14",
                     "--out", (out / "eval14").string()}) == 0);
  REQUIRE(run_dsmil({"eval", "--checkpoint", best, "--data", cohort().string(), "--cache", cache, "--instances", "4",
                     "--out", (out / "eval4").string()}) == 0);
  CHECK(lines_of(out / "eval14" / "predictions.csv") == lines_of(out / "eval" / "predictions.csv"));
  const std::vector<std::string> of14 = lines_of(out / "eval14" / "predictions.csv"),
                                 of4 = lines_of(out / "eval4" / "predictions.csv");
  REQUIRE(of4.size() == of14.size());
  int moved = 0;
  for (size_t i = 1; i < of14.size(); ++i) {
    CHECK(cells_of(of4[i])[0] == cells_of(of14[i])[0]);
    moved += std::stod(cells_of(of4[i])[2]) != std::stod(cells_of(of14[i])[2]) ? 1 : 0;
  }
  CHECK(moved > 0);
  CHECK(run_dsmil({"eval", "--checkpoint", best, "--data", cohort().string(), "--instances", "0"}) != 0);
  REQUIRE(run_dsmil({"predict", "--checkpoint", (run_dir / "fold_0" / "last.ckpt").string(), "--flair", file("flair"),
                     "--t1", file("t1"), "--t1ce", file("t1ce"), "--t2", file("t2"), "--out", (out / "last").string(),
                     "--case-id", id}) == 0);
  const std::vector<std::string> unthresholded = cells_of(lines_of(out / "last" / "prediction.csv").at(1));
  CHECK((unthresholded.size() < 3 || unthresholded[2].empty()));  // p(HGG) alone: last.ckpt has no threshold
  CHECK(run_dsmil({"predict", "--checkpoint", (run_dir / "fold_0" / "best.ckpt").string(), "--flair", "/no/such.nii",
                   "--t1", file("t1"), "--t1ce", file("t1ce"), "--t2", file("t2"), "--out", (out / "bad").string()}) !=
        0);
}

TEST_CASE(
    "predict --run: every fold's chosen model and their mean at the mean calibrated threshold, and a broken case "
    "is listed with its reason and skipped") {
  const fs::path out = scratch("ensemble");
  const std::string cache = scratch("ensemble_cache").string();
  REQUIRE(run_dsmil({"cv", "--config", "tiny", "--data", cohort().string(), "--set", "data.cache=" + cache, "--set",
                     "train.epochs=2", "--set", "train.min_epochs=2", "--set", "cv.folds=3", "--no-audit", "--out",
                     (out / "runs").string()}) == 0);
  fs::path run_dir;
  for (const auto& entry : fs::directory_iterator(out / "runs")) run_dir = entry.path();

  // The cohort again with one case's FLAIR replaced by bytes that are no NIfTI file.
  const fs::path data = out / "data";
  fs::copy(cohort(), data, fs::copy_options::recursive);
  fs::path broken_dir;
  for (const auto& entry : fs::directory_iterator(data / "LGG")) broken_dir = entry.path();
  const std::string broken = broken_dir.filename().string();
  std::ofstream(broken_dir / (broken + "_flair.nii.gz"), std::ios::trunc) << "not a NIfTI file";

  const fs::path table = out / "predictions.csv";
  REQUIRE(run_dsmil({"predict", "--run", run_dir.string(), "--data", data.string(), "--out", table.string(), "--cache",
                     cache, "--attention", (out / "attention").string()}) == 0);

  const nlohmann::json side = nlohmann::json::parse(std::ifstream(out / "predictions.ensemble.json"));
  REQUIRE(side["skipped"].size() == 1);
  CHECK(side["skipped"][0]["case_id"] == broken);
  CHECK(side["skipped"][0]["file"].get<std::string>().find("_flair.nii.gz") != std::string::npos);
  CHECK_FALSE(side["skipped"][0]["reason"].get<std::string>().empty());
  CHECK(side["n_predicted"] == 48 - 1);

  const std::vector<std::string> lines = lines_of(table);
  REQUIRE(lines.size() == 48 - 1 + 1);
  CHECK(cells_of(lines[0]) == std::vector<std::string>{"case_id", "label", "p_fold_0", "p_fold_1", "p_fold_2",
                                                       "p_ensemble", "threshold", "prediction"});
  std::map<std::string, std::vector<std::string>> predicted;
  for (size_t i = 1; i < lines.size(); ++i) predicted[cells_of(lines[i])[0]] = cells_of(lines[i]);
  CHECK(predicted.count(broken) == 0);

  // Each fold's column is the chosen model's p(HGG): what the fold itself predicted for its test and validation cases.
  double mean_threshold = 0.0;
  for (int fold = 0; fold < 3; ++fold) {
    const fs::path fold_dir = run_dir / ("fold_" + std::to_string(fold));
    const report::FoldInfo info = report::read_fold_json(fold_dir / "fold.json");
    mean_threshold += info.threshold / 3.0;
    CHECK(fs::path(side["folds"][fold]["checkpoint"].get<std::string>()).filename() ==
          (info.chosen_model == "ema" ? "best_ema.ckpt" : "best.ckpt"));
    CHECK(side["folds"][fold]["threshold"].get<double>() == info.threshold);
    int compared = 0;
    for (const report::PredictionRow& row : report::read_predictions_csv(fold_dir / "predictions.csv")) {
      if (row.case_id == broken) continue;
      REQUIRE(predicted.count(row.case_id) == 1);
      CAPTURE(row.case_id);
      CHECK(std::stod(predicted[row.case_id][2 + fold]) == doctest::Approx(row.p_hgg).epsilon(1e-6));
      CHECK(std::stoi(predicted[row.case_id][1]) == row.label);
      ++compared;
    }
    CHECK(compared >= 10);
  }
  // The ensemble: the folds' mean, labelled HGG at or above the mean of their calibrated thresholds.
  CHECK(side["threshold"].get<double>() == doctest::Approx(mean_threshold).epsilon(1e-12));
  for (const auto& [id, row] : predicted) {
    CAPTURE(id);
    const double mean = (std::stod(row[2]) + std::stod(row[3]) + std::stod(row[4])) / 3.0;
    CHECK(std::stod(row[5]) == doctest::Approx(mean).epsilon(1e-7));
    CHECK(std::stod(row[6]) == doctest::Approx(mean_threshold).epsilon(1e-12));
    CHECK(row[7] == (std::stod(row[5]) >= std::stod(row[6]) ? "HGG" : "LGG"));
  }
  const std::string some_case = predicted.begin()->first;
  fs::path some_dir;
  for (const char* grade : {"HGG", "LGG"})
    if (fs::exists(data / grade / some_case)) some_dir = data / grade / some_case;
  const data::Image3D map = data::read_nifti(out / "attention" / (some_case + "_attention.nii.gz"));
  CHECK(map.dims == data::read_nifti(some_dir / (some_case + "_flair.nii.gz")).dims);
  CHECK(fs::exists(out / "attention" / (some_case + "_montage.png")));
  CHECK_FALSE(fs::exists(out / "attention" / (broken + "_attention.nii.gz")));

  // One form or the other: neither, or both, is a usage error.
  CHECK(run_dsmil({"predict", "--out", table.string()}) == 2);
  CHECK(run_dsmil({"predict", "--run", run_dir.string(), "--checkpoint", (run_dir / "fold_0" / "best.ckpt").string(),
                   "--data", data.string(), "--out", table.string()}) == 2);
}

TEST_CASE("predict: one case stored as LPS, SRA and RAS gives one p(HGG) and its attention map on each input's grid") {
  const fs::path out = scratch("predict_orders");
  fs::path case_dir;
  for (const auto& entry : fs::directory_iterator(cohort() / "LGG")) case_dir = entry.path();
  const std::string id = case_dir.filename().string();
  data::CaseFiles lps;
  lps.case_id = id;
  for (int m = 0; m < data::kModalities; ++m) {
    lps.modalities[m] = case_dir / (id + "_" + std::string(data::kModalityNames[m]) + ".nii.gz");
  }
  const fs::path checkpoint = two_epoch_run() / "fold_0" / "best.ckpt";
  std::map<std::string, double> p_hgg;
  std::map<std::string, data::Image3D> maps;
  for (const std::string order : {"LPS", "SRA", "RAS"}) {
    const data::CaseFiles files = order == "LPS" ? lps : data::test::write_case_stored_as(lps, out / order, order);
    REQUIRE(run_dsmil({"predict", "--checkpoint", checkpoint.string(), "--flair", files.modalities[0].string(), "--t1",
                       files.modalities[1].string(), "--t1ce", files.modalities[2].string(), "--t2",
                       files.modalities[3].string(), "--out", (out / ("pred_" + order)).string(), "--case-id", id}) ==
            0);
    p_hgg[order] = std::stod(cells_of(lines_of(out / ("pred_" + order) / "prediction.csv").at(1)).at(1));
    maps[order] = data::read_nifti(out / ("pred_" + order) / (id + "_attention.nii.gz"));
    const data::Image3D input = data::read_nifti(files.modalities[0]);
    CHECK(maps[order].dims == input.dims);
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 4; ++c) {
        CHECK(maps[order].voxel_to_world[r][c] == doctest::Approx(input.voxel_to_world[r][c]));
      }
  }
  std::printf("[orientation] p(HGG) of case %s stored as LPS %.9f, SRA %.9f, RAS %.9f\n", id.c_str(), p_hgg["LPS"],
              p_hgg["SRA"], p_hgg["RAS"]);
  CHECK(std::abs(p_hgg["SRA"] - p_hgg["LPS"]) <= 1e-5);
  CHECK(std::abs(p_hgg["RAS"] - p_hgg["LPS"]) <= 1e-5);
  // each map is the LPS input's map carried voxel by voxel onto that input's own axis order
  const auto& lps_map = maps["LPS"];
  CHECK(std::any_of(lps_map.values.begin(), lps_map.values.end(), [](float v) { return v > 0.0f; }));
  for (const std::string order : {"SRA", "RAS"}) {
    CAPTURE(order);
    CHECK(maps[order].values == data::test::stored_as(lps_map, order).values);
  }
}

TEST_CASE("folds run apart merge into one audit, and folds of another config or given twice are refused") {
  const fs::path out = scratch("merge");
  const std::string cache = scratch("cache").string();
  auto cv = [&](const std::string& folds, const std::string& where, const std::string& lr) {
    const fs::path root = out / where;
    REQUIRE(run_dsmil({"cv",
                       "--config",
                       "tiny",
                       "--data",
                       cohort().string(),
                       "--set",
                       "data.cache=" + cache,
                       "--set",
                       "train.epochs=1",
                       "--set",
                       "train.min_epochs=1",
                       "--set",
                       "cv.folds=3",
                       "--set",
                       "train.lr=" + lr,
                       "--folds",
                       folds,
                       "--plot-every",
                       "1",
                       "--out",
                       root.string()}) == 0);
    return fs::directory_iterator(root)->path();
  };
  const fs::path first = cv("0", "a", "0.003"), rest = cv("1,2", "b", "0.003"), other = cv("1", "c", "0.001");
  CHECK(fs::exists(first / "fold_0" / "plots" / "curves.svg"));
  REQUIRE(run_dsmil({"audit", first.string(), rest.string(), "--out", (out / "merged").string()}) == 0);
  const nlohmann::json summary = nlohmann::json::parse(std::ifstream(out / "merged" / "cv_summary.json"));
  CHECK(summary["consistency"]["failed"].get<int>() == 0);
  CHECK(lines_of(out / "merged" / "AUDIT.md").size() > 20);
  size_t test_rows = 0;
  for (const fs::path& run : {first, rest})
    for (const auto& entry : fs::directory_iterator(run))
      if (entry.path().filename().string().rfind("fold_", 0) == 0)
        for (const std::string& row : lines_of(entry.path() / "predictions.csv"))
          test_rows += row.find(",test,") != std::string::npos;
  CHECK(test_rows == 48);
  CHECK(run_dsmil({"audit", first.string(), other.string(), "--out", (out / "mixed").string()}) != 0);
  CHECK(run_dsmil({"audit", rest.string(), rest.string(), "--out", (out / "twice").string()}) != 0);
}
